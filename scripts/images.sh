#!/usr/bin/env bash
# Container images for the local cluster, without a registry or a Docker
# engine: root filesystems from Debian's packages, written as image
# archives into the cache and imported into the cluster's containerd.
#
#   scripts/images.sh build  [IMAGE...]   build the archives (when stale)
#   scripts/images.sh import [IMAGE...]   build, then import into the running cluster
#
# Images (all but patroni by default):
#   pause     the sandbox image: e2e/kube/pause, a static binary
#   postgres  PostgreSQL $POSTGRES_MAJOR from Debian's packages, laid out like the
#             official `postgres` image: user postgres (uid/gid 999), the server
#             binaries on PATH, PGDATA, stop signal SIGINT, bash
#   pgbouncer PgBouncer from Debian's package, run as uid 999, for the pooler
#             (spec.pooler); the operator's default pooler image, as
#             deploy/pgbouncer.Dockerfile builds it
#   ordinal   the release binaries of this workspace (ordinal-operator and
#             ordinal-init) on a small glibc base, user 65532, like
#             deploy/Dockerfile's distroless image
#   patroni   only when named: the postgres image plus Debian's patroni, run as
#             uid 999 by e2e/patroni/entrypoint.sh, for the failover benchmark
#             beside Patroni (e2e/patroni/patroni.yaml, e2e/benches/patroni.rs)
#
# Real clusters use the official images (postgres:17, and the Ordinal image
# that deploy/Dockerfile builds); these stand in for them where no registry
# can be reached.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/lib/common.sh
. "$REPO/scripts/lib/common.sh"

CONTAINERD_SOCK=/run/ordinal-cluster/containerd/containerd.sock
ALL_IMAGES=(pause postgres pgbouncer ordinal)
# Built only when named: not part of the default set (nor of CI's).
EXTRA_IMAGES=(patroni)
# The Debian release the PostgreSQL image is built from: the one whose
# postgresql package is $POSTGRES_MAJOR, as the official image is.
POSTGRES_SUITE=trixie

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'images.sh: %s\n' "$*" >&2; exit 1; }

# The Debian mirror this machine's apt uses.
debian_mirror() {
  local uri
  uri=$( (grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}'
    grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list | awk '{print $2}') |
    grep '/debian/\?$' | head -1)
  [ -n "$uri" ] || die "no Debian mirror in this machine's apt sources"
  echo "${uri%/}"
}

# write_archive REF ROOTFS CONFIG OUT: a Docker image archive (one layer)
# of ROOTFS, with CONFIG (the image config's "config" object, JSON).
write_archive() {
  local ref=$1 rootfs=$2 config=$3 out=$4 tmp
  tmp=$(mktemp -d "$IMAGES_DIR/.archive.XXXXXX")
  chmod 0755 "$rootfs"
  tar --numeric-owner --xattrs --sort=name --mtime=@0 -C "$rootfs" -cf "$tmp/layer.tar" .
  local diff_id
  diff_id=$(sha256sum "$tmp/layer.tar" | cut -d' ' -f1)
  printf '{"architecture":"amd64","os":"linux","config":%s,"rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"history":[{"created_by":"scripts/images.sh"}]}' \
    "$config" "$diff_id" >"$tmp/config.json"
  local config_id
  config_id=$(sha256sum "$tmp/config.json" | cut -d' ' -f1)
  mv "$tmp/config.json" "$tmp/$config_id.json"
  printf '[{"Config":"%s.json","RepoTags":["%s"],"Layers":["layer.tar"]}]' "$config_id" "$ref" >"$tmp/manifest.json"
  tar -C "$tmp" -cf "$out.new" manifest.json "$config_id.json" layer.tar
  mv "$out.new" "$out"
  rm -rf "$tmp"
}

# Whether IMAGE's archive is up to date with KEY; else the caller builds it.
fresh() {
  [ -f "$IMAGES_DIR/$1.tar" ] && [ "$(cat "$IMAGES_DIR/$1.key" 2>/dev/null)" = "$2" ]
}

build_pause() {
  "$REPO/scripts/build-kube.sh"
  local key
  key=$(content_hash "$BIN/pause" "$0" "$PAUSE_IMAGE")
  fresh pause "$key" && return 0
  log "image $PAUSE_IMAGE"
  local root
  root=$(mktemp -d "$IMAGES_DIR/.pause.XXXXXX")
  install -D -m 0755 "$BIN/pause" "$root/pause"
  write_archive "$PAUSE_IMAGE" "$root" '{"User":"65535:65535","Entrypoint":["/pause"]}' "$IMAGES_DIR/pause.tar"
  rm -rf "$root"
  echo "$key" >"$IMAGES_DIR/pause.key"
}

# debian_postgres ROOT LOG: a Debian $POSTGRES_SUITE root filesystem at ROOT
# with postgresql-$POSTGRES_MAJOR, laid out like the official image: user
# postgres (uid/gid 999), no cluster created, an empty PGDATA, the socket
# directory. Images built on it install more packages with debian_install,
# then call debian_clean before writing the archive.
debian_postgres() {
  local root=$1 log=$2
  debian_base "$root" "$log"
  debian_install "$root" "$log" postgresql-common
  sed -ri 's/#(create_main_cluster) .*$/\1 = false/' "$root/etc/postgresql-common/createcluster.conf"
  debian_install "$root" "$log" "postgresql-$POSTGRES_MAJOR"
  [ -x "$root$(postgres_bin)/postgres" ] || die "no $(postgres_bin)/postgres in the image"
}

# debian_base ROOT LOG: a minimal Debian $POSTGRES_SUITE at ROOT, with the
# user postgres (uid/gid 999) made first, as the official image does.
debian_base() {
  local root=$1 log=$2 mirror
  command -v debootstrap >/dev/null || apt_install debootstrap
  mirror=$(debian_mirror)
  mkdir -p "$CACHE_DIR/debs/$POSTGRES_SUITE"
  debootstrap --variant=minbase --cache-dir="$CACHE_DIR/debs/$POSTGRES_SUITE" \
    "$POSTGRES_SUITE" "$root" "$mirror" >"$log" 2>&1 ||
    { tail -20 "$log" >&2; die "debootstrap failed"; }
  chroot "$root" groupadd -r -g 999 postgres
  chroot "$root" useradd -r -g postgres -u 999 --home-dir=/var/lib/postgresql --shell=/bin/bash postgres
  mkdir -p "$root/var/lib/postgresql"
  chroot "$root" chown postgres:postgres /var/lib/postgresql
}

# debian_install ROOT LOG PACKAGE...: Debian packages into ROOT, without
# their recommendations.
debian_install() {
  local root=$1 log=$2
  shift 2
  chroot "$root" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" \
    >>"$log" 2>&1 || { tail -20 "$log" >&2; die "installing $* failed"; }
}

# debian_clean ROOT: drops what a container does not need from ROOT, then
# makes the directories postgres runs in.
debian_clean() {
  local root=$1
  chroot "$root" apt-get clean
  # What a container does not need: package lists, docs, the runtime's mounts.
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/usr/share/doc/* \
    "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/var/log/* \
    "${root:?}"/dev/* "$root"/proc/* "$root"/sys/* "$root"/run/*
  # /var/run is /run: the socket directory is made after emptying it.
  mkdir -p "$root/run/postgresql" "$root/var/lib/postgresql/data"
  chroot "$root" chown postgres:postgres /run/postgresql /var/lib/postgresql/data
  chmod 3777 "$root/run/postgresql"
  chmod 1777 "$root/var/lib/postgresql/data"
}

# The server binaries' directory in the PostgreSQL images.
postgres_bin() { echo "/usr/lib/postgresql/$POSTGRES_MAJOR/bin"; }

# The environment of the PostgreSQL images (JSON strings, comma-separated).
postgres_env() {
  printf '"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:%s","PG_MAJOR=%s","PGDATA=/var/lib/postgresql/data","LANG=C.UTF-8"' \
    "$(postgres_bin)" "$POSTGRES_MAJOR"
}

build_postgres() {
  local key
  key=$(content_hash "$0" "$POSTGRES_IMAGE" "$POSTGRES_SUITE")
  fresh postgres "$key" && return 0
  local root
  root=$(mktemp -d "$IMAGES_DIR/.postgres.XXXXXX")
  log "image $POSTGRES_IMAGE: Debian $POSTGRES_SUITE with postgresql-$POSTGRES_MAJOR (about a minute)"
  debian_postgres "$root" "$IMAGES_DIR/postgres.debootstrap.log"
  debian_clean "$root"
  write_archive "$POSTGRES_IMAGE" "$root" \
    "{\"Env\":[$(postgres_env)],\"Cmd\":[\"postgres\"],\"StopSignal\":\"SIGINT\",\"Volumes\":{\"/var/lib/postgresql/data\":{}}}" \
    "$IMAGES_DIR/postgres.tar"
  rm -rf "$root"
  echo "$key" >"$IMAGES_DIR/postgres.key"
}

# The postgres image's root filesystem, plus Debian's patroni package and
# e2e/patroni/entrypoint.sh, which writes Patroni's configuration from the
# environment and execs patroni (PID 1 of the container; the postmaster is
# its child). Patroni's Kubernetes DCS needs no Python package beyond the
# package's own dependencies (it talks to the API server with urllib3).
build_patroni() {
  local entrypoint=$REPO/e2e/patroni/entrypoint.sh key
  key=$(content_hash "$0" "$entrypoint" "$PATRONI_IMAGE" "$POSTGRES_SUITE")
  fresh patroni "$key" && return 0
  local root log=$IMAGES_DIR/patroni.debootstrap.log
  root=$(mktemp -d "$IMAGES_DIR/.patroni.XXXXXX")
  log "image $PATRONI_IMAGE: Debian $POSTGRES_SUITE with postgresql-$POSTGRES_MAJOR and patroni (a minute or two)"
  debian_postgres "$root" "$log"
  debian_install "$root" "$log" patroni
  chroot "$root" patroni --version >>"$log" 2>&1 || die "patroni does not run in the image"
  sed -n 's/^patroni /Patroni /p' "$log" | tail -1 >&2
  debian_clean "$root"
  install -D -m 0755 "$entrypoint" "$root/usr/local/bin/patroni-entrypoint"
  # The configuration is written at start to the postgres user's home.
  write_archive "$PATRONI_IMAGE" "$root" \
    "{\"User\":\"999:999\",\"Env\":[$(postgres_env),\"HOME=/var/lib/postgresql\"],\"WorkingDir\":\"/var/lib/postgresql\",\"Entrypoint\":[\"/usr/local/bin/patroni-entrypoint\"],\"ExposedPorts\":{\"5432/tcp\":{},\"8008/tcp\":{}},\"Volumes\":{\"/var/lib/postgresql/data\":{}}}" \
    "$IMAGES_DIR/patroni.tar"
  rm -rf "$root"
  echo "$key" >"$IMAGES_DIR/patroni.key"
}

build_pgbouncer() {
  local key
  key=$(content_hash "$0" "$PGBOUNCER_IMAGE")
  fresh pgbouncer "$key" && return 0
  local root
  root=$(mktemp -d "$IMAGES_DIR/.pgbouncer.XXXXXX")
  log "image $PGBOUNCER_IMAGE: Debian $POSTGRES_SUITE with pgbouncer (about a minute)"
  debian_base "$root" "$IMAGES_DIR/pgbouncer.debootstrap.log"
  debian_install "$root" "$IMAGES_DIR/pgbouncer.debootstrap.log" pgbouncer
  [ -x "$root/usr/sbin/pgbouncer" ] || die "no /usr/sbin/pgbouncer in the image"
  debian_clean "$root"
  write_archive "$PGBOUNCER_IMAGE" "$root" \
    '{"User":"999:999","Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Entrypoint":["pgbouncer"],"ExposedPorts":{"5432/tcp":{}}}' \
    "$IMAGES_DIR/pgbouncer.tar"
  rm -rf "$root"
  echo "$key" >"$IMAGES_DIR/pgbouncer.key"
}

build_ordinal() {
  log "cargo build --release (ordinal-operator, ordinal-init)"
  (cd "$REPO" && cargo build --release --locked -p ordinal-operator -p ordinal-init)
  local target=${CARGO_TARGET_DIR:-$REPO/target}/release key
  key=$(content_hash "$target/ordinal-operator" "$target/ordinal-init" "$0" "$ORDINAL_IMAGE")
  fresh ordinal "$key" && return 0
  log "image $ORDINAL_IMAGE"
  local root
  root=$(mktemp -d "$IMAGES_DIR/.ordinal.XXXXXX")
  # The C runtime the binaries were linked against, from this machine's
  # Debian packages, and its CA bundle: a distroless-like base.
  local pkg file dir link
  for pkg in libc6 libgcc-s1; do
    dpkg -L "$pkg" | while read -r file; do
      case "$file" in
        /usr/share/* | */gconv/*) continue ;;
      esac
      [ -d "$file" ] && continue
      [ -f "$file" ] || [ -L "$file" ] || continue
      # Under merged /usr, /lib/x86_64-linux-gnu/libc.so.6 lives in /usr/lib/….
      dir=$(realpath "$(dirname "$file")")
      mkdir -p "$root$dir"
      cp -a "$file" "$root$dir/"
    done
  done
  for link in lib lib64 bin sbin; do
    if [ -L "/$link" ]; then
      mkdir -p "$root/usr/$link"
      ln -sfn "$(readlink "/$link")" "$root/$link"
    fi
  done
  install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
  mkdir -p "$root/tmp" "$root/home/nonroot" "$root/etc"
  chmod 1777 "$root/tmp"
  chown 65532:65532 "$root/home/nonroot"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$root/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' >"$root/etc/group"
  install -D -m 0755 "$target/ordinal-operator" "$root/usr/local/bin/ordinal-operator"
  install -D -m 0755 "$target/ordinal-init" "$root/usr/local/bin/ordinal-init"
  write_archive "$ORDINAL_IMAGE" "$root" \
    '{"User":"65532:65532","Env":["PATH=/usr/local/bin:/usr/bin:/bin","SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"],"Entrypoint":["/usr/local/bin/ordinal-operator"],"Cmd":["run"]}' \
    "$IMAGES_DIR/ordinal.tar"
  rm -rf "$root"
  echo "$key" >"$IMAGES_DIR/ordinal.key"
}

import_image() {
  local name=$1
  [ -S "$CONTAINERD_SOCK" ] || die "the cluster's containerd is not running: scripts/cluster.sh up"
  local ref
  case "$name" in
    pause) ref=$PAUSE_IMAGE ;;
    postgres) ref=$POSTGRES_IMAGE ;;
    ordinal) ref=$ORDINAL_IMAGE ;;
    pgbouncer) ref=$PGBOUNCER_IMAGE ;;
    patroni) ref=$PATRONI_IMAGE ;;
  esac
  local key
  key=$(cat "$IMAGES_DIR/$name.key")
  # Skip an archive this containerd already has (by its build key).
  if [ "$(ctr --address "$CONTAINERD_SOCK" -n k8s.io images ls -q "name==$ref" 2>/dev/null)" = "$ref" ] &&
    [ "$(cat "/run/ordinal-cluster/$name.image" 2>/dev/null)" = "$key" ]; then
    return 0
  fi
  log "importing $ref"
  ctr --address "$CONTAINERD_SOCK" -n k8s.io images import "$IMAGES_DIR/$name.tar" >/dev/null
  echo "$key" >"/run/ordinal-cluster/$name.image"
}

cmd=${1:-}
shift || true
images=("$@")
[ ${#images[@]} -gt 0 ] || images=("${ALL_IMAGES[@]}")
for name in "${images[@]}"; do
  case " ${ALL_IMAGES[*]} ${EXTRA_IMAGES[*]} " in
    *" $name "*) ;;
    *) die "no image $name (images: ${ALL_IMAGES[*]} ${EXTRA_IMAGES[*]})" ;;
  esac
done
mkdir -p "$IMAGES_DIR"
case "$cmd" in
  build | import)
    for name in "${images[@]}"; do
      "build_$name"
      if [ "$cmd" = import ]; then import_image "$name"; fi
    done
    ;;
  *)
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
