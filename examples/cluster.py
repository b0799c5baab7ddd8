#!/usr/bin/env python3
"""An installer's path through Quanta, with the SDK only: the nodes of a Kubernetes-
style cluster, each bootstrapped by its own cloud-init, then an inventory for the
installer's next step, then proof that the bootstrap data stayed secret.

    scripts/up --zones 3                       # in one terminal (hosts in three zones)
    .venv/bin/python examples/cluster.py       # in another; --help for options

1. Creates 3 control-plane VMs with ONE all-or-nothing call (``create_vms(...,
   all_or_nothing=True)``): a set admitted and placed as a whole or not at all, in
   one anti-affinity group of scope ZONE (no two in one availability zone: the hosts
   need the label topology.quanta.io/zone, which ``quanta up --zones 3`` gives
   simulated hosts), and waits for it (``wait_for_vm_set``, printing the set's
   progress and, while it does not fit, why: ``SetDoesNotFit`` with the shortfall;
   a set that FAILED at its deadline ends the run, leaving nothing behind).
2. Only then creates 5 workers with one INDEPENDENT call. Each VM has its own
   cloud-init user data and instance metadata (a unique marker in each). Waits,
   through one watch, until every VM is RUNNING with an address; checks that the
   set is PLACED and its members name it.
   Networks first: the control planes get a static address from the pool of network
   ``cp`` (a subnet Quanta hands addresses out of, exactly) and a persistent etcd
   data disk each; the workers a DHCP NIC on network ``workers``. Both networks are
   made if absent (port groups of the same names: ``quanta up`` hosts reach them),
   and so are the disks (they outlive the VMs: a control plane replaced on another
   host keeps its disk and its address).
3. Prints an inventory: Ansible INI and JSON (``--inventory-dir`` also writes them).
4. Checks through the API that the bootstrap data never comes back: no Get, List or
   Watch answer and no audit record holds any marker (raw or base64), and every VM's
   bootstrap summary (size, SHA-256) matches what was sent; then waits until each
   VM's bootstrap state is CLEARED (deleted from the store, blanked on the VM).

Settings as every SDK client takes them: ``--context`` (else $QUANTA_CONTEXT or the
current one, which ``quanta up`` sets), $QUANTA_ENDPOINT, $QUANTA_TOKEN, ...
Exit status 0 when every check passed, 1 otherwise (each failure is said).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import pathlib
import sys
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from controlplane.gen.quanta.v1 import common_pb2, vm_pb2
from quanta import AlreadyExists, Client, PermissionDenied, QuantaError, VmSetFailed
from quanta.waits import VmSetWait, describe_vm

ZONE_LABEL = "topology.quanta.io/zone"


@dataclass(frozen=True)
class Node:
    """One VM of the cluster and the secrets it was created with."""

    name: str
    role: str  # "control-plane" or "worker"
    user_data: bytes = field(repr=False)  # a secret: never in a repr
    markers: tuple[str, ...] = field(default=(), repr=False)  # in its user data and its metadata


def plan(prefix: str, run_id: str, control_planes: int, workers: int) -> list[Node]:
    """The nodes to create, each with its own cloud-init and markers (pure)."""
    nodes = []
    for role, count, short in (("control-plane", control_planes, "cp"), ("worker", workers, "worker")):
        for i in range(1, count + 1):
            name = f"{prefix}-{short}-{i}"
            markers = (marker(run_id, name), marker(run_id, name, "metadata"))
            user_data = (f"#cloud-config\n"
                         f"hostname: {name}\n"
                         f"write_files:\n"
                         f"  - path: /etc/cluster/join-token\n"
                         f"    permissions: '0600'\n"
                         f"    content: {markers[0]}\n"
                         f"runcmd:\n"
                         f"  - [sh, -c, 'echo {role} joined > /var/tmp/cluster-node']\n").encode()
            nodes.append(Node(name, role, user_data, markers))
    return nodes


def marker(run_id: str, name: str, where: str = "user-data") -> str:
    """The secret that only ``name``'s bootstrap data holds (tests derive it too)."""
    return f"secret-{where}-{run_id}-{name}"


def leaks(blob: bytes, markers: Iterable[str]) -> list[str]:
    """The markers found in ``blob``, as they are or base64-encoded (at each of the
    three alignments a substring can have inside a longer base64 text)."""
    found = []
    for m in markers:
        raw = m.encode()
        if raw in blob or any(form in blob for form in _base64_forms(raw)):
            found.append(m)
    return found


def _base64_forms(raw: bytes) -> list[bytes]:
    forms = []
    for pad in range(3):
        encoded = base64.b64encode(b"\0" * pad + raw)
        # Drop the characters that depend on the padding bytes or on what follows.
        core = encoded[4 if pad else 0:-4]
        forms += [core, core.replace(b"+", b"-").replace(b"/", b"_")]
    return [f for f in forms if len(f) >= 8]


def inventory_ini(vms: Sequence[vm_pb2.Vm], roles: dict[str, str]) -> str:
    """Ansible INI: a group per role, the first address as ansible_host."""
    lines = []
    for group, role in (("control_plane", "control-plane"), ("workers", "worker")):
        lines.append(f"[{group}]")
        lines += [f"{short(vm.name)} ansible_host={vm.addresses[0].ip}" for vm in vms if roles[vm.name] == role]
        lines.append("")
    lines += ["[cluster:children]", "control_plane", "workers", ""]
    return "\n".join(lines)


def inventory_json(vms: Sequence[vm_pb2.Vm], roles: dict[str, str], zones: dict[str, str]) -> str:
    """The same as JSON: each node's name, role, addresses, host and zone."""
    return json.dumps({"nodes": [{
        "name": short(vm.name), "role": roles[vm.name], "ip": vm.addresses[0].ip,
        "addresses": [a.ip for a in vm.addresses], "host": vm.host, "zone": zones.get(vm.host, ""),
    } for vm in vms]}, indent=2)


def short(name: str) -> str:
    return name.rsplit("/", 1)[-1]


class Checks:
    """Collects what was checked and what failed."""

    def __init__(self) -> None:
        self.failures: list[str] = []

    def expect(self, ok: bool, what: str, failure: str = "") -> None:
        print(f"  {'ok  ' if ok else 'FAIL'}  {what}" + ("" if ok or not failure else f": {failure}"), flush=True)
        if not ok:
            self.failures.append(f"{what}: {failure}" if failure else what)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--context", default=None, help="the CLI context to use (default: the current one)")
    parser.add_argument("--prefix", default="demo",
                        help="VM names, labels, the control planes' set and anti-affinity group start with this "
                             "(default demo)")
    parser.add_argument("--run-id", default=uuid.uuid4().hex[:12],
                        help="part of every secret marker and of the set's id (default: random)")
    parser.add_argument("--control-planes", type=int, default=3, metavar="N",
                        help="control-plane VMs, no two in one zone: at most one per zone (default 3)")
    parser.add_argument("--workers", type=int, default=5, metavar="N", help="worker VMs (default 5)")
    parser.add_argument("--flavor", default="small", help="every VM's flavor (default small)")
    parser.add_argument("--image", default="ubuntu", help="every VM's image (default ubuntu)")
    parser.add_argument("--timeout", type=float, default=300.0, metavar="SECONDS",
                        help="seconds for each wait (default 300)")
    parser.add_argument("--deadline", type=float, default=None, metavar="SECONDS",
                        help="the control planes' set fails if not placed by then (default: --timeout)")
    parser.add_argument("--inventory-dir", default=None, metavar="DIR",
                        help="also write inventory.ini and inventory.json here")
    parser.add_argument("--cp-network", default="cp", metavar="NETWORK",
                        help="the control planes' network (made if absent, on the port group of that name, with "
                             "--cp-cidr; default cp)")
    parser.add_argument("--cp-cidr", default="10.100.0.0/24", help="its subnet (default 10.100.0.0/24, gateway .1)")
    parser.add_argument("--workers-network", default="workers", metavar="NETWORK",
                        help="the workers' network (made if absent; DHCP; default workers)")
    parser.add_argument("--etcd-disk-gib", type=int, default=10, metavar="GIB",
                        help="size of each control plane's etcd data disk (default 10)")
    parser.add_argument("--delete", action="store_true", help="delete the VMs and their etcd disks at the end")
    args = parser.parse_args(argv)

    nodes = plan(args.prefix, args.run_id, args.control_planes, args.workers)
    markers = [m for node in nodes for m in node.markers]
    checks = Checks()
    with Client(context=args.context) as quanta:
        names = [quanta.vm_name(node.name) for node in nodes]
        roles = {quanta.vm_name(node.name): node.role for node in nodes}

        # 0. The networks and the control planes' etcd disks (made if absent).
        ensure_networks(quanta, args)
        for node in nodes:
            if node.role == "control-plane":
                ensure_disk(quanta, etcd_disk(node), args.etcd_disk_gib, args.prefix)

        # 1. The control planes: one all-or-nothing set (placed together, no two in one
        # zone, or not at all), followed until every one runs with an address.
        control_planes = [node for node in nodes if node.role == "control-plane"]
        workers = [node for node in nodes if node.role == "worker"]
        print(f"creating {len(control_planes)} control planes in {quanta.parent} at {quanta.endpoint} ...",
              flush=True)
        cp_set = quanta.create_vms([vm_args(node, args) for node in control_planes], all_or_nothing=True,
                                   set_id=f"{args.prefix}-cp-{args.run_id}",
                                   deadline=args.timeout if args.deadline is None else args.deadline)
        assert cp_set.set is not None  # an all-or-nothing call answers with its set
        try:
            cp_vms = quanta.wait_for_vm_set(cp_set.set.name, "RUNNING", address=True, timeout=args.timeout,
                                            on_progress=Progress(f"control planes: {short(cp_set.set.name)}"))
        except VmSetFailed as err:  # its deadline passed: its members are removed, nothing is left
            print(f"error: {err.message}\nno VM is left: the set's members were removed and no worker was "
                  "created", file=sys.stderr)
            return 1

        # 2. The workers, once the control planes are placed: one call, each VM on its own.
        print(f"creating {len(workers)} workers ...", flush=True)
        made = quanta.create_vms([vm_args(node, args) for node in workers])
        for outcome in made.refused:
            checks.expect(False, f"{short(outcome.name)} created", f"{outcome.code.name} {outcome.reason}: "
                                                                    f"{outcome.message}")
        if made.refused:
            return finish(checks)
        # Every address (one watch for all of them).
        vms = quanta.wait_for_vms(names, "RUNNING", address=True, timeout=args.timeout)
        placed = quanta.get_vm_set(cp_set.set.name)
        checks.expect(placed.state == vm_pb2.VmSet.PLACED and sorted(placed.vms) == sorted(v.name for v in cp_vms)
                      and all(v.vm_set == placed.name for v in cp_vms),
                      "the control planes' set is PLACED and names them, each names it",
                      f"{vm_pb2.VmSet.State.Name(placed.state)}, members {list(placed.vms)}")
        zones = host_zones(quanta, {vm.host for vm in vms})

        # 3. The inventory.
        ini, js = inventory_ini(vms, roles), inventory_json(vms, roles, zones)
        print("\n# inventory.ini\n" + ini + "\n# inventory.json\n" + js + "\n", flush=True)
        if args.inventory_dir:
            folder = pathlib.Path(args.inventory_dir)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "inventory.ini").write_text(ini)
            (folder / "inventory.json").write_text(js + "\n")

        # 4. Checks.
        print("checks:", flush=True)
        cp_zones = [zones.get(vm.host, "") for vm in vms if roles[vm.name] == "control-plane"]
        if zones:
            checks.expect(len(set(cp_zones)) == len(cp_zones) and "" not in cp_zones,
                          "control planes in distinct zones", f"zones {cp_zones}")
        ips = [vm.addresses[0].ip for vm in vms]
        checks.expect(len(set(ips)) == len(ips), "every VM has its own address", f"{ips}")
        for vm in vms:
            if roles[vm.name] == "control-plane":
                static = [nic.ip for nic in vm.nics if nic.ip]
                checks.expect(bool(static) and static[0] == vm.addresses[0].ip,
                              f"{short(vm.name)}: runs with the static address taken from {args.cp_network}'s pool",
                              f"NICs {static}, addresses {[a.ip for a in vm.addresses]}")
                disk = quanta.get_disk(etcd_disk(short(vm.name)))
                checks.expect(list(vm.disks) == [disk.name] and disk.vm == vm.name,
                              f"{short(vm.name)}: its etcd disk is attached", f"disks {list(vm.disks)}, disk's VM "
                                                                              f"{disk.vm or '-'}")
        by_name = {node.name: node for node in nodes}
        for vm in vms:
            node = by_name[short(vm.name)]
            b, sha256 = vm.bootstrap, hashlib.sha256(node.user_data).hexdigest()
            checks.expect(b.size_bytes == len(node.user_data) and b.sha256 == sha256,
                          f"{short(vm.name)}: bootstrap summary matches what was sent",
                          f"size {b.size_bytes}, sha256 {b.sha256}")
        seen: list[bytes] = [vm.SerializeToString() for vm in (*vms, *cp_vms)]  # what the waits' watches returned
        seen += [cp_set.response.SerializeToString(), made.response.SerializeToString(), placed.SerializeToString()]
        seen += [quanta.get_vm(name).SerializeToString() for name in names]
        seen += [vm.SerializeToString() for vm in quanta.list_vms()]
        events = watch_until_cleared(quanta, names, args.timeout, checks)
        seen += [event.SerializeToString() for event in events]
        found = sorted({m for blob in seen for m in leaks(blob, markers)})
        checks.expect(not found, f"no Create, Get, List or Watch answer ({len(seen)} messages) holds bootstrap data",
                      f"found {found}")
        try:
            records = quanta.list_audit(tenant=quanta.tenant)
        except PermissionDenied:
            print("  skip  audit records: not readable with this token", flush=True)
        else:
            ours = [r for r in records if r.resource in names]
            found = sorted({m for r in records for m in leaks(r.SerializeToString(), markers)})
            checks.expect(len(ours) >= len(names) and not found,
                          f"no audit record ({len(records)}, {len(ours)} about these VMs) holds bootstrap data",
                          f"found {found}" if found else f"only {len(ours)} records about these VMs")

        if args.delete:
            for name in names:
                quanta.delete_vm(name, delete_disks=True)
            print(f"deleted {len(names)} VMs and the control planes' etcd disks", flush=True)
    return finish(checks)


class Progress:
    """``on_progress`` for ``wait_for_vm_set``: prints a line whenever what it says
    changes: how many members are placed and running, and the first member not yet
    running as last seen (``PENDING (SetDoesNotFit: <the shortfall>)`` while the set
    does not fit)."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.last = ""

    def __call__(self, wait: VmSetWait) -> None:
        line = progress_line(self.what, wait)
        if line != self.last:
            print(line, flush=True)
            self.last = line


def progress_line(what: str, wait: VmSetWait) -> str:
    """``control planes: demo-cp-1f2e: 0/3 placed, 0/3 running; demo-cp-3: PENDING
    (SetDoesNotFit: ...)`` (pure)."""
    total = len(wait.waits)
    line = f"{what}: {wait.placed}/{total} placed, {len(wait.done)}/{total} running"
    behind = next((w.last for name, w in wait.waits.items() if name not in wait.done and w.last is not None), None)
    return line + (f"; {short(behind.name)}: {describe_vm(behind)}" if behind is not None else "")


def etcd_disk(node: Node | str) -> str:
    """The id of a control plane's etcd data disk."""
    return f"{node.name if isinstance(node, Node) else node}-etcd"


def ensure_networks(quanta: Client, args: argparse.Namespace) -> None:
    """The control planes' network (a subnet with a pool) and the workers' (DHCP),
    each on the port group of its name; kept as they are when they exist."""
    cidr = args.cp_cidr
    gateway = cidr.split("/")[0].rsplit(".", 1)[0] + ".1"
    for network_id, kwargs in ((args.cp_network, {"cidr": cidr, "gateway": gateway}), (args.workers_network, {})):
        try:
            quanta.create_network(network_id, backing=network_id, labels={"cluster": args.prefix}, **kwargs)
            print(f"network {network_id}: created", flush=True)
        except AlreadyExists:
            print(f"network {network_id}: exists", flush=True)


def ensure_disk(quanta: Client, disk_id: str, size_gib: int, prefix: str) -> None:
    try:
        quanta.create_disk(disk_id, size_gib=size_gib, labels={"cluster": prefix, "role": "etcd"})
    except AlreadyExists:
        pass


def vm_args(node: Node, args: argparse.Namespace) -> dict[str, Any]:
    """The create of one node, as ``create_vms`` takes it (the keyword arguments of
    ``create_vm``). Control planes: no two in one zone, a static address from the
    control planes' network's pool, their etcd disk; workers: DHCP on theirs."""
    control_plane = node.role == "control-plane"
    network = {"nics": [f"net={args.cp_network},ip=pool"], "disks": [etcd_disk(node)]} if control_plane else {
        "nics": [f"net={args.workers_network}"]}
    return {"vm_id": node.name, "flavor": args.flavor, "image": args.image, **network,
            "labels": {"cluster": args.prefix, "role": node.role},
            "anti_affinity_group": f"{args.prefix}-cp" if control_plane else "",
            "anti_affinity_scope": "ZONE" if control_plane else "HOST",
            "user_data": node.user_data, "hostname": node.name,
            "metadata": {"cluster-join-token": node.markers[1], "role": node.role}}


def finish(checks: Checks) -> int:
    if checks.failures:
        print(f"{len(checks.failures)} check(s) failed", file=sys.stderr)
        return 1
    print("all checks passed", flush=True)
    return 0


def host_zones(quanta: Client, hosts: Iterable[str]) -> dict[str, str]:
    """Each host's zone label, where the token may read hosts (system admins); {} otherwise."""
    try:
        return {host: quanta.get_host(host).labels.get(ZONE_LABEL, "") for host in hosts if host}
    except PermissionDenied:
        return {}


def watch_until_cleared(quanta: Client, names: Sequence[str], timeout: float, checks: Checks) -> list[vm_pb2.VmEvent]:
    """Watch (from the current state) until every VM's bootstrap state is CLEARED;
    returns every event seen, for the leak check."""
    events: list[vm_pb2.VmEvent] = []
    state: dict[str, int] = {}
    deadline = time.monotonic() + timeout
    while len([n for n in names if state.get(n) == vm_pb2.Bootstrap.CLEARED]) < len(names):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        for event in quanta.watch_vms(timeout=left):
            events.append(event)
            if event.type != common_pb2.BOOKMARK and event.vm.name in names:
                state[event.vm.name] = event.vm.bootstrap.state
            if all(state.get(n) == vm_pb2.Bootstrap.CLEARED for n in names):
                break
    cleared = [n for n in names if state.get(n) == vm_pb2.Bootstrap.CLEARED]
    stuck = {short(n): vm_pb2.Bootstrap.State.Name(state.get(n, 0)) for n in names if n not in cleared}
    checks.expect(not stuck, "every VM's bootstrap data is CLEARED (deleted from the store, blanked on the VM)",
                  f"not yet: {stuck}")
    return events


if __name__ == "__main__":
    try:
        sys.exit(main())
    except QuantaError as err:
        print(f"error: {err.code.name}: {err.reason}: {err.message}", file=sys.stderr)
        sys.exit(1)
