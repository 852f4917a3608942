"""The development host after `schedule.yml` and both backups (molecule default scenario)."""
import hashlib
import json
import os

testinfra_hosts = ["local://"]

ROOT = "/var/backups/minimarket-dev"
CRON = "/etc/cron.d/minimarket_backup"
LOGS = {
    "database": "/var/log/minimarket_backup_db.log",
    "volumes": "/var/log/minimarket_backup_vol.log",
    "verify": "/var/log/minimarket_backup_verify.log",
}
SCHEDULES = {
    "database": ("0 2 * * *", "playbooks/backup_database.yml"),
    "volumes": ("0 3 * * 0", "playbooks/backup_volumes.yml"),
    "verify": ("0 5 * * 0", "playbooks/verify_backups.yml"),
}


def cron_jobs(host):
    """name -> (schedule, command) from the cron file, as cron would read it."""
    jobs, name = {}, None
    for line in host.file(CRON).content_string.splitlines():
        if line.startswith("#Ansible: "):
            name = line[len("#Ansible: "):]
        elif line and not line.startswith("#") and name:
            fields = line.split(None, 6)
            jobs[name] = (" ".join(fields[:5]), fields[5], fields[6])
            name = None
    return jobs


def cron_path(host):
    for line in host.file(CRON).content_string.splitlines():
        if line.startswith("PATH="):
            return line[len("PATH="):]
    raise AssertionError("no PATH in %s" % CRON)


def backups(host, kind):
    directory = "%s/%s" % (ROOT, "database" if kind == "database" else "volumes")
    names = host.run("ls %s", directory).stdout.split()
    return directory, sorted(n for n in names if n.startswith("%s_development_" % kind) and n.endswith(".tar.gz"))


def test_cron_file_holds_the_three_jobs(host):
    cron = host.file(CRON)
    assert cron.user == "root" and cron.mode == 0o644
    jobs = cron_jobs(host)
    assert set(jobs) == {"minimarket backup database", "minimarket backup volumes", "minimarket verification drill"}
    for kind, (schedule, playbook) in SCHEDULES.items():
        name = {"database": "minimarket backup database", "volumes": "minimarket backup volumes",
                "verify": "minimarket verification drill"}[kind]
        when, user, command = jobs[name]
        assert when == schedule
        assert user == "root"
        assert "/usr/bin/flock --wait 7200 --conflict-exit-code 75 /var/lock/minimarket_backup.lock" in command
        assert "--inventory %s/inventories/development" % os.environ["MOLECULE_PROJECT_DIRECTORY"] in command
        assert command.endswith("%s >> %s 2>&1" % (playbook, LOGS[kind]))
        assert "%" not in command  # cron would cut the line there


def test_logs_exist_and_rotate(host):
    for log in LOGS.values():
        assert host.file(log).is_file
        assert host.file(log).mode == 0o640
    rotate = host.file("/etc/logrotate.d/minimarket_backup").content_string
    for log in LOGS.values():
        assert log in rotate
    assert host.run("logrotate --debug /etc/logrotate.d/minimarket_backup").rc == 0


def test_backup_directories_are_private(host):
    for path in (ROOT, ROOT + "/database", ROOT + "/volumes", ROOT + "/reports"):
        directory = host.file(path)
        assert directory.is_directory and directory.user == "root" and directory.mode == 0o700


def test_both_backups_are_complete_with_metadata_and_mode_0600(host):
    for kind in ("database", "volumes"):
        directory, archives = backups(host, kind)
        assert archives, "no %s backup in %s" % (kind, directory)
        for name in archives:
            archive = host.file("%s/%s" % (directory, name))
            metadata_file = host.file("%s/%s_metadata.json" % (directory, name[: -len(".tar.gz")]))
            assert archive.mode == 0o600 and metadata_file.mode == 0o600
            metadata = json.loads(metadata_file.content_string)
            assert metadata["archive"] == name
            assert metadata["environment"] == "development"
            assert metadata["size"] == archive.size
            assert metadata["sha256"] == hashlib.sha256(archive.content).hexdigest()
            assert "password" not in metadata_file.content_string.lower()
        assert not [n for n in host.run("ls -a %s", directory).stdout.split() if n.endswith(".partial")]


def test_volume_backup_holds_the_five_volumes(host):
    directory, archives = backups(host, "volumes")
    metadata = json.loads(host.file("%s/%s_metadata.json" % (directory, archives[-1][: -len(".tar.gz")])).content_string)
    names = sorted(volume["name"] for volume in metadata["volumes"])
    assert names == sorted("inventario-retail_%s" % v for v in ("postgres-data", "grafana-data", "prometheus-data", "loki-data", "redis-data"))


def test_the_exact_cron_commands_succeed(host):
    """Run each job's command line exactly as cron would (its PATH, /bin/sh, from /)."""
    jobs = cron_jobs(host)
    before = {kind: backups(host, kind)[1] for kind in ("database", "volumes")}
    for name, kind in (("minimarket backup database", "database"), ("minimarket backup volumes", "volumes"),
                       ("minimarket verification drill", "verify")):
        size_before = host.file(LOGS[kind]).size
        result = host.run("cd / && env -i HOME=/root LOGNAME=root SHELL=/bin/sh PATH=%s /bin/sh -c %s", cron_path(host), jobs[name][2])
        log = host.file(LOGS[kind]).content_string[size_before:]
        assert result.rc == 0, log
        assert "PLAY RECAP" in log and "failed=0" in log, log
    for kind in ("database", "volumes"):
        assert len(backups(host, kind)[1]) == len(before[kind]) + 1
    reports = host.run("ls %s/reports", ROOT).stdout.split()
    assert any(r.startswith("verify_development_") and r.endswith(".json") for r in reports)
