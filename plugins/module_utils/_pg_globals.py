# Copyright (c) 2026 Mini Market
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Roles and other cluster globals: dumping ``globals.sql``, the roles a database needs, replaying only the missing ones.

A database's owner, grants and settings name roles that live outside it; this is
where the collection decides which roles must exist and which it may create.
"""

import io
import re

from ansible_collections.minimarket.backup.plugins.module_utils._errors import BackupError
from ansible_collections.minimarket.backup.plugins.module_utils._pg_format import extract_stream


IDENT = r'(?:"(?:[^"]|"")*"|[A-Za-z_][A-Za-z0-9_$]*)'
ROLE_STATEMENT = re.compile(r"^(?:CREATE ROLE|ALTER ROLE|COMMENT ON ROLE|SECURITY LABEL FOR \S+ ON ROLE) (%s)" % IDENT, re.S)
ROLE_IN_DATABASE = re.compile(r"^ALTER ROLE %s IN DATABASE " % IDENT)
MEMBERSHIP = re.compile(r"^GRANT %s(?:\s*,\s*%s)* TO (%s)" % (IDENT, IDENT, IDENT), re.S)


def dump_globals(tools, writer):
    """Small output, so run to the end (tools.run); non-superusers cannot read role passwords, so retry without them."""
    args = ["--globals-only", "--no-password", "-l", tools.maintenance_db]
    try:
        out = tools.run("pg_dumpall", args, what="pg_dumpall --globals-only")
    except BackupError as exc:
        if "permission denied" not in str(exc):
            raise
        out = tools.run("pg_dumpall", args + ["--no-role-passwords"], what="pg_dumpall --globals-only")
    writer.copy_stream("globals.sql", io.BytesIO(out.encode("utf-8")), {"kind": "globals"})


def referenced_roles(props):
    roles = set()
    if props.get("owner"):
        roles.add(props["owner"])
    roles.update(a["grantee"] for a in props.get("acl") or [] if a["grantee"] != "PUBLIC")
    roles.update(s["role"] for s in props.get("settings") or [] if s["role"])
    return roles


def existing_roles(tools):
    return set(r[0] for r in tools.psql(tools.maintenance_db, "SELECT rolname FROM pg_roles;", what="listing roles"))


def check_roles(props, existing, db, created=()):
    """Fail before anything is touched: GRANT/OWNER to a missing role would fail after the data load."""
    missing = sorted(referenced_roles(props) - set(existing) - set(created))
    if missing:
        raise BackupError("role(s) %s, used by database %s in the backup (owner, grants or settings), do not exist on this server: "
                          "create them, or restore with restore_globals: true from a backup made with include_globals: true"
                          % (", ".join(missing), db))


def unquote_ident(text):
    return text[1:-1].replace('""', '"') if text.startswith('"') else text


def split_sql(text):
    """Statements of a pg_dumpall --globals-only script: no dollar quoting there, only '...' and "..." to respect."""
    statements, current, quote = [], [], None
    for line in text.splitlines(True):
        if quote is None and not "".join(current).strip() and (line.startswith("--") or line.startswith("\\") or not line.strip()):
            continue
        for char in line:
            current.append(char)
            if quote:
                if char == quote:
                    quote = None
            elif char in "'\"":
                quote = char
            elif char == ";":
                statements.append("".join(current).strip())
                current = []
    if "".join(current).strip():
        statements.append("".join(current).strip())
    return statements


def plan_globals(text, existing):
    """Which statements of globals.sql to replay: only those creating or describing roles that do not exist yet.

    Existing roles (the connecting superuser included) are never altered -- not their attributes, not their
    password, not their memberships. Tablespaces and per-database role settings are skipped.
    """
    statements = split_sql(text)
    created, kept = [], []
    for statement in statements:
        match = re.match(r"^CREATE ROLE (%s);$" % IDENT, statement)
        if match:
            role = unquote_ident(match.group(1))
            (kept if role in existing else created).append(role)
    run, skipped = [], []
    for statement in statements:
        role = ROLE_STATEMENT.match(statement)
        member = MEMBERSHIP.match(statement)
        if statement.upper().startswith("SET "):
            run.append(statement)
        elif ROLE_IN_DATABASE.match(statement):
            skipped.append(statement)
        elif role:
            (run if unquote_ident(role.group(1)) in created else skipped).append(statement)
        elif member and " ON " not in statement.split(" TO ")[0]:
            (run if unquote_ident(member.group(1)) in created else skipped).append(statement)
        else:
            skipped.append(statement)
    return {"created": created, "kept": kept, "statements": run, "skipped": len(skipped)}


def prepare_globals(backup, existing, identity_file=None):
    member = backup.metadata.get("members", {}).get("globals.sql")
    if member is None:
        raise BackupError("restore_globals: %s has no globals.sql (dumped without include_globals): create the roles by hand "
                          "or restore without restore_globals" % backup.name)
    return plan_globals(extract_stream(backup.path, "globals.sql", member["sha256"], identity_file), existing)


def replay_globals(tools, plan):
    """All or nothing: one transaction (CREATE ROLE is transactional; tablespaces, which are not, are skipped)."""
    if plan["created"]:
        tools.psql(tools.maintenance_db, "BEGIN;\n%s\nCOMMIT;\n" % "\n".join(plan["statements"]), what="replaying globals.sql")
