"""Three scheduler processes share the shards; one is SIGKILLed while its shards
still hold pending VMs: the survivors take its shards over within the lease TTL,
and every VM is placed exactly once, none lost."""

from __future__ import annotations

import asyncio
import collections
import signal
import uuid

from controlplane.etcd import EtcdClient
from controlplane.store.keys import Keys, shard_of
from controlplane.store.shards import ShardDirectory
from quanta.local import LocalSystem
from tests.conftest import describe_processes, seen_in, wait_until
from tests.system.test_crash_recovery import _check_exactly_once, _states

SHARDS = 6


def _owners(system: LocalSystem) -> dict[int, str]:
    """shard -> owning process name, as etcd says."""

    async def read() -> dict[int, str]:
        async with EtcdClient(system.etcd_endpoint) as client:
            table = await ShardDirectory(client, Keys(system.root)).snapshot()
        return {s: h.owner for s, h in table.owners.items()}

    return asyncio.run(read())


def _spread(system: LocalSystem, names: set[str]) -> dict[int, str] | None:
    owners = _owners(system)
    per_process = collections.Counter(owners.values())
    if sorted(owners) == list(range(SHARDS)) and set(per_process) == names \
            and max(per_process.values()) - min(per_process.values()) <= 1:
        return owners
    return None


def _owners_seen(system: LocalSystem):
    """What a wait on the shards saw: shard -> owner, and any process that exited."""
    return lambda: f"owners {dict(sorted(_owners(system).items()))}; {describe_processes(system)}"


def test_scheduler_killed_mid_load_loses_and_duplicates_nothing(etcd_server, tmp_path):
    root = f"/failover-{uuid.uuid4().hex[:8]}"
    with LocalSystem(etcd_endpoint=etcd_server.endpoint, root=root, hosts=6, latency="zero", frontends=1,
                     schedulers=3, shards=SHARDS, lease_ttl=3, metrics=False, data_dir=str(tmp_path)) as system:
        names = {f"scheduler-{i}" for i in range(3)}
        owners = wait_until(lambda: _spread(system, names), timeout=30, message="6 shards spread over 3 processes",
                            seen=_owners_seen(system))
        assert collections.Counter(owners.values()) == {name: 2 for name in names}

        victim = system.processes["scheduler-1"]
        victim_shards = {s for s, name in owners.items() if name == "scheduler-1"}
        victim.process.send_signal(signal.SIGSTOP)  # its shards keep their VMs pending until the kill
        with system.client(project="failover") as client:
            try:
                from tests.system.test_crash_recovery import VMS

                vms = [client.create_vm(f"vm-{i:03d}", flavor="small", image="ubuntu") for i in range(VMS)]
                stuck = {vm.uid for vm in vms if shard_of(vm.uid, SHARDS) in victim_shards}
                assert stuck, "no VM hashed to the victim's shards"
                # The other processes place their shards' VMs meanwhile.
                wait_until(lambda: _states(client)["PENDING"] == len(stuck), timeout=60,
                           message=f"all VMs but the victim's {len(stuck)} placed", seen=seen_in(system, client))
            finally:
                victim.kill(signal.SIGKILL)  # a stopped process dies of SIGKILL too
            assert _states(client)["PENDING"] == len(stuck), "the kill should land while its VMs are pending"

            survivors = names - {"scheduler-1"}
            owners = wait_until(lambda: _spread(system, survivors), timeout=30,
                                message="the dead process's shards taken over", seen=_owners_seen(system))
            assert collections.Counter(owners.values()) == {name: 3 for name in survivors}
            _check_exactly_once(system, client, vms)

            victim.start()  # it rejoins and gets its fair share back
            owners = wait_until(lambda: _spread(system, names), timeout=30, message="rebalanced after rejoin",
                                seen=_owners_seen(system))
            assert collections.Counter(owners.values()) == {name: 2 for name in names}
