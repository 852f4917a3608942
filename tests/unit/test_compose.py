"""Finding a compose service's container by its labels (pure logic; docker ps itself runs in the SSH tests)."""
import pytest

from ansible_collections.minimarket.backup.plugins.module_utils._errors import BackupError
from ansible_collections.minimarket.backup.plugins.module_utils._compose import pick, ps_argv, service_container
from ansible_collections.minimarket.backup.plugins.module_utils._postgres import PgTools


def test_ps_filters_by_both_labels_never_by_name():
    argv = ps_argv("/usr/bin/docker", "inventario-retail", "postgres")
    assert argv[:4] == ["/usr/bin/docker", "ps", "--all", "--no-trunc"]
    assert argv[4:8] == ["--filter", "label=com.docker.compose.project=inventario-retail",
                         "--filter", "label=com.docker.compose.service=postgres"]
    assert "name=" not in " ".join(argv)


@pytest.mark.parametrize("name", ["inventario-retail_postgres_1", "inventario-retail-postgres-1", "db"])
def test_any_name_the_labels_point_at(name):
    assert pick("%s\trunning\t1\n" % name, "inventario-retail", "postgres") == name


def test_scaled_service_gives_the_lowest_running_replica():
    out = "p-postgres-3\trunning\t3\np-postgres-1\texited\t1\np-postgres-2\trunning\t2\n"
    assert pick(out, "p", "postgres") == "p-postgres-2"


def test_no_container_names_both_labels():
    with pytest.raises(BackupError) as exc:
        pick("", "inventario-retail", "postgres")
    assert str(exc.value).startswith("no container with labels com.docker.compose.project=inventario-retail and "
                                     "com.docker.compose.service=postgres on this host")
    assert "\n" not in str(exc.value)


def test_stopped_container_is_named_with_its_state():
    with pytest.raises(BackupError) as exc:
        pick("inventario-retail-postgres-1\texited\t1\n", "inventario-retail", "postgres")
    assert str(exc.value).startswith("container inventario-retail-postgres-1 of service postgres (compose project "
                                     "inventario-retail) is exited, not running")


def test_docker_ps_failure_is_one_line(monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: "/usr/bin/" + name)
    with pytest.raises(BackupError) as exc:
        service_container(lambda argv: (1, "", "Cannot connect to the Docker daemon\n"), "p", "postgres")
    assert str(exc.value) == "cannot list the containers of compose project p (docker ps): Cannot connect to the Docker daemon"


def test_pg_tools_resolve_the_container_once_on_first_use(monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: "/usr/bin/" + name)
    calls = []

    def runner(argv, **_kwargs):
        calls.append(argv)
        return 0, "shop-postgres-1\trunning\t1\n", ""

    tools = PgTools(dict(login_user="postgres", compose_project="shop", compose_service="postgres"), run_command=runner)
    assert calls == []
    assert tools.argv("psql", [])[-2:] == ["shop-postgres-1", "psql"]
    assert tools.container == "shop-postgres-1"
    assert len(calls) == 1 and calls[0][1] == "ps"


@pytest.mark.parametrize("name", ["inventario-retail_postgres_1", "inventario-retail-postgres-1"])
def test_allow_stopped_finds_the_container_a_killed_recovery_left_stopped(name):
    assert pick("%s\texited\t1\n" % name, "inventario-retail", "postgres", allow_stopped=True) == name


def test_allow_stopped_still_prefers_a_running_replica_then_the_lowest_number():
    out = "p-postgres-1\texited\t1\np-postgres-2\trunning\t2\n"
    assert pick(out, "p", "postgres", allow_stopped=True) == "p-postgres-2"
    assert pick("p-postgres-3\texited\t3\np-postgres-2\tcreated\t2\n", "p", "postgres", allow_stopped=True) == "p-postgres-2"


def test_allow_stopped_still_refuses_when_no_container_has_the_labels():
    with pytest.raises(BackupError, match="^no container with labels com.docker.compose.project=p and "):
        pick("", "p", "postgres", allow_stopped=True)
