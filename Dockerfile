# One image for every role: `docker run IMAGE election`, or `args: ["election"]` in Kubernetes.
# syntax=docker/dockerfile:1

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# Dependencies first, against placeholder sources: this layer is rebuilt only when
# Cargo.toml or Cargo.lock change.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src tests/it \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs tests/it/main.rs \
 && cargo build --release --locked --bin app
COPY migrations migrations
COPY src src
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin app

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/app /usr/local/bin/app
COPY config /etc/meeting-events/config
ENV CONFIG_DIR=/etc/meeting-events/config \
    HTTP_PORT=8080 \
    LOG_FORMAT=json
WORKDIR /data
# distroless' nonroot user, by number so that runAsNonRoot can check it.
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/app"]
CMD ["meeting"]
