#!/usr/bin/env bash
# Runs the whole test suite, as CI does (.ci/run calls this script). On a new
# Debian machine it first installs what the tests need; it then checks the
# format and lints, runs every test of the workspace (real PostgreSQL
# servers, started by the tests as the `postgres` user on 127.0.0.1), and
# finally the real-cluster suite: it starts the local Kubernetes cluster
# (scripts/cluster.sh), builds and imports the images, installs Ordinal
# the way users do (`kubectl apply -k deploy/`), runs e2e/tests/cluster.rs
# against it, and stops the cluster again, also on failure. Run as root
# (the cluster needs it).
#
#   scripts/test.sh            # format check, clippy, every test, the real-cluster suite
#   scripts/test.sh -- NAME    # only tests matching NAME (passed to every cargo test)
#
# A cluster that was already up (scripts/cluster.sh up) is used and left
# running; otherwise the one started here is stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
# shellcheck source=scripts/lib/common.sh
. "$REPO/scripts/lib/common.sh"

[ "$(id -u)" -eq 0 ] || {
  echo "scripts/test.sh starts a Kubernetes cluster (network namespaces, mounts, cgroups): run it as root" >&2
  exit 1
}

started=$SECONDS
step() { printf '==> [%4ss] %s\n' "$((SECONDS - started))" "$*"; }

# The disk is shared with the build: when it fills, the kubelet's eviction
# deletes the imported images (there is no registry to pull them back
# from) and every pod fails to start. Say so at once rather than later.
free_gb=$(df -Pk "$REPO" | awk 'NR == 2 { print int($4 / 1048576) }')
step "${free_gb} GB free on $(df -P "$REPO" | awk 'NR == 2 { print $6 }')"
if [ "${free_gb:-0}" -lt 20 ]; then
  echo "warning: only ${free_gb} GB free on $(df -P "$REPO" | awk 'NR == 2 { print $6 }'); the build and the cluster need about 20 (cargo clean frees target/)" >&2
fi

# A clean checkout builds once: cargo's incremental state would only take
# disk (several GB across the test binaries) that nothing reads again.
if [ "${CI:-}" = true ]; then
  export CARGO_INCREMENTAL=0
fi

filter=()
if [ "${1:-}" = "--" ]; then shift; fi
filter=("$@")

# PostgreSQL server binaries (initdb, postgres, pg_basebackup, pg_rewind).
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  step "installing PostgreSQL"
  apt_install postgresql
fi
id postgres >/dev/null 2>&1 || { echo "the postgresql package did not create the postgres user" >&2; exit 1; }

# Prometheus and promtool: the alert rules are checked and unit-tested with
# promtool, and the dashboard's queries run against a real Prometheus.
if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
  step "installing Prometheus"
  apt_install prometheus
fi

# The cluster's binaries and the PostgreSQL image take minutes and hardly
# any of cargo's time: they build beside the checks and tests below.
mkdir -p "$CACHE_DIR"
prepare_log=$CACHE_DIR/test-prepare.log
step "building the cluster and the PostgreSQL image in the background (log: $prepare_log)"
# In a session of its own, so that stopping it stops everything it started.
setsid bash -c 'nice -n 10 scripts/cluster.sh build && nice -n 10 scripts/images.sh build pause postgres pgbouncer' \
  >"$prepare_log" 2>&1 </dev/null &
prepare_pid=$!
# MinIO, the S3-compatible server of the backup tests (built from its Go
# module, e2e/minio): needed by `cargo test` (init-container/tests/archive.rs).
command -v curl >/dev/null 2>&1 || apt_install curl
minio_log=$CACHE_DIR/test-minio.log
setsid bash -c 'nice -n 10 scripts/minio.sh build' >"$minio_log" 2>&1 </dev/null &
minio_pid=$!
# Azurite, the Azure Blob Storage emulator of the same tests (npm).
emulators_log=$CACHE_DIR/test-emulators.log
setsid bash -c 'nice -n 10 scripts/emulators.sh build' >"$emulators_log" 2>&1 </dev/null &
emulators_pid=$!

cluster_started=false
minio_started=false
on_exit() {
  local rc=$?
  for pid in "$prepare_pid" "$minio_pid" "$emulators_pid"; do
    if kill -0 "$pid" 2>/dev/null; then
      kill -- "-$pid" 2>/dev/null || true
      wait "$pid" 2>/dev/null || true
    fi
  done
  if [ "$rc" -ne 0 ] && [ -f "$CACHE_DIR/cluster-suite.started" ]; then
    echo "==> the end of the cluster's logs (scripts/cluster.sh logs)"
    scripts/cluster.sh logs || true
    echo "==> the operator's log (last 300 lines)"
    "$BIN/kubectl" --kubeconfig "$KUBECONFIG" -n ordinal-system logs -l app.kubernetes.io/name=ordinal-operator --prefix --tail 300 2>&1 || true
  fi
  rm -f "$CACHE_DIR/cluster-suite.started"
  if [ "$minio_started" = true ]; then
    scripts/minio.sh down --purge || true
  fi
  if [ "$cluster_started" = true ]; then
    step "stopping the cluster"
    scripts/cluster.sh down || true
  fi
  step "done (exit $rc)"
  exit "$rc"
}
trap on_exit EXIT

if cargo fmt --version >/dev/null 2>&1; then
  step "cargo fmt --check"
  cargo fmt --all -- --check
else
  step "rustfmt is not installed: the format check is skipped (rustup component add rustfmt)"
fi

if cargo clippy --version >/dev/null 2>&1; then
  step "cargo clippy"
  cargo clippy --workspace --all-targets --all-features --locked -- -D warnings
else
  step "clippy is not installed: the lints are skipped (rustup component add clippy)"
fi

step "cargo build (ordinal-init, which the end-to-end tests run)"
cargo build -p ordinal-init --locked

step "waiting for MinIO's build"
if ! wait "$minio_pid"; then
  tail -50 "$minio_log" >&2
  echo "building MinIO failed (log: $minio_log)" >&2
  exit 1
fi

step "waiting for Azurite's install"
if ! wait "$emulators_pid"; then
  tail -50 "$emulators_log" >&2
  echo "installing Azurite failed (log: $emulators_log)" >&2
  exit 1
fi

step "cargo test"
cargo test --workspace --locked -- "${filter[@]}"

# --- the real-cluster suite -------------------------------------------------
step "waiting for the cluster's binaries and the PostgreSQL image"
if ! wait "$prepare_pid"; then
  tail -50 "$prepare_log" >&2
  echo "building the cluster or the images failed (log: $prepare_log)" >&2
  exit 1
fi

if scripts/cluster.sh status >/dev/null 2>&1; then
  step "using the running cluster"
else
  step "scripts/cluster.sh up"
  cluster_started=true
  scripts/cluster.sh up >/dev/null
fi
eval "$(scripts/cluster.sh env)"
touch "$CACHE_DIR/cluster-suite.started"

step "images (the Ordinal image from a release build)"
scripts/images.sh import

step "kubectl apply -k deploy/"
kubectl=("$BIN/kubectl")
"${kubectl[@]}" apply --server-side --force-conflicts -k deploy/ >/dev/null
# The image was imported again under the same tag: restart onto it.
"${kubectl[@]}" -n ordinal-system rollout restart deployment/ordinal-operator >/dev/null
"${kubectl[@]}" -n ordinal-system rollout status deployment/ordinal-operator --timeout=180s

step "MinIO on the node's address, for the backup scenarios"
minio_started=true
scripts/minio.sh up >/dev/null
eval "$(scripts/minio.sh env)"

step "the real-cluster suite (e2e/tests/cluster.rs, failover.rs, backup.rs, day2.rs; kubectl-ordinal/tests/plugin.rs)"
export ORDINAL_E2E_OPERATOR=external \
  ORDINAL_E2E_POSTGRES_IMAGE=$POSTGRES_IMAGE \
  ORDINAL_E2E_IMAGE=$ORDINAL_IMAGE \
  ORDINAL_E2E_CONTAINERD_STATE=/run/ordinal-cluster/containerd
cargo test -p ordinal-e2e --features cluster --test cluster --test failover --test backup --test day2 --locked -- --test-threads=1 --nocapture "${filter[@]}"
cargo test -p kubectl-ordinal --features cluster --test plugin --locked -- --test-threads=1 --nocapture "${filter[@]}"
