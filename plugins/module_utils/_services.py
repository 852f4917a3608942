# Copyright (c) 2026 Mini Market
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Talking to the stack's services from the Docker host: where a container listens, Redis, HTTP, SQLite.

The module runs on the Docker host (root, Debian's python3 with only the
standard library and the docker SDK), so services are reached on their compose
network at the container's address: no published port, no tool inside the
container, no client library.  Containers are found by what they mount or by
the compose labels, never by a name pattern.
"""

import contextlib
import json
import os
import socket
import sqlite3

from urllib.error import HTTPError, URLError
from urllib.parse import urlencode
from urllib.request import ProxyHandler, Request, build_opener

from ansible_collections.minimarket.backup.plugins.module_utils._errors import BackupError

PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
SQLITE_HEADER = b"SQLite format 3\x00"
# Container addresses are local: a proxy from the environment must never see these requests.
_OPENER = build_opener(ProxyHandler({}))


class ServiceError(BackupError):
    """A service did not answer as expected (the caller decides whether to retry, fall back or fail)."""


def container_address(info):
    """The first IP address of an inspected container on a network, or None."""
    for network in sorted((info.get("NetworkSettings") or {}).get("Networks") or {}):
        address = info["NetworkSettings"]["Networks"][network].get("IPAddress")
        if address:
            return address
    return None


def service_name(info):
    return ((info.get("Config") or {}).get("Labels") or {}).get(SERVICE_LABEL) or info.get("Name", "").lstrip("/")


def volume_path(info, volume, container_path):
    """Host path of ``container_path`` inside the container, when it lies on the named ``volume``, else None."""
    for mount in info.get("Mounts") or []:
        if mount.get("Type") != "volume" or mount.get("Name") != volume:
            continue
        dest = mount["Destination"].rstrip("/")
        if container_path == dest or container_path.startswith(dest + "/"):
            return os.path.join(mount["Source"], container_path[len(dest):].lstrip("/"))
    return None


def mount_destination(info, volume):
    for mount in info.get("Mounts") or []:
        if mount.get("Type") == "volume" and mount.get("Name") == volume:
            return mount["Destination"].rstrip("/") or "/"
    return None


class Redis(object):
    """The few Redis commands a backup needs, over RESP on a plain socket."""

    def __init__(self, host, port=6379, timeout=10):
        try:
            self.sock = socket.create_connection((host, port), timeout=timeout)
        except (OSError, socket.error) as exc:
            raise ServiceError("cannot connect to Redis at %s:%s (%s)" % (host, port, exc))
        self.reader = self.sock.makefile("rb")

    def close(self):
        self.reader.close()
        self.sock.close()

    def command(self, *args):
        parts = [b"*%d\r\n" % len(args)]
        for arg in args:
            data = arg if isinstance(arg, bytes) else str(arg).encode("utf-8")
            parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
        try:
            self.sock.sendall(b"".join(parts))
            return self._reply()
        except (OSError, socket.error) as exc:
            raise ServiceError("Redis connection failed during %s (%s)" % (args[0], exc))

    def _reply(self):
        line = self.reader.readline()
        if not line.endswith(b"\r\n"):
            raise ServiceError("Redis closed the connection")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode("utf-8", "replace")
        if kind == b"-":
            raise ServiceError("Redis answered: %s" % rest.decode("utf-8", "replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None
            data = self.reader.read(size + 2)
            return data[:-2].decode("utf-8", "replace")
        if kind == b"*":
            size = int(rest)
            return None if size < 0 else [self._reply() for unused in range(size)]
        raise ServiceError("Redis answered something that is not RESP: %r" % line[:40])

    def info(self, section):
        """INFO <section> as a dict of strings."""
        fields = {}
        for line in self.command("INFO", section).splitlines():
            if ":" in line and not line.startswith("#"):
                key, value = line.split(":", 1)
                fields[key] = value.strip()
        return fields


@contextlib.contextmanager
def redis(host, port=6379, timeout=10):
    client = Redis(host, port, timeout)
    try:
        yield client
    finally:
        client.close()


def http(method, url, params=None, timeout=10):
    """(status, body text) of one HTTP request; connection errors raise ServiceError."""
    if params:
        url = "%s?%s" % (url, urlencode(params))
    try:
        with contextlib.closing(_OPENER.open(Request(url, method=method), timeout=timeout)) as response:
            return response.getcode(), response.read().decode("utf-8", "replace")
    except HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")
    except (URLError, OSError, socket.error) as exc:
        raise ServiceError("no answer from %s (%s)" % (url, getattr(exc, "reason", exc)))


def http_json(method, url, params=None, timeout=10):
    """(status, decoded JSON or None) of one HTTP request."""
    status, body = http(method, url, params, timeout)
    try:
        return status, json.loads(body)
    except ValueError:
        return status, None


def is_sqlite(path):
    try:
        with open(path, "rb") as handle:
            return handle.read(16) == SQLITE_HEADER
    except (IOError, OSError):
        return False


@contextlib.contextmanager
def sqlite_connection(path):
    """A connection to a database another process may be writing; WAL files it creates get the database's owner.

    SQLite creates ``-wal``/``-shm`` beside the database when none exist; left
    owned by root they would lock the service (Grafana runs as uid 472) out of
    its own database.
    """
    siblings = [path + suffix for suffix in ("-wal", "-shm", "-journal")]
    before = set(p for p in siblings if os.path.lexists(p))
    st = os.stat(path)
    conn = sqlite3.connect(path, timeout=30)
    try:
        yield conn
    finally:
        conn.close()
        for created in set(p for p in siblings if os.path.lexists(p)) - before:
            with contextlib.suppress(OSError):
                os.chown(created, st.st_uid, st.st_gid)


def sqlite_summary(conn):
    """integrity_check result and the row count of every table: what a copy must show."""
    integrity = "; ".join(row[0] for row in conn.execute("PRAGMA integrity_check"))
    tables = {}
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"):
        tables[name] = conn.execute('SELECT count(*) FROM "%s"' % name.replace('"', '""')).fetchone()[0]
    return {"integrity": integrity, "tables": tables}
