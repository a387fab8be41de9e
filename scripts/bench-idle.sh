#!/usr/bin/env bash
# The operator's idle cost on the local cluster (e2e/benches/idle.rs):
# starts the cluster if needed, builds and imports the images, installs
# Ordinal as users do, creates ORDINAL_BENCH_CLUSTERS clusters of
# ORDINAL_BENCH_INSTANCES instances, measures the leader's CPU and memory
# and prints its table. Stops the cluster again if it started it.
#
#   scripts/bench-idle.sh                                  # 30 clusters of 3
#   ORDINAL_BENCH_CLUSTERS=10 ORDINAL_BENCH_WINDOW_SECONDS=60 scripts/bench-idle.sh
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
# shellcheck source=scripts/lib/common.sh
. "$REPO/scripts/lib/common.sh"

started=false
if ! scripts/cluster.sh status >/dev/null 2>&1; then
  scripts/cluster.sh up
  started=true
fi
cleanup() {
  if [ "$started" = true ]; then scripts/cluster.sh down || true; fi
}
trap cleanup EXIT
eval "$(scripts/cluster.sh env)"
scripts/images.sh import pause postgres pgbouncer ordinal
"$BIN/kubectl" apply --server-side --force-conflicts -k deploy/ >/dev/null
"$BIN/kubectl" -n ordinal-system rollout restart deployment/ordinal-operator >/dev/null
"$BIN/kubectl" -n ordinal-system rollout status deployment/ordinal-operator --timeout=180s
# Many clusters start at once on a small machine: give each its time.
ORDINAL_E2E_OPERATOR=external \
  ORDINAL_E2E_POSTGRES_IMAGE="$POSTGRES_IMAGE" \
  ORDINAL_E2E_IMAGE="$ORDINAL_IMAGE" \
  ORDINAL_E2E_TIMEOUT_SECONDS="${ORDINAL_E2E_TIMEOUT_SECONDS:-1200}" \
  cargo bench -p ordinal-e2e --features cluster --bench idle
