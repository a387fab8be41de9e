#!/usr/bin/env bash
# Runs the whole test suite. On a fresh Debian machine it first installs what
# the tests need (PostgreSQL's server binaries); the tests start their own
# servers as the `postgres` user on 127.0.0.1, in temporary directories.
#
#   scripts/test.sh            # format check, clippy, every test
#   scripts/test.sh -- NAME    # only tests matching NAME (passed to cargo test)
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_updated=false
apt_install() {
  if [ "$apt_updated" = false ]; then
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
    apt_updated=true
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
}

# PostgreSQL server binaries (initdb, postgres, pg_basebackup, pg_rewind).
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  echo "==> installing PostgreSQL"
  apt_install postgresql
fi
id postgres >/dev/null 2>&1 || { echo "the postgresql package did not create the postgres user" >&2; exit 1; }

# Prometheus and promtool: the alert rules are checked and unit-tested with
# promtool, and the dashboard's queries run against a real Prometheus.
if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
  echo "==> installing Prometheus"
  apt_install prometheus
fi

echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo "==> cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "==> cargo build (ordinal-init, which the end-to-end tests run)"
cargo build -p ordinal-init --locked

echo "==> cargo test"
if [ "${1:-}" = "--" ]; then shift; fi
cargo test --workspace --locked -- "$@"
