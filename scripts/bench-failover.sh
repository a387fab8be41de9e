#!/usr/bin/env bash
# The failover benchmark on the local cluster, Ordinal beside Patroni
# (e2e/benches/patroni.rs): starts the cluster if needed, builds and
# imports the images (Patroni's from Debian's package), installs Ordinal as
# users do, runs the benchmark and prints its table. Stops the cluster
# again if it started it.
#
#   scripts/bench-failover.sh            # 5 runs of every case
#   ORDINAL_BENCH_RUNS=3 ORDINAL_BENCH_CASES=delete,kill scripts/bench-failover.sh
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
scripts/images.sh import pause postgres ordinal patroni
"$BIN/kubectl" apply --server-side --force-conflicts -k deploy/ >/dev/null
"$BIN/kubectl" -n ordinal-system rollout restart deployment/ordinal-operator >/dev/null
"$BIN/kubectl" -n ordinal-system rollout status deployment/ordinal-operator --timeout=180s
ORDINAL_E2E_OPERATOR=external \
  ORDINAL_E2E_POSTGRES_IMAGE="$POSTGRES_IMAGE" \
  ORDINAL_E2E_IMAGE="$ORDINAL_IMAGE" \
  ORDINAL_E2E_CONTAINERD_STATE=/run/ordinal-cluster/containerd \
  ORDINAL_BENCH_PATRONI_IMAGE="$PATRONI_IMAGE" \
  cargo bench -p ordinal-e2e --features cluster --bench patroni
