"""Prune real pg_split_dump backups, then prove the one left is still a good backup (real PostgreSQL 15)."""
import json
import os
import subprocess
import sys
import time

from ansible_collections.minimarket.backup.plugins.module_utils._backup_set import list_backups

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PLAYBOOK = """
- name: Prune after real dumps
  hosts: localhost
  gather_facts: false
  vars_files:
    - {vars_file}
  module_defaults:
    minimarket.backup.pg_split_dump: &connection
      login_host: "{{{{ pg.host }}}}"
      login_port: "{{{{ pg.port }}}}"
      login_user: "{{{{ pg.user }}}}"
      login_password: "{{{{ pg.password }}}}"
      bin_dir: "{{{{ pg.bindir }}}}"
      db: "{{{{ pg.db }}}}"
      dest: "{{{{ dest }}}}"
      environment: testing
  tasks:
    - name: Task from the test
      {task}
"""


def run_task(tmp_path, pg, dest, task):
    vars_file = tmp_path / "vars.json"
    vars_file.write_text(json.dumps(dict(pg=pg, dest=dest)))
    os.chmod(vars_file, 0o600)
    playbook = tmp_path / "play.yml"
    playbook.write_text(PLAYBOOK.format(vars_file=vars_file, task=task))
    env = dict(
        os.environ,
        ANSIBLE_CONFIG=os.path.join(REPO_ROOT, "ansible.cfg"),
        ANSIBLE_STDOUT_CALLBACK="ansible.posix.json",
        ANSIBLE_PYTHON_INTERPRETER=sys.executable,
    )
    proc = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), str(playbook)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600, check=False,
    )
    assert pg["password"] not in proc.stdout + proc.stderr
    result = json.loads(proc.stdout)["plays"][0]["tasks"][0]["hosts"]["localhost"]
    return proc.returncode, result


def test_prune_after_real_dumps_keeps_a_restorable_backup(pg_server, seeded_db, tmp_path):
    dest = tmp_path / "database"
    dest.mkdir()
    pg = dict(host=pg_server.host, port=pg_server.port, user=pg_server.user, password=pg_server.password,
              bindir=pg_server.bindir, db=seeded_db)
    for attempt in range(3):
        if attempt:
            time.sleep(1.1)  # file names carry the second of the dump
        rc, result = run_task(tmp_path, pg, str(dest), "minimarket.backup.pg_split_dump: {state: dump}")
        assert rc == 0, result
    backups = list_backups(str(dest), "database", "testing")
    assert len(backups) == 3 and all(b.complete for b in backups)
    (dest / "notes.txt").write_text("operator notes\n")
    old_bytes = sum(os.path.getsize(b.path) + os.path.getsize(b.metadata_path) for b in backups[:-1])

    rc, result = run_task(tmp_path, pg, str(dest), "minimarket.backup.backup_prune: "
                          "{path: '{{ dest }}', prefix: database_testing_, retention_days: 0, keep_last: 1}")
    assert rc == 0, result
    assert result["changed"] is True
    newest = backups[-1]
    assert [e["name"] for e in result["kept"]] == [newest.name]
    assert sorted(e["name"] for e in result["deleted"]) == sorted(b.name for b in backups[:-1])
    assert result["bytes_freed"] == old_bytes
    assert sorted(n for n in os.listdir(dest) if not n.startswith(".")) == sorted(
        [newest.name, os.path.basename(newest.metadata_path), "notes.txt"])

    rc, verified = run_task(tmp_path, pg, str(dest), "minimarket.backup.pg_split_dump: {state: verify, src: latest}")
    assert rc == 0, verified
    assert verified["src"] == newest.path
    assert verified["problems"] == []
    assert verified["tables"] and all(entry["ok"] for entry in verified["tables"].values())
