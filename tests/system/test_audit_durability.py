"""An answered mutation is audited: a frontend killed (SIGKILL) the moment it has
answered has already written the records of everything it answered — VM creates and
deletes (recorded in their own transaction) and other mutations (recorded by the
audit log's group commit before the answer)."""

from __future__ import annotations

import asyncio
import signal
import uuid
from concurrent.futures import ThreadPoolExecutor

from prometheus_client import REGISTRY

from controlplane.etcd import EtcdClient
from controlplane.gen.quanta.store.v1 import tenancy_pb2 as trec
from controlplane.models import VmRef, now_ns
from controlplane.store.audit import AuditLog
from controlplane.store.keys import Keys
from quanta.local import LocalSystem

CALLS = 40


def test_a_frontend_killed_right_after_answering_has_written_their_audit_records(etcd_server):
    root = f"/audit-{uuid.uuid4().hex[:8]}"
    with LocalSystem(etcd_endpoint=etcd_server.endpoint, root=root, hosts=1, frontends=1, latency="zero",
                     metrics=False) as system:
        frontend = system.processes["frontend-0"]
        with system.client(project="audited") as client, ThreadPoolExecutor(8) as pool:
            # Concurrent calls, so that the last answers share a write with others.
            vms = list(pool.map(lambda i: client.create_vm(f"vm-{i:02d}", flavor="small", image="ubuntu"),
                                range(CALLS)))
            deleted = list(pool.map(lambda vm: client.delete_vm(vm.name.rsplit("/", 1)[1]), vms[:CALLS // 2]))
            projects = list(pool.map(lambda i: client.create_project(f"p-{i:02d}"), range(CALLS // 4)))
            frontend.kill(signal.SIGKILL)  # at once: nothing left to write in the background
        frontend.start()
        system.wait_ready()
        # What the restarted frontend lists was written by the killed one.
        with system.client(project="audited", ensure_project=False) as client:
            recorded = {(r.method, r.resource) for r in client.list_audit(tenant="default") if r.code == "OK"}
        assert {("CreateVm", vm.name) for vm in vms} <= recorded
        assert {("DeleteVm", vm.name) for vm in deleted} <= recorded
        assert {("CreateProject", p.name) for p in projects} <= recorded


def test_a_vm_create_and_its_audit_record_are_one_transaction(etcd_server):
    root = f"/audit-{uuid.uuid4().hex[:8]}"
    with LocalSystem(etcd_endpoint=etcd_server.endpoint, root=root, hosts=1, frontends=1, latency="zero",
                     metrics=False) as system, system.client(project="audited") as client:
        vm = client.create_vm("one", flavor="small", image="ubuntu")

    async def revisions() -> tuple[int, list[int]]:
        keys = Keys(root)
        async with EtcdClient(etcd_server.endpoint) as etcd:
            spec = await etcd.get(keys.vm_spec(VmRef("default", "audited", "one")))
            audit, _ = await etcd.range_prefix(keys.audit_prefix("default"))
        return spec.create_revision, [kv.mod_revision for kv in audit
                                      if trec.AuditRecord.FromString(kv.value).method == "CreateVm"]

    created, audited = asyncio.run(revisions())
    assert audited == [created], f"{vm.name}: the record was written at {audited}, the VM at {created}"


def test_records_too_large_together_are_written_alone_and_one_too_large_alone_is_dropped(etcd_endpoint, root):
    """The test etcd takes requests up to 8 MiB: three 3 MB records fail together and
    are written one by one; a 9 MB record is dropped (counted); none holds up the
    small record queued behind them."""
    mb = 1024 * 1024

    async def main() -> set[str]:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as client:
            audit = AuditLog(client, keys, retention_s=60)
            await audit.start()
            try:
                written = {name: audit.append(trec.AuditRecord(time_ns=now_ns(), tenant="t", method=name, message=body))
                           for name, body in (("big-1", "x" * 3 * mb), ("big-2", "x" * 3 * mb),
                                              ("big-3", "x" * 3 * mb), ("huge", "x" * 9 * mb), ("small", ""))}
                _, pending = await asyncio.wait(written.values(), timeout=60)
                assert not pending, ("timed out after 60s waiting for the records to be written or dropped; "
                                     f"still queued: {[name for name, f in written.items() if f in pending]}")
            finally:
                await audit.stop()
            entries, _, _ = await audit.list("t", page_size=10)
            return {entry.record.method for entry in entries}

    def dropped() -> float:
        return REGISTRY.get_sample_value("quanta_audit_records_dropped_total") or 0.0

    before = dropped()
    assert asyncio.run(main()) == {"big-1", "big-2", "big-3", "small"}
    assert dropped() == before + 1
