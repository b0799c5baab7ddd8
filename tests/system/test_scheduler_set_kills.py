"""A real scheduler process SIGKILLed again and again while it places all-or-nothing
sets: at every moment each set is bound whole or not at all, and in the end every
set is placed, each member exactly once, on a host of a zone of its own."""

from __future__ import annotations

import asyncio
import signal
import threading
import uuid

from controlplane.etcd import EtcdClient, ops, prefix_end
from controlplane.models import Binding, HostAllocation, Scope, VmSet, VmSetRef, VmSetState
from controlplane.store.keys import Keys
from controlplane.store.tenancy import ensure_project
from quanta.local import LocalSystem
from tests.conftest import describe_processes, wait_until
from tests.store.test_scheduler_sets import admit_set, member

SHARDS = 2
SETS_PER_ROUND = 12
ROUNDS = 3


def _snapshot(system: LocalSystem) -> tuple[dict[str, VmSet], dict[str, Binding], dict[str, HostAllocation]]:
    """Every set's record, every binding (by vm id) and every host's allocation, at one revision."""
    keys = Keys(system.root)

    async def read():
        async with EtcdClient(system.etcd_endpoint) as client:
            prefixes = [keys.vm_sets_prefix("acme", "web"), keys.bindings_prefix(), keys.hosts_prefix()]
            result = await client.txn([], [ops.get(p, prefix_end(p)) for p in prefixes])
            sets = {}
            for kv in result.kvs(0):
                set_id = kv.key.rsplit(b"/", 1)[1].decode()
                sets[set_id] = VmSet.from_bytes(VmSetRef("acme", "web", set_id), kv.value)
            bound = {(b := Binding.from_bytes(kv.value)).spec.ref.vm_id: b for kv in result.kvs(1)}
            allocated = {kv.key.split(b"/")[-2].decode(): HostAllocation.from_bytes(kv.value)
                         for kv in result.kvs(2) if kv.key.endswith(b"/alloc")}
            return sets, bound, allocated

    return asyncio.run(read())


def _all_or_nothing(system: LocalSystem) -> dict[str, VmSet]:
    """Check at one revision: each set has all its members bound (and is PLACED) or none
    (and is PENDING), members of one set in distinct zones, allocations what the
    bindings imply. Returns the sets."""
    sets, bound, allocated = _snapshot(system)
    for set_id, vm_set in sets.items():
        members = [bound[vm_id] for vm_id in vm_set.vms if vm_id in bound]
        assert len(members) in (0, len(vm_set.vms)), f"{set_id}: {len(members)} of {len(vm_set.vms)} bound"
        assert (vm_set.state == VmSetState.PLACED) == bool(members), f"{set_id} {vm_set.state.name}"
        assert len({b.zone for b in members}) == len(members), f"{set_id}: two members share a zone"
    per_host: dict[str, int] = {}
    for b in bound.values():
        per_host[b.host] = per_host.get(b.host, 0) + 1
    assert {h: a.vm_count for h, a in allocated.items() if a.vm_count} == per_host
    return sets


def test_a_scheduler_killed_while_placing_sets_leaves_each_all_or_nothing(etcd_server, tmp_path) -> None:
    root = f"/sets-{uuid.uuid4().hex[:8]}"
    with LocalSystem(etcd_endpoint=etcd_server.endpoint, root=root, hosts=6, latency="zero", frontends=1,
                     schedulers=1, shards=SHARDS, lease_ttl=2, metrics=False, data_dir=str(tmp_path),
                     zones=("zone-a", "zone-b", "zone-c")) as system:
        keys = Keys(root)

        async def admit(round_no: int) -> None:
            async with EtcdClient(system.etcd_endpoint) as client:
                await ensure_project(client, keys, "acme", "web")
                for i in range(SETS_PER_ROUND):
                    set_id = f"r{round_no}-s{i:02d}"
                    shard = i % SHARDS
                    await admit_set(client, keys, set_id, [
                        member(set_id, f"{set_id}-m{j}", shard=shard, group=set_id, scope=Scope.ZONE)
                        for j in range(3)], shard=shard)

        scheduler = system.processes["scheduler-0"]
        kills = 0
        placed_at_kill = []
        for round_no in range(ROUNDS):
            # Admitted while the scheduler places them: the kill lands mid-way.
            admitting = threading.Thread(target=asyncio.run, args=(admit(round_no),))
            admitting.start()
            names = {f"r{round_no}-s{i:02d}" for i in range(SETS_PER_ROUND)}

            def some_placed(names=names) -> bool:
                sets = _all_or_nothing(system)
                return any(n in sets and sets[n].state == VmSetState.PLACED for n in names)

            wait_until(some_placed, timeout=60, message=f"round {round_no}: a first set placed",
                       seen=lambda: describe_processes(system))
            scheduler.kill(signal.SIGKILL)  # while the round's other sets are being placed
            kills += 1
            sets = _all_or_nothing(system)
            scheduler.start()
            admitting.join()
            placed = sum(n in sets and sets[n].state == VmSetState.PLACED for n in names)
            assert placed >= 1
            placed_at_kill.append(placed)

        def all_placed() -> bool:
            sets = _all_or_nothing(system)
            return len(sets) == ROUNDS * SETS_PER_ROUND and all(s.state == VmSetState.PLACED for s in sets.values())

        def seen() -> str:
            sets = _all_or_nothing(system)
            pending = sorted(n for n, s in sets.items() if s.state != VmSetState.PLACED)
            return f"{len(pending)} not placed: {pending[:5]}; {describe_processes(system)}"

        wait_until(all_placed, timeout=120, message="every set placed after the kills", seen=seen)
        _sets, bound, _allocated = _snapshot(system)
        assert len(bound) == ROUNDS * SETS_PER_ROUND * 3
        assert kills == ROUNDS
        print(f"sets placed when the scheduler was killed, per round of {SETS_PER_ROUND}: {placed_at_kill}")
