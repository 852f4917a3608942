#!/usr/bin/env bash
# Run compose on the test world's stack with the right project and file:
#   testenv/compose.sh [compose args...]      e.g. testenv/compose.sh ps
# Uses `docker compose` (v2) when that works, else `docker-compose` (v1).
# MINIMARKET_ENV (default development) picks testenv/compose/docker-compose.<env>.yml;
# MINIMARKET_PROJECT (default inventario-retail) is the project name, so volumes are
# <project>_postgres-data etc. and containers <project>_<service>_1 in both versions.
# MINIMARKET_DB_PASSWORD is the postgres password (a dev default only for development).
# MINIMARKET_NAME_SEPARATOR=- names containers the Compose v2 way (<project>-<service>-1).
# MINIMARKET_COMPOSE_FILE overrides the file (a copy with its own .env, see testenv/stack.py).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
export MINIMARKET_ENV=${MINIMARKET_ENV:-development}
export MINIMARKET_PROJECT=${MINIMARKET_PROJECT:-inventario-retail}
file=${MINIMARKET_COMPOSE_FILE:-$HERE/compose/docker-compose.$MINIMARKET_ENV.yml}

[ -f "$file" ] || { echo "compose.sh: no compose file for environment '$MINIMARKET_ENV' ($file); use MINIMARKET_ENV=development" >&2; exit 2; }
if [ "$MINIMARKET_ENV" != development ] && [ -z "${MINIMARKET_DB_PASSWORD:-}" ]; then
  echo "compose.sh: MINIMARKET_DB_PASSWORD is not set; export it for environment '$MINIMARKET_ENV'" >&2
  exit 2
fi

if docker compose version >/dev/null 2>&1; then
  exec docker compose -p "$MINIMARKET_PROJECT" -f "$file" "$@"
elif command -v docker-compose >/dev/null; then
  exec docker-compose -p "$MINIMARKET_PROJECT" -f "$file" "$@"
fi
echo "compose.sh: neither 'docker compose' nor 'docker-compose' is available; run scripts/bootstrap-host.sh" >&2
exit 2
