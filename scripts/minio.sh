#!/usr/bin/env bash
# A real S3-compatible object store on this machine for the backup tests
# (WAL archiving to object storage): MinIO, built from its upstream Go
# module (e2e/minio/go.mod pins the version), one server on one data
# directory, with a bucket for the tests. Run as root.
#
#   scripts/minio.sh up           build if needed, start the server unless it
#                                 runs, wait until it answers, create the bucket
#   scripts/minio.sh down         stop the server (by PID); its data is kept
#   scripts/minio.sh down --purge stop it and remove its data and credentials
#   scripts/minio.sh env          the endpoint, credentials and bucket:
#                                 eval "$(scripts/minio.sh env)"
#   scripts/minio.sh build        only build the binary
#
# The server listens on the node's address (198.18.255.1, which
# scripts/cluster.sh puts on a bridge), so pods reach it; without the
# cluster, set ORDINAL_MINIO_ADDRESS=127.0.0.1:9000. (MinIO listens on
# 127.0.0.1 and ::1 at the same port as well, whatever the address.) The
# root credentials are generated once and kept with the data.
#
# Environment:
#   ORDINAL_CACHE_DIR      built binaries, kept across runs [~/.cache/ordinal]
#   ORDINAL_MINIO_ADDRESS  HOST:PORT the S3 API listens on [198.18.255.1:9000]
#   ORDINAL_MINIO_DIR      data, credentials, log and PID file
#                          [/var/lib/ordinal-minio]
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/lib/common.sh
. "$REPO/scripts/lib/common.sh"

SRC=$REPO/e2e/minio
STATE=${ORDINAL_MINIO_DIR:-/var/lib/ordinal-minio}
DATA=$STATE/data
LOG=$STATE/minio.log
PID_FILE=$STATE/minio.pid
# The address the running server was started on, for `env`.
ADDRESS_FILE=$STATE/address
CREDENTIALS=$STATE/credentials
ADDRESS=${ORDINAL_MINIO_ADDRESS:-198.18.255.1:9000}
BUCKET=ordinal-backups
ACCESS_KEY=ordinal

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'minio.sh: %s\n' "$*" >&2; exit 1; }

# --- build -----------------------------------------------------------------

cmd_build() {
  command -v go >/dev/null || die "the Go toolchain is needed (go 1.24 or newer on PATH)"
  local stamp
  stamp=$(content_hash "$SRC/go.mod" "$SRC/go.sum" "$SRC"/*.go "$0" "$(go version)")
  if [ -x "$BIN/minio" ] && [ "$(cat "$BIN/.minio-stamp" 2>/dev/null)" = "$stamp" ]; then
    return 0
  fi
  mkdir -p "$BIN"
  cd "$SRC"
  # What MinIO's Makefile stamps into its binaries (buildscripts/
  # gen-ldflags.go), from the pinned pseudo-version: its commit's time and
  # short hash, so that `minio --version` names the source.
  local version commit_time release commit ldflags
  version=$(go list -m -f '{{.Version}}' github.com/minio/minio)
  commit_time=$(go list -m -f '{{.Time.UTC.Format "2006-01-02T15:04:05Z"}}' github.com/minio/minio)
  release=DEVELOPMENT.${commit_time//:/-}
  commit=${version##*-}
  ldflags="-s -w"
  for var in Version="$commit_time" ReleaseTag="$release" CommitID="$commit" \
    ShortCommitID="$commit" CopyrightYear="${commit_time%%-*}"; do
    ldflags+=" -X github.com/minio/minio/cmd.$var"
  done
  log "building MinIO $version (a cold build takes several minutes on 2 cores)"
  local start=$SECONDS
  # As MinIO's Makefile builds it: no cgo, the kqueue tag (BSD only).
  CGO_ENABLED=0 go build -mod=readonly -trimpath -tags kqueue -ldflags "$ldflags" -o "$BIN/minio.new" .
  mv "$BIN/minio.new" "$BIN/minio"
  echo "$stamp" >"$BIN/.minio-stamp"
  log "built in $((SECONDS - start))s: $BIN/minio"
}

# --- the process -----------------------------------------------------------

proc_start_time() {
  # Field 22 of /proc/PID/stat, after the command name (which may hold spaces).
  sed -E 's/^.*\) //' "/proc/$1/stat" 2>/dev/null | awk '{print $20}'
}

# The server's PID, if the one `up` started still runs (its start time is
# kept with the PID, so that a reused PID is never taken for it).
server_pid() {
  local pid start
  [ -f "$PID_FILE" ] || return 1
  read -r pid start <"$PID_FILE" || return 1
  [ -n "$pid" ] && [ -r "/proc/$pid/stat" ] || return 1
  [ "$(proc_start_time "$pid")" = "$start" ] || return 1
  echo "$pid"
}

secret_key() { sed -n 2p "$CREDENTIALS"; }

live() {
  [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://$1/minio/health/live")" = 200 ]
}

# s3 METHOD ADDRESS PATH [curl arguments]: a request signed with the root
# credentials (AWS Signature Version 4); prints the body, then the status.
s3() {
  local method=$1 address=$2 path=$3
  shift 3
  curl -s --max-time 10 -X "$method" -w '\n%{http_code}' \
    --aws-sigv4 "aws:amz:us-east-1:s3" --user "$ACCESS_KEY:$(secret_key)" \
    "$@" "http://$address$path"
}

create_bucket() {
  local out status
  out=$(s3 PUT "$1" "/$BUCKET")
  status=${out##*$'\n'}
  case $status in
    200) log "bucket $BUCKET created" ;;
    409) grep -q BucketAlreadyOwnedByYou <<<"$out" || die "creating bucket $BUCKET: $out" ;;
    *) die "creating bucket $BUCKET: HTTP $status: ${out%$'\n'*}" ;;
  esac
}

print_env() {
  echo "export ORDINAL_MINIO_ENDPOINT=http://$1 ORDINAL_MINIO_ACCESS_KEY=$ACCESS_KEY" \
    "ORDINAL_MINIO_SECRET_KEY=$(secret_key) ORDINAL_MINIO_BUCKET=$BUCKET"
}

# --- commands --------------------------------------------------------------

cmd_up() {
  local pid
  if pid=$(server_pid); then
    local running
    running=$(cat "$ADDRESS_FILE")
    if [ -n "${ORDINAL_MINIO_ADDRESS:-}" ] && [ "$ORDINAL_MINIO_ADDRESS" != "$running" ]; then
      die "MinIO already runs on $running (pid $pid), not $ORDINAL_MINIO_ADDRESS: scripts/minio.sh down first"
    fi
    create_bucket "$running"
    log "MinIO already up on http://$running (pid $pid); to use it: eval \"\$(scripts/minio.sh env)\""
    return 0
  fi
  local host=${ADDRESS%:*} port=${ADDRESS##*:}
  [ -n "$host" ] && [ "$port" -gt 0 ] 2>/dev/null || die "ORDINAL_MINIO_ADDRESS=$ADDRESS: not HOST:PORT"
  case $host in
    127.0.0.1 | 0.0.0.0) ;;
    *)
      # Not `ip | grep -q`: grep stops at the first match, ip dies of
      # SIGPIPE, and pipefail takes the pipeline for a failure.
      [[ "$(ip -o addr show)" == *" $host/"* ]] ||
        die "no interface has $host: start the cluster (scripts/cluster.sh up), or set ORDINAL_MINIO_ADDRESS=127.0.0.1:9000"
      ;;
  esac
  # Another server there would answer the health check in its place.
  if (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; then
    die "something already listens on $ADDRESS (not the server \`up\` started from $STATE)"
  fi
  command -v curl >/dev/null || apt_install curl
  cmd_build
  mkdir -p "$DATA" 2>/dev/null || die "cannot create $DATA: run as root, or set ORDINAL_MINIO_DIR"
  chmod 700 "$STATE"
  if [ ! -s "$CREDENTIALS" ]; then
    # 32 hexadecimal characters; written before the server first starts,
    # since its data is then tied to them.
    (
      umask 077
      printf '%s\n%s\n' "$ACCESS_KEY" "$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')" >"$CREDENTIALS"
    )
  fi
  log "starting MinIO on http://$ADDRESS (data in $DATA, log in $LOG)"
  # --quiet: no startup banner, which would print the root password into
  # the log; warnings and errors are still logged.
  # MINIO_BROWSER=off: no web console (its address is set all the same, so
  # that it never takes a port at random). MINIO_API_REQUESTS_MAX and
  # MINIO_MEMLIMIT (the Go memory limit) keep its buffers small; by default
  # both are sized from the machine's memory. MINIO_UPDATE=off: no update
  # checks, nothing outside the machine is reachable anyway.
  # setsid: a Ctrl-C in the shell that ran `up` does not reach the server.
  MINIO_ROOT_USER=$ACCESS_KEY MINIO_ROOT_PASSWORD=$(secret_key) \
    MINIO_BROWSER=off MINIO_UPDATE=off MINIO_API_REQUESTS_MAX=64 MINIO_MEMLIMIT=512MiB \
    setsid "$BIN/minio" server "$DATA" --address "$ADDRESS" --console-address "$host:$((port + 1))" --quiet \
    >>"$LOG" 2>&1 </dev/null &
  pid=$!
  printf '%s %s\n' "$pid" "$(proc_start_time "$pid")" >"$PID_FILE"
  echo "$ADDRESS" >"$ADDRESS_FILE"
  local deadline=$((SECONDS + 60))
  until live "$ADDRESS"; do
    local why=
    if ! server_pid >/dev/null; then
      why="MinIO exited"
    elif [ $SECONDS -ge "$deadline" ]; then
      why="MinIO did not answer on http://$ADDRESS/minio/health/live within 60s"
    fi
    if [ -n "$why" ]; then
      log "$why; the end of $LOG:"
      tail -n 40 "$LOG" >&2
      cmd_down
      die "MinIO is not up"
    fi
    sleep 0.5
  done
  create_bucket "$ADDRESS"
  log "MinIO up on http://$ADDRESS (pid $pid); to use it: eval \"\$(scripts/minio.sh env)\""
}

cmd_down() {
  local pid
  if pid=$(server_pid); then
    log "stopping MinIO (pid $pid)"
    stop_pid "$pid"
  fi
  rm -f "$PID_FILE" "$ADDRESS_FILE"
  if [ "${1:-}" = --purge ]; then
    rm -rf "$STATE"
    log "MinIO down; its data removed"
  elif [ -d "$DATA" ]; then
    log "MinIO down; its data kept in $DATA (down --purge removes it)"
  else
    log "MinIO down"
  fi
}

cmd_env() {
  server_pid >/dev/null || die "MinIO is not running: scripts/minio.sh up"
  print_env "$(cat "$ADDRESS_FILE")"
}

case "${1:-}" in
  up) cmd_up ;;
  down)
    case "${2:-}" in "" | --purge) ;; *) die "down: unknown option $2" ;; esac
    cmd_down "${2:-}"
    ;;
  env) cmd_env ;;
  build) cmd_build ;;
  *)
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
