#!/usr/bin/python
# Copyright (c) 2026 Mini Market
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
---
module: docker_volume_archive
short_description: Archive, verify and restore Docker named volumes faithfully
version_added: 0.1.0
description:
  - Archives one or more Docker named volumes into one compressed tar
    (C(volumes_<env>_<YYYYMMDD_HHMMSS>.tar.gz), C(.tar.zst) or C(.tar)) with a
    C(_metadata.json) written last, verifies such an archive, and restores it.
  - Each volume is one top-level directory of the archive. The metadata records
    per volume the driver, driver options, labels, file count, byte count and a
    content sha256 that does not depend on how the archive was read.
  - Host mode (root on the Docker host, C(local) driver) reads and writes the
    volume mountpoints with GNU tar and keeps owners, modes, hard links,
    symlinks, sparse files, FIFOs, xattrs and POSIX ACLs. Restores are extracted
    beside the data, checked against the archive's content digest, then swapped
    into place, so a failure leaves the volumes as they were.
  - API mode goes through the Engine archive API with a helper container. It
    keeps owners, modes, hard links, symlinks and FIFOs but not ACLs, not xattrs
    (except C(security.capability)) and stores sparse files densely. Its
    restore empties the volume before writing, so a failure midway leaves it
    incomplete (the archive is fully checked before that).
  - A host-mode restore swaps each volume's data directory with the checked copy in one step
    (C(renameat2) with C(RENAME_EXCHANGE)), so C(_data) is never missing.
  - Restores check the archive sha256 and every member before writing anything
    and refuse absolute names, C(..), members outside the volume directories,
    hard links leaving their volume, writes through symlinks and device nodes.
  - With O(age_recipients) the archive is encrypted with C(age) while it is
    written (C(volumes_<env>_<YYYYMMDD_HHMMSS>.tar.gz.age)); restoring or
    verifying it needs O(age_identity_file), which is proven to open the archive
    before any container is stopped or any volume touched.
author:
  - Mini Market operations (!UNKNOWN)
requirements:
  - Docker SDK for Python (C(docker)) on the target.
  - GNU tar, and C(pigz)/C(gzip) or C(zstd) for compressed archives.
  - For the V(sqlite) mode of O(consistency), C(unshare) and C(mount) (util-linux) and Python's C(sqlite3) module.
extends_documentation_fragment:
  - minimarket.backup.encryption
  - minimarket.backup.backup_set
  - minimarket.backup.backup_set.ENVIRONMENT
attributes:
  check_mode:
    support: full
    description: Nothing is written, no container is stopped; restore and verify still read and check the archive.
  diff_mode:
    support: full
    description: Restore reports each volume's state before and after.
  idempotent:
    support: none
    description: Every archive run writes a new backup; every restore rewrites the volumes.
options:
  state:
    description:
      - V(dump) writes a new backup, V(verify) checks one, V(restore) puts its content back.
      - V(archive) is the old name of V(dump) and does the same.
    type: str
    choices: [dump, archive, restore, verify]
    default: dump
  volumes:
    description:
      - Volume names. Required to archive; for restore, the subset to restore (default all volumes of the archive).
    type: list
    elements: str
    default: []
  compression:
    description:
      - Compression of a new archive; V(zstd) is the fastest. V(gzip) runs ISA-L's C(igzip) (level 3) when it is
        installed, otherwise C(pigz) or C(gzip) at level 6.
    type: str
    choices: [gzip, zstd, none]
    default: gzip
  stop_containers:
    description:
      - Stop the running containers that use the volumes for the duration and
        restart exactly those afterwards, also when the operation fails.
        With O(state=dump) only the users of V(stop)-mode volumes (see O(consistency)) are stopped.
      - Without it, archiving a volume in use warns and restoring one is refused.
    type: bool
    default: false
  consistency:
    description:
      - How each volume is made consistent while it is archived, as volume name to mode; unlisted volumes use V(stop).
      - V(stop) stops the containers using the volume while it is read (with O(stop_containers)).
      - V(redis) writes a canary key, runs C(BGSAVE) and waits for it (C(INFO persistence)), and pauses automatic
        AOF rewrites while the volume is read, so the append-only file is read as a prefix that Redis loads.
        Redis is asked on port 6379 at its container's address.
      - V(prometheus) takes a TSDB snapshot through the admin API (port 9090, C(--web.enable-admin-api)) and archives
        the snapshot as the volume's data, then deletes it.
      - V(sqlite) copies every SQLite database of the volume with SQLite's online backup API and archives the copies in
        place of the live files (without their C(-wal)/C(-shm)).
      - Online modes need host mode. A service that cannot be asked (admin API off, no network address, several
        containers on the volume) falls back to V(stop) with a warning. The metadata records per volume the mode used
        and what a restore must show (canary, key count, series, table counts).
    type: dict
    default: {}
  src:
    description:
      - Archive to restore or verify, or V(latest) for the newest complete one of O(environment) in O(backup_dir).
      - A path needs neither O(backup_dir) nor O(environment).
    type: str
    default: latest
  docker_host:
    description:
      - Docker Engine address.
    type: str
    default: unix:///var/run/docker.sock
  mode:
    description:
      - V(host) reads the mountpoints directly, V(api) uses the Engine archive API, V(auto) picks host when possible.
    type: str
    choices: [auto, host, api]
    default: auto
  helper_image:
    description:
      - Image (with C(/bin/sh)) of the helper container used in API mode. It is never pulled.
    type: str
    default: minimarket/busybox:latest
  allow_devices:
    description:
      - Allow device nodes in an archive being restored.
    type: bool
    default: false
  check_restored:
    description:
      - In host mode, read back what was extracted and compare its names, types, modes, owners, mtimes, sizes,
        link targets, xattrs and ACLs with the archive before swapping it into place (catches a filesystem
        that drops xattrs or ACLs while GNU tar only warns). File contents are not hashed again; they are
        checked against the metadata while the archive is streamed into tar. Disable only when the target
        filesystem is known to keep xattrs and ACLs and restore time matters more.
    type: bool
    default: true
  scratch_restore:
    description:
      - With O(state=verify), also restore every volume of the archive into new scratch volumes, compare
        their content digests with the metadata, then remove them. Skipped in check mode.
    type: bool
    default: false
  journal_dir:
    description:
      - Directory of the intent journal, where each archive, restore and verify records what a killed run must undo or
        finish (containers it stopped, volume data it swapped, scratch volumes, staging directories); one JSON file per
        job, removed when the job ends. Every run first repairs what an interrupted run left there and reports it in
        RV(repaired).
      - Default is C(.journal) in the backup root, the parent of O(backup_dir) (C(/var/backups/minimarket/.journal) for
        O(backup_dir=/var/backups/minimarket/volumes)), or of the directory of O(src);
        M(minimarket.backup.pg_split_dump) uses the same directory.
    type: path
notes:
  - Containers using a V(stop)-mode volume while it is archived without O(stop_containers) may leave an inconsistent
    archive; files that change or vanish while read are reported as warnings (and in the metadata).
  - The services of online volumes are reached on their Docker network from the Docker host (the module runs there as
    root); no port needs to be published and no tool is needed inside the containers.
"""

EXAMPLES = r"""
- name: Archive the Grafana and PostgreSQL volumes, stopping their containers
  minimarket.backup.docker_volume_archive:
    state: dump
    volumes:
      - inventario-retail_postgres-data
      - inventario-retail_grafana-data
    backup_dir: /var/backups/minimarket/volumes
    environment: production
    compression: zstd
    stop_containers: true

- name: Archive the whole stack; Redis, Prometheus and Grafana keep running
  minimarket.backup.docker_volume_archive:
    volumes:
      - inventario-retail_redis-data
      - inventario-retail_prometheus-data
      - inventario-retail_grafana-data
      - inventario-retail_loki-data
    backup_dir: /var/backups/minimarket/volumes
    environment: production
    stop_containers: true
    consistency:
      inventario-retail_redis-data: redis
      inventario-retail_prometheus-data: prometheus
      inventario-retail_grafana-data: sqlite

- name: Check the newest archive without touching any volume
  minimarket.backup.docker_volume_archive:
    state: verify
    backup_dir: /var/backups/minimarket/volumes
    environment: production

- name: Archive encrypted for the shop's recovery key
  minimarket.backup.docker_volume_archive:
    volumes:
      - inventario-retail_grafana-data
    backup_dir: /var/backups/minimarket/volumes
    environment: production
    stop_containers: true
    age_recipients:
      - age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p

- name: Check the newest encrypted archive with the key copied to the host
  minimarket.backup.docker_volume_archive:
    state: verify
    backup_dir: /var/backups/minimarket/volumes
    environment: production
    age_identity_file: /etc/minimarket-backup/age-identity.txt

- name: Restore only Grafana from a given archive (its name carries the environment; no backup_dir needed)
  minimarket.backup.docker_volume_archive:
    state: restore
    src: /var/backups/minimarket/volumes/volumes_production_20251007_120000.tar.gz
    volumes:
      - inventario-retail_grafana-data
    stop_containers: true
"""

RETURN = r"""
archive:
  description: Path of the archive written, verified or restored.
  returned: success, except archive in check mode
  type: str
  sample: /var/backups/minimarket/volumes/volumes_production_20251007_120000.tar.gz
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
  sample: {"name": "volumes_production_20251007_120000.tar.gz", "environment": "production",
           "path": "/var/backups/minimarket/volumes/volumes_production_20251007_120000.tar.gz",
           "created": "2025-10-07T12:00:00+00:00", "size": 1048576,
           "summary": "/var/backups/minimarket/volumes/volumes_production_20251007_120000.tar.gz
                       (taken 2025-10-07 12:00:00 UTC, 1.0 MiB, environment production)"}
metadata:
  description: Path of the metadata file written.
  returned: state=dump, not in check mode
  type: str
sha256:
  description: sha256 of the archive file.
  returned: state=dump or state=verify, not in check mode
  type: str
size:
  description: Size of the archive file in bytes.
  returned: state=dump, not in check mode
  type: int
mode:
  description: Read/write path used, V(host) or V(api).
  returned: state=dump, state=restore, or state=verify with O(scratch_restore)
  type: str
volumes:
  description:
    - Per volume. Archive and verify give C(name), C(files) (entries below the volume root, that is files,
      directories, links, FIFOs), C(size) (bytes of regular files), C(sha256) (content digest);
      archive adds C(driver), C(driver_options), C(labels), C(stopped_containers) and C(consistency) (C(mode),
      C(how), C(fallback) when an online mode fell back to V(stop), and per mode C(canary), C(keys), C(series) or
      C(databases)); restore gives
      C(name), C(action) (C(created) or C(replaced)), C(files), C(size) and C(duration) (seconds).
  returned: always
  type: list
  elements: dict
stopped_containers:
  description: Containers stopped (and restarted) for the operation, as C(id) and C(name).
  returned: state=dump or state=restore
  type: list
  elements: dict
duration:
  description: Seconds spent reading the volumes and writing the archive.
  returned: state=dump, not in check mode
  type: float
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
repaired:
  description:
    - What this run repaired, first thing, from the intent journal of interrupted runs (see O(journal_dir)); one entry
      per repair with the journal file, the job and what was done.
  returned: when an interrupted run had left something to repair
  type: list
  elements: dict
  sample: [{"journal": "docker_volume_archive-restore-20251008T031500Z-4242.json", "job": "docker_volume_archive restore",
            "repair": "started container inventario-retail_grafana_1 that an interrupted run had stopped"}]
msg:
  description: The archive that would be written.
  returned: state=dump in check mode
  type: str
  sample: would write /var/backups/minimarket/volumes/volumes_production_20251007_120000.tar.gz.age
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.minimarket.backup.plugins.module_utils._errors import BackupError
from ansible_collections.minimarket.backup.plugins.module_utils._pipeline import encryption_argument_spec
from ansible_collections.minimarket.backup.plugins.module_utils._docker import (
    DOCKER_IMPORT_ERROR,
    HAS_DOCKER,
    Engine,
)
from ansible_collections.minimarket.backup.plugins.module_utils import _journal
from ansible_collections.minimarket.backup.plugins.module_utils import _volume_archive as va
from ansible_collections.minimarket.backup.plugins.module_utils._vocabulary import (
    backup_dir_argument_spec,
    environment_argument_spec,
    finds_latest,
    names_files,
)


def main():
    argument_spec = encryption_argument_spec()
    argument_spec.update(backup_dir_argument_spec())
    argument_spec.update(environment_argument_spec())
    argument_spec.update(
        state=dict(type="str", default="dump", choices=["dump", "archive", "restore", "verify"]),
        volumes=dict(type="list", elements="str", default=[]),
        compression=dict(type="str", default="gzip", choices=["gzip", "zstd", "none"]),
        stop_containers=dict(type="bool", default=False),
        src=dict(type="str", default="latest"),
        docker_host=dict(type="str", default="unix:///var/run/docker.sock"),
        mode=dict(type="str", default="auto", choices=["auto", "host", "api"]),
        helper_image=dict(type="str", default=va.DEFAULT_HELPER_IMAGE),
        allow_devices=dict(type="bool", default=False),
        check_restored=dict(type="bool", default=True),
        scratch_restore=dict(type="bool", default=False),
        journal_dir=dict(type="path"),
        consistency=dict(type="dict", default={}),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    if not HAS_DOCKER:
        module.fail_json(
            msg="the Python 'docker' SDK is not installed on the target host: install it (pip install docker, "
                "or apt install python3-docker) for the Python Ansible uses",
            exception=DOCKER_IMPORT_ERROR,
        )
    p = module.params
    if p["state"] == "archive":
        p["state"] = "dump"
    problem = names_files(p, "volumes", "state=dump") if p["state"] == "dump" else finds_latest(p, "volumes")
    if problem:
        module.fail_json(msg=problem)
    journal_dir = p["journal_dir"] or _journal.default_dir(p["backup_dir"], p["src"])
    repaired = []
    try:
        if module.check_mode:
            warnings = ["not repairing in check mode: %s" % line for line in _journal.pending(journal_dir)]
        else:
            repaired, warnings = _journal.replay(journal_dir, va.repairers())
        for warning in warnings:
            module.warn(warning)
        result = run(module, p, journal_dir)
    except BackupError as exc:
        module.fail_json(msg=str(exc), **(dict(repaired=repaired) if repaired else {}))
    if repaired:
        result["repaired"] = repaired
        result["changed"] = True
    module.exit_json(**result)


def run(module, p, journal_dir):
    if p["state"] == "verify":
        engine = Engine(p["docker_host"]) if p["scratch_restore"] and not module.check_mode else None
        with _journal.job(journal_dir if engine else None, "docker_volume_archive verify") as journal:
            result = va.verify(p["src"], p["backup_dir"], p["environment"], p["allow_devices"], engine, p["mode"], p["helper_image"],
                               p["age_identity_file"], journal)
        result["changed"] = False
        for warning in result.pop("warnings"):
            module.warn(warning)
        return result
    engine = Engine(p["docker_host"])
    if p["state"] == "dump":
        if not p["volumes"]:
            raise BackupError("state=dump needs volumes: list the volumes to archive")
        with _journal.job(None if module.check_mode else journal_dir, "docker_volume_archive archive") as journal:
            options = va.ArchiveOptions(p["volumes"], p["backup_dir"], p["environment"], p["compression"], p["mode"], p["stop_containers"],
                                        p["helper_image"], p["age_recipients"], p["consistency"])
            result = va.archive(engine, options, check_mode=module.check_mode, journal=journal)
        for warning in result.pop("warnings"):
            module.warn(warning)
        return result
    with _journal.job(None if module.check_mode else journal_dir, "docker_volume_archive restore") as journal:
        options = va.RestoreOptions(p["src"], p["backup_dir"], p["environment"], p["volumes"] or None, p["mode"], p["stop_containers"],
                                    p["helper_image"], p["allow_devices"], p["check_restored"], p["age_identity_file"])
        result = va.restore(engine, options, check_mode=module.check_mode, journal=journal)
    for warning in result.pop("warnings"):
        module.warn(warning)
    if module._diff:
        result["diff"] = {
            "before": dict((v["name"], "exists" if v["action"] == "replaced" else "absent") for v in result["volumes"]),
            "after": dict((v["name"], "%d files, %d bytes from %s" % (v["files"], v["size"], result["archive"]))
                          for v in result["volumes"]),
        }
    return result


if __name__ == "__main__":
    main()
