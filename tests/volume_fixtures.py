"""Real Docker volumes for the docker_volume_archive tests (pytest plugin: ``pytest_plugins``).

Everything created here is named ``mmtest-<random>-...`` and removed afterwards;
``inventario-retail_*`` volumes are never touched.
"""
import hashlib
import io
import json
import os
import stat
import subprocess
import tarfile
import uuid

import docker
import pytest

from ansible_collections.minimarket.backup.plugins.module_utils._docker import Engine

HELPER_IMAGE = "minimarket/busybox:latest"
SPARSE_SIZE = 2 * 1024 ** 3
LONG_NAME = "ñ" * 75  # 150 bytes of UTF-8
MTIME_NS = 1700000000123456789


def _utime(path, ns=MTIME_NS):
    os.utime(path, ns=(ns, ns), follow_symlinks=False)


def populate(root, sparse_size=SPARSE_SIZE, extended=True):
    """Fill a volume mountpoint with every case the archive must keep."""
    def write(rel, data, mode=0o644, owner=(0, 0)):
        path = os.path.join(root, rel)
        with open(path, "wb") as handle:
            handle.write(data)
        os.chown(path, *owner)
        os.chmod(path, mode)
        return path

    for rel, mode, owner in (("pgdata", 0o700, (999, 999)), ("grafana", 0o750, (472, 472)), ("bin", 0o755, (0, 0)),
                             ("sticky", 0o1777, (0, 0)), ("links", 0o755, (0, 0)), ("other", 0o755, (0, 0)),
                             ("empty", 0o700, (999, 999)), ("deep", 0o755, (0, 0))):
        os.mkdir(os.path.join(root, rel))
        os.chown(os.path.join(root, rel), *owner)
        os.chmod(os.path.join(root, rel), mode)
    write("pgdata/PG_VERSION", b"15\n", 0o600, (999, 999))
    write("pgdata/base.bin", os.urandom(300 * 1024), 0o600, (999, 999))
    write("grafana/grafana.db", b"SQLite format 3\0" + os.urandom(4096), 0o640, (472, 472))
    write("bin/suid", b"#!/bin/sh\n", 0o4755)
    write("bin/sgid", b"#!/bin/sh\n", 0o2755)
    write("sticky/note", b"x", 0o666, (999, 999))
    write("links/a", b"one inode, three names\n", 0o640, (999, 472))
    os.link(os.path.join(root, "links/a"), os.path.join(root, "links/b"))
    os.link(os.path.join(root, "links/a"), os.path.join(root, "other/c"))
    os.symlink("links/a", os.path.join(root, "rel"))
    os.symlink("/etc/passwd", os.path.join(root, "abs"))
    os.symlink("nope/none", os.path.join(root, "dangling"))
    os.mkfifo(os.path.join(root, "fifo"), 0o620)
    write("deep/" + LONG_NAME, "contenido con ñandú\n".encode("utf-8"))
    sparse = write("sparse.img", b"")
    with open(sparse, "r+b") as handle:
        handle.truncate(sparse_size)
        for offset in (0, sparse_size // 2, sparse_size - 4096):
            handle.seek(offset)
            handle.write(os.urandom(4096))
    if extended:
        os.setxattr(os.path.join(root, "grafana/grafana.db"), "user.mm.origin", b"grafana")
        os.setxattr(os.path.join(root, "deep"), "user.mm.dir", b"\x00\x01binary")
        subprocess.run(["setfacl", "-m", "u:472:rwx,g:999:r-x", os.path.join(root, "grafana")], check=True)
        subprocess.run(["setfacl", "-d", "-m", "u:472:rw-", os.path.join(root, "grafana")], check=True)
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames + dirnames:
            _utime(os.path.join(dirpath, name))
    os.chown(root, 999, 999)
    os.chmod(root, 0o700)
    _utime(root)


def _content_digest(path, size):
    """sha256 of the non-zero 4 KiB blocks and their offsets (equal for a sparse file and its dense copy)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        fd = handle.fileno()
        offset = 0
        while offset < size:
            try:
                start = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError:
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            handle.seek(start)
            position = start - start % 4096
            handle.seek(position)
            while position < end:
                block = handle.read(4096)
                if block.strip(b"\0"):
                    digest.update(b"%d:" % position + block)
                position += 4096
            offset = end
    digest.update(b"size=%d" % size)
    return digest.hexdigest()


def snapshot(root, xattrs=True, acls=True):
    """Every entry below root: type, mode, owner, size, mtime, target, xattrs, ACL, content, hard-link group."""
    entries = {}
    inodes = {}
    paths = [root]
    for dirpath, dirnames, filenames in os.walk(root):
        paths += [os.path.join(dirpath, name) for name in dirnames + filenames]
    for path in paths:
        rel = os.path.relpath(path, root)
        st = os.lstat(path)
        entry = {"type": stat.S_IFMT(st.st_mode), "mode": stat.S_IMODE(st.st_mode), "uid": st.st_uid,
                 "gid": st.st_gid, "mtime": st.st_mtime_ns // 10 ** 9}
        if stat.S_ISREG(st.st_mode):
            entry["size"] = st.st_size
            entry["content"] = _content_digest(path, st.st_size)
            if st.st_nlink > 1:
                inodes.setdefault(st.st_ino, []).append(rel)
        if stat.S_ISLNK(st.st_mode):
            entry["target"] = os.readlink(path)
        else:
            found = {}
            for key in os.listxattr(path, follow_symlinks=False):
                if key.startswith("system.posix_acl_"):
                    if acls:
                        found[key] = os.getxattr(path, key, follow_symlinks=False)
                elif xattrs:
                    found[key] = os.getxattr(path, key, follow_symlinks=False)
            entry["xattrs"] = found
        entries[rel] = entry
    groups = sorted(sorted(names) for names in inodes.values())
    return {"entries": entries, "hardlinks": groups}


def mtimes_ns(root):
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames + ([""] if dirpath == root else []):
            path = os.path.join(dirpath, name) if name else dirpath
            found[os.path.relpath(path, root)] = os.lstat(path).st_mtime_ns
    return found


def blocks_bytes(path):
    return os.lstat(path).st_blocks * 512


@pytest.fixture(scope="session")
def engine():
    return Engine()


@pytest.fixture(scope="session")
def helper_image(engine):
    if not engine.image_exists(HELPER_IMAGE):
        build = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "testenv", "images", "build.sh")
        subprocess.run([build], check=True, stdout=subprocess.DEVNULL)
    assert engine.image_exists(HELPER_IMAGE)
    return HELPER_IMAGE


@pytest.fixture
def mm_docker(engine):
    """Factory for uniquely named volumes/containers; removes all of them afterwards."""
    tag = "mmtest-%s" % uuid.uuid4().hex[:8]
    volumes, containers = [], []

    class Factory(object):
        prefix = tag

        def volume(self, suffix, labels=None):
            name = "%s-%s" % (tag, suffix)
            assert not name.startswith("inventario-retail_")
            volumes.append(name)
            engine.api.create_volume(name, labels=labels)
            return name

        def name(self, suffix):
            name = "%s-%s" % (tag, suffix)
            volumes.append(name)
            return name

        def mountpoint(self, name):
            return engine.volume(name)["Mountpoint"]

        def container(self, suffix, volume_names, image, running=True):
            config = engine.api.create_host_config(binds=dict((v, {"bind": "/v/%s" % v, "mode": "rw"}) for v in volume_names),
                                                   network_mode="none")
            created = engine.api.create_container(image, command=["sleep", "600"], host_config=config,
                                                  name="%s-%s" % (tag, suffix), stop_signal="SIGKILL")
            containers.append(created["Id"])
            if running:
                engine.api.start(created["Id"])
            return created["Id"]

        def running(self, container_id):
            return engine.api.inspect_container(container_id)["State"]["Running"]

    yield Factory()
    for container_id in containers:
        try:
            engine.api.remove_container(container_id, force=True, v=True)
        except docker.errors.NotFound:
            pass
    for name in volumes:
        engine.remove_volume(name)


def write_backup(dest, name, tar_bytes, volumes, compression="none"):
    """A crafted backup whose metadata vouches for its bytes (size and sha256 are valid)."""
    from ansible_collections.minimarket.backup.plugins.module_utils._files import write_metadata
    from ansible_collections.minimarket.backup.plugins.module_utils._pipeline import compressor_command
    path = os.path.join(dest, name)
    if compression == "none":
        data = tar_bytes
    else:
        data = subprocess.run(compressor_command(compression), input=tar_bytes, stdout=subprocess.PIPE, check=True).stdout
    with open(path, "wb") as handle:
        handle.write(data)
    os.chmod(path, 0o600)
    meta = {"archive": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "format": 1,
            "kind": "volumes", "volumes": volumes, "compression": compression}
    write_metadata(path, meta)
    return path


def crafted_tar(members):
    """members: [(TarInfo kwargs, data or None)] -> pax tar bytes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for fields, data in members:
            info = tarfile.TarInfo(fields.pop("name"))
            for key, value in fields.items():
                setattr(info, key, value)
            if data is not None:
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
            else:
                archive.addfile(info)
    return buf.getvalue()


def read_metadata(archive_path):
    from ansible_collections.minimarket.backup.plugins.module_utils import _backup_set as bs
    with open(bs.metadata_path(archive_path)) as handle:
        return json.load(handle)


def with_checksum(header):
    """A tar header block with its checksum field recomputed, so the damage is not a plain bad checksum."""
    header = bytearray(header)
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header)


def unparsable_sparse_archives(parent, vol):
    """GNU tar's own archives of a volume holding a sparse file, each damaged (or in another tar format) so that
    the header parser refuses it, though every tar header checksum is valid.

    Returns {case: (tar bytes, what the parser says, the volume records a backup of the intact archive
    declares)}, so the damage is the only thing that can fail.  ``parent/vol`` is made here.
    """
    from ansible_collections.minimarket.backup.plugins.module_utils._volume_tar import scan_stream
    root = os.path.join(parent, vol)
    os.mkdir(root)
    with open(os.path.join(root, "sparse.img"), "wb") as handle:
        handle.truncate(4 * 1024 * 1024)
        handle.seek(1024 * 1024)
        handle.write(b"ventas\n" * 100)
    with open(os.path.join(root, "after"), "wb") as handle:
        handle.write(b"written after the sparse file\n")

    def gnu_tar(*options):
        return subprocess.run(["tar", "--create", "--file=-", "--sort=name", "--numeric-owner", "--sparse", "-C", parent]
                              + list(options) + [vol], stdout=subprocess.PIPE, check=True).stdout

    pax = gnu_tar("--format=posix")  # what mode=host writes: GNU sparse 1.0, the map ahead of the data
    summary = scan_stream(io.BytesIO(pax))[vol]
    records = [{"name": vol, "driver": "local", "files": summary["files"], "size": summary["size"], "sha256": summary["sha256"]}]
    realsize = pax.index(b"GNU.sparse.realsize=4194304")
    extended = realsize - realsize % tarfile.BLOCKSIZE - tarfile.BLOCKSIZE  # the sparse member's pax header
    member = extended + tarfile.BLOCKSIZE + -(-int(pax[extended + 124:extended + 136].strip(b" \0"), 8) // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
    start = pax.index(b"\n1048576\n") - 1  # the sparse map block: "<count>\n<offset>\n<size>\n..."
    block = start - start % tarfile.BLOCKSIZE
    numbers = pax[block:block + tarfile.BLOCKSIZE].rstrip(b"\0").split(b"\n")  # count, offset, length, ..., ""
    numbers[2] = b"%d" % (int(numbers[2]) + tarfile.BLOCKSIZE)  # the data region one block longer than stored
    longer = b"\n".join(numbers).ljust(tarfile.BLOCKSIZE, b"\0")
    cases = {
        "sparse-map-without-newline": (pax[:block] + b"9" * tarfile.BLOCKSIZE + pax[block + tarfile.BLOCKSIZE:],
                                       "not enough values to unpack (expected 2, got 1)"),
        "sparse-size-not-a-number": (pax[:realsize] + b"GNU.sparse.realsize=41943x4" + pax[realsize + 27:],
                                     "header at offset %d: GNU.sparse.realsize '41943x4' is not a decimal number" % member),
        # tarfile took this map and read 200 bytes of the next member as this one's; GNU tar reads the data by the map
        "sparse-map-past-the-data": (pax[:block] + longer + pax[block + tarfile.BLOCKSIZE:],
                                     "header at offset %d: the sparse map of %s/sparse.img does not add up to its stored data" % (member, vol)),
        # --format=gnu: the map in the member's header, GNU long names; this module never writes it
        "gnu-format": (gnu_tar("--format=gnu"), "header at offset 0: not a POSIX (pax) tar header, magic b'ustar  \\x00'"),
    }
    for data, unused in cases.values():
        for start in range(0, len(data), tarfile.BLOCKSIZE):
            block = data[start:start + tarfile.BLOCKSIZE]
            if block[257:262] == b"ustar":
                assert int(block[148:155].strip(b" \0"), 8) in tarfile.calc_chksums(block)
    return dict((case, (data, detail, records)) for case, (data, detail) in cases.items())
