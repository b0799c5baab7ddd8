"""The whole system with its agents on vcsim: 200 VMs from the API to RUNNING,
then checked on the vSphere side with an independent pyvmomi query.

Production layout: two simulated ESXi hosts, one agent process each, TLS
verified against each simulator's certificate, the password in the environment.
"""

from __future__ import annotations

import collections
import time

from quanta.local import LocalSystem
from tests.conftest import describe_processes, describe_vms
from tests.vcsim import Vcsim

VMS = 200


def agent_args(vcsim: Vcsim, index: int) -> list[str]:
    # A vcsim host offers 2 threads, 4 GiB and 251 GiB: overcommit so 100+ small VMs fit.
    return [*vcsim.agent_args(host_id_prefix=f"esx{index}-"), "--name", f"esxi-agent-{index}",
            "--vcpu-overcommit", "64", "--memory-overcommit", "32", "--disk-overcommit", "6"]


def test_200_vms_on_vcsim_hosts_end_to_end():
    vcsims: list[Vcsim] = []
    try:
        for _ in range(2):
            vcsim = Vcsim(mode="esx")
            vcsims.append(vcsim)
            vcsim.start()
            vcsim.make_image("ubuntu")
        assert len({v.password for v in vcsims}) == 1
        with LocalSystem(hosts=2, frontends=1, metrics=False,
                         agents=[agent_args(v, i) for i, v in enumerate(vcsims)],
                         agent_env={"QUANTA_ESXI_PASSWORD": vcsims[0].password}) as system:
            with system.client() as client:
                hosts = sorted(h.host_id if hasattr(h, "host_id") else h.name for h in client.list_hosts())
                assert len(hosts) == 2
                made = {client.create_vm(f"vm-{i:03d}", flavor="small", image="ubuntu").uid for i in range(VMS)}
                assert len(made) == VMS
                running: set[str] = set()
                deadline = time.monotonic() + 240
                for event in client.watch_vms(timeout=240):
                    vm = event.vm
                    assert vm.state != vm.ERROR, f"{vm.name} failed: {vm}"
                    if vm.state == vm.RUNNING:
                        running.add(vm.uid)
                    if len(running) == VMS or time.monotonic() > deadline:
                        break
                assert running == made, (f"timed out after 240s waiting for all {VMS} VMs RUNNING; last seen: "
                                         f"{describe_vms(client.list_vms())}; {describe_processes(system)}")
            seen = [vm for v in vcsims for vm in v.quanta_vms()]
            counts = collections.Counter(vm.uid for vm in seen)
            assert set(counts) == made
            assert max(counts.values()) == 1, [uid for uid, n in counts.items() if n > 1]
            assert {vm.power for vm in seen} == {"poweredOn"}
            assert all(vm.name == f"quanta-{vm.uid}" for vm in seen)
            per_host = [len(v.quanta_vms()) for v in vcsims]
            assert sum(per_host) == VMS and min(per_host) > 0
    finally:
        for vcsim in vcsims:
            vcsim.cleanup()
