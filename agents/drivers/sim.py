"""A simulated hypervisor: many hosts in one process, for local runs and scale tests.

This is a driver like any other (it implements :class:`HostDriver`), not a test
fake: ``quanta up`` runs on it and the benchmarks measure the control plane against
it. It models what the control plane must cope with:

- capacity, enforced on create and reconfigure (vCPU, memory and disk of all VMs
  on the host, whatever their power state, plus creates and growths in flight),
  up to the raw capacity times the host's overcommit, as a hypervisor runs more
  vCPUs than it has threads; :meth:`SimHost.capacity` reports the raw capacity;
- images: with ``images`` given, a host makes VMs only of those images (others
  raise ImageNotFound); by default it has every image;
- latency per operation (:class:`SimLatency`); at zero latency no call suspends;
- faults, injected one by one (:meth:`SimHost.inject_fault`) or at a seeded random
  rate; a fault may strike after the effect applied, as a timed-out task does;
- a hypervisor that outlives the agent: with a ``state_dir`` every change is
  appended to ``<state_dir>/journal.jsonl`` and replayed by the next
  :class:`SimHypervisor` on that directory, so a restarted agent finds its VMs;
- a guest per VM: powered on, it boots (``SimLatency.boot``), reads its bootstrap
  data and reports that it bootstrapped (unless its image is one of
  ``silent_images``), and gets an address per NIC: a static NIC's own, else the
  lowest free one of its backing's pool (the hypervisor's network for the default
  NIC and the NICs on its ``network_name``; a pool per other backing; no two VMs
  that exist share one; held until the VM is destroyed) and its MAC as
  ``netconfig.nic_mac`` says (the request's, else derived from the uid and the NIC's
  index: the rule the esxi driver and the guest's network config follow). It shuts
  down when asked (``SimLatency.shutdown``). Guest-side changes are told through
  :meth:`SimHost.watch`. Test hooks: :meth:`SimHost.stop_outside` (a stop by someone
  outside Quanta) and :meth:`SimHost.ignore_shutdown` (a guest deaf to shutdown
  requests).

- NICs (``VmRequest.nics``; none: one on ``network_name``) and persistent disks:
  disks live in a :class:`~agents.drivers.sim_datastore.SimDatastore` that all sim
  hosts of a system share (a directory), reached by hosts labelled
  ``datastore.quanta.io/{class}``; attach, detach and delete are journaled.

Bootstrap data is secret: it lives in memory only (journal records carry its size
and SHA-256, never its bytes) and is blanked by :meth:`SimHost.clear_bootstrap`.

Nothing here reads the wall clock or unseeded randomness: runs are reproducible.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import heapq
import ipaddress
import json
import os
import random
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, fields, replace
from types import MappingProxyType
from typing import Any

from agents import netconfig
from agents.drivers.protocol import (
    Address,
    BootstrapPayload,
    CapacityExceeded,
    DiskRequest,
    DriverError,
    GuestUnavailable,
    HostCapacity,
    ImageNotFound,
    NicRequest,
    OperationFailed,
    PowerCycleRequired,
    PowerState,
    VmInfo,
    VmNotFound,
    VmRequest,
)
from agents.drivers.sim_datastore import SimDatastore
from controlplane.models import NO_OVERCOMMIT, Overcommit, Resources, datastore_label

JOURNAL_NAME = "journal.jsonl"

# Operations that fault injection can target; the mutating ones also take latency and
# random faults.
OPS = frozenset({"capacity", "list_vms", "get_vm", "create", "power_on", "power_off", "reconfigure", "destroy",
                 "shutdown_guest", "clear_bootstrap", "attach_disk", "detach_disk", "delete_disk"})
_MUTATING = ("create", "power_on", "power_off", "reconfigure", "destroy")
#: Journaled as they are; the bootstrap payload never is (only its size and SHA-256).
_REQUEST_FIELDS = tuple(f.name for f in fields(VmRequest) if f.name != "bootstrap")
#: The network the guests' addresses come from unless the hypervisor is given one.
DEFAULT_NETWORK = "10.80.0.0/16"
DEFAULT_NETWORK_NAME = "VM Network"

Sleep = Callable[[float], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class SimLatency:
    """Seconds each operation takes on a simulated host (0.0: completes without suspending)."""

    create: float = 0.0
    power_on: float = 0.0
    power_off: float = 0.0
    reconfigure: float = 0.0
    destroy: float = 0.0
    boot: float = 0.0
    """From power-on until the guest is up (has its address, has read its bootstrap data)."""
    shutdown: float = 0.0
    """From a guest shutdown request until the VM is off."""

    def __post_init__(self) -> None:
        for f in fields(self):
            if getattr(self, f.name) < 0:
                raise ValueError(f"SimLatency.{f.name} must be >= 0")

    @classmethod
    def realistic(cls) -> SimLatency:
        """Linked-clone-like figures, for ``quanta up``."""
        return cls(create=0.3, power_on=0.1, power_off=0.05, reconfigure=0.1, destroy=0.1, boot=1.0, shutdown=0.5)


class _Vm:
    """A VM and its guest. ``info`` is rebuilt by :meth:`refresh` after every change."""

    __slots__ = ("request", "info", "power", "booted", "ips", "disks", "payload", "bootstrap_present",
                 "bootstrapped", "shutting_down", "deaf", "timer")

    def __init__(self, request: VmRequest, power: PowerState = PowerState.OFF, network: str = ""):
        self.request = request
        self.power = power
        self.booted = False  # the guest is up (only while powered on)
        #: Per NIC: the address its backing's pool gave it ("" for a static NIC, or none
        #: yet), held from the first boot until the VM is destroyed.
        self.ips: list[str] = [""] * len(nics_of(request, network))
        self.disks: list[str] = []  # uids of the persistent disks attached, in order
        self.payload: BootstrapPayload | None = request.bootstrap  # in memory only
        self.bootstrap_present = request.bootstrap is not None
        self.bootstrapped = False  # the guest reported it (kept, as guestinfo keys are)
        self.shutting_down = False
        self.deaf = False  # test hook: the guest ignores shutdown requests
        self.timer: asyncio.Task | None = None  # a boot or shutdown in progress
        self.info = VmInfo(request.vm_uid, power, request.name, request.record)
        self.refresh(network)

    def addresses(self, network: str) -> list[tuple[NicRequest, str]]:
        """(NIC, its address or "") of each NIC, in order."""
        return [(nic, nic.ip or self.ips[i]) for i, nic in enumerate(nics_of(self.request, network))]

    def needs_address(self, network: str) -> bool:
        """Some DHCP NIC has no address from its pool yet."""
        return any(not ip for _, ip in self.addresses(network))

    def refresh(self, network: str) -> None:
        r = self.request
        nics = self.addresses(network)
        addresses: tuple[Address, ...] = ()
        if self.power is PowerState.ON and self.booted:
            addresses = tuple(Address(ip, netconfig.nic_mac(r.vm_uid, i, nic), nic.backing, 6 if ":" in ip else 4)
                              for i, (nic, ip) in enumerate(nics) if ip)
        self.info = VmInfo(r.vm_uid, self.power, r.name, r.record, vcpus=r.vcpus, memory_mib=r.memory_mib,
                           disk_gib=r.disk_gib, addresses=addresses, bootstrapped=self.bootstrapped,
                           bootstrap_present=self.bootstrap_present,
                           networks=tuple(nic.backing for nic, _ in nics), disks=tuple(self.disks))

    def cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


def nics_of(request: VmRequest, network: str) -> tuple[NicRequest, ...]:
    """The VM's NICs: the request's, or one DHCP NIC on the hypervisor's ``network``."""
    return request.nics or (NicRequest(network),)


class AddressPool:
    """The addresses of one network: hands out the lowest free host address. Pure;
    take and free O(log n), reserve_all one pass (a restart's replay).

    The network and broadcast addresses and the first host address (the gateway) are
    never handed out. Raises nothing: :meth:`take` returns "" when the pool is empty."""

    def __init__(self, cidr: str):
        self.network = ipaddress.ip_network(cidr)
        self._first = 2  # .0 network, .1 gateway
        self._last = self.network.num_addresses - 2  # the broadcast address is the last
        self._next = self._first
        self._freed: list[int] = []  # heap of offsets below _next
        self._taken: set[int] = set()

    def take(self) -> str:
        if self._freed:
            offset = heapq.heappop(self._freed)
        elif self._next <= self._last:
            offset = self._next
            self._next += 1
        else:
            return ""
        self._taken.add(offset)
        return str(self.network.network_address + offset)

    def reserve(self, ip: str) -> bool:
        """Mark ``ip`` taken (a replayed VM's); False if it is outside the pool or taken."""
        return self.reserve_all([ip])[0]

    def reserve_all(self, ips: Iterable[str]) -> list[bool]:
        """Mark each of ``ips`` taken (the replayed VMs'), in order; per address, False
        if it is outside the pool or taken (also by an earlier one of ``ips``). One pass
        over them and the offsets up to the highest: O(n) however they are ordered (one
        reserve at a time cost O(n) each out of order: a restart of 495,000 replayed VMs
        spent minutes here)."""
        base = int(self.network.network_address)
        fits: list[bool] = []
        for ip in ips:
            offset = int(ipaddress.ip_address(ip)) - base
            fit = self._first <= offset <= self._last and offset not in self._taken
            if fit:
                self._taken.add(offset)
            fits.append(fit)
        top = max(self._taken, default=self._next - 1)
        skipped = range(self._next, top + 1)  # offsets passed over are free
        self._next = max(self._next, top + 1)
        self._freed = [o for o in (*self._freed, *skipped) if o not in self._taken]
        heapq.heapify(self._freed)
        return fits

    def free(self, ip: str) -> None:
        if not ip:
            return
        offset = int(ipaddress.ip_address(ip)) - int(self.network.network_address)
        if offset in self._taken:
            self._taken.remove(offset)
            heapq.heappush(self._freed, offset)

    def __len__(self) -> int:
        """Addresses taken."""
        return len(self._taken)


def backing_cidr(backing: str, network: str = DEFAULT_NETWORK) -> str:
    """The subnet a backing other than the hypervisor's own ``network`` hands DHCP
    addresses from: a /24 of 100.64.0.0/10 whose third octet is ``network``'s second
    (so sim agent processes given distinct networks, as LocalSystem's are, never hand
    out one address twice) and whose second derives from the backing's name (two
    backings may share one, as two VLANs may reuse a range)."""
    d = hashlib.sha256(backing.encode()).digest()
    octet = ipaddress.ip_network(network).network_address.packed[1]
    return f"100.{64 + d[0] % 64}.{octet}.0/24"


class _Fault:
    __slots__ = ("error", "remaining", "after_effect")

    def __init__(self, error: DriverError, remaining: int, after_effect: bool):
        self.error = error
        self.remaining = remaining
        self.after_effect = after_effect


def read_journal(state_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """All complete records of ``<state_dir>/journal.jsonl`` in order ([] if none).

    A torn last line (a write cut short by a crash) is skipped; any other line that
    is not a JSON object raises ValueError.
    """
    return _parse_journal(os.path.join(state_dir, JOURNAL_NAME))[0]


def _parse_journal(path: str) -> tuple[list[dict[str, Any]], int]:
    """(records, length in bytes of the complete lines)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return [], 0
    good = data.rfind(b"\n") + 1  # every complete record ends with a newline
    records = []
    for n, line in enumerate(data[:good].splitlines(), 1):
        try:
            record = json.loads(line)
        except ValueError as e:
            raise ValueError(f"{path}:{n}: corrupt journal line") from e
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{n}: journal line is not an object")
        records.append(record)
    return records, good


class SimHypervisor:
    """Many simulated hosts sharing one latency model, fault RNG and journal.

    One per process. ``fault_rate`` is the probability that each mutating call
    (create, power_on, power_off, destroy) fails with a transient OperationFailed,
    drawn from ``random.Random(seed)``; half of those faults strike after the effect
    has applied. ``sleep`` is how latency is spent (tests pass a gate).
    ``images``: the image names every host has (None: any name is an image).
    ``network`` (a CIDR) and ``network_name``: where the guests' addresses come from;
    ``silent_images``: images whose guests cannot report that they bootstrapped.
    ``datastore``: where persistent disks live (share one between the hypervisors of
    a system; default: ``<state_dir>/datastore``, or memory without a state_dir).

    With ``state_dir``, construction replays the journal there; VMs of a host come
    back when that host is added again with :meth:`add_host`. Not thread-safe: use
    from one event loop.
    """

    def __init__(
        self,
        state_dir: str | os.PathLike[str] | None = None,
        *,
        latency: SimLatency = SimLatency(),
        seed: int = 0,
        fault_rate: float = 0.0,
        sleep: Sleep = asyncio.sleep,
        images: Iterable[str] | None = None,
        network: str = DEFAULT_NETWORK,
        network_name: str = DEFAULT_NETWORK_NAME,
        silent_images: Iterable[str] = (),
        datastore: SimDatastore | None = None,
    ):
        if not 0.0 <= fault_rate <= 1.0:
            raise ValueError("fault_rate must be within [0, 1]")
        self.images: frozenset[str] | None = None if images is None else frozenset(images)
        #: Every guest's address comes from here: unique among the VMs of all hosts.
        self.addresses = AddressPool(network)  # raises ValueError for a bad CIDR
        self.network_name = network_name
        #: The DHCP pools of the other backings, made on first use.
        self._pools: dict[str, AddressPool] = {}
        if datastore is None:
            datastore = SimDatastore(None if state_dir is None else os.path.join(state_dir, "datastore"))
        self.datastore = datastore
        #: Images whose guests never report that they bootstrapped.
        self.silent_images = frozenset(silent_images)
        self.latency = latency
        self.fault_rate = fault_rate
        self.rng = random.Random(seed)
        self.sleep = sleep
        self._hosts: dict[str, SimHost] = {}
        self._replayed: dict[str, dict[str, _Vm]] = {}
        self._fd: int | None = None
        if state_dir is not None:
            os.makedirs(state_dir, exist_ok=True)
            path = os.path.join(state_dir, JOURNAL_NAME)
            records, good = _parse_journal(path)
            self._replay(records)
            if os.path.exists(path) and os.path.getsize(path) != good:
                os.truncate(path, good)  # drop a torn tail so the next line starts clean
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def pool(self, backing: str) -> AddressPool:
        """The DHCP pool of ``backing``: the hypervisor's network for its own name."""
        if backing == self.network_name:
            return self.addresses
        pool = self._pools.get(backing)
        if pool is None:
            pool = self._pools[backing] = AddressPool(backing_cidr(backing, str(self.addresses.network)))
        return pool

    def _replay(self, records: list[dict[str, Any]]) -> None:
        for r in records:
            vms = self._replayed.setdefault(r["host"], {})
            op, uid = r["op"], r["vm_uid"]
            if op == "create":
                # Fields a journal written by an older version lacks take their defaults.
                made = vms.setdefault(uid, _Vm(_request_of_record(r), network=self.network_name))
                made.bootstrap_present = "bootstrap_size" in r  # its bytes died with the last process
                continue
            found = vms.get(uid)
            if found is None:
                continue
            vm = found
            if op == "destroy":
                del vms[uid]
            elif op == "power_on":
                vm.power, vm.booted = PowerState.ON, False
            elif op == "power_off":
                vm.power, vm.booted, vm.shutting_down = PowerState.OFF, False, False
            elif op == "reconfigure":
                vm.request = replace(vm.request, vcpus=r["vcpus"], memory_mib=r["memory_mib"],
                                     disk_gib=r.get("disk_gib", vm.request.disk_gib))
            elif op == "booted":
                vm.booted = True
                ips = r.get("ips") or [r.get("ip", "")]
                vm.ips = [ips[i] if i < len(ips) else "" for i in range(len(vm.ips))]
            elif op == "bootstrapped":
                vm.bootstrapped = True
            elif op == "shutdown_guest":
                vm.shutting_down = True
            elif op == "clear_bootstrap":
                vm.bootstrap_present = False
            elif op == "attach_disk" and r["disk_uid"] not in vm.disks:
                vm.disks.append(r["disk_uid"])
            elif op == "detach_disk" and r["disk_uid"] in vm.disks:
                vm.disks.remove(r["disk_uid"])
        held: dict[str, list[tuple[_Vm, int, str]]] = {}  # backing -> (VM, NIC index, address)
        for vms in self._replayed.values():
            for vm in vms.values():
                for i, nic in enumerate(nics_of(vm.request, self.network_name)):
                    if vm.ips[i]:
                        held.setdefault(nic.backing, []).append((vm, i, vm.ips[i]))
        for backing, nics in held.items():
            for (vm, i, _ip), fits in zip(nics, self.pool(backing).reserve_all(ip for _vm, _i, ip in nics),
                                          strict=True):
                if not fits:
                    vm.ips[i] = ""  # another network now (or a clash): the guest asks again on boot
        for vms in self._replayed.values():
            for vm in vms.values():
                vm.refresh(self.network_name)

    def journal(self, record: dict[str, Any]) -> None:
        """Append one record (one os.write on an O_APPEND file); no-op in memory mode."""
        if self._fd is None:
            return
        line = json.dumps(record, separators=(",", ":")).encode() + b"\n"
        try:
            os.write(self._fd, line)
        except OSError as e:
            raise OperationFailed(f"sim journal write failed: {e}", transient=True) from e

    def close(self) -> None:
        """Close the journal; the hypervisor must not be used afterwards. Idempotent."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def add_host(self, host_id: str, capacity: HostCapacity, overcommit: Overcommit = NO_OVERCOMMIT) -> SimHost:
        """Add a host; it adopts the VMs the journal holds for ``host_id``.

        The host reports ``capacity`` (raw) and takes VMs up to ``capacity`` times
        ``overcommit`` (give it the agent's setting, so that what placement books fits).
        Raises ValueError if the host was added already. Adopted VMs stay even if
        they exceed that (the host is then full for new creates).
        """
        if host_id in self._hosts:
            raise ValueError(f"sim host {host_id!r} already added")
        host = SimHost(self, host_id, capacity, self._replayed.pop(host_id, {}), overcommit)
        self._hosts[host_id] = host
        return host

    @property
    def hosts(self) -> Mapping[str, SimHost]:
        """The added hosts by id (read-only view)."""
        return MappingProxyType(self._hosts)

    def total_vms(self) -> int:
        """VMs on all added hosts."""
        return sum(len(h) for h in self._hosts.values())

    def vm_counts(self) -> dict[str, int]:
        """VMs per added host."""
        return {host_id: len(h) for host_id, h in self._hosts.items()}


class SimHost:
    """One simulated host; implements :class:`~agents.drivers.protocol.HostDriver`.

    Safe for many concurrent coroutines: while a create for a uid is in flight, other
    calls naming that uid wait for it; capacity is reserved when a create starts and
    committed only after its latency, so a cancelled create leaves nothing behind.
    """

    def __init__(self, hypervisor: SimHypervisor, host_id: str, capacity: HostCapacity, vms: dict[str, _Vm],
                 overcommit: Overcommit = NO_OVERCOMMIT):
        self.host_id = host_id
        self._hv = hypervisor
        self._capacity = capacity
        #: What VMs may take: the raw capacity times the overcommit.
        self.limit = overcommit.allocatable(Resources(capacity.vcpus, capacity.memory_mib, capacity.disk_gib))
        self._vms = vms
        self._creating: dict[str, asyncio.Event] = {}
        self._faults: dict[str, deque[_Fault]] = {}
        self._vcpus = sum(vm.request.vcpus for vm in vms.values())
        self._memory_mib = sum(vm.request.memory_mib for vm in vms.values())
        self._disk_gib = sum(vm.request.disk_gib for vm in vms.values())
        self._notify: Callable[[str], None] | None = None
        #: Replayed guests in the middle of a boot or shutdown: resumed once an event loop runs.
        self._to_resume = any(vm.power is PowerState.ON and (not vm.booted or vm.needs_address(hypervisor.network_name)
                                                             or vm.shutting_down)
                              for vm in vms.values())

    def __len__(self) -> int:
        return len(self._vms)

    def used(self) -> HostCapacity:
        """Resources held by this host's VMs and creates in flight."""
        return HostCapacity(self._vcpus, self._memory_mib, self._disk_gib)

    def inject_fault(self, op: str, error: DriverError, count: int = 1, *, after_effect: bool = False) -> None:
        """Make the next ``count`` calls of ``op`` raise (a copy of) ``error``.

        ``op`` is one of :data:`OPS` (``create`` for create_vm, ``destroy`` for
        destroy_vm). With ``after_effect`` the call first does its work and then
        raises, as a hypervisor task that timed out after succeeding. Faults queue
        up in the order injected.
        """
        if op not in OPS:
            raise ValueError(f"unknown op {op!r}; one of {sorted(OPS)}")
        if count < 1:
            raise ValueError("count must be >= 1")
        self._faults.setdefault(op, deque()).append(_Fault(error, count, after_effect))

    def _take_fault(self, op: str) -> tuple[DriverError, bool] | None:
        """The fault for this call of ``op``, if any: (error, after_effect)."""
        queue = self._faults.get(op) if self._faults else None
        if queue:
            fault = queue[0]
            fault.remaining -= 1
            if fault.remaining == 0:
                queue.popleft()
            return _fresh(fault.error), fault.after_effect
        hv = self._hv
        if hv.fault_rate and op in _MUTATING and hv.rng.random() < hv.fault_rate:
            error = OperationFailed(f"simulated transient fault in {op}", transient=True)
            return error, hv.rng.random() < 0.5
        return None

    def _fail_before(self, op: str) -> DriverError | None:
        """Raise a fault meant to strike now; return one meant for after the effect."""
        fault = self._take_fault(op)
        if fault is None:
            return None
        error, after_effect = fault
        if not after_effect:
            raise error
        return error

    def _vm(self, vm_uid: str) -> _Vm:
        """The VM of ``vm_uid`` on this host; raises VmNotFound."""
        vm = self._vms.get(vm_uid)
        if vm is None:
            raise VmNotFound(f"host {self.host_id}: no VM {vm_uid}")
        return vm

    async def _settled(self, vm_uid: str) -> None:
        # Wait out an in-flight create of this uid, so calls see it made or not made.
        while (pending := self._creating.get(vm_uid)) is not None:
            await pending.wait()

    async def capacity(self) -> HostCapacity:
        self._fail_before("capacity")
        return self._capacity

    async def list_vms(self) -> list[VmInfo]:
        self._fail_before("list_vms")
        if self._to_resume:
            self._resume()
        return [vm.info for vm in self._vms.values()]

    async def get_vm(self, vm_uid: str) -> VmInfo | None:
        self._fail_before("get_vm")
        if self._to_resume:
            self._resume()
        if vm_uid in self._creating:
            await self._settled(vm_uid)
        vm = self._vms.get(vm_uid)
        return vm.info if vm is not None else None

    async def create_vm(self, request: VmRequest) -> VmInfo:
        after = self._fail_before("create")
        uid = request.vm_uid
        if uid in self._creating:
            await self._settled(uid)
        vm = self._vms.get(uid)
        if vm is None:
            images = self._hv.images
            if images is not None and request.image not in images:
                raise ImageNotFound(f"host {self.host_id}: no image {request.image!r}; has {sorted(images)}")
            for disk in request.disks:  # refused before a VM is made for it (the attach decides)
                self._check_reach(disk.datastore_class)
                self._hv.datastore.check_attachable(disk.uid, uid)
            vm = await self._make(request)
        self._attach_all(vm)  # (a disk another VM holds raises: the retry attaches the rest)
        if after is not None:
            raise after
        return vm.info

    def _attach_all(self, vm: _Vm) -> None:
        """Attach the disks the VM was made with (those it lacks: a retried create)."""
        for disk in vm.request.disks:
            if disk.uid not in vm.disks:
                self._attach(vm, disk)

    async def _make(self, request: VmRequest) -> _Vm:
        # Reserve, spend the latency, then commit; nothing is committed unless all
        # of it ran, so a cancelled or failed create leaves no VM and no reservation.
        uid = request.vm_uid
        self._reserve(request)
        delay = self._hv.latency.create
        done = None
        committed = False
        try:
            if delay > 0:
                done = self._creating[uid] = asyncio.Event()  # same-uid callers wait on it
                await self._hv.sleep(delay)
            self._hv.journal({"host": self.host_id, "op": "create", **_request_record(request)})
            vm = self._vms[uid] = _Vm(request, network=self._hv.network_name)
            committed = True
        finally:
            if not committed:
                self._release(request.vcpus, request.memory_mib, request.disk_gib)
            if done is not None:
                del self._creating[uid]
                done.set()
        return vm

    def _reserve(self, r: VmRequest) -> None:
        self._reserve_amounts(r.vcpus, r.memory_mib, r.disk_gib)

    def _reserve_amounts(self, vcpus: int, memory_mib: int, disk_gib: int) -> None:
        c = self.limit
        for what, used, want, total in (
            ("vcpus", self._vcpus, vcpus, c.vcpus),
            ("memory_mib", self._memory_mib, memory_mib, c.memory_mib),
            ("disk_gib", self._disk_gib, disk_gib, c.disk_gib),
        ):
            if want > 0 and used + want > total:
                raise CapacityExceeded(f"host {self.host_id}: {what} {used} used + {want} wanted > {total}")
        self._vcpus += vcpus
        self._memory_mib += memory_mib
        self._disk_gib += disk_gib

    def _release(self, vcpus: int, memory_mib: int, disk_gib: int) -> None:
        self._vcpus -= vcpus
        self._memory_mib -= memory_mib
        self._disk_gib -= disk_gib

    async def power_on(self, vm_uid: str) -> None:
        await self._set_power(vm_uid, PowerState.ON, "power_on", self._hv.latency.power_on)

    async def power_off(self, vm_uid: str) -> None:
        await self._set_power(vm_uid, PowerState.OFF, "power_off", self._hv.latency.power_off)

    async def _set_power(self, vm_uid: str, power: PowerState, op: str, delay: float) -> None:
        after = self._fail_before(op)
        if self._to_resume:
            self._resume()
        if vm_uid in self._creating:
            await self._settled(vm_uid)
        vm = self._vm(vm_uid)
        if vm.power is not power:
            if delay > 0:
                await self._hv.sleep(delay)
                vm = self._vm(vm_uid)  # again: it may have been destroyed meanwhile
            if vm.power is not power:
                self._hv.journal({"host": self.host_id, "op": op, "vm_uid": vm_uid})
                if power is PowerState.ON:
                    vm.power = power
                    self._boot(vm)
                else:
                    self._off(vm)
        if after is not None:
            raise after

    # --- the guest -------------------------------------------------------------------

    def _tell(self, vm_uid: str) -> None:
        if self._notify is not None:
            self._notify(vm_uid)

    def _off(self, vm: _Vm) -> None:
        vm.cancel_timer()
        vm.power, vm.booted, vm.shutting_down = PowerState.OFF, False, False
        vm.refresh(self._hv.network_name)

    def _later(self, vm: _Vm, delay: float, then: Callable[[_Vm], None]) -> None:
        async def wait() -> None:
            await self._hv.sleep(delay)
            if vm.timer is task:
                vm.timer = None
            if self._vms.get(vm.request.vm_uid) is vm:
                try:
                    then(vm)
                except DriverError:  # the journal failed: the guest's change did not happen
                    return
                self._tell(vm.request.vm_uid)

        vm.cancel_timer()
        task = vm.timer = asyncio.get_running_loop().create_task(wait())

    def _boot(self, vm: _Vm) -> None:
        """The guest starts booting (at once at zero boot latency, without suspending)."""
        vm.refresh(self._hv.network_name)
        delay = self._hv.latency.boot
        if delay > 0:
            self._later(vm, delay, self._booted)
        else:
            self._booted(vm)

    def _booted(self, vm: _Vm) -> None:
        if vm.power is not PowerState.ON:
            return
        uid = vm.request.vm_uid
        network = self._hv.network_name
        if not vm.booted or vm.needs_address(network):
            # "" when the backing's pool is full: no address (asked again at the next boot).
            ips = [vm.ips[i] or ("" if nic.ip else self._hv.pool(nic.backing).take())
                   for i, nic in enumerate(nics_of(vm.request, network))]
            self._hv.journal({"host": self.host_id, "op": "booted", "vm_uid": uid, "ip": ips[0], "ips": ips})
            vm.booted, vm.ips = True, ips
        if vm.bootstrap_present and not vm.bootstrapped and vm.request.image not in self._hv.silent_images:
            # The guest has read its bootstrap data (cloud-init ran) and says so.
            self._hv.journal({"host": self.host_id, "op": "bootstrapped", "vm_uid": uid})
            vm.bootstrapped = True
        vm.refresh(self._hv.network_name)

    def _shut_down(self, vm: _Vm) -> None:
        if vm.power is PowerState.ON:
            self._hv.journal({"host": self.host_id, "op": "power_off", "vm_uid": vm.request.vm_uid, "by": "guest"})
            self._off(vm)

    def _resume(self) -> None:
        """Carry on with boots and shutdowns that a replayed journal left half-way."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # not in a loop yet: the next call in one resumes them
        self._to_resume = False
        for vm in list(self._vms.values()):
            if vm.power is not PowerState.ON or vm.timer is not None:
                continue
            if vm.shutting_down and not vm.deaf:
                delay = self._hv.latency.shutdown
                if delay > 0:
                    self._later(vm, delay, self._shut_down)
                else:
                    self._shut_down(vm)
            elif not vm.booted or vm.needs_address(self._hv.network_name):
                self._boot(vm)

    async def shutdown_guest(self, vm_uid: str) -> None:
        after = self._fail_before("shutdown_guest")
        if self._to_resume:
            self._resume()
        if vm_uid in self._creating:
            await self._settled(vm_uid)
        vm = self._vm(vm_uid)
        if vm.power is PowerState.ON and not vm.shutting_down:
            if not vm.booted:
                raise GuestUnavailable(f"host {self.host_id}: the guest of VM {vm_uid} is not up")
            self._hv.journal({"host": self.host_id, "op": "shutdown_guest", "vm_uid": vm_uid})
            vm.shutting_down = True
            if not vm.deaf:
                delay = self._hv.latency.shutdown
                if delay > 0:
                    self._later(vm, delay, self._shut_down)
                else:
                    self._shut_down(vm)
        if after is not None:
            raise after

    async def clear_bootstrap(self, vm_uid: str) -> None:
        after = self._fail_before("clear_bootstrap")
        if vm_uid in self._creating:
            await self._settled(vm_uid)
        vm = self._vm(vm_uid)
        if vm.bootstrap_present or vm.payload is not None:
            self._hv.journal({"host": self.host_id, "op": "clear_bootstrap", "vm_uid": vm_uid})
            vm.payload, vm.bootstrap_present = None, False
            vm.refresh(self._hv.network_name)
        if after is not None:
            raise after

    def watch(self, notify: Callable[[str], None]) -> None:
        self._notify = notify
        if self._to_resume:
            self._resume()

    def stop_outside(self, vm_uid: str) -> None:
        """Test hook: someone outside Quanta powers the VM off (hard), and watchers are
        told. Raises VmNotFound."""
        vm = self._vm(vm_uid)
        if vm.power is PowerState.ON:
            self._hv.journal({"host": self.host_id, "op": "power_off", "vm_uid": vm_uid, "by": "outside"})
            self._off(vm)
            self._tell(vm_uid)

    def ignore_shutdown(self, vm_uid: str, ignore: bool = True) -> None:
        """Test hook: the guest ignores shutdown requests (one in progress stops), so only
        a hard power-off stops it. In memory only. Raises VmNotFound."""
        vm = self._vm(vm_uid)
        vm.deaf = ignore
        if ignore and vm.shutting_down:
            vm.cancel_timer()

    def bootstrap_payload(self, vm_uid: str) -> BootstrapPayload | None:
        """The bootstrap data on the VM now (None: none, or cleared). Raises VmNotFound.
        (Not part of HostDriver; for tests.)"""
        vm = self._vm(vm_uid)
        return vm.payload

    async def reconfigure(self, vm_uid: str, *, vcpus: int, memory_mib: int, disk_gib: int | None = None) -> None:
        after = self._fail_before("reconfigure")
        if vcpus < 1 or memory_mib < 1 or (disk_gib is not None and disk_gib < 1):
            raise OperationFailed(f"host {self.host_id}: bad size {vcpus} vCPUs, {memory_mib} MiB, {disk_gib} GiB",
                                  reason="InvalidArgument")
        if vm_uid in self._creating:
            await self._settled(vm_uid)
        vm = self._vm(vm_uid)
        old = vm.request
        if disk_gib is not None and disk_gib < old.disk_gib:
            raise OperationFailed(f"host {self.host_id}: VM {vm_uid}: a disk only grows ({old.disk_gib} GiB -> "
                                  f"{disk_gib} GiB)", reason="InvalidArgument")
        if vm.power is PowerState.ON and (vcpus < old.vcpus or memory_mib < old.memory_mib):
            # As ESXi: vCPUs and memory can be hot-added, never hot-removed (a disk grows hot).
            raise PowerCycleRequired(f"host {self.host_id}: VM {vm_uid} must be off to shrink")
        disk = old.disk_gib if disk_gib is None else disk_gib
        if (old.vcpus, old.memory_mib, old.disk_gib) != (vcpus, memory_mib, disk):
            # Hold room for the growth while the change takes its time; give back what
            # shrinks only once it is made, so the host is never overbooked meanwhile.
            grow_vcpus, grow_memory = max(0, vcpus - old.vcpus), max(0, memory_mib - old.memory_mib)
            grow_disk = max(0, disk - old.disk_gib)
            self._reserve_amounts(grow_vcpus, grow_memory, grow_disk)
            committed = False
            try:
                delay = self._hv.latency.reconfigure
                if delay > 0:
                    await self._hv.sleep(delay)
                if self._vms.get(vm_uid) is not vm:  # destroyed meanwhile
                    raise VmNotFound(f"host {self.host_id}: no VM {vm_uid}")
                now = vm.request  # another reconfigure may have landed meanwhile
                disk = max(disk, now.disk_gib)  # (which may have grown the disk further: it never shrinks)
                self._hv.journal({"host": self.host_id, "op": "reconfigure", "vm_uid": vm_uid, "vcpus": vcpus,
                                  "memory_mib": memory_mib, "disk_gib": disk})
                vm.request = replace(now, vcpus=vcpus, memory_mib=memory_mib, disk_gib=disk)
                vm.refresh(self._hv.network_name)
                self._release(now.vcpus + grow_vcpus - vcpus, now.memory_mib + grow_memory - memory_mib,
                              now.disk_gib + grow_disk - disk)
                committed = True
            finally:
                if not committed:
                    self._release(grow_vcpus, grow_memory, grow_disk)
        if after is not None:
            raise after

    async def hardware(self, vm_uid: str) -> tuple[int, int]:
        """(vCPUs, memory MiB) of the VM now. Raises VmNotFound. (Not part of HostDriver; as EsxiHost's.)"""
        vm = self._vm(vm_uid)
        return vm.request.vcpus, vm.request.memory_mib

    def reaches(self, datastore_class: str) -> bool:
        """Whether this host reaches the datastore of ``datastore_class`` (its label)."""
        return self._capacity.labels.get(datastore_label(datastore_class)) == "true"

    def _check_reach(self, datastore_class: str) -> None:
        if not self.reaches(datastore_class):
            raise OperationFailed(f"host {self.host_id} reaches no datastore of class {datastore_class!r}",
                                  reason="DatastoreUnreachable", transient=False)

    def _attach(self, vm: _Vm, disk: DiskRequest) -> None:
        self._check_reach(disk.datastore_class)
        uid = vm.request.vm_uid
        self._hv.datastore.attach(disk.uid, disk.size_gib, disk.datastore_class, uid, self.host_id)
        if disk.uid not in vm.disks:
            self._hv.journal({"host": self.host_id, "op": "attach_disk", "vm_uid": uid, "disk_uid": disk.uid,
                              "size_gib": disk.size_gib, "datastore_class": disk.datastore_class})
            vm.disks.append(disk.uid)
            vm.refresh(self._hv.network_name)

    def _detach(self, vm: _Vm, disk_uid: str) -> None:
        uid = vm.request.vm_uid
        if disk_uid in vm.disks:
            self._hv.journal({"host": self.host_id, "op": "detach_disk", "vm_uid": uid, "disk_uid": disk_uid})
            vm.disks.remove(disk_uid)
            vm.refresh(self._hv.network_name)
        # Even when the VM no longer lists it: a crash between the journal and the file.
        self._hv.datastore.detach(disk_uid, uid, self.host_id)

    async def attach_disk(self, vm_uid: str, disk: DiskRequest) -> None:
        after = self._fail_before("attach_disk")
        if vm_uid in self._creating:
            await self._settled(vm_uid)
        self._attach(self._vm(vm_uid), disk)
        if after is not None:
            raise after

    async def detach_disk(self, vm_uid: str, disk_uid: str) -> None:
        after = self._fail_before("detach_disk")
        if vm_uid in self._creating:
            await self._settled(vm_uid)
        vm = self._vms.get(vm_uid)
        if vm is not None:
            self._detach(vm, disk_uid)
        if after is not None:
            raise after

    async def delete_disk(self, disk_uid: str, datastore_class: str) -> None:
        after = self._fail_before("delete_disk")
        self._check_reach(datastore_class)
        if self._hv.datastore.delete(disk_uid):
            self._hv.journal({"host": self.host_id, "op": "delete_disk", "vm_uid": "", "disk_uid": disk_uid})
        if after is not None:
            raise after

    async def destroy_vm(self, vm_uid: str) -> None:
        after = self._fail_before("destroy")
        if vm_uid in self._creating:
            await self._settled(vm_uid)
        if vm_uid in self._vms:
            delay = self._hv.latency.destroy
            if delay > 0:
                await self._hv.sleep(delay)
            vm = self._vms.get(vm_uid)
            if vm is not None:  # a concurrent destroy may have won
                for disk_uid in list(vm.disks):  # persistent disks are kept, detached
                    self._detach(vm, disk_uid)
                self._hv.journal({"host": self.host_id, "op": "destroy", "vm_uid": vm_uid})
                del self._vms[vm_uid]
                vm.cancel_timer()
                for nic, ip in zip(nics_of(vm.request, self._hv.network_name), vm.ips, strict=True):
                    self._hv.pool(nic.backing).free(ip)
                r = vm.request
                self._release(r.vcpus, r.memory_mib, r.disk_gib)
        if after is not None:
            raise after


def _fresh(error: DriverError) -> DriverError:
    # A copy per raise: raising one instance again and again would chain its tracebacks.
    try:
        return copy.copy(error)
    except TypeError:  # an __init__ that copy cannot call with the message alone
        return error


def _request_record(r: VmRequest) -> dict[str, Any]:
    record = {name: getattr(r, name) for name in _REQUEST_FIELDS}
    record["nics"] = [asdict(nic) for nic in r.nics]
    record["disks"] = [asdict(disk) for disk in r.disks]
    if r.bootstrap is not None:  # that it is there, never what it is
        record["bootstrap_size"] = len(r.bootstrap.user_data)
        record["bootstrap_sha256"] = hashlib.sha256(r.bootstrap.user_data).hexdigest()
    return record


def _request_of_record(r: dict[str, Any]) -> VmRequest:
    """The VmRequest of a journaled create (fields an older journal lacks: defaults)."""
    fields_ = {k: r[k] for k in _REQUEST_FIELDS if k in r}
    fields_["nics"] = tuple(NicRequest(**{**n, "dns_servers": tuple(n.get("dns_servers", ()))})
                            for n in r.get("nics", ()))
    fields_["disks"] = tuple(DiskRequest(**d) for d in r.get("disks", ()))
    return VmRequest(**fields_)
