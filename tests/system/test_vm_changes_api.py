"""Changes after create through the real processes (issue 12): StartVm, StopVm and
RestartVm are idempotent (a restart's request_id retried restarts no more); UpdateVm
relabels and resizes, charged to the quota and the host; every refusal has its code
and reason and changes nothing; bootstrap data is stored apart and appears in no
read, list, watch, audit record, error or frontend log line."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import signal
import uuid
from collections.abc import Callable, Iterator

import grpc
import pytest
from google.protobuf import duration_pb2, field_mask_pb2

from agents.drivers.sim import read_journal
from controlplane.api.errors import ApiError
from controlplane.etcd import EtcdClient
from controlplane.gen.quanta.v1 import common_pb2, vm_pb2
from controlplane.models import PowerOffMode, VmRef, VmSpec
from controlplane.store.bootstrap import BootstrapData
from controlplane.store.keys import Keys
from quanta.client import Client
from quanta.local import LocalSystem
from tests.conftest import wait_until

TENANT, PROJECT = "acme", "web"
MARKER = f"quanta-secret-{uuid.uuid4().hex}"


@pytest.fixture(scope="module")
def system(etcd_server) -> Iterator[LocalSystem]:
    root = f"/chg-{uuid.uuid4().hex[:8]}"
    with LocalSystem(etcd_endpoint=etcd_server.endpoint, root=root, hosts=1, frontends=2, latency="zero",
                     metrics=False, host_vcpus=16, host_memory_mib=64 * 1024, bookmark_interval_s=1.0) as local:
        with local.client(ensure_project=False) as admin:
            admin.create_tenant(TENANT)
            admin.create_project(PROJECT, tenant=TENANT, quota={"memory_mib": 40 * 1024})
            admin.create_flavor("huge", vcpus=17, memory_mib=1024, disk_gib=40)  # more than the host has
            admin.create_flavor("wide", vcpus=1, memory_mib=48 * 1024, disk_gib=40)  # more than the quota
            admin.create_flavor("narrow", vcpus=1, memory_mib=1024, disk_gib=40)  # small's size, medium's disk
            admin.create_flavor("roomy", vcpus=1, memory_mib=1024, disk_gib=20)  # small with a bigger disk
        yield local


@pytest.fixture
def c(system) -> Iterator[Client]:
    with system.client(tenant=TENANT, project=PROJECT, ensure_project=False) as client:
        yield client


def _fresh(prefix: str = "vm") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _error(call: Callable[[], object]) -> ApiError:
    with pytest.raises(ApiError) as info:
        call()
    return info.value


def start(c: Client, name: str, **kw) -> vm_pb2.Vm:
    return c._call(c._vms.StartVm, vm_pb2.StartVmRequest(name=c.vm_name(name), **kw))


def stop(c: Client, name: str, **kw) -> vm_pb2.Vm:
    return c._call(c._vms.StopVm, vm_pb2.StopVmRequest(name=c.vm_name(name), **kw))


def restart(c: Client, name: str, **kw) -> vm_pb2.Vm:
    return c._call(c._vms.RestartVm, vm_pb2.RestartVmRequest(name=c.vm_name(name), **kw))


def update(c: Client, vm: vm_pb2.Vm, *paths: str) -> vm_pb2.Vm:
    return c._call(c._vms.UpdateVm, vm_pb2.UpdateVmRequest(vm=vm, update_mask=field_mask_pb2.FieldMask(paths=paths)))


def create(c: Client, vm_id: str, **vm) -> vm_pb2.Vm:
    vm.setdefault("flavor", "small")
    vm.setdefault("image", "ubuntu")
    return c._call(c._vms.CreateVm, vm_pb2.CreateVmRequest(parent=c.parent, vm_id=vm_id, vm=vm_pb2.Vm(**vm)))


def placed(c: Client, vm_id: str) -> vm_pb2.Vm:
    """Create ``vm_id`` and wait until it is on its host."""
    create(c, vm_id)
    wait_until(lambda: c.get_vm(vm_id).state not in (vm_pb2.Vm.PENDING, vm_pb2.Vm.SCHEDULED), timeout=30,
               message=f"{vm_id} to be placed", seen=lambda: vm_pb2.Vm.State.Name(c.get_vm(vm_id).state))
    return c.get_vm(vm_id)


def stored(system: LocalSystem, vm_id: str) -> VmSpec:
    async def read() -> VmSpec:
        async with EtcdClient(system.etcd_endpoint) as client:
            kv = await client.get(Keys(system.root).vm_spec(VmRef(TENANT, PROJECT, vm_id)))
            assert kv is not None
            return VmSpec.from_bytes(kv.value)
    return asyncio.run(read())


def same(before: vm_pb2.Vm, after: vm_pb2.Vm) -> bool:
    return (before.etag, before.flavor, dict(before.labels), before.power) == \
        (after.etag, after.flavor, dict(after.labels), after.power)


# --- power --------------------------------------------------------------------------------

def test_stop_start_and_restart_are_idempotent(system, c) -> None:
    vm_id = _fresh()
    vm = placed(c, vm_id)
    assert vm.power == vm_pb2.Vm.POWERED_ON
    assert start(c, vm_id).etag == vm.etag  # on already: nothing written

    stopped = stop(c, vm_id, mode=vm_pb2.HARD, grace=duration_pb2.Duration(seconds=5), etag=vm.etag)
    assert stopped.power == vm_pb2.Vm.POWERED_OFF and stopped.etag != vm.etag
    spec = stored(system, vm_id)
    assert (spec.power_off_mode, spec.power_off_grace_s) == (PowerOffMode.HARD, 5) and spec.power_time_ns > 0
    # Stopped already: the same answer, even with the etag the first stop was sent with.
    assert stop(c, vm_id, etag=vm.etag).etag == stopped.etag
    assert stored(system, vm_id) == spec

    started = start(c, vm_id)
    assert started.power == vm_pb2.Vm.POWERED_ON and started.etag != stopped.etag
    assert stored(system, vm_id).power_time_ns > spec.power_time_ns

    once = restart(c, vm_id, request_id="restart-1")
    assert stored(system, vm_id).restarts == 1 and once.power == vm_pb2.Vm.POWERED_ON
    assert restart(c, vm_id, request_id="restart-1").etag == once.etag  # a retry: no second restart
    assert stored(system, vm_id).restarts == 1
    restart(c, vm_id)  # no request_id: every call restarts
    restart(c, vm_id, request_id="restart-2")
    spec = stored(system, vm_id)
    assert (spec.restarts, spec.restart_request_id, spec.power_off_mode) == (3, "restart-2", PowerOffMode.SOFT)



def test_a_hard_stop_replaces_a_soft_one(system, c) -> None:
    vm_id = _fresh()
    placed(c, vm_id)
    soft = stop(c, vm_id, mode=vm_pb2.SOFT, grace=duration_pb2.Duration(seconds=300))
    first = stored(system, vm_id)
    assert first.power_off_mode == PowerOffMode.SOFT
    hard = stop(c, vm_id, mode=vm_pb2.HARD)
    assert hard.etag != soft.etag and hard.power == vm_pb2.Vm.POWERED_OFF
    # The same stop (its time and grace), forced.
    assert stored(system, vm_id) == dataclasses.replace(first, power_off_mode=PowerOffMode.HARD)
    assert stop(c, vm_id, mode=vm_pb2.HARD).etag == hard.etag  # a retry: nothing written
    assert stop(c, vm_id, mode=vm_pb2.SOFT).etag == hard.etag  # a soft stop never softens a hard one
    assert stored(system, vm_id).power_off_mode == PowerOffMode.HARD


def test_reconciling_says_when_a_restart_and_a_resize_are_done(system, c) -> None:
    """Vm.reconciling is true from the request until the agent has made it true, so a
    client waits for the end of a restart or a resize, not for a state the VM already
    had (a shrink of a running sim VM needs a power cycle)."""
    vm_id = _fresh()
    placed(c, vm_id)
    vm = c.wait_for_vm(vm_id, timeout=30)
    assert not vm.reconciling and vm.state == vm_pb2.Vm.RUNNING
    asked = restart(c, vm_id, mode=vm_pb2.HARD)
    assert asked.reconciling and asked.state == vm_pb2.Vm.RUNNING  # as it was: the agent has not acted yet
    done = c.wait_for_vm(vm_id, timeout=30)
    assert not done.reconciling and done.state == vm_pb2.Vm.RUNNING
    assert not any(cond.type == "PowerCycle" for cond in done.conditions), done.conditions

    grown = update(c, vm_pb2.Vm(name=done.name, flavor="medium"), "flavor")
    assert grown.reconciling
    grown = c.wait_for_vm(vm_id, timeout=30)
    shrunk = update(c, vm_pb2.Vm(name=done.name, flavor="narrow"), "flavor")  # smaller: off, resized, on
    assert shrunk.reconciling and shrunk.resources.vcpus == 1
    settled = c.wait_for_vm(vm_id, timeout=30)
    assert not settled.reconciling and settled.state == vm_pb2.Vm.RUNNING and settled.etag == shrunk.etag


def test_a_vm_created_powered_off_stays_off_until_started(c) -> None:
    vm_id = _fresh()
    vm = create(c, vm_id, power=vm_pb2.Vm.POWERED_OFF, power_policy=vm_pb2.Vm.KEEP_RUNNING)
    assert (vm.power, vm.power_policy) == (vm_pb2.Vm.POWERED_OFF, vm_pb2.Vm.KEEP_RUNNING)
    assert c.get_vm(vm_id).power == vm_pb2.Vm.POWERED_OFF
    assert start(c, vm_id).power == vm_pb2.Vm.POWERED_ON


def test_power_refusals_have_a_reason_and_change_nothing(system, c) -> None:
    # Pending (no host has the label it needs): start is taken, stop and restart are not.
    pending = _fresh()
    create(c, pending, node_selector={"nowhere": "x"}, power=vm_pb2.Vm.POWERED_OFF)
    before = c.get_vm(pending)
    for call in (lambda: stop(c, pending), lambda: restart(c, pending, request_id="r")):
        err = _error(call)
        assert (err.code, err.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "VM_PENDING"), err
        assert same(before, c.get_vm(pending))
    assert start(c, pending).power == vm_pb2.Vm.POWERED_ON

    # A stale etag.
    vm_id = _fresh()
    vm = placed(c, vm_id)
    err = _error(lambda: stop(c, vm_id, etag="1"))
    assert (err.code, err.reason) == (grpc.StatusCode.ABORTED, "ETAG_MISMATCH")
    # A grace below zero or above the hour, an unknown mode.
    for request, field in (({"grace": duration_pb2.Duration(seconds=-1)}, "grace"),
                           ({"grace": duration_pb2.Duration(seconds=3601)}, "grace"), ({"mode": 7}, "mode")):
        err = _error(lambda request=request: stop(c, vm_id, **request))
        assert (err.code, err.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "FIELD_INVALID")
        assert [f for f, _ in err.field_violations] == [field]
    assert same(vm, c.get_vm(vm_id))
    assert _error(lambda: start(c, "nope")).code == grpc.StatusCode.NOT_FOUND

    # Being deleted: its agent paused, so that it stays DELETING while we ask.
    agent = system.processes["agent-0"].process
    assert agent is not None
    agent.send_signal(signal.SIGSTOP)
    try:
        deleting = c.delete_vm(vm_id)
        assert deleting.state == vm_pb2.Vm.DELETING
        for call in (lambda: start(c, vm_id), lambda: stop(c, vm_id), lambda: restart(c, vm_id),
                     lambda: update(c, vm_pb2.Vm(name=c.vm_name(vm_id), labels={"a": "b"}), "labels")):
            err = _error(call)
            assert (err.code, err.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "VM_DELETING"), err
        assert same(deleting, c.get_vm(vm_id))
    finally:
        agent.send_signal(signal.SIGCONT)


# --- update and resize -------------------------------------------------------------------

def test_update_relabels_and_resizes_against_quota_and_host(system, c) -> None:
    vm_id = _fresh()
    vm = placed(c, vm_id)
    relabelled = update(c, vm_pb2.Vm(name=vm.name, etag=vm.etag, labels={"tier": "gold"}, flavor="ignored"),
                        "labels")
    assert dict(relabelled.labels) == {"tier": "gold"} and relabelled.flavor == "small"
    grown = update(c, vm_pb2.Vm(name=vm.name, flavor="medium"), "flavor")
    assert grown.flavor == "medium" and grown.resources.vcpus == 2 and dict(grown.labels) == {"tier": "gold"}
    usage = c.get_quota(f"tenants/{TENANT}/projects/{PROJECT}/quota").usage

    # More than the host has: FAILED_PRECONDITION, HOST_FULL, naming the dimension.
    err = _error(lambda: update(c, vm_pb2.Vm(name=vm.name, flavor="huge"), "flavor"))
    assert (err.code, err.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "HOST_FULL"), err
    assert err.metadata["dimensions"] == "vcpus" and err.metadata["host"]
    # More than the project's quota (the host has room).
    err = _error(lambda: update(c, vm_pb2.Vm(name=vm.name, flavor="wide"), "flavor"))
    assert (err.code, err.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "QUOTA_EXCEEDED"), err
    assert err.metadata["dimensions"] == "memory_mib"
    assert c.get_quota(f"tenants/{TENANT}/projects/{PROJECT}/quota").usage == usage  # neither refusal charged
    # An unknown flavor, a stale etag, masks that are empty, unknown or write-once.
    err = _error(lambda: update(c, vm_pb2.Vm(name=vm.name, flavor="nope"), "flavor"))
    assert (err.code, err.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "FIELD_INVALID")
    assert err.field_violations[0][0] == "vm.flavor" and "medium" in err.field_violations[0][1]
    err = _error(lambda: update(c, vm_pb2.Vm(name=vm.name, etag=vm.etag, flavor="medium"), "*"))
    assert (err.code, err.reason) == (grpc.StatusCode.ABORTED, "ETAG_MISMATCH")
    for paths, words in (((), "required"), (("image",), "image"), (("bootstrap",), "write-once"),
                         (("bootstrap.user_data",), "write-once")):
        err = _error(lambda paths=paths: update(c, vm_pb2.Vm(name=vm.name), *paths))
        assert (err.code, err.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "FIELD_INVALID"), paths
        assert err.field_violations[0][0] == "update_mask" and words in err.field_violations[0][1]
    assert same(grown, c.get_vm(vm_id))
    # Back to fewer vCPUs (the disk kept), by "*" (labels as given, emptied).
    narrow = update(c, vm_pb2.Vm(name=vm.name, flavor="narrow"), "*")
    assert narrow.resources.vcpus == 1 and not narrow.labels


def _journal(system: LocalSystem, uid: str) -> list[dict]:
    """The sim host's journal records of the VM ``uid``: what its driver did to it."""
    return [r for r in read_journal(system.sim_state_dir()) if r.get("vm_uid") == uid]


def test_a_resize_grows_the_disk_hot_and_never_shrinks_it(system, c) -> None:
    vm_id = _fresh()
    placed(c, vm_id)
    uid = stored(system, vm_id).uid
    c.wait_for_vm(vm_id, timeout=30)

    # A disk growth alone: the VM's disk grows, without a power cycle.
    roomy = update(c, vm_pb2.Vm(name=c.vm_name(vm_id), flavor="roomy"), "flavor")
    assert roomy.reconciling and roomy.resources.disk_gib == 20
    done = c.wait_for_vm(vm_id, timeout=30)
    assert not done.reconciling and done.state == vm_pb2.Vm.RUNNING
    records = _journal(system, uid)
    assert [r["disk_gib"] for r in records if r["op"] == "reconfigure"] == [20], records
    assert not [r for r in records if r["op"] == "power_off"], records

    medium = update(c, vm_pb2.Vm(name=c.vm_name(vm_id), flavor="medium"), "flavor")
    assert medium.resources.disk_gib == 40
    medium = c.wait_for_vm(vm_id, timeout=30)
    assert not medium.reconciling and medium.state == vm_pb2.Vm.RUNNING
    last = [r for r in _journal(system, uid) if r["op"] == "reconfigure"][-1]
    assert (last["vcpus"], last["memory_mib"], last["disk_gib"]) == (2, 4096, 40)

    # A smaller disk: refused, nothing written (spec, quota, the VM).
    usage = c.get_quota(f"tenants/{TENANT}/projects/{PROJECT}/quota").usage
    spec = stored(system, vm_id)
    for flavor in ("small", "roomy"):
        err = _error(lambda flavor=flavor: update(c, vm_pb2.Vm(name=c.vm_name(vm_id), flavor=flavor), "flavor"))
        assert (err.code, err.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "DISK_SHRINK_UNSUPPORTED"), err
        assert (err.metadata["current_disk_gib"], err.metadata["flavor"]) == ("40", flavor)
        assert err.metadata["requested_disk_gib"] == ("10" if flavor == "small" else "20")
    assert stored(system, vm_id) == spec
    assert c.get_quota(f"tenants/{TENANT}/projects/{PROJECT}/quota").usage == usage
    assert same(medium, c.get_vm(vm_id)) and not c.get_vm(vm_id).reconciling
    # The same flavor again is no resize: nothing to refuse.
    assert update(c, vm_pb2.Vm(name=c.vm_name(vm_id), flavor="medium"), "flavor").etag == medium.etag


# --- bootstrap data ---------------------------------------------------------------------

def _bootstrap(user_data: bytes, **kw) -> vm_pb2.Bootstrap:
    return vm_pb2.Bootstrap(user_data=user_data, **kw)


def test_bad_bootstrap_data_is_refused_with_its_field_and_never_echoed(c) -> None:
    secret = f"#cloud-config\n# {MARKER}\n".encode()
    cases = [
        (_bootstrap(secret + b"x" * 64 * 1024), "USER_DATA_TOO_LARGE", "vm.bootstrap.user_data"),
        (_bootstrap(secret, format=9), "FIELD_INVALID", "vm.bootstrap.format"),
        (_bootstrap(secret, format=vm_pb2.Bootstrap.IGNITION), "FIELD_INVALID", "vm.bootstrap.user_data"),
        (_bootstrap(secret, size_bytes=3), "FIELD_INVALID", "vm.bootstrap.size_bytes"),
        (_bootstrap(secret, metadata=vm_pb2.BootstrapMetadata(hostname=f"{MARKER}_!")), "FIELD_INVALID",
         "vm.bootstrap.metadata.hostname"),
        (_bootstrap(secret, metadata=vm_pb2.BootstrapMetadata(values={"k": MARKER * 500})), "METADATA_TOO_LARGE",
         "vm.bootstrap.metadata"),
        (vm_pb2.Bootstrap(), "FIELD_INVALID", "vm.bootstrap"),
    ]
    for bootstrap, reason, field in cases:
        vm_id = _fresh()
        err = _error(lambda vm_id=vm_id, bootstrap=bootstrap: create(c, vm_id, bootstrap=bootstrap))
        assert (err.code, err.reason) == (grpc.StatusCode.INVALID_ARGUMENT, reason), (field, err)
        assert [f for f, _ in err.field_violations] == [field], err
        assert MARKER not in repr(err)
        assert _error(lambda vm_id=vm_id: c.get_vm(vm_id)).code == grpc.StatusCode.NOT_FOUND
    # At the limit exactly: taken.
    exact = _bootstrap(b"#" * 64 * 1024)
    assert create(c, _fresh(), bootstrap=exact).bootstrap.size_bytes == 64 * 1024


def test_bootstrap_data_is_stored_apart_and_never_read_back(system, c) -> None:
    user_data = f"#cloud-config\nruncmd: [echo {MARKER}]\n".encode()
    listed_from = c._call(c._vms.ListVms, vm_pb2.ListVmsRequest(parent=c.parent)).resource_version
    vm_id = _fresh()
    made = create(c, vm_id, bootstrap=_bootstrap(user_data, metadata=vm_pb2.BootstrapMetadata(
        ssh_authorized_keys=[f"ssh-ed25519 AAAA {MARKER}"], values={"role": MARKER})))
    summary = made.bootstrap
    assert (summary.format, summary.size_bytes, summary.sha256, summary.state) == (
        vm_pb2.Bootstrap.CLOUD_INIT, len(user_data), hashlib.sha256(user_data).hexdigest(), vm_pb2.Bootstrap.STORED)
    assert not summary.user_data and not summary.HasField("metadata")
    # A retry of the create (same request_id) gets the same VM; another user data is another request.
    request = vm_pb2.CreateVmRequest(parent=c.parent, vm_id=_fresh(), request_id="boot-1",
                                     vm=vm_pb2.Vm(flavor="small", image="ubuntu", bootstrap=_bootstrap(user_data)))
    first = c._call(c._vms.CreateVm, request)
    assert c._call(c._vms.CreateVm, request).uid == first.uid
    request.vm.bootstrap.user_data = user_data + b"\n"
    assert _error(lambda: c._call(c._vms.CreateVm, request)).reason == "REQUEST_ID_REUSED"
    # The metadata counts too (as given: its rendered defaults, the uid, differ per attempt).
    keyed = vm_pb2.CreateVmRequest(parent=c.parent, vm_id=_fresh(), request_id="boot-2", vm=vm_pb2.Vm(
        flavor="small", image="ubuntu", bootstrap=_bootstrap(user_data, metadata=vm_pb2.BootstrapMetadata(
            ssh_authorized_keys=["ssh-ed25519 AAAA one"], values={"role": "worker"}))))
    first = c._call(c._vms.CreateVm, keyed)
    assert c._call(c._vms.CreateVm, keyed).uid == first.uid  # a true retry
    keyed.vm.bootstrap.metadata.ssh_authorized_keys[0] = "ssh-ed25519 AAAA two"
    err = _error(lambda: c._call(c._vms.CreateVm, keyed))
    assert (err.code, err.reason) == (grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED")
    assert "AAAA" not in repr(err)
    keyed.vm.bootstrap.metadata.ssh_authorized_keys[0] = "ssh-ed25519 AAAA one"
    assert c._call(c._vms.CreateVm, keyed).uid == first.uid  # the first request again: still a retry

    # In etcd, under bootstrap/, with the rendered metadata: and nowhere under vms/. Read
    # for a VM no host takes (the agent clears a placed VM's data once its guest has
    # bootstrapped, which the sim's guest does at once).
    held_id = _fresh()
    held = create(c, held_id, node_selector={"nowhere": "x"}, bootstrap=_bootstrap(user_data, metadata=(
        vm_pb2.BootstrapMetadata(ssh_authorized_keys=[f"ssh-ed25519 AAAA {MARKER}"], values={"role": MARKER}))))

    async def read() -> tuple[BootstrapData, list[bytes]]:
        keys = Keys(system.root)
        async with EtcdClient(system.etcd_endpoint) as client:
            kv = await client.get(keys.bootstrap(VmRef(TENANT, PROJECT, held_id)))
            assert kv is not None
            vms, _rev = await client.range_prefix(keys.vms_prefix())
            return BootstrapData.from_bytes(kv.value), [v.value for v in vms]

    data, vm_values = asyncio.run(read())
    assert data.user_data == user_data and data.uid == held.uid
    assert f'"local-hostname":"{held_id}"'.encode() in data.metadata and f'"instance-id":"{held.uid}"'.encode() \
        in data.metadata and MARKER.encode() in data.metadata
    assert not any(MARKER.encode() in value for value in vm_values)

    # No read, list, watch or audit record carries any of it.
    wait_until(lambda: c.get_vm(vm_id).state != vm_pb2.Vm.PENDING, timeout=30, message="the VM to be placed",
               seen=lambda: vm_pb2.Vm.State.Name(c.get_vm(vm_id).state))
    answers = [c.get_vm(vm_id).SerializeToString(),
               c._call(c._vms.ListVms, vm_pb2.ListVmsRequest(parent=c.parent)).SerializeToString()]
    for resource_version in (0, listed_from):
        events = c.watch_vms(resource_version=resource_version, timeout=30)
        for event in events:
            answers.append(event.SerializeToString())
            if event.type == common_pb2.BOOKMARK and event.resource_version > listed_from:
                break
        events.close()
    stop(c, vm_id)
    answers += [r.SerializeToString() for r in c.list_audit(tenant=TENANT)]
    with system.client(ensure_project=False) as admin:
        answers += [r.SerializeToString() for r in admin.list_audit()]
    assert len(answers) > 5 and not any(MARKER.encode() in a for a in answers)
    assert any(made.uid.encode() in a for a in answers)  # what was searched did hold the VM

    # Nor any frontend's log.
    logs = sorted(system.log_dir.glob("frontend-*.log"))
    assert logs and all(path.stat().st_size > 0 for path in logs)
    for path in logs:
        assert MARKER not in path.read_text(errors="replace"), path

    # Deleting the VM (a pending one goes at once) takes the data along.
    pending = _fresh()
    create(c, pending, node_selector={"nowhere": "x"}, bootstrap=_bootstrap(user_data))
    c.delete_vm(pending)

    async def gone() -> bool:
        async with EtcdClient(system.etcd_endpoint) as client:
            return await client.get(Keys(system.root).bootstrap(VmRef(TENANT, PROJECT, pending))) is None
    assert asyncio.run(gone())
