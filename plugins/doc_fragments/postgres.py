# Copyright (c) 2026 Mini Market
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment(object):
    DOCUMENTATION = r"""
options:
  login_user:
    description:
      - The PostgreSQL role to connect as.
    type: str
    default: postgres
    aliases: [login]
  login_password:
    description:
      - The password of O(login_user).
      - Passed to the client tools in their environment (E(PGPASSWORD)), never on the command line.
    type: str
    default: ''
  login_host:
    description:
      - Host running the database server.
      - Empty means the default local Unix socket.
    type: str
    default: ''
    aliases: [host]
  login_port:
    description:
      - Database port.
    type: int
    default: 5432
    aliases: [port]
  login_unix_socket:
    description:
      - Directory of the server's Unix socket; takes precedence over O(login_host).
    type: str
    default: ''
    aliases: [unix_socket]
  ssl_mode:
    description:
      - Whether and how the connection is encrypted with SSL and the server's certificate checked, as libpq's
        C(sslmode) (U(https://www.postgresql.org/docs/current/libpq-ssl.html)). V(verify-full) checks that
        O(ca_cert) signed the server's certificate and that it names O(login_host).
      - Passed to the client tools in their environment (E(PGSSLMODE)), never on the command line. Unset leaves
        libpq's own default (E(PGSSLMODE) of the environment, else V(prefer)).
    type: str
    choices: [allow, disable, prefer, require, verify-ca, verify-full]
  ca_cert:
    description:
      - File of the certificate authority (or authorities) that signed the server's certificate, checked with
        O(ssl_mode=verify-ca) or O(ssl_mode=verify-full).
      - Passed as E(PGSSLROOTCERT) in the tools' environment. With O(container) or O(compose_service), a path inside
        the container.
    type: str
    aliases: [ssl_rootcert]
  ssl_cert:
    description:
      - File of the client certificate, for a server that authenticates O(login_user) by certificate (C(pg_hba.conf)
        method C(cert), or C(clientcert=verify-full)); its CN must be the user name unless the server maps it.
      - Passed as E(PGSSLCERT) in the tools' environment. With O(container) or O(compose_service), a path inside
        the container.
    type: str
  ssl_key:
    description:
      - File of the client certificate's private key (mode 0600, or 0640 owned by root), passed as E(PGSSLKEY).
        With O(container) or O(compose_service), a path inside the container.
    type: str
  maintenance_db:
    description:
      - Database used for administrative statements (create, rename, drop databases).
    type: str
    default: postgres
  container:
    description:
      - Run C(psql), C(pg_dump), C(pg_restore) and C(pg_dumpall) inside this running container with C(docker exec -i),
        so the tools match the server's version and the host needs no PostgreSQL client.
      - Data streams through the container's standard input and output; connection settings are passed as
        environment variables whose values never appear on the command line.
      - Connection options are then resolved inside the container (an empty O(login_host) means the container's local socket).
      - Mutually exclusive with O(compose_service).
    type: str
  compose_project:
    description:
      - Compose project of O(compose_service).
    type: str
  compose_service:
    description:
      - Like O(container), in the running container of this compose service, found by its labels
        C(com.docker.compose.project=<compose_project>) and C(com.docker.compose.service=<compose_service>).
      - Works whatever the container is called (Compose v1 C(<project>_<service>_1), v2 C(<project>-<service>-1),
        or an explicit C(container_name)).
      - Fails naming both labels when no container has them, and naming the container when it is not running.
    type: str
  bin_dir:
    description:
      - Directory holding the PostgreSQL client programs (for example C(/usr/lib/postgresql/15/bin)).
      - With O(container), the directory inside the container.
      - Default is to search E(PATH).
    type: path
requirements:
  - PostgreSQL client programs (C(psql), C(pg_dump), C(pg_restore)) at least as new as the server, or the C(docker) CLI
    when O(container) or O(compose_service) is used.
"""
