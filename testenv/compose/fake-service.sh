#!/bin/sh
# Stand-in for a Mini Market service in the development stack (busybox image).
# On the first start it writes a small, realistic data set into its volume; a volume
# that already holds data (e.g. after a restore) is never modified. Then it idles
# until stopped (TERM/INT exit at once, so `stop` is fast).
set -eu
service=$1

write_once() {
  dir=$1
  [ -e "$dir/.minimarket-initialised" ] && return 0
  case "$service" in
    grafana)
      mkdir -p "$dir/plugins" "$dir/csv" "$dir/png" "$dir/dashboards"
      printf 'SQLite format 3\000' > "$dir/grafana.db"
      head -c 65536 /dev/urandom >> "$dir/grafana.db"
      chmod 0640 "$dir/grafana.db"
      printf '{"title":"Ventas por día","uid":"ventas","panels":[{"title":"Góndolas con stock bajo"}]}\n' \
        > "$dir/dashboards/ventas.json"
      printf 'fecha,total\n2024-01-01,1234.50\n' > "$dir/csv/informe año 2024.csv"
      ln -s dashboards/ventas.json "$dir/dashboard-principal.json"
      ;;
    prometheus)
      block="$dir/01HMINIMARKET0000000000000"
      mkdir -p "$block/chunks" "$dir/wal" "$dir/chunks_head"
      head -c 262144 /dev/urandom > "$block/chunks/000001"
      head -c 32768 /dev/urandom > "$block/index"
      printf '{"ulid":"01HMINIMARKET0000000000000","minTime":1704067200000,"maxTime":1704074400000,"version":1}\n' \
        > "$block/meta.json"
      head -c 131072 /dev/urandom > "$dir/wal/00000000"
      head -c 16384 /dev/urandom > "$dir/chunks_head/000001"
      : > "$dir/lock"
      ;;
    loki)
      mkdir -p "$dir/chunks/fake" "$dir/index" "$dir/rules" "$dir/compactor"
      for i in 1 2 3; do head -c 49152 /dev/urandom > "$dir/chunks/fake/chunk-$i"; done
      printf 'level=info msg="depósito: recepción de mercadería"\n' > "$dir/index/index_19723"
      chmod 0600 "$dir/index/index_19723"
      ;;
    redis)
      printf 'REDIS0011' > "$dir/dump.rdb"
      head -c 8192 /dev/urandom >> "$dir/dump.rdb"
      printf "*2\r\n\$6\r\nSELECT\r\n\$1\r\n0\r\n" > "$dir/appendonly.aof"
      ;;
    *)
      echo "fake-service: unknown service '$service'" >&2
      exit 2
      ;;
  esac
  date -u '+%Y-%m-%dT%H:%M:%SZ' > "$dir/.minimarket-initialised"
}

if [ -n "${DATA_DIR:-}" ]; then
  write_once "$DATA_DIR"
fi
trap 'exit 0' TERM INT
if [ -n "${WAIT_FOR:-}" ]; then
  # busybox nc has no -z: with stdin at EOF it connects, then exits 0.
  until timeout 3 nc "${WAIT_FOR%:*}" "${WAIT_FOR#*:}" </dev/null 2>/dev/null; do sleep 1; done
  echo "fake-service: $service reached $WAIT_FOR"
fi
echo "fake-service: $service running as $(id -u):$(id -g)"
while :; do
  sleep 3600 &
  wait $! || true
done
