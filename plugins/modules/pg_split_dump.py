#!/usr/bin/python
# Copyright (c) 2026 Mini Market
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: pg_split_dump
short_description: Consistent split dump, safe restore and verification of a PostgreSQL database, and checks of a live one
version_added: 0.1.0
description:
  - O(state=dump) writes C(<backup_dir>/database_<environment>_<YYYYMMDD_HHMMSS>.tar.gz) (C(.tar.zst), C(.tar)) and
    C(<same stem>_metadata.json). Schema, data and the per-table row counts in the metadata all come from one exported
    snapshot; a table's rows are the lines of its C(COPY) data in the archive (its own rows, without those of
    inheritance children). The archive holds C(schema.sql) (readable), the pre-data and post-data sections in custom
    format, one data stream per table, the remaining data (sequence values, large objects) and a manifest with every
    stream's chunks and sha256.
  - The archive is streamed through the compressor into a C(.partial) file, fsynced and renamed; the metadata is written
    last. A failure leaves no file that looks complete. One dump per O(backup_dir) and O(environment) at a time.
  - O(state=restore) checks the archive (ours, sha256 equals the metadata) and the server before touching anything.
    With O(strategy=swap) it restores into a temporary database, loads table data in parallel before indexes,
    constraints and triggers exist (each table's own indexes are built as soon as its data is in), compares every
    table's row count and the object counts with the metadata, and only
    then renames the live database to C(<db>_pre_restore_<timestamp>) and the restored one into place, both in one
    transaction, so the live name is never missing. Any failure before the rename drops the temporary database and
    leaves the live one untouched. RV(sessions) lists the sessions on the live database it terminated (in check mode,
    would terminate).
  - Every step a killed run would leave half done is first recorded in the intent journal (O(journal_dir)); every run
    of this module or M(minimarket.backup.docker_volume_archive) first repairs what an interrupted run left (reopens
    and renames back, drops temporary databases, restarts containers, puts volume data back) and returns it in
    RV(repaired).
  - Database-level properties recorded by the dump (owner, connection limit, comment, C(GRANT ... ON DATABASE),
    C(ALTER DATABASE ... SET) and C(ALTER ROLE ... IN DATABASE ... SET)) are applied to the restored copy before the swap
    and compared with the metadata. When a role they name does not exist, restore and verify fail before touching
    anything (create the role, or use O(restore_globals)).
  - Restore and verify first drop the temporary databases a killed earlier run of this module left for O(db)
    (C(<db>_restoring_<timestamp>), C(<db>_verify_<timestamp>)); a database is recognised by its name and by the
    comment this module puts on it, never by its name alone.
  - O(state=verify) checks the checksums, restores into a scratch database that is always dropped, compares row counts,
    and checks O(critical_tables) and O(queries).
  - O(state=check) makes the same O(critical_tables) and O(queries) checks on the live database O(db) itself (after a
    recovery), read-only, and fails with the same problems as O(state=verify). Only the critical tables are counted, in
    one snapshot, each found in the catalog and counted as a quoted identifier (capitals, spaces and quotes in a name are
    fine, and a name never runs as SQL).
  - With O(age_recipients), O(state=dump) writes C(database_<environment>_<YYYYMMDD_HHMMSS>.tar.gz.age) encrypted with
    C(age); O(state=restore) and O(state=verify) of such an archive need O(age_identity_file) and prove it opens the
    archive before anything is touched.
author:
  - Mini Market operations (!UNKNOWN)
extends_documentation_fragment:
  - minimarket.backup.postgres
  - minimarket.backup.backup_set
  - minimarket.backup.backup_set.ENVIRONMENT
  - minimarket.backup.encryption
  - minimarket.backup.attributes
attributes:
  check_mode:
    support: full
    details:
      - O(state=dump) and O(state=restore) check the server and the archive and report what they would do.
      - O(state=verify) only checks the archive's checksum (and that O(age_identity_file) opens an encrypted one) in check mode.
      - O(state=check) changes nothing and runs in check mode as usual.
  diff_mode:
    support: none
  idempotent:
    support: none
    details:
      - Every O(state=dump) writes a new backup and every O(state=restore) restores again. O(state=check) never changes anything.
options:
  state:
    description:
      - V(dump) writes a backup, V(restore) restores one, V(verify) proves one can be restored, V(check) checks the live
        database O(db) (O(critical_tables), O(queries)).
    type: str
    choices: [dump, restore, verify, check]
    default: dump
  db:
    description:
      - The database to dump, or to restore into (it is created if missing), or to check.
    type: str
    required: true
    aliases: [login_db]
  compression:
    description:
      - Compression of the outer archive. C(gzip) writes with ISA-L's C(igzip) at its level 3 when installed (Debian
        package C(isal)), otherwise C(pigz) or C(gzip) at level 6; it reads with C(igzip), C(pigz) or C(gzip).
        C(zstd) runs C(zstd -T0). Any of them makes a standard C(.tar.gz) / C(.tar.zst).
    type: str
    choices: [gzip, zstd, none]
    default: gzip
  compression_level:
    description:
      - Compressor level for O(state=dump), 1-9 with O(compression=gzip) and 1-19 with O(compression=zstd); unset
        means C(igzip -3) for gzip (level 6 without C(igzip)) and 3 for zstd.
      - A gzip level given here is a zlib level, so C(pigz)/C(gzip) run instead of C(igzip). Level 6 makes the
        smallest gzip archive of the three, for about ten times the CPU of C(igzip -3) (see C(bench/README.md)).
    type: int
  jobs:
    description:
      - Parallel workers. Dump runs that many C(pg_dump) processes for table data; restore builds indexes and
        constraints with C(pg_restore -j), and restore and verify analyze and count the tables in that many sessions.
    type: int
    default: 2
  include_globals:
    description:
      - Also store roles and tablespaces (C(pg_dumpall --globals-only)) as C(globals.sql) in the archive. Role passwords
        are left out when O(login_user) may not read them. O(restore_globals) replays the roles.
    type: bool
    default: false
  restore_globals:
    description:
      - With O(state=restore), first create the roles of the archive's C(globals.sql) (written by O(include_globals))
        that do not exist on the server, with their attributes, passwords, comments and memberships, in one
        transaction.
      - Roles that already exist, the connecting O(login_user) included, are never altered (attributes, password and
        memberships stay as they are). Tablespaces and per-database role settings of C(globals.sql) are skipped.
      - Needs a O(login_user) that may create roles.
    type: bool
    default: false
  src:
    description:
      - The archive to restore or verify, or V(latest) for the newest complete backup of O(environment) in
        O(backup_dir).
      - Required for O(state=restore) and O(state=verify). A path needs neither O(backup_dir) nor O(environment).
    type: str
  strategy:
    description:
      - V(swap) restores next to the live database and swaps names only after the copy is verified.
      - V(drop) drops the live database first, then restores (needs no room for two copies, but a failed restore leaves
        no database). Use it only on purpose.
    type: str
    choices: [swap, drop]
    default: swap
  keep_previous:
    description:
      - With O(strategy=swap), keep the replaced database as C(<db>_pre_restore_<timestamp>); V(false) drops it.
    type: bool
    default: true
  restore_as:
    description:
      - With O(state=restore), confirms restoring a dump taken from another database than O(db) under the name O(db);
        it must equal O(db). Without it such a restore fails before touching anything, also in check mode, naming the
        database the dump was taken from.
    type: str
  journal_dir:
    description:
      - Directory of the intent journal, where each restore and verify records what a killed run must undo or finish
        (one JSON file per job, removed when the job ends). Every run first repairs what an interrupted run left
        there and reports it in RV(repaired).
      - Default is C(.journal) in the backup root, the parent of O(backup_dir) (C(/var/backups/minimarket/.journal) for
        O(backup_dir=/var/backups/minimarket/database)), or of the directory of O(src). The volume module uses the
        same directory, so either module repairs what the other left.
    type: path
  scratch_db:
    description:
      - Name of the throwaway database for O(state=verify). It must not exist; it is always dropped afterwards.
      - Default is C(<db>_verify_<timestamp>).
    type: str
  critical_tables:
    description:
      - For O(state=verify) and O(state=check), tables (C(schema.table), or C(table) in C(public)) and the minimum number of
        rows each must have. Names are written as they are (C(Ventas Día), not C("Ventas Día")).
    type: dict
  queries:
    description:
      - For O(state=verify) and O(state=check), SQL queries that must each return true, run in the scratch database
        (verify) or in O(db) (check).
    type: list
    elements: str
notes:
  - The format and its measured costs are explained in the collection's C(docs/modules/pg_split_dump.md).
  - Database grants are re-created as granted by the database owner; who granted them originally is not kept.
seealso:
  - name: pg_dump
    description: PostgreSQL's dump tool, used for every stream of the archive.
    link: https://www.postgresql.org/docs/15/app-pgdump.html
"""

EXAMPLES = r"""
- name: Dump the production database
  minimarket.backup.pg_split_dump:
    state: dump
    db: minimarket
    login_host: 127.0.0.1
    login_password: "{{ vault_pg_password }}"
    backup_dir: /var/backups/minimarket/database
    environment: production
    compression: zstd

- name: Dump through the postgres container (no client on the host), found by its compose labels (v1 or v2)
  minimarket.backup.pg_split_dump:
    db: minimarket
    compose_project: inventario-retail
    compose_service: postgres
    login_password: "{{ vault_pg_password }}"
    backup_dir: /var/backups/minimarket/database
    environment: production

- name: Restore the newest complete backup, keeping the replaced database
  minimarket.backup.pg_split_dump:
    state: restore
    db: minimarket
    compose_project: inventario-retail
    compose_service: postgres
    backup_dir: /var/backups/minimarket/database
    environment: production
    src: latest

- name: Restore onto a new server, creating the roles the backup needs first
  minimarket.backup.pg_split_dump:
    state: restore
    db: minimarket
    compose_project: inventario-retail
    compose_service: postgres
    src: /var/backups/minimarket/database/database_production_20251007_120000.tar.gz
    restore_globals: true

- name: Dump encrypted for two keys (the private keys stay off the host)
  minimarket.backup.pg_split_dump:
    db: minimarket
    compose_project: inventario-retail
    compose_service: postgres
    backup_dir: /var/backups/minimarket/database
    environment: production
    age_recipients:
      - age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p
      - age1lggyhqrw2nlhcxprm67z43rta597azn8gknawjehu9d9dl0jq3yqqvfafg

- name: Restore the newest encrypted backup with a key copied to the host for the restore
  minimarket.backup.pg_split_dump:
    state: restore
    db: minimarket
    compose_project: inventario-retail
    compose_service: postgres
    backup_dir: /var/backups/minimarket/database
    environment: production
    src: latest
    age_identity_file: /etc/minimarket-backup/age-identity.txt

- name: Restore a dump of minimarket under another name, on purpose
  minimarket.backup.pg_split_dump:
    state: restore
    db: minimarket_copia
    restore_as: minimarket_copia
    container: inventario-retail_postgres_1
    src: /var/backups/minimarket/database/database_production_20251007_120000.tar.gz

- name: Prove last night's backup can be restored
  minimarket.backup.pg_split_dump:
    state: verify
    db: minimarket
    backup_dir: /var/backups/minimarket/database
    environment: production
    src: latest
    critical_tables:
      productos: 1
      ventas: 1
    queries:
      - SELECT count(*) > 0 FROM categorias

- name: After a recovery, check the live database with the same checks
  minimarket.backup.pg_split_dump:
    state: check
    db: minimarket
    compose_project: inventario-retail
    compose_service: postgres
    critical_tables:
      productos: 1
      Ventas Día: 1  # names as they are, not SQL-quoted
    queries:
      - SELECT count(*) > 0 FROM categorias
"""

RETURN = r"""
archive:
  description: Path of the written archive.
  returned: state=dump
  type: str
  sample: /var/backups/minimarket/database/database_production_20251007_120000.tar.gz
metadata:
  description: Path of the metadata file.
  returned: state=dump
  type: str
  sample: /var/backups/minimarket/database/database_production_20251007_120000_metadata.json
size:
  description: Archive size in bytes.
  returned: state=dump and not check mode
  type: int
  sample: 1048576
sha256:
  description: sha256 of the archive (of the encrypted bytes when encrypted).
  returned: state=dump and not check mode
  type: str
  sample: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
encrypted:
  description: Whether the archive is (or would be, in check mode) encrypted with C(age).
  returned: state=dump
  type: bool
  sample: true
recipients:
  description: The age public keys the archive is encrypted to (empty when not encrypted).
  returned: state=dump
  type: list
  elements: str
  sample: [age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p]
duration:
  description: Seconds the whole operation took.
  returned: success and not check mode
  type: float
  sample: 12.5
tables:
  description:
    - For O(state=dump), each table's exact row count in the snapshot (its own rows, counted in its C(COPY) data).
    - For O(state=restore) and O(state=verify), per table the expected and restored row counts and whether they match.
  returned: success and not check mode
  type: dict
  sample: {"public.productos": {"expected": 2000, "restored": 2000, "ok": true}}
src:
  description: The archive that was restored or verified.
  returned: state=restore or state=verify
  type: str
  sample: /var/backups/minimarket/database/database_production_20251007_120000.tar.gz
backup:
  description: The backup restored or verified, as the operator confirms it before a restore.
  returned: state=restore or state=verify
  type: dict
  contains:
    name:
      description: File name of the archive.
      type: str
    path:
      description: Full path of the archive.
      type: str
    environment:
      description: Environment of the backup (from its name).
      type: str
    created:
      description: When the backup was taken (UTC, ISO 8601).
      type: str
    size:
      description: Size of the archive in bytes.
      type: int
    summary:
      description: One line with the path, UTC date, size and environment, as the confirmation shows it.
      type: str
  sample: {"name": "database_production_20251007_120000.tar.gz", "environment": "production",
           "path": "/var/backups/minimarket/database/database_production_20251007_120000.tar.gz",
           "created": "2025-10-07T12:00:00+00:00", "size": 1048576,
           "summary": "/var/backups/minimarket/database/database_production_20251007_120000.tar.gz
                       (taken 2025-10-07 12:00:00 UTC, 1.0 MiB, environment production)"}
msg:
  description:
    - What the module would do (check mode).
    - For O(state=check), one line with each critical table's rows and the number of queries that held.
  returned: check mode, or state=check
  type: str
  sample: would restore database_production_20251007_120000.tar.gz into minimarket (strategy swap)
database:
  description: The database restored into, or checked (O(db)).
  returned: state=restore or state=check
  type: str
  sample: minimarket
strategy:
  description: The restore strategy used (O(strategy)).
  returned: state=restore
  type: str
  sample: swap
previous:
  description: Name of the replaced database kept (or dropped, see RV(previous_dropped)) by O(strategy=swap).
  returned: state=restore
  type: str
  sample: minimarket_pre_restore_20251008_031500
previous_dropped:
  description: Whether the replaced database was dropped because O(keep_previous=false).
  returned: state=restore and keep_previous=false and a database was replaced
  type: bool
  sample: true
restore_duration:
  description: Seconds spent restoring and checking the temporary copy, before the swap.
  returned: state=restore and strategy=swap and not check mode
  type: float
  sample: 10.1
database_properties:
  description:
    - Owner, connection limit, comment, ACL (null when never changed from the default) and settings of the restored
      (O(state=restore)) or scratch (O(state=verify)) database, read back after they were applied; they equal the backup's.
  returned: (state=restore or state=verify) and not check mode
  type: dict
  sample: {"owner": "minimarket", "connection_limit": -1, "comment": null, "acl": null,
           "settings": [{"role": null, "name": "timezone", "value": "America/Argentina/Buenos_Aires"}]}
leftovers_dropped:
  description: Temporary databases left by a killed earlier restore or verify of O(db), dropped before starting (in check mode, would be dropped).
  returned: state=restore or (state=verify and not check mode)
  type: list
  elements: str
  sample: [minimarket_restoring_20251008_031500]
globals:
  description: What O(restore_globals) did (or would do in check mode).
  returned: state=restore and restore_globals=true
  type: dict
  contains:
    created:
      description: Roles created from C(globals.sql).
      type: list
      elements: str
    kept:
      description: Roles of C(globals.sql) that already existed and were left untouched.
      type: list
      elements: str
    skipped_statements:
      description: Statements of C(globals.sql) not replayed (about existing roles, tablespaces, per-database settings).
      type: int
  sample: {"created": ["vendedor"], "kept": ["minimarket"], "skipped_statements": 4}
source_database:
  description: The database the dump was taken from (from its metadata); differs from RV(database) only with O(restore_as).
  returned: state=restore
  type: str
  sample: minimarket
sessions:
  description:
    - Sessions on the live database the restore terminated (in check mode, would terminate) before the swap or drop.
  returned: state=restore
  type: list
  elements: dict
  sample: [{"pid": 4242, "user": "minimarket", "application": "agente_negocio", "state": "idle in transaction"}]
repaired:
  description:
    - What this run repaired, first thing, from the intent journal of interrupted runs (see O(journal_dir)); one entry per
      repair with the journal file, the job and what was done.
  returned: when an interrupted run had left something to repair
  type: list
  elements: dict
  sample: [{"journal": "pg_split_dump-restore-20251008T031500Z-4242.json", "job": "pg_split_dump restore",
            "repair": "reopened database minimarket to connections"}]
scratch_db:
  description: The scratch database used (and dropped) by O(state=verify).
  returned: state=verify and not check mode
  type: str
  sample: minimarket_verify_20251008_031500
checks:
  description: Result of each O(critical_tables) and O(queries) check.
  returned: (state=verify and not check mode) or state=check
  type: list
  elements: dict
  sample: [{"check": "critical table productos >= 1 rows", "ok": true, "value": 2000}]
problems:
  description: What did not hold during O(state=verify) or O(state=check) (empty on success).
  returned: (state=verify and not check mode) or state=check
  type: list
  elements: str
  sample: []
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.minimarket.backup.plugins.module_utils._backup_set import metadata_path
from ansible_collections.minimarket.backup.plugins.module_utils._errors import BackupError
from ansible_collections.minimarket.backup.plugins.module_utils._pipeline import check_recipients, encryption_argument_spec
from ansible_collections.minimarket.backup.plugins.module_utils import _journal
from ansible_collections.minimarket.backup.plugins.module_utils._pg_dump import (
    DumpOptions,
    check_backup_dir,
    check_compression_level,
    dump,
    plan_dump,
)
from ansible_collections.minimarket.backup.plugins.module_utils._pg_format import BackupSource, load_backup
from ansible_collections.minimarket.backup.plugins.module_utils._pg_restore import RestoreOptions, restore
from ansible_collections.minimarket.backup.plugins.module_utils._pg_restore import repairers as pg_repairers
from ansible_collections.minimarket.backup.plugins.module_utils._pg_verify import VerifyFailed, VerifyOptions, check_live, verify
from ansible_collections.minimarket.backup.plugins.module_utils._postgres import PgTools, postgres_common_argument_spec
from ansible_collections.minimarket.backup.plugins.module_utils._vocabulary import (
    backup_dir_argument_spec,
    environment_argument_spec,
    finds_latest,
    names_files,
)


def run(module, tools, journal_dir):
    params = module.params
    state = params["state"]
    if state == "dump":
        if module.check_mode:
            recipients = check_recipients(params["age_recipients"])
            backup_dir_exists = check_backup_dir(params["backup_dir"], may_not_exist=True)
            tools.check_client("pg_dump", tools.server_version_num(params["db"]))
            check_compression_level(params["compression"], params["compression_level"])
            path = plan_dump(params["backup_dir"], params["environment"], params["compression"], encrypted=bool(recipients))
            msg = "would write %s" % path
            if not backup_dir_exists:
                msg += " (%s does not exist yet: the run creates it)" % params["backup_dir"]
            return dict(changed=True, archive=path, metadata=metadata_path(path), encrypted=bool(recipients),
                        recipients=recipients, msg=msg)
        result = dump(tools, DumpOptions(params["db"], params["backup_dir"], params["environment"], params["compression"],
                                         params["jobs"], params["include_globals"], params["age_recipients"],
                                         params["compression_level"]))
        return dict(changed=True, **result)
    if state == "check":
        return dict(changed=False, **check_live(tools, params["db"], params["critical_tables"], params["queries"]))
    source = BackupSource(params["src"], params["backup_dir"], params["environment"], params["age_identity_file"])
    if state == "restore":
        options = RestoreOptions(source, params["db"], params["strategy"], params["jobs"], params["keep_previous"],
                                 params["restore_globals"], params["restore_as"])
        with _journal.job(None if module.check_mode else journal_dir, "pg_split_dump restore") as journal:
            result = restore(tools, options, check_mode=module.check_mode, journal=journal)
        return dict(changed=True, **result)
    if module.check_mode:
        backup = load_backup(source)
        return dict(changed=False, src=backup.path, backup=backup.describe(), warnings=backup.warnings,
                    msg="checksum of %s verified; contents not restored in check mode" % backup.name)
    with _journal.job(journal_dir, "pg_split_dump verify") as journal:
        result = verify(tools, VerifyOptions(source, params["db"], params["jobs"], params["scratch_db"],
                                             params["critical_tables"], params["queries"]), journal=journal)
    # The scratch database is gone again; only dropping a leftover of an earlier run changes anything.
    return dict(changed=bool(result["leftovers_dropped"]), **result)


def repair(module, tools, journal_dir):
    """First thing in every run: repair what an interrupted run of either module left (containers, volumes, databases)."""
    pending = _journal.pending(journal_dir)
    if module.check_mode:
        return [], ["not repairing in check mode: %s" % w for w in pending]
    if not pending:
        return [], []
    return _journal.replay(journal_dir, repairers(tools))


def repairers(tools):
    """Imported here, not at the top: the volume side loads the Docker SDK (0.1 s), which only a repair needs."""
    from ansible_collections.minimarket.backup.plugins.module_utils._docker import HAS_DOCKER
    from ansible_collections.minimarket.backup.plugins.module_utils._volume_archive import repairers as volume_repairers

    found = pg_repairers(tools)
    if HAS_DOCKER:
        found.update(volume_repairers())
    return found


def main():
    argument_spec = postgres_common_argument_spec()
    argument_spec.update(encryption_argument_spec())
    argument_spec.update(backup_dir_argument_spec())
    argument_spec.update(environment_argument_spec())
    argument_spec.update(
        state=dict(type="str", default="dump", choices=["dump", "restore", "verify", "check"]),
        db=dict(type="str", required=True, aliases=["login_db"]),
        compression=dict(type="str", default="gzip", choices=["gzip", "zstd", "none"]),
        compression_level=dict(type="int"),
        jobs=dict(type="int", default=2),
        include_globals=dict(type="bool", default=False),
        restore_globals=dict(type="bool", default=False),
        src=dict(type="str"),
        strategy=dict(type="str", default="swap", choices=["swap", "drop"]),
        keep_previous=dict(type="bool", default=True),
        scratch_db=dict(type="str"),
        critical_tables=dict(type="dict"),
        queries=dict(type="list", elements="str"),
        restore_as=dict(type="str"),
        journal_dir=dict(type="path"),
    )
    module = AnsibleModule(
        argument_spec=argument_spec,
        supports_check_mode=True,
        mutually_exclusive=[("container", "compose_service")],
        required_together=[("compose_project", "compose_service")],
        required_if=[
            ("state", "restore", ("src",)),
            ("state", "verify", ("src",)),
        ],
    )
    if module.params["jobs"] < 1:
        module.fail_json(msg="jobs is %d: set jobs to 1 or more" % module.params["jobs"])
    problem = (names_files(module.params, "database", "state=dump") if module.params["state"] == "dump"
               else finds_latest(module.params, "database"))
    if problem:
        module.fail_json(msg=problem)
    tools = PgTools(module.params)
    journal_dir = module.params["journal_dir"] or _journal.default_dir(module.params["backup_dir"], module.params["src"])
    repaired = []
    try:
        repaired, warnings = repair(module, tools, journal_dir)
        for warning in warnings:
            module.warn(warning)
        with tools.kept_session():
            result = run(module, tools, journal_dir)
    except VerifyFailed as exc:
        for warning in exc.result.pop("warnings", []):
            module.warn(warning)
        if repaired:
            exc.result["repaired"] = repaired
        module.fail_json(msg=str(exc), **exc.result)
    except BackupError as exc:
        module.fail_json(msg=str(exc), **(dict(repaired=repaired) if repaired else {}))
    if repaired:
        result["repaired"] = repaired
        result["changed"] = True
    for warning in result.pop("warnings", []):
        module.warn(warning)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
