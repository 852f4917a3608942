#!/bin/sh
# Stand-in for a Mini Market service in the development stack (busybox image): Loki and the
# three applications. On the first start Loki writes a small, realistic data set into its
# volume; a volume that already holds data (e.g. after a restore) is never modified. Loki
# answers /ready on :3100, the applications serve /metrics on :9100 (scraped by Prometheus);
# with REDIS_WRITER=host:port an application writes a sale to Redis every second.
# TERM/INT exit at once, so `stop` is fast.
set -eu
service=$1

write_once() {
  dir=$1
  [ -e "$dir/.minimarket-initialised" ] && return 0
  case "$service" in
    loki)
      mkdir -p "$dir/chunks/fake" "$dir/index" "$dir/rules" "$dir/compactor"
      for i in 1 2 3; do head -c 49152 /dev/urandom > "$dir/chunks/fake/chunk-$i"; done
      printf 'level=info msg="depósito: recepción de mercadería"\n' > "$dir/index/index_19723"
      chmod 0600 "$dir/index/index_19723"
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
mkdir -p /tmp/www
case "$service" in
  loki)
    echo ready > /tmp/www/ready
    httpd -p 3100 -h /tmp/www
    ;;
  *)
    printf '# TYPE minimarket_app_up gauge\nminimarket_app_up{app="%s"} 1\n' "$service" > /tmp/www/metrics
    httpd -p 9100 -h /tmp/www
    ;;
esac
if [ -n "${REDIS_WRITER:-}" ]; then
  (
    sale=0
    while :; do
      sale=$((sale + 1))
      printf 'INCR ventas:contador\r\nSET venta:%s:%s %s\r\n' "$(hostname)" "$sale" "$(date -u +%s)" \
        | timeout 3 nc "${REDIS_WRITER%:*}" "${REDIS_WRITER#*:}" >/dev/null 2>&1 || true
      sleep 1
    done
  ) &
fi
echo "fake-service: $service running as $(id -u):$(id -g)"
while :; do
  sleep 3600 &
  wait $! || true
done
