#!/bin/bash
# The entrypoint of the Patroni image (scripts/images.sh build patroni):
# writes Patroni's configuration from the environment, as Patroni's own
# kubernetes/entrypoint.sh does, then execs patroni, which so is PID 1 of
# the container (and the parent of the postmaster it starts).
#
# From the environment (e2e/patroni/patroni.yaml sets them):
#   PATRONI_KUBERNETES_POD_IP        the pod's IP: the address members and
#                                    the leader Endpoints give for it
#   PATRONI_SUPERUSER_PASSWORD       the passwords of the superuser and of
#   PATRONI_REPLICATION_PASSWORD     the replication user (then unset)
#   PATRONI_SUPERUSER_USERNAME       the users' names (Patroni's own
#   PATRONI_REPLICATION_USERNAME     variables, read by Patroni itself)
#   BOOTSTRAP_SYNCHRONOUS_MODE       false (default), true or quorum:
#                                    Patroni's synchronous_mode, taken when
#                                    the cluster is first initialized
# Every other PATRONI_* variable (scope, name, data directory, Kubernetes
# namespace, labels, use_endpoints, listen addresses…) Patroni reads itself.
set -euo pipefail

: "${PATRONI_KUBERNETES_POD_IP:?is the pod IP (fieldRef status.podIP)}"
: "${PATRONI_SUPERUSER_PASSWORD:?is the superuser password}"
: "${PATRONI_REPLICATION_PASSWORD:?is the replication password}"
replication_user=${PATRONI_REPLICATION_USERNAME:-replicator}
synchronous_mode=${BOOTSTRAP_SYNCHRONOUS_MODE:-false}
case "$synchronous_mode" in
  true | false | quorum) ;;
  *)
    echo "patroni-entrypoint: BOOTSTRAP_SYNCHRONOUS_MODE is '$synchronous_mode', not true, false or quorum" >&2
    exit 2
    ;;
esac

# A YAML single-quoted scalar.
quote() { printf "'%s'" "${1//\'/\'\'}"; }

config=${PATRONI_CONFIG_FILE:-$HOME/patroni.yml}
umask 077
cat >"$config" <<EOF
bootstrap:
  dcs:
    synchronous_mode: $synchronous_mode
    postgresql:
      use_pg_rewind: true
  initdb:
  - auth-host: scram-sha-256
  - auth-local: trust
  - encoding: UTF8
  - data-checksums
restapi:
  connect_address: '$PATRONI_KUBERNETES_POD_IP:8008'
postgresql:
  connect_address: '$PATRONI_KUBERNETES_POD_IP:5432'
  authentication:
    superuser:
      password: $(quote "$PATRONI_SUPERUSER_PASSWORD")
    replication:
      password: $(quote "$PATRONI_REPLICATION_PASSWORD")
  pg_hba:
  - local all all trust
  - host all all all scram-sha-256
  - host replication $replication_user all scram-sha-256
EOF
unset PATRONI_SUPERUSER_PASSWORD PATRONI_REPLICATION_PASSWORD

exec patroni "$config"
