"""The whole system with its agents on vcsim: 200 VMs from the API to RUNNING,
then checked on the vSphere side with an independent pyvmomi query; a VM's bootstrap
data delivered as guestinfo keys and blanked once its (simulated) guest reports.

Production layout: two simulated ESXi hosts, one agent process each, TLS
verified against each simulator's certificate, the password in the environment.
"""

from __future__ import annotations

import base64
import collections
import json
import time
import uuid

from controlplane.gen.quanta.v1 import vm_pb2
from quanta.local import LocalSystem
from tests.conftest import describe_processes, describe_vms, wait_until
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


def test_bootstrap_data_reaches_the_vm_as_guestinfo_and_is_blanked_once_the_guest_reports():
    """Issue 12 on vcsim, through the API and an esxi agent: the VM is made with its
    cloud-init keys; vcsim's simulated guest (tests/vcsim/main.go ``-guest``) comes up,
    reports an address and that it bootstrapped; the agent blanks the keys, and the
    API shows the address and CLEARED. The user data is in no agent or frontend log."""
    user_data = f"#cloud-config\nhostname: secret-{uuid.uuid4().hex}\n".encode()
    # The guest boots slowly enough for the keys to be seen on the VM before they are blanked.
    with Vcsim(mode="esx", guest_boot_s=3.0) as vcsim:
        vcsim.make_image("ubuntu", nic=True)
        with LocalSystem(hosts=1, frontends=1, metrics=False, agents=[agent_args(vcsim, 0)],
                         agent_env={"QUANTA_ESXI_PASSWORD": vcsim.password}) as system:
            seen = lambda: describe_processes(system)  # noqa: E731
            with system.client() as client:
                made = client._call(client._vms.CreateVm, vm_pb2.CreateVmRequest(
                    parent=client.parent, vm_id="boot-1", vm=vm_pb2.Vm(
                        flavor="small", image="ubuntu", bootstrap=vm_pb2.Bootstrap(
                            user_data=user_data, metadata=vm_pb2.BootstrapMetadata(hostname="node-1")))))

                def delivered() -> dict[str, str] | None:
                    try:
                        keys = vcsim.extra_config(made.uid)
                    except LookupError:
                        return None
                    return keys if "guestinfo.userdata" in keys else None
                keys = wait_until(delivered, timeout=60, message="the guestinfo keys on the VM", seen=seen)
                assert base64.b64decode(keys["guestinfo.userdata"]) == user_data
                assert keys["guestinfo.userdata.encoding"] == keys["guestinfo.metadata.encoding"] == "base64"
                metadata = json.loads(base64.b64decode(keys["guestinfo.metadata"]))
                assert metadata["local-hostname"] == "node-1" and metadata["instance-id"]

                def cleared() -> vm_pb2.Vm | None:
                    vm = client.get_vm("boot-1")
                    return vm if vm.bootstrap.state == vm_pb2.Bootstrap.CLEARED and vm.addresses else None
                vm = wait_until(cleared, timeout=60, message="bootstrapped, cleared, with an address",
                                seen=lambda: f"{client.get_vm('boot-1')}; {seen()}")
                assert vm.addresses[0].ip.startswith("10.77.") and vm.addresses[0].network == "VM Network"
                left = vcsim.extra_config(made.uid)
                assert not [k for k in left if k.startswith(("guestinfo.userdata", "guestinfo.metadata"))], left
                assert left["guestinfo.quanta.bootstrap"] == "done"
            secret = user_data.decode().split("hostname: ")[1].strip()
            logged = [p.name for p in system.log_dir.iterdir() if secret in p.read_text(errors="replace")]
            assert not logged, f"the user data is in {logged}"
