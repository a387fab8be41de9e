#!/usr/bin/env bash
# Container images for the local cluster, without a registry or a Docker
# engine: root filesystems from Debian's packages, written as image
# archives into the cache and imported into the cluster's containerd.
#
#   scripts/images.sh build  [IMAGE...]   build the archives (when stale)
#   scripts/images.sh import [IMAGE...]   build, then import into the running cluster
#
# Images (all by default):
#   pause     the sandbox image: e2e/kube/pause, a static binary
#   postgres  PostgreSQL $POSTGRES_MAJOR from Debian's packages, laid out like the
#             official `postgres` image: user postgres (uid/gid 999), the server
#             binaries on PATH, PGDATA, stop signal SIGINT, bash
#   ordinal   the release binaries of this workspace (ordinal-operator and
#             ordinal-init) on a small glibc base, user 65532, like
#             deploy/Dockerfile's distroless image
#
# Real clusters use the official images (postgres:17, and the Ordinal image
# that deploy/Dockerfile builds); these stand in for them where no registry
# can be reached.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/lib/common.sh
. "$REPO/scripts/lib/common.sh"

CONTAINERD_SOCK=/run/ordinal-cluster/containerd/containerd.sock
ALL_IMAGES=(pause postgres ordinal)
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

build_postgres() {
  local key
  key=$(content_hash "$0" "$POSTGRES_IMAGE" "$POSTGRES_SUITE")
  fresh postgres "$key" && return 0
  command -v debootstrap >/dev/null || apt_install debootstrap
  local root mirror
  mirror=$(debian_mirror)
  root=$(mktemp -d "$IMAGES_DIR/.postgres.XXXXXX")
  mkdir -p "$CACHE_DIR/debs/$POSTGRES_SUITE"
  log "image $POSTGRES_IMAGE: Debian $POSTGRES_SUITE with postgresql-$POSTGRES_MAJOR (about a minute)"
  debootstrap --variant=minbase --cache-dir="$CACHE_DIR/debs/$POSTGRES_SUITE" \
    "$POSTGRES_SUITE" "$root" "$mirror" >"$IMAGES_DIR/postgres.debootstrap.log" 2>&1 ||
    { tail -20 "$IMAGES_DIR/postgres.debootstrap.log" >&2; die "debootstrap failed"; }
  # As the official image does: the user first, so that it gets uid 999,
  # and no cluster created by the package (PGDATA starts empty).
  chroot "$root" groupadd -r -g 999 postgres
  chroot "$root" useradd -r -g postgres -u 999 --home-dir=/var/lib/postgresql --shell=/bin/bash postgres
  mkdir -p "$root/var/lib/postgresql"
  chroot "$root" chown postgres:postgres /var/lib/postgresql
  chroot "$root" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql-common \
    >>"$IMAGES_DIR/postgres.debootstrap.log" 2>&1 || die "installing postgresql-common failed"
  sed -ri 's/#(create_main_cluster) .*$/\1 = false/' "$root/etc/postgresql-common/createcluster.conf"
  chroot "$root" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    "postgresql-$POSTGRES_MAJOR" >>"$IMAGES_DIR/postgres.debootstrap.log" 2>&1 ||
    die "installing postgresql-$POSTGRES_MAJOR failed"
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
  local bin=/usr/lib/postgresql/$POSTGRES_MAJOR/bin
  [ -x "$root$bin/postgres" ] || die "no $bin/postgres in the image"
  write_archive "$POSTGRES_IMAGE" "$root" \
    "{\"Env\":[\"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$bin\",\"PG_MAJOR=$POSTGRES_MAJOR\",\"PGDATA=/var/lib/postgresql/data\",\"LANG=C.UTF-8\"],\"Cmd\":[\"postgres\"],\"StopSignal\":\"SIGINT\",\"Volumes\":{\"/var/lib/postgresql/data\":{}}}" \
    "$IMAGES_DIR/postgres.tar"
  rm -rf "$root"
  echo "$key" >"$IMAGES_DIR/postgres.key"
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
  case " ${ALL_IMAGES[*]} " in *" $name "*) ;; *) die "no image $name (images: ${ALL_IMAGES[*]})" ;; esac
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
