# syntax=docker/dockerfile:1
# One image for every role: `docker run IMAGE election`, or `args: ["election"]` in Kubernetes.
# (The syntax directive above is read only on the first line.)

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# Dependencies first, against placeholder sources: this layer is rebuilt only when a
# Cargo.toml or Cargo.lock change.
COPY Cargo.toml Cargo.lock ./
COPY crates/service/Cargo.toml crates/service/
COPY crates/app/Cargo.toml crates/app/
COPY crates/bench/Cargo.toml crates/bench/
RUN for c in service app bench; do mkdir -p crates/$c/src; done \
 && touch crates/service/src/lib.rs \
 && echo 'fn main() {}' > crates/app/src/main.rs \
 && echo 'fn main() {}' > crates/bench/src/main.rs \
 && mkdir -p crates/app/tests/it && touch crates/app/tests/it/main.rs \
 && cargo build --release --locked -p app
COPY crates crates
RUN touch crates/app/src/main.rs crates/service/src/lib.rs \
 && cargo build --release --locked -p app \
 && mkdir -p /out/data

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/app /usr/local/bin/app
COPY config /etc/meeting-events/config
# The SQLite stores' folder, owned by the user the roles run as: the image runs without a
# volume (`docker run IMAGE meeting`), and a volume mounted there takes its place.
COPY --from=build --chown=65532:65532 /out/data /data
ENV CONFIG_DIR=/etc/meeting-events/config \
    HTTP_PORT=8080 \
    LOG_FORMAT=json
WORKDIR /data
# distroless' nonroot user, by number so that runAsNonRoot can check it.
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/app"]
CMD ["meeting"]
