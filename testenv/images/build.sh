#!/usr/bin/env bash
# Build the test world's images without any registry:
#   minimarket/postgres:15   debootstrap minbase (postgresql-15, python3) + docker import
#   minimarket/busybox:latest  Debian's busybox-static with its applet links
#   minimarket/services:bookworm  debootstrap minbase (redis-server 7, prometheus 2, python3): the real
#                                 Redis and Prometheus and the Grafana stand-in (python3 + sqlite3)
# An image whose tag exists and was built from these very files (MINIMARKET_IMAGE_REV: a hash
# of its own build function and the files of its directory, so editing one image's recipe
# never rebuilds another) is kept; --force rebuilds them all.
# Build dirs live in $MINIMARKET_IMAGE_CACHE (default /var/cache/minimarket-images), never in the repo.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
CACHE=${MINIMARKET_IMAGE_CACHE:-/var/cache/minimarket-images}
PG_IMAGE=minimarket/postgres:15
BB_IMAGE=minimarket/busybox:latest
SVC_IMAGE=minimarket/services:bookworm
PG_UID=999
FORCE=0

die() { echo "build.sh: $*" >&2; exit 1; }
for arg in "$@"; do
  case "$arg" in
    --force) FORCE=1 ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) die "unknown argument '$arg'; usage: build.sh [--force]" ;;
  esac
done
[ "$(id -u)" = 0 ] || die "must run as root (debootstrap, chroot); run: sudo $0 $*"
docker info >/dev/null 2>&1 || die "no Docker engine answers; start dockerd (scripts/bootstrap-host.sh)"

# The revision of one image: its build function's source and the files under images/<dir>/.
image_rev() {
  { declare -f "$1"; [ -z "${2:-}" ] || find "$HERE/$2" -type f -print0 | sort -z | xargs -0 cat; } \
    | sha256sum | cut -c1-16
}
# One build at a time on this host (tests, `make demo` and CI may call us concurrently);
# a waiter then finds the image built and keeps it.
mkdir -p "$CACHE"
exec 9>"$CACHE/build.lock"
flock 9

have_image() {
  [ "$FORCE" = 0 ] && docker image inspect -f '{{range .Config.Env}}{{println .}}{{end}}' "$1" 2>/dev/null \
    | grep -qx "MINIMARKET_IMAGE_REV=$2"
}

# The mirror apt uses here (deb822 or one-line sources), so the build works offline-from-Internet.
debian_mirror() {
  local uri
  uri=$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
        | awk '{print $2}' | grep -v -- '-security' | grep -m1 '/debian/\?$' || true)
  [ -n "$uri" ] || uri=$(grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
        | awk '$3 ~ /^bookworm$/ {print $2; exit}' || true)
  echo "${MINIMARKET_DEBIAN_MIRROR:-${uri:-http://deb.debian.org/debian}}"
}

build_postgres() {
  local REV
  REV=$(image_rev build_postgres postgres)
  if have_image "$PG_IMAGE" "$REV"; then echo "build.sh: $PG_IMAGE is up to date, kept"; return; fi
  command -v debootstrap >/dev/null || die "debootstrap is missing; apt-get install debootstrap"
  local root="$CACHE/postgres-rootfs" mirror
  PG_ROOT=$root
  mirror=$(debian_mirror)
  rm -rf "$root"
  trap 'umount_all "$PG_ROOT"; rm -rf "$PG_ROOT"' EXIT
  echo "build.sh: debootstrap bookworm from $mirror (about a minute)"
  debootstrap --variant=minbase --include=postgresql-15,python3 bookworm "$root" "$mirror" \
    >"$CACHE/debootstrap.log" 2>&1 || { tail -n 20 "$CACHE/debootstrap.log" >&2; die "debootstrap failed; see $CACHE/debootstrap.log"; }
  umount_all "$root"
  # The official image's uid/gid for postgres, so volume owners match production.
  local old_uid old_gid
  old_uid=$(chroot "$root" id -u postgres)
  old_gid=$(chroot "$root" id -g postgres)
  if [ "$old_uid" != "$PG_UID" ]; then
    chroot "$root" groupmod -g "$PG_UID" postgres
    chroot "$root" usermod -u "$PG_UID" -g "$PG_UID" postgres
    find "$root" -xdev \( -uid "$old_uid" -o -gid "$old_gid" \) -exec chown -h "$PG_UID:$PG_UID" {} +
  fi
  # No distro cluster and no package caches in the image.
  rm -rf "$root"/var/lib/postgresql/15 "$root"/etc/postgresql/15/main "$root"/var/cache/apt/archives/*.deb \
         "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* "$root"/usr/share/man/*
  install -d -o "$PG_UID" -g "$PG_UID" -m 0700 "$root/var/lib/postgresql/data"
  install -d -o "$PG_UID" -g "$PG_UID" -m 2775 "$root/var/run/postgresql"
  install -m 0755 "$HERE/postgres/docker-entrypoint.sh" "$root/usr/local/bin/docker-entrypoint.sh"
  echo "build.sh: importing $PG_IMAGE"
  tar -C "$root" --numeric-owner -c . | docker import \
    --change 'ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV PGDATA=/var/lib/postgresql/data' \
    --change "ENV MINIMARKET_IMAGE_REV=$REV" \
    --change 'ENV LANG=C.UTF-8' \
    --change 'VOLUME /var/lib/postgresql/data' \
    --change 'USER postgres' \
    --change 'WORKDIR /var/lib/postgresql' \
    --change 'ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]' \
    --change 'CMD ["postgres"]' \
    --change 'EXPOSE 5432' \
    - "$PG_IMAGE" >/dev/null
  rm -rf "$root"
  trap - EXIT
  echo "build.sh: built $PG_IMAGE"
}

umount_all() {
  local mnt
  awk -v r="$1" '$2 ~ "^"r"/" {print $2}' /proc/mounts | sort -r | while read -r mnt; do
    umount -l "$mnt" || true
  done
}

build_busybox() {
  local REV
  REV=$(image_rev build_busybox)
  if have_image "$BB_IMAGE" "$REV"; then echo "build.sh: $BB_IMAGE is up to date, kept"; return; fi
  local bb root="$CACHE/busybox-rootfs" applet
  bb=$(command -v busybox || true)
  if [ -z "$bb" ] || ! "$bb" --list-full >/dev/null 2>&1; then
    die "busybox-static is missing; apt-get install busybox-static"
  fi
  ! ldd "$bb" >/dev/null 2>&1 || die "$bb is not the static busybox; apt-get install busybox-static"
  rm -rf "$root"
  mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,root,var/lib} "$root/tmp"
  chmod 1777 "$root/tmp"
  install -m 0755 "$bb" "$root/bin/busybox"
  for applet in $("$bb" --list-full); do
    [ -e "$root/$applet" ] || ln -s /bin/busybox "$root/$applet"
  done
  cat >"$root/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/bin/sh
grafana:x:472:0:grafana:/var/lib/grafana:/bin/false
postgres:x:999:999:postgres:/var/lib/postgresql:/bin/sh
loki:x:10001:10001:loki:/loki:/bin/false
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
PASSWD
  cat >"$root/etc/group" <<'GROUP'
root:x:0:
postgres:x:999:
loki:x:10001:
nogroup:x:65534:
GROUP
  # Data dirs owned like in the official images, so fresh named volumes get those owners.
  install -d -o 472 -g 0 "$root/var/lib/grafana"
  install -d -o 65534 -g 65534 "$root/prometheus"
  install -d -o 10001 -g 10001 "$root/loki"
  install -d -o 999 -g 999 "$root/data"
  echo "build.sh: importing $BB_IMAGE"
  tar -C "$root" --numeric-owner -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change "ENV MINIMARKET_IMAGE_REV=$REV" \
    --change 'CMD ["sh"]' \
    - "$BB_IMAGE" >/dev/null
  rm -rf "$root"
  echo "build.sh: built $BB_IMAGE"
}

# One rootfs for Redis, Prometheus and the Grafana stand-in (one debootstrap, one image); compose picks
# the program and the user (the official images' uids: redis 999, prometheus 65534, grafana 472).
build_services() {
  local REV
  REV=$(image_rev build_services services)
  if have_image "$SVC_IMAGE" "$REV"; then echo "build.sh: $SVC_IMAGE is up to date, kept"; return; fi
  command -v debootstrap >/dev/null || die "debootstrap is missing; apt-get install debootstrap"
  local root="$CACHE/services-rootfs" mirror
  SVC_ROOT=$root
  mirror=$(debian_mirror)
  rm -rf "$root"
  trap 'umount_all "$SVC_ROOT"; rm -rf "$SVC_ROOT"' EXIT
  echo "build.sh: debootstrap bookworm with redis-server, prometheus from $mirror (about a minute)"
  debootstrap --variant=minbase --include=redis-server,prometheus,python3 bookworm "$root" "$mirror" \
    >"$CACHE/debootstrap-services.log" 2>&1 || { tail -n 20 "$CACHE/debootstrap-services.log" >&2; die "debootstrap failed; see $CACHE/debootstrap-services.log"; }
  umount_all "$root"
  rm -rf "$root"/var/lib/redis/* "$root"/var/lib/prometheus/* "$root"/var/cache/apt/archives/*.deb \
         "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* "$root"/usr/share/man/*
  # Data dirs owned like in the official images, so fresh named volumes get those owners.
  install -d -o 999 -g 999 -m 0755 "$root/data"
  install -d -o 65534 -g 65534 -m 0755 "$root/prometheus"
  install -d -o 472 -g 0 -m 0755 "$root/var/lib/grafana"
  echo "build.sh: importing $SVC_IMAGE"
  tar -C "$root" --numeric-owner -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change "ENV MINIMARKET_IMAGE_REV=$REV" \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["sh"]' \
    - "$SVC_IMAGE" >/dev/null
  rm -rf "$root"
  trap - EXIT
  echo "build.sh: built $SVC_IMAGE"
}

build_busybox
build_postgres
build_services
