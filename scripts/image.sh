#!/usr/bin/env bash
# The container image, built from the Dockerfile as it is and run, on a machine that reaches
# no registry and cannot start a container (as root).
#
#   scripts/image.sh install     install podman and debootstrap when missing (as root)
#   scripts/image.sh bases       make the Dockerfile's two FROM images locally: a Debian 12
#                                root file system (debootstrap) with gcc and this machine's
#                                Rust toolchain stands in for rust:1.95-slim-bookworm, and
#                                the same system's C runtime, CA certificates, time zones and
#                                a nonroot user (65532) for gcr.io/distroless/cc-debian12:nonroot
#   scripts/image.sh build       bases, then `podman build` of the Dockerfile unchanged
#   scripts/image.sh run         the five roles from the image's file system, as uid 65532
#                                with the image's own Env, WorkingDir and Entrypoint, against
#                                a throwaway broker: first with no volume (the stores in the
#                                image's /data), then with a volume on /data; each time a
#                                meeting is walked to its result through them
#   scripts/image.sh all         build, then run
#
# A container cannot be started here (the OCI runtime cannot set rlimits), so `run` does
# what the runtime would: the image's file system is exported to a folder and each role is
# started in it with chroot, the image's user, environment and working directory. Each role
# gets its own HTTP_PORT, as each pod has its own address. IMAGE (default
# meeting-events:local) names the image.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
image=${IMAGE:-localhost/meeting-events:local}
work=${IMAGE_WORK:-/var/tmp/meeting-events-image}
rust_base=docker.io/library/rust:1.95-slim-bookworm
runtime_base=gcr.io/distroless/cc-debian12:nonroot
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
rootfs="$work/rootfs"

die() { echo "image.sh: $*" >&2; exit 1; }
step() { echo "== image: $*" >&2; }

install_tools() {
  command -v podman >/dev/null && command -v debootstrap >/dev/null && return 0
  [ "$(id -u)" = 0 ] || die "podman and debootstrap are needed; run as root to install them"
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends podman debootstrap >/dev/null 2>&1 ||
    { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends podman debootstrap >/dev/null; }
}

have_image() { podman image exists "$1"; }

bases() {
  install_tools
  have_image "$rust_base" && have_image "$runtime_base" && { step "base images already made"; return 0; }
  local root="$work/bookworm"
  if [ ! -f "$root/.done" ]; then
    step "debootstrap Debian 12 (gcc, libc6-dev, ca-certificates, tzdata) into $root"
    rm -rf "$root"
    mkdir -p "$root"
    debootstrap --variant=minbase --include=gcc,libc6-dev,ca-certificates,tzdata,netbase \
      bookworm "$root" "$mirror" >"$work/debootstrap.log" 2>&1 ||
      { tail -n 20 "$work/debootstrap.log" >&2; die "debootstrap failed (log: $work/debootstrap.log)"; }
    touch "$root/.done"
  fi

  if ! have_image "$rust_base"; then
    step "$rust_base: that system with rustc and cargo $(rustc --version | cut -d' ' -f2)"
    local toolchain
    toolchain=$(rustc --print sysroot)
    rm -rf "$root/usr/local/rust" "$root/usr/local/cargo"
    mkdir -p "$root/usr/local/rust" "$root/usr/local/cargo/bin"
    # The toolchain without its documentation, where the official image keeps it.
    cp -a "$toolchain/bin" "$toolchain/lib" "$root/usr/local/rust/"
    [ -d "$toolchain/libexec" ] && cp -a "$toolchain/libexec" "$root/usr/local/rust/"
    ln -sf ../../rust/bin/cargo "$root/usr/local/cargo/bin/cargo"
    ln -sf ../../rust/bin/rustc "$root/usr/local/cargo/bin/rustc"
    tar -C "$root" --exclude=./.done -c . | podman import --quiet \
      --change 'ENV=RUSTUP_HOME=/usr/local/rustup' \
      --change 'ENV=CARGO_HOME=/usr/local/cargo' \
      --change 'ENV=PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'CMD=["bash"]' - "$rust_base" >/dev/null
  fi

  if ! have_image "$runtime_base"; then
    step "$runtime_base: the C runtime, CA certificates, time zones, a nonroot user"
    local tree="$work/distroless"
    rm -rf "$tree"
    mkdir -p "$tree"
    # What distroless' cc image holds: the files of these packages (as listed by dpkg), the
    # CA bundle update-ca-certificates made, and passwd/group entries for root and nonroot.
    chroot "$root" dpkg -L libc6 libgcc-s1 libstdc++6 tzdata netbase base-files 2>/dev/null |
      grep -v -e '^/usr/share/doc' -e '^/usr/share/man' -e '^/usr/share/lintian' -e '^/usr/share/locale' |
      while read -r f; do [ -e "$root$f" ] && [ ! -d "$root$f" ] && echo ".$f"; done >"$work/files"
    echo ./etc/ssl/certs/ca-certificates.crt >>"$work/files"
    # Debian 12 is merged-/usr: the top-level links first, then the files.
    mkdir -p "$tree/usr/bin" "$tree/usr/lib" "$tree/usr/lib64" "$tree/usr/sbin"
    for link in bin lib lib64 sbin; do cp -a "$root/$link" "$tree/"; done
    tar -C "$root" -c -T "$work/files" | tar -C "$tree" -x
    printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$tree/etc/passwd"
    printf 'root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n' >"$tree/etc/group"
    mkdir -p "$tree/tmp" "$tree/home/nonroot" "$tree/root"
    chmod 1777 "$tree/tmp"
    chown 65532:65532 "$tree/home/nonroot"
    tar -C "$tree" -c . | podman import --quiet \
      --change 'ENV=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'ENV=SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
      --change 'USER=65532' --change 'WORKDIR=/home/nonroot' - "$runtime_base" >/dev/null
  fi
}

build() {
  bases
  step "podman build of the Dockerfile as $image"
  local started=$SECONDS
  # The crates this machine already fetched are lent to the build, which then needs no
  # network; the Dockerfile itself is built as it is.
  mkdir -p "${CARGO_HOME:-$HOME/.cargo}/registry"
  podman build --isolation chroot --network=host --pull=never \
    --volume "${CARGO_HOME:-$HOME/.cargo}/registry:/usr/local/cargo/registry" \
    -t "$image" . >"$work/build.log" 2>&1 ||
    { tail -n 40 "$work/build.log" >&2; die "podman build failed (log: $work/build.log)"; }
  step "built in $((SECONDS - started)) s: $(podman image inspect --format '{{.Size}}' "$image" | numfmt --to=iec-i --suffix=B)"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# Start one role from the exported file system ROOT as the image would run it: the image's
# user, environment, working directory and entrypoint, plus the run's own variables.
start_role() {
  local root=$1 role=$2 port=$3 log=$4
  shift 4
  # chroot, then the image's WorkingDir, then its user: what the runtime does before exec.
  env -i "${image_env[@]}" "$@" HTTP_PORT="$port" python3 -c '
import os, sys
root, workdir, user, argv = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
uid, _, gid = user.partition(":")
os.chroot(root)
os.chdir(workdir or "/")
os.setgroups([])
os.setgid(int(gid or uid))
os.setuid(int(uid))
os.execv(argv[0], argv)
' "$root" "$image_workdir" "$image_user" "${image_entrypoint[@]}" "$role" >"$log" 2>&1 &
  pids+=($!)
}

wait_ready() {
  local port=$1 log=$2
  for _ in $(seq 1 300); do
    curl -fsS "http://127.0.0.1:$port/ready" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  tail -n 20 "$log" >&2
  die "the role on port $port did not become ready (log: $log)"
}

stop_roles() {
  local pid
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  pids=()
}

# One walk: the five roles from ROOT (with /data as it is there), a meeting to its result.
walk_through() {
  local case=$1 root=$2 logs=$3 role port secret
  secret=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
  local urls=()
  mkdir -p "$logs"
  for role in meeting election voting permission live; do
    port=$(free_port)
    start_role "$root" "$role" "$port" "$logs/$role.log" \
      AMQP_URL="$AMQP_URL" AUTH_JWT_SECRET="$secret" MQ_EXCHANGE="image-$case" MQ_QUEUE="image-$case-$role"
    urls+=(--url "$role=http://127.0.0.1:$port")
    ports+=("$role:$port")
  done
  for role in "${ports[@]}"; do wait_ready "${role#*:}" "$logs/${role%%:*}.log"; done
  step "$case: five roles ready as uid $image_user; walking a meeting"
  AUTH_JWT_SECRET="$secret" MQ_EXCHANGE="image-$case" target/debug/app walk "${urls[@]}" >"$logs/walk.log" 2>&1 ||
    { cat "$logs/walk.log" >&2; stop_roles; die "$case: the walk failed (logs: $logs)"; }
  grep -E 'is done|walk complete' "$logs/walk.log" | sed "s/^/  $case: /" >&2
  stop_roles
  ports=()
}

run() {
  have_image "$image" || die "no image $image: run scripts/image.sh build first"
  [ -n "${AMQP_URL:-}" ] || exec scripts/broker.sh run "$0" run
  cargo build --quiet --bin app # the walker, run from outside the image
  local user workdir
  mapfile -t image_env < <(podman image inspect --format '{{range .Config.Env}}{{println .}}{{end}}' "$image" | sed '/^$/d')
  mapfile -t image_entrypoint < <(podman image inspect --format '{{range .Config.Entrypoint}}{{println .}}{{end}}' "$image" | sed '/^$/d')
  image_user=$(podman image inspect --format '{{.Config.User}}' "$image")
  image_workdir=$(podman image inspect --format '{{.Config.WorkingDir}}' "$image")
  [ "${image_user%%:*}" = 65532 ] || die "the image runs as '$image_user', not 65532"
  pids=()
  ports=()
  local root=$rootfs volume="$work/volume" cid
  trap 'stop_roles; umount "$rootfs/data" 2>/dev/null || true' EXIT
  rm -rf "$root" "$volume" "$work/logs"
  mkdir -p "$root"
  cid=$(podman create "$image")
  podman export "$cid" | tar -C "$root" -x
  podman rm "$cid" >/dev/null
  step "image $image: user $image_user, workdir $image_workdir, entrypoint ${image_entrypoint[*]}, env ${image_env[*]}"

  walk_through no-volume "$root" "$work/logs/no-volume"
  find "$root/data" -name '*.db' | sort | sed "s|^$root|  store in the image's file system: |" >&2
  [ -n "$(find "$root/data" -name '*.db')" ] || die "no-volume: no store was written under /data"

  # A volume on /data, owned by the image's user as a fsGroup or a chown would make it.
  mkdir -p "$volume"
  chown "${image_user%%:*}:${image_user#*:}" "$volume"
  rm -rf "${root:?}/data"/*
  mount --bind "$volume" "$root/data"
  walk_through volume "$root" "$work/logs/volume"
  umount "$root/data"
  find "$volume" -name '*.db' | sort | sed "s|^$volume|  store on the volume: /data|" >&2
  [ -n "$(find "$volume" -name '*.db')" ] || die "volume: no store was written to the volume"
  [ -z "$(find "$root/data" -mindepth 1)" ] || die "volume: the image's own /data was written to"
  step "the image ran with no volume and with one; both walks reached their result"
}

mkdir -p "$work"
case "${1:-}" in
  install) install_tools ;;
  bases) bases ;;
  build) build ;;
  run) run ;;
  all) build; run ;;
  *) die "usage: $0 install | bases | build | run | all" ;;
esac
