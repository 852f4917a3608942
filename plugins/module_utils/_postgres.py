# Copyright (c) 2026 Mini Market
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""How the collection runs PostgreSQL client tools: natively or inside a container.

Connection settings travel in the child environment (``PGHOST``, ``PGPASSWORD``...),
never in argv.  In container mode ``docker exec -e VAR`` is given names only, so the
docker client copies each value from its own environment into the container.
"""

import contextlib
import os
import posixpath
import re
import shutil
import threading

from ansible_collections.minimarket.backup.plugins.module_utils._compose import service_container
from ansible_collections.minimarket.backup.plugins.module_utils._errors import BackupError
from ansible_collections.minimarket.backup.plugins.module_utils._process import PIPE, Process, run

SENTINEL = "__minimarket_backup_done__"
FIELD_SEP = "\x1f"
# Unaligned rows, tuples only, no psqlrc, no password prompt, stop at the first error.
PSQL_ARGS = ["-X", "-q", "-w", "-A", "-t", "-F", FIELD_SEP, "-v", "ON_ERROR_STOP=1"]
# What a kept session runs after each script, so the next one starts as in a fresh psql: no open transaction, no SET left.
KEPT_RESET = "\nROLLBACK;\nRESET ALL;"

# pg_restore -j needs a file it can reopen and seek: stdin goes into a temp file that is unlinked as soon as it is
# open, and the tool (exec'd, so killing it leaves nothing behind) reopens it as /dev/fd/3.
SPOOL_SCRIPT = 'f=$(mktemp) || exit 70; exec 3<>"$f" || exit 70; rm -f "$f"; cat >&3 || exit 71; exec "$@" /dev/fd/3'
# pg_restore -L reads its list from a file: the first argument (TOC ids) becomes one, unlinked the same way, on fd 4.
LIST_SCRIPT = 'l=$(mktemp) || exit 70; exec 4<>"$l" || exit 70; rm -f "$l"; printf "%s;\\n" $1 >&4 || exit 71; shift; '


SSL_MODES = ["allow", "disable", "prefer", "require", "verify-ca", "verify-full"]


def postgres_common_argument_spec():
    """The connection options (doc fragment minimarket.backup.postgres); aliases are community.postgresql's names."""
    return dict(
        login_user=dict(type="str", default="postgres", aliases=["login"]),
        login_password=dict(type="str", default="", no_log=True),
        login_host=dict(type="str", default="", aliases=["host"]),
        login_port=dict(type="int", default=5432, aliases=["port"]),
        login_unix_socket=dict(type="str", default="", aliases=["unix_socket"]),
        ssl_mode=dict(type="str", choices=SSL_MODES),
        ca_cert=dict(type="str", aliases=["ssl_rootcert"]),
        ssl_cert=dict(type="str"),
        ssl_key=dict(type="str", no_log=False),
        maintenance_db=dict(type="str", default="postgres"),
        container=dict(type="str"),
        compose_project=dict(type="str"),
        compose_service=dict(type="str"),
        bin_dir=dict(type="path"),
    )


def quote_ident(name):
    return '"%s"' % name.replace('"', '""')


def quote_literal(value):
    return "'%s'" % value.replace("'", "''")


def dump_pattern(schema, name):
    """A pg_dump -t pattern matching exactly one relation (quotes make * ? . literal)."""
    return "%s.%s" % (quote_ident(schema), quote_ident(name))


def major_of(version_text):
    match = re.search(r"(\d+)(?:\.(\d+))?", version_text or "")
    if not match:
        return None
    return int(match.group(1))


def terminated(sql):
    """The script ending in ``;``: psql holds an unterminated statement in its buffer, past anything sent after it."""
    script = sql.rstrip()
    return script if script.endswith(";") else script + "\n;"


def explain(stderr, what, rc=None, container=None):
    """Reduce a client tool's stderr to one line, with the fix when we recognise the cause."""
    lines = [line.strip() for line in (stderr or "").splitlines() if line.strip()]
    if not lines and container:
        return ("%s failed: exit status %s and no message: did container %s stop? check 'docker ps' and 'docker logs %s'"
                % (what, rc, container, container))
    if not lines:
        return "%s failed: exit status %s and no message (killed?)" % (what, rc)
    interesting = [line for line in lines if re.search(r"error|fatal|could not|failed", line, re.I)]
    text = " ".join((interesting or lines)[:2])
    text = re.sub(r"\s+", " ", text)
    hints = [
        (r"certificate verify failed|root certificate file|does not match host name|server does not support SSL",
         "check ssl_mode and ca_cert (the CA that signed the server's certificate)"),
        (r"no pg_hba.conf entry .* no encryption", "the server takes SSL connections only: set ssl_mode (verify-full with ca_cert)"),
        (r"requires a valid client certificate|certificate authentication failed|private key file|certificate present, but not private key",
         "the server wants a client certificate: set ssl_cert and ssl_key (a key file of mode 0600) for login_user"),
        (r"password authentication failed|no password supplied|authentication failed", "check login_user/login_password"),
        (r"database \".*\" does not exist", "check the db name (or create the database)"),
        (r"Connection refused|No such file or directory.*socket|could not connect|server closed the connection|"
         r"terminating connection|connection to server .* failed", "is the PostgreSQL server running? check login_host/login_port"),
        (r"No such container|is not running", "check the container name with 'docker ps'"),
        (r"permission denied", "use a login_user with enough privileges (superuser or owner)"),
        (r"No space left on device", "free space on the destination or choose another backup_dir"),
    ]
    for pattern, hint in hints:
        if re.search(pattern, text, re.I):
            return "%s failed: %s -- %s" % (what, text, hint)
    return "%s failed: %s" % (what, text)


class PgTools(object):
    """Builds argv + environment for psql/pg_dump/pg_restore in native or container mode."""

    def __init__(self, params, run_command=None):
        self._container = params.get("container") or None
        self.compose = (params["compose_project"], params["compose_service"]) if params.get("compose_service") else None
        self.bin_dir = params.get("bin_dir") or None
        self.maintenance_db = params.get("maintenance_db") or "postgres"
        self.run_command = run_command or run
        self.conn_env = {}
        self._kept = None
        self._keeping = False
        self._kept_lock = threading.Lock()
        host = params.get("login_unix_socket") or params.get("login_host") or ""
        if host:
            self.conn_env["PGHOST"] = host
        if params.get("login_port"):
            self.conn_env["PGPORT"] = str(params["login_port"])
        if params.get("login_user"):
            self.conn_env["PGUSER"] = params["login_user"]
        if params.get("login_password"):
            self.conn_env["PGPASSWORD"] = params["login_password"]
        if params.get("ssl_mode"):
            self.conn_env["PGSSLMODE"] = params["ssl_mode"]
        if params.get("ca_cert"):
            self.conn_env["PGSSLROOTCERT"] = params["ca_cert"]
        if params.get("ssl_cert"):
            self.conn_env["PGSSLCERT"] = params["ssl_cert"]
        if params.get("ssl_key"):
            self.conn_env["PGSSLKEY"] = params["ssl_key"]

    @property
    def container(self):
        """The container the tools run in: given, or found by compose labels on first use (None: native tools)."""
        if self._container is None and self.compose:
            self._container = service_container(self.run_command, *self.compose)
        return self._container

    def environ_update(self):
        env = dict(self.conn_env)
        env["PGCONNECT_TIMEOUT"] = "10"
        env["PGAPPNAME"] = "minimarket.backup"
        return env

    def _tool_path(self, tool):
        if self.bin_dir:
            path = os.path.join(self.bin_dir, tool)
            if not os.access(path, os.X_OK):
                raise BackupError("%s not found in bin_dir %s: install the PostgreSQL client there or fix bin_dir" % (tool, self.bin_dir))
            return path
        path = shutil.which(tool)
        if path is None:
            raise BackupError(
                "%s not found on PATH: install the PostgreSQL client, set bin_dir, or use container mode (container: <postgres container>)" % tool
            )
        return path

    def argv(self, tool, args, spool_stdin=False, toc_ids=None):
        """``spool_stdin``: the tool reads stdin as the file /dev/fd/3; ``toc_ids`` (with it): only those TOC entries, ``-L /dev/fd/4``."""
        names = sorted(self.environ_update())
        if self.container:
            docker = shutil.which("docker")
            if docker is None:
                raise BackupError("container mode needs the docker CLI on PATH: install docker or drop the container option")
            prefix = [docker, "exec", "-i"]
            for name in names:
                prefix += ["-e", name]
            prefix.append(self.container)
            command = [posixpath.join(self.bin_dir, tool) if self.bin_dir else tool]
        else:
            prefix = []
            command = [self._tool_path(tool)]
        if toc_ids is not None:
            ids = [str(int(toc_id)) for toc_id in toc_ids]
            return prefix + ["sh", "-c", LIST_SCRIPT + SPOOL_SCRIPT, "sh", " ".join(ids)] + command + list(args) + ["-L", "/dev/fd/4"]
        if spool_stdin:
            command = ["sh", "-c", SPOOL_SCRIPT, "sh"] + command
        return prefix + command + list(args)

    def run(self, tool, args, data=None, what=None, spool_stdin=False):
        """Short commands run to the end, output as text; raises BackupError with a one-line reason.

        ``data`` (stdin) is text or bytes: bytes, such as an archive, reach the tool untouched.
        ``spool_stdin`` as in ``argv``. The reason falls back to stdout because ``docker exec``
        prints its own failures (no such tool in the container) there.
        """
        argv = self.argv(tool, args, spool_stdin=spool_stdin)
        rc, out, err = self.run_command(argv, data=data, env=self.environ_update())
        if rc != 0:
            raise BackupError(explain(err or out, what or tool, rc, self.container))
        return out

    def psql(self, dbname, sql, what="psql"):
        """Rows of one SQL script's output (unaligned, tuples only).

        Inside ``kept_session`` the maintenance database's scripts share one psql, reset after each.
        """
        if dbname == self.maintenance_db and self._keeping:
            return self._kept_query(sql, what)
        out = self.run("psql", PSQL_ARGS + ["-d", dbname], data=sql, what=what)
        return [line.split(FIELD_SEP) for line in out.splitlines() if line != ""]

    @contextlib.contextmanager
    def kept_session(self):
        """One psql for the maintenance database's scripts while the block runs.

        Each psql costs a process (and in container mode a ``docker exec`` of about 0.15 s) and a
        connection; a restore asks the maintenance database a dozen times. Scoped to a block, not to
        the run, because a repair may restart the server under a session.
        """
        self._keeping = True
        try:
            yield self
        finally:
            self._keeping = False
            with self._kept_lock:
                self._close_kept()

    def _kept_query(self, sql, what):
        with self._kept_lock:
            if self._kept is None:
                self._kept = PsqlSession(self, self.maintenance_db, what=what)
            try:
                return self._kept.query(terminated(sql) + KEPT_RESET, what=what)
            except BaseException:
                # ON_ERROR_STOP ended that psql (or we stop here): the next script gets a new one.
                self._close_kept()
                raise

    def _close_kept(self):
        if self._kept is not None:
            session, self._kept = self._kept, None
            session.close()

    def start(self, tool, args, stdin=None, stdout=None, spool_stdin=False, toc_ids=None):
        """A streaming tool (a ``_process.Process``): data flows through it while we read or write it."""
        return Process(self.argv(tool, args, spool_stdin=spool_stdin, toc_ids=toc_ids), stdin=stdin, stdout=stdout,
                       env=self.environ_update(), label=tool)

    def server_version_num(self, dbname):
        return int(self.psql(dbname, "SHOW server_version_num;", what="connecting to PostgreSQL")[0][0])

    def tool_version(self, tool):
        return self.run(tool, ["--version"]).strip()

    def check_client(self, tool, server_num):
        """pg_dump refuses newer servers anyway, but a clear message beats its error."""
        text = self.tool_version(tool)
        client = major_of(text.split("(PostgreSQL)", 1)[-1])
        server = server_num // 10000
        if self.container is None and client is not None and client < server:
            raise BackupError(
                "%s is version %s but the server is PostgreSQL %d: install a PostgreSQL %d client and set bin_dir, "
                "or use container mode (container: <postgres container>)" % (tool, client, server, server)
            )
        return text

    def session(self, dbname):
        return PsqlSession(self, dbname)


class PsqlSession(object):
    """A long-lived psql coprocess: the exported snapshot lives only while its transaction stays open.

    Streamed, not run to the end, because the session must outlive many
    queries and the pg_dump processes that attach to its snapshot.
    """

    def __init__(self, tools, dbname, what=None):
        self._lock = threading.Lock()
        self.container = tools.container
        self.proc = tools.start("psql", PSQL_ARGS + ["-d", dbname], stdin=PIPE, stdout=PIPE)
        try:
            self.query("SELECT 1;", what=what or "connecting to database %r" % dbname)
        except BaseException:
            self.proc.close()
            raise

    def query(self, sql, what="query"):
        with self._lock:
            seen = len(self.proc.stderr())
            try:
                self.proc.stdin.write((terminated(sql) + "\n\\echo " + SENTINEL + "\n").encode("utf-8"))
                self.proc.stdin.flush()
            except (BrokenPipeError, OSError):
                raise self._failed(what, seen)
            rows = []
            while True:
                line = self.proc.stdout.readline()
                if not line:
                    raise self._failed(what, seen)
                text = line.decode("utf-8").rstrip("\n")
                if text == SENTINEL:
                    return rows
                if text != "":
                    rows.append(text.split(FIELD_SEP))

    def _failed(self, what, seen):
        """The error of this query only: what psql wrote to stderr before it (notices of earlier ones) is not its reason."""
        status = self.proc.wait()
        return BackupError(explain(self.proc.stderr()[seen:], what, status, self.container))

    def close(self):
        """End of input lets psql finish its transaction; one still running after 30 s is killed."""
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
            self.proc.exited(30)
        self.proc.close()
