#!/usr/bin/env bash
# Prepare a Debian host for the collection's tests and demo: Docker engine,
# docker-compose, PostgreSQL 15 server binaries and the archive tools.
# Idempotent: on a host that already has what it needs it changes nothing.
set -euo pipefail

PACKAGES=(docker.io docker-compose postgresql-15 debootstrap busybox-static zstd pigz isal acl attr rsync shellcheck cron logrotate python3-venv prometheus rclone age openssh-server openssh-client sudo python3-docker strace barman)
DOCKERD_LOG=${DOCKERD_LOG:-/var/log/minimarket-dockerd.log}

die() { echo "bootstrap-host: $*" >&2; exit 1; }

missing=()
command -v docker-compose >/dev/null || missing+=(docker-compose)
[ -x /usr/lib/postgresql/15/bin/initdb ] || missing+=(postgresql-15)
for tool in debootstrap zstd pigz igzip setfacl setfattr rsync shellcheck logrotate promtool rclone age age-keygen ssh-keygen strace barman; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
/usr/bin/python3 -c "import ensurepip" 2>/dev/null || missing+=(python3-venv)
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)
# The SSH shop host of the tests (testenv/sshhost.py): deploy becomes root with sudo, and the modules
# run with Debian's python3, which needs the Docker SDK from Debian.
command -v sudo >/dev/null || missing+=(sudo)
/usr/bin/python3 -c "import docker" 2>/dev/null || missing+=(python3-docker)
command -v cron >/dev/null || [ -x /usr/sbin/cron ] || missing+=(cron)
[ -x /bin/busybox ] || command -v busybox >/dev/null || missing+=(busybox)
if ! docker info >/dev/null 2>&1 && ! command -v dockerd >/dev/null; then
  missing+=(dockerd)
fi

if [ ${#missing[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || die "missing ${missing[*]}; run as root or install: ${PACKAGES[*]}"
  command -v apt-get >/dev/null || die "missing ${missing[*]} and this is not a Debian host; install them by hand"
  echo "bootstrap-host: installing ${PACKAGES[*]} (missing: ${missing[*]})"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # postgresql-common would create and start a cluster on 5432; tests run their own.
  mkdir -p /etc/postgresql-common/createcluster.d
  echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.d/50-minimarket.conf
  apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
  [ "$(id -u)" = 0 ] || die "no Docker engine answers and we are not root to start one; start dockerd"
  echo "bootstrap-host: starting dockerd (log: $DOCKERD_LOG)"
  nohup dockerd >"$DOCKERD_LOG" 2>&1 </dev/null &
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && break
    sleep 1
  done
  docker info >/dev/null 2>&1 || { tail -n 20 "$DOCKERD_LOG" >&2; die "dockerd did not start within 60 s; see $DOCKERD_LOG"; }
fi
echo "bootstrap-host: docker $(docker version --format '{{.Server.Version}}'), $(/usr/lib/postgresql/15/bin/postgres --version)"
