# Copyright (c) 2026 Mini Market
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The few Docker Engine calls the volume module needs, on top of the docker SDK."""

import contextlib
import traceback

from ansible_collections.minimarket.backup.plugins.module_utils._errors import BackupError

try:
    import docker
    from docker import errors as docker_errors
    HAS_DOCKER = True
    DOCKER_IMPORT_ERROR = None
except ImportError:
    HAS_DOCKER = False
    DOCKER_IMPORT_ERROR = traceback.format_exc()

DEFAULT_HOST = "unix:///var/run/docker.sock"


def require_sdk():
    if not HAS_DOCKER:
        raise BackupError(
            "the Python 'docker' SDK is not installed on the target host: install it "
            "(pip install docker, or apt install python3-docker) for the Python Ansible uses"
        )


class Engine(object):
    """A connected Docker engine; every failure becomes a one-line BackupError."""

    def __init__(self, docker_host=DEFAULT_HOST, timeout=120):
        require_sdk()
        self.docker_host = docker_host
        try:
            self.client = docker.DockerClient(base_url=docker_host, timeout=timeout)
            self.client.ping()
        except Exception as exc:
            raise BackupError("cannot reach the Docker engine at %s (%s): start dockerd or fix docker_host" % (docker_host, exc))
        self.api = self.client.api

    @property
    def local(self):
        return self.docker_host.startswith("unix://")

    def volume(self, name):
        """Inspect data of a volume, or None when it does not exist."""
        try:
            return self.api.inspect_volume(name)
        except docker_errors.NotFound:
            return None
        except docker_errors.APIError as exc:
            raise BackupError("cannot inspect volume %s: %s" % (name, exc.explanation or exc))

    def create_volume(self, name, driver, driver_options, labels):
        try:
            return self.api.create_volume(name=name, driver=driver or "local", driver_opts=driver_options or None, labels=labels or None)
        except docker_errors.APIError as exc:
            raise BackupError("cannot create volume %s (driver %s): %s" % (name, driver, exc.explanation or exc))

    def remove_volume(self, name):
        with contextlib.suppress(docker_errors.NotFound):
            self.api.remove_volume(name, force=True)

    def containers_using(self, volume):
        """[(id, name)] of running containers that mount the volume, sorted by name."""
        found = self.api.containers(filters={"volume": volume, "status": "running"})
        return sorted(((c["Id"], c["Names"][0].lstrip("/")) for c in found), key=lambda item: item[1])

    def stop(self, container_id, timeout=30):
        try:
            self.api.stop(container_id, timeout=timeout)
        except docker_errors.APIError as exc:
            raise BackupError("cannot stop container %s: %s" % (container_id[:12], exc.explanation or exc))

    def start(self, container_id):
        self.api.start(container_id)

    def image_exists(self, image):
        try:
            self.api.inspect_image(image)
            return True
        except docker_errors.NotFound:
            return False

    @contextlib.contextmanager
    def helper(self, image, volumes, read_only, command=None):
        """A helper container (created, not started unless asked) mounting each volume at /mm/<name>.

        ``volumes`` holds names, or (volume, mount name) pairs to mount a
        scratch volume where the archive expects another name.
        """
        if not self.image_exists(image):
            raise BackupError(
                "helper image %s is not available on the engine: build or load it (testenv/images/build.sh), "
                "or set helper_image to an image that has /bin/sh" % image
            )
        pairs = [item if isinstance(item, tuple) else (item, item) for item in volumes]
        binds = dict((name, {"bind": "/mm/%s" % mount, "mode": "ro" if read_only else "rw"}) for name, mount in pairs)
        config = self.api.create_host_config(binds=binds, network_mode="none")
        try:
            created = self.api.create_container(
                image, command=command or ["true"], host_config=config, labels={"minimarket.backup.helper": "1"},
                network_disabled=True, user="0:0",
            )
        except docker_errors.APIError as exc:
            raise BackupError("cannot create helper container from %s: %s" % (image, exc.explanation or exc))
        try:
            yield created["Id"]
        finally:
            with contextlib.suppress(docker_errors.APIError):
                self.api.remove_container(created["Id"], force=True, v=True)

    def run_helper(self, container_id):
        """Start the helper and wait; raises with its output when it fails."""
        self.api.start(container_id)
        result = self.api.wait(container_id)
        if result.get("StatusCode") != 0:
            logs = self.api.logs(container_id).decode("utf-8", "replace").strip().splitlines()
            raise BackupError("helper container failed (%s): %s" % (result.get("StatusCode"), logs[-1] if logs else "no output"))


@contextlib.contextmanager
def containers_stopped(engine, containers, stopped, journal):
    """Stop ``containers``; restart exactly those that were stopped, whatever happens inside.

    ``stopped`` is filled as containers go down so the caller can report them
    even after a failure.  Each stop is recorded in ``journal`` first: a run
    killed while they are down leaves them for the next run to start
    (``container_stopped`` in repairers).
    """
    try:
        for container_id, name in containers:
            journal.record("container_stopped", id=container_id, name=name, docker_host=engine.docker_host)
            engine.stop(container_id)
            stopped.append({"id": container_id, "name": name})
        yield stopped
    finally:
        problems = []
        for entry in stopped:
            try:
                engine.start(entry["id"])
            except Exception as exc:
                problems.append("%s (%s)" % (entry["name"], exc))
        if problems:
            journal.keep = True
            raise BackupError("could not restart containers %s: start them by hand (docker start)" % ", ".join(problems))


def start_stopped(engine, step):
    """Journal repair: start a container a killed run stopped, unless it is gone or already running."""
    try:
        state = engine.api.inspect_container(step["id"])["State"]
    except docker_errors.NotFound:
        return []
    if state.get("Running"):
        return []
    try:
        engine.start(step["id"])
    except docker_errors.APIError as exc:
        raise BackupError("cannot start container %s that an interrupted run stopped: %s -- start it by hand (docker start %s)"
                          % (step["name"], exc.explanation or exc, step["name"]))
    return ["started container %s that an interrupted run had stopped" % step["name"]]
