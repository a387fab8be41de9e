#!/usr/bin/env bash
# The quick start, in one command on a machine with nothing: starts the
# local Kubernetes cluster (scripts/cluster.sh up), builds and imports the
# images, installs Ordinal as users do (`kubectl apply -k deploy/`), creates
# the three-instance cluster of deploy/examples/local.yaml and waits until
# it is Healthy. Run as root. Then:
#
#   eval "$(scripts/cluster.sh env)"   # KUBECONFIG, and kubectl on PATH
#   kubectl get pgc db
#   kubectl delete pod db-0            # and watch a replica take over
#
# scripts/cluster.sh down removes it all.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
# shellcheck source=scripts/lib/common.sh
. "$REPO/scripts/lib/common.sh"

scripts/cluster.sh up >/dev/null
eval "$(scripts/cluster.sh env)"
scripts/images.sh import
echo "==> kubectl apply -k deploy/" >&2
kubectl apply --server-side --force-conflicts -k deploy/ >/dev/null
kubectl -n ordinal-system rollout restart deployment/ordinal-operator >/dev/null
kubectl -n ordinal-system rollout status deployment/ordinal-operator --timeout=180s >&2
echo "==> kubectl apply -f deploy/examples/local.yaml" >&2
kubectl apply -f deploy/examples/local.yaml >&2
kubectl wait postgrescluster/db --for=jsonpath='{.status.phase}'=Healthy --timeout=600s >&2
kubectl get pgc db
cat >&2 <<'MSG'

Ordinal runs, and so does the PostgresCluster db. Next:
  eval "$(scripts/cluster.sh env)"
  kubectl get pgc,pods -o wide
  kubectl delete pod db-0 && kubectl get pgc db -w
  scripts/cluster.sh down      # stops and removes everything
MSG
