#!/bin/sh
# Entrypoint of minimarket/postgres:15, modelled on the official postgres image:
# an empty PGDATA is initialised from POSTGRES_USER / POSTGRES_PASSWORD / POSTGRES_DB
# (scram password auth for host connections, listen on *), then postgres is exec'd
# as the postgres user (uid 999). A non-empty PGDATA is used as it is: ownership and
# modes are not "repaired", so a volume restore that got them wrong fails loudly.
set -eu

PGBIN=/usr/lib/postgresql/15/bin
: "${PGDATA:=/var/lib/postgresql/data}"
export PGDATA

if [ "$(id -u)" = 0 ]; then
  mkdir -p "$PGDATA" /var/run/postgresql
  chown postgres:postgres /var/run/postgresql
  [ -n "$(ls -A "$PGDATA")" ] || chown postgres:postgres "$PGDATA"
  exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi

if [ "${1:-postgres}" != postgres ]; then
  exec "$@"
fi
[ "$#" -eq 0 ] || shift

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  if [ -n "$(ls -A "$PGDATA" 2>/dev/null)" ]; then
    echo "docker-entrypoint: $PGDATA is not empty but holds no cluster (no PG_VERSION); refusing to initdb over it" >&2
    exit 1
  fi
  if [ -z "${POSTGRES_PASSWORD:-}" ]; then
    echo "docker-entrypoint: database is uninitialized and POSTGRES_PASSWORD is not set; set it to the superuser password" >&2
    exit 1
  fi
  : "${POSTGRES_USER:=postgres}"
  : "${POSTGRES_DB:=$POSTGRES_USER}"
  chmod 700 "$PGDATA"
  pwfile=$(mktemp)
  printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
  # shellcheck disable=SC2086 # POSTGRES_INITDB_ARGS is split into words, as in the official image
  "$PGBIN/initdb" -D "$PGDATA" -U "$POSTGRES_USER" --pwfile="$pwfile" -E UTF8 --locale=C.UTF-8 \
    --auth-local=trust --auth-host=scram-sha-256 ${POSTGRES_INITDB_ARGS:-} >/dev/null
  rm -f "$pwfile"
  echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
  echo "listen_addresses = '*'" >> "$PGDATA/postgresql.conf"
  if [ "$POSTGRES_DB" != postgres ]; then
    "$PGBIN/postgres" --single -D "$PGDATA" -j postgres >/dev/null <<SQL
CREATE DATABASE "$POSTGRES_DB";
SQL
  fi
  echo "docker-entrypoint: initialised $PGDATA (superuser $POSTGRES_USER, database $POSTGRES_DB)"
fi

exec "$PGBIN/postgres" -D "$PGDATA" "$@"
