# syntax=docker/dockerfile:1
# The pooler's image (spec.pooler; the operator's default
# ORDINAL_POOLER_IMAGE): PgBouncer from Debian's package, run as uid 999.
# The pod's `install` init container copies ordinal-init next to it, which
# runs pgbouncer and reloads it when its configuration or certificate
# changes.
#
#   docker build -f deploy/pgbouncer.Dockerfile -t ghcr.io/ordinal-dev/pgbouncer:1.24 .
FROM debian:trixie-slim
RUN groupadd -r -g 999 postgres \
 && useradd -r -g postgres -u 999 --home-dir=/var/lib/postgresql postgres \
 && apt-get update \
 && apt-get install -y --no-install-recommends pgbouncer \
 && rm -rf /var/lib/apt/lists/*
USER 999:999
EXPOSE 5432
ENTRYPOINT ["pgbouncer"]
