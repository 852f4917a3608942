#!/usr/bin/env bash
# The development `inventario-retail` stack with a seeded Mini Market database.
#   testenv/stack.sh up      build missing images, start the stack, wait for postgres,
#                            create database minimarket and seed it (idempotent)
#   testenv/stack.sh seed    only the create-and-seed step (stack must be up)
#   testenv/stack.sh status  containers, volumes and seed state
#   testenv/stack.sh down [--volumes]   stop and remove containers (and volumes if asked)
# Environment: MINIMARKET_PROJECT (inventario-retail), MINIMARKET_PG_PORT (55432),
# MINIMARKET_DB_PASSWORD (development default), MINIMARKET_SEED_ROWS (10000),
# MINIMARKET_PYTHON (python with psycopg for the seed; default .venv/bin/python),
# MINIMARKET_NAME_SEPARATOR and MINIMARKET_COMPOSE_FILE (see compose.sh).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")
export MINIMARKET_PROJECT=${MINIMARKET_PROJECT:-inventario-retail}
export MINIMARKET_DB_PASSWORD=${MINIMARKET_DB_PASSWORD:-minimarket-dev}
ROWS=${MINIMARKET_SEED_ROWS:-10000}
DB=minimarket
PG_CONTAINER="${MINIMARKET_PROJECT}${MINIMARKET_NAME_SEPARATOR:-_}postgres${MINIMARKET_NAME_SEPARATOR:-_}1"
PYTHON=${MINIMARKET_PYTHON:-$REPO/.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3

say() { echo "stack.sh: $*"; }
die() { echo "stack.sh: $*" >&2; exit 1; }
compose() { "$HERE/compose.sh" "$@"; }
project_containers() {
  docker ps -q --no-trunc --filter "label=com.docker.compose.project=$MINIMARKET_PROJECT" | sort
}

wait_for_postgres() {
  local status
  for _ in $(seq 1 120); do
    status=$(docker inspect -f '{{.State.Status}}/{{.State.Health.Status}}' "$PG_CONTAINER" 2>/dev/null || echo missing)
    case "$status" in
      running/healthy) return 0 ;;
      exited/*|dead/*|missing) break ;;
    esac
    sleep 1
  done
  docker logs --tail 20 "$PG_CONTAINER" >&2 || true
  die "postgres container $PG_CONTAINER is not healthy (state: $status); see: docker logs $PG_CONTAINER"
}

psql_in_container() {
  docker exec -u postgres "$PG_CONTAINER" psql -XAtq -v ON_ERROR_STOP=1 "$@"
}

do_seed() {
  docker inspect "$PG_CONTAINER" >/dev/null 2>&1 || die "container $PG_CONTAINER does not exist; run: testenv/stack.sh up"
  wait_for_postgres
  if [ "$(psql_in_container -d postgres -c "SELECT count(*) FROM pg_database WHERE datname = '$DB'")" = 0 ]; then
    psql_in_container -d postgres -c "CREATE DATABASE $DB"
    say "database $DB: created"
  else
    say "database $DB: exists"
  fi
  "$PYTHON" -c 'import psycopg' 2>/dev/null \
    || die "$PYTHON cannot import psycopg; run 'make venv' or set MINIMARKET_PYTHON to a python that has it"
  local hostport
  hostport=$(docker port "$PG_CONTAINER" 5432/tcp | head -n 1)
  [ -n "$hostport" ] || die "postgres port 5432 is not published by $PG_CONTAINER"
  PGPASSWORD=$MINIMARKET_DB_PASSWORD PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -m testenv.seed.minimarket_seed \
    --dsn "host=${hostport%:*} port=${hostport##*:} user=postgres dbname=$DB" --rows "$ROWS" \
    | sed 's/^/stack.sh: seed: /'
}

# Before Redis and Prometheus were real, busybox stand-ins wrote fake files (with .minimarket-initialised)
# into these volumes; the real programs cannot load them, so a stack from that time starts them empty.
reset_standin_volumes() {
  local key vol
  for key in redis-data prometheus-data; do
    vol="${MINIMARKET_PROJECT}_$key"
    docker volume inspect "$vol" >/dev/null 2>&1 || continue
    docker run --rm -v "$vol:/v:ro" minimarket/busybox:latest test -e /v/.minimarket-initialised || continue
    for stale in redis-data prometheus-data grafana-data; do
      vol="${MINIMARKET_PROJECT}_$stale"
      docker volume inspect "$vol" >/dev/null 2>&1 || continue
      docker run --rm -v "$vol:/v" minimarket/busybox:latest sh -c 'cd /v && rm -rf -- ..?* .[!.]* *'
      say "volume $vol: held the old busybox stand-in's files; emptied for the real service"
    done
    return 0
  done
}

check_port_free() {
  local port=${MINIMARKET_PG_PORT:-55432}
  [ "$(docker inspect -f '{{.State.Running}}' "$PG_CONTAINER" 2>/dev/null)" = true ] && return 0
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    die "port 127.0.0.1:$port is already in use; set MINIMARKET_PG_PORT to a free port"
  fi
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
  up)
    "$HERE/images/build.sh" | sed 's/^build.sh: /stack.sh: images: /'
    check_port_free
    reset_standin_volumes
    before=$(project_containers)
    if ! compose up -d --remove-orphans 2>&1 | sed 's/^/stack.sh: compose: /'; then
      docker logs --tail 5 "$PG_CONTAINER" 2>&1 | sed 's/^/stack.sh: postgres log: /' >&2 || true
      die "compose up failed (postgres container: $(docker inspect -f '{{.State.Status}}' "$PG_CONTAINER" 2>/dev/null || echo missing)); see the lines above"
    fi
    wait_for_postgres
    if [ "$before" = "$(project_containers)" ]; then
      say "stack $MINIMARKET_PROJECT: already up, no container changed"
    else
      say "stack $MINIMARKET_PROJECT: started ($(project_containers | wc -l) containers running)"
    fi
    do_seed
    say "postgres on $(docker port "$PG_CONTAINER" 5432/tcp | head -n 1), database $DB, user postgres"
    ;;
  seed) do_seed ;;
  status)
    compose ps
    docker volume ls --filter "label=com.docker.compose.project=$MINIMARKET_PROJECT" --format '{{.Name}}'
    if docker inspect "$PG_CONTAINER" >/dev/null 2>&1 && \
       [ "$(docker inspect -f '{{.State.Health.Status}}' "$PG_CONTAINER")" = healthy ]; then
      marker=$(psql_in_container -d "$DB" -c "SELECT obj_description(t, 'pg_class') FROM to_regclass('public.productos') t" 2>/dev/null || true)
      say "database $DB: ${marker:-not seeded}"
    else
      say "postgres: not running"
    fi
    ;;
  down)
    compose down "$@"
    ;;
  *)
    sed -n '2,10p' "$0" >&2
    exit 2
    ;;
esac
