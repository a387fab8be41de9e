# shellcheck shell=bash disable=SC2034
# Shared by the scripts: where things are built and kept, and how packages
# are installed. Sourced, never run.

# Built binaries, images and downloaded packages, kept across runs (and
# across clean checkouts) on the same machine.
CACHE_DIR=${ORDINAL_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ordinal}
BIN=$CACHE_DIR/bin
IMAGES_DIR=$CACHE_DIR/images

# Images the local cluster runs, imported without a registry. The Ordinal
# image carries the name deploy/ uses, so `kubectl apply -k deploy/` runs
# the local build; the PostgreSQL image has a local name of its own, since
# it is built from Debian's packages, not the official image.
ORDINAL_VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' "$REPO/Cargo.toml" | head -1)
ORDINAL_IMAGE=ghcr.io/ordinal-dev/ordinal:$ORDINAL_VERSION
POSTGRES_MAJOR=17
POSTGRES_IMAGE=ordinal.local/postgres:$POSTGRES_MAJOR
# The postgres image plus Debian's patroni, for the failover benchmark
# (e2e/patroni/); built only when named (scripts/images.sh import patroni).
PATRONI_IMAGE=ordinal.local/patroni:$POSTGRES_MAJOR
PAUSE_IMAGE=ordinal.local/pause:3.10
# The operator's default pooler image (DEFAULT_POOLER_IMAGE), built here
# from Debian's package as deploy/pgbouncer.Dockerfile builds it.
PGBOUNCER_IMAGE=ghcr.io/ordinal-dev/pgbouncer:1.24
PROVISIONER=ordinal.dev/local-path

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

_apt_updated=false
apt_install() {
  if [ "$_apt_updated" = false ]; then
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
    _apt_updated=true
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
}

# A hash of files' contents (and of extra words), to know when a cached
# build is stale.
content_hash() {
  { for f in "$@"; do if [ -f "$f" ]; then sha256sum <"$f"; else echo "$f"; fi; done; } |
    sha256sum | cut -c1-16
}

# stop_pid PID: SIGTERM, up to 10 s to exit, then SIGKILL.
stop_pid() {
  local pid=$1
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  sleep 0.2
}
