"""One vSphere endpoint: a logged-in SOAP stub, a bounded thread pool for its
blocking calls, and a PropertyCollector watch that keeps VM state and task results.

pyvmomi blocks, so every remote call runs in the session's thread pool
(``threads`` at once) and the driver stays async. VM state is not polled: one
watcher thread long-polls ``WaitForUpdatesEx`` on a collector of its own, over a
ContainerView of every VirtualMachine, and hands each batch of changes to the event
loop, which alone touches the cache. Tasks are awaited the same way: a filter on the
task joins the watcher's collector until the task ends.

An expired session (``NotAuthenticated``) is renewed by logging in again, once per
expiry however many calls notice it, and the failed call is repeated.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from pyVim.connect import SmartStubAdapter
from pyVmomi import vim, vmodl
from pyVmomi.SoapAdapter import SoapStubAdapter

from agents.drivers.esxi import guestinfo
from agents.drivers.esxi.config import EsxiConfig
from agents.drivers.esxi.faults import to_driver_error
from agents.drivers.protocol import Address, HostUnavailable

log = logging.getLogger(__name__)

UID_KEY = "quanta.vm_uid"
"""The extraConfig key that carries a VM's Quanta id."""
DISK_DIR = "quanta-disks"
"""The folder, on each datastore of a class, of Quanta's persistent disks: ``[ds] quanta-disks/{uid}.vmdk``."""
NAME_KEY = "quanta.vm_name"
RECORD_KEY = "quanta.vm_record"
"""extraConfig keys of VmRequest.name and .record (what the VM was made as, for adoption)."""

# config.hardware.device is the one source of a disk's size (vcsim serves no keyed
# path such as device[2000]); it changes only on a reconfigure, and the watcher keeps
# of it nothing but the root disk's size.
_VM_PATHS = ["name", "runtime.powerState", "runtime.host", "config.extraConfig", "config.hardware.numCPU",
             "config.hardware.memoryMB", "config.cpuHotAddEnabled", "config.memoryHotAddEnabled",
             "config.hardware.device", "guest.net", "guest.ipAddress", "guest.toolsRunningStatus"]
_TASK_PATHS = ["info.state", "info.error", "info.result"]
_WAIT_SECONDS = 5  # how long a replaced collector (after a re-login) may go unnoticed


@dataclass(slots=True)
class Observed:
    """What the watcher last saw of one VM (any VM, Quanta's or not)."""

    moid: str
    name: str = ""
    uid: str = ""
    power: str = "poweredOff"
    host: str = ""
    vm_name: str = ""  # VmRequest.name, from extraConfig
    record: str = ""  # VmRequest.record, from extraConfig
    vcpus: int = 0
    memory_mib: int = 0
    cpu_hot_add: bool = False
    memory_hot_add: bool = False
    disk_bytes: int = 0  # the root (first) disk's capacity (0: no disk, or not seen yet)
    # From config.hardware.device: the backing of each NIC in key order (a standard
    # port group's name, or DVPG_PREFIX + a distributed one's key) and the uids of
    # the persistent disks (DISK_DIR files) in key order.
    nic_backings: tuple[str, ...] = ()
    disk_uids: tuple[str, ...] = ()
    tools: str = ""  # guest.toolsRunningStatus ("": not reported)
    # What the guest reports: guest.net, with guest.ipAddress (its primary) apart until merged.
    nics: tuple = field(default=(), repr=False)
    primary_ip: str = ""
    addresses: tuple[Address, ...] = ()
    # From extraConfig: the guest's bootstrap report, and whether bootstrap data is on
    # the VM. Only that flag: the data itself is never kept here.
    bootstrapped: bool = False
    bootstrap_present: bool = False

    def watched(self) -> tuple:
        """What a driver's ``watch`` reports changes of."""
        return self.power, self.addresses, self.bootstrapped, self.bootstrap_present, self.host


@dataclass(frozen=True, slots=True)
class Datastore:
    moid: str
    name: str
    capacity: int
    free: int
    mo: Any = field(compare=False, repr=False)


DVPG_PREFIX = "dvportgroup:"
_UPLINK_TAG = "SYSTEM/DVS.UPLINKPG"  # how vSphere marks a distributed switch's uplink port group


@dataclass(frozen=True, slots=True)
class PortGroup:
    """A network a host reaches: a standard port group (``switch_uuid`` "") or a
    distributed one (its ``key`` and its switch's uuid, what a NIC's port backing names)."""

    name: str
    key: str = ""
    switch_uuid: str = ""

    @property
    def distributed(self) -> bool:
        return bool(self.switch_uuid)

    @property
    def backing_id(self) -> str:
        """How a NIC on it shows in ``Observed.nic_backings``."""
        return DVPG_PREFIX + self.key if self.distributed else self.name


@dataclass(frozen=True, slots=True)
class HostInfo:
    """A HostSystem as discovered at start."""

    moid: str
    name: str
    threads: int
    memory_bytes: int
    version: str
    datastores: tuple[Datastore, ...]
    networks: tuple[str, ...]
    mo: Any = field(compare=False, repr=False)
    pool: Any = field(compare=False, repr=False)
    vm_folder: Any = field(compare=False, repr=False)
    port_groups: tuple[PortGroup, ...] = ()
    """The networks of ``networks`` a VM's NIC can be on (uplink port groups left out)."""
    datacenter: Any = field(compare=False, repr=False, default=None)

    def port_group(self, name: str) -> PortGroup | None:
        return next((pg for pg in self.port_groups if pg.name == name), None)


@dataclass(frozen=True, slots=True)
class _Service:
    """A connected endpoint's service content and the managers the session uses
    (optional in the vSphere API; every ESXi and vCenter has them)."""

    content: vim.ServiceInstanceContent
    sessions: vim.SessionManager
    views: vim.view.ViewManager
    search: vim.SearchIndex

    @classmethod
    def of(cls, content: vim.ServiceInstanceContent, url: str) -> _Service:
        """Raises HostUnavailable when the endpoint lacks one of the managers."""
        if content.sessionManager is None or content.viewManager is None or content.searchIndex is None:
            raise HostUnavailable(f"{url} lacks a session, view or search manager")
        return cls(content, content.sessionManager, content.viewManager, content.searchIndex)


def host_id_for(prefix: str, name: str) -> str:
    return prefix + re.sub(r"[^a-z0-9.-]", "-", name.lower())


class Session:
    """A logged-in connection to one vSphere endpoint. Create with :meth:`open`; close with :meth:`close`."""

    def __init__(self, config: EsxiConfig, loop: asyncio.AbstractEventLoop):
        self.config = config
        self.api_type = ""
        self.relogins = 0
        self._pool = ThreadPoolExecutor(config.threads, thread_name_prefix="esxi")
        self._loop = loop
        self._stub: SoapStubAdapter | None = None
        self._connected: _Service | None = None
        self._login_lock = threading.Lock()
        self._login_generation = 0
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None
        self._pc_lock = threading.Lock()
        self._pc: vmodl.query.PropertyCollector | None = None
        self._task_filters: dict[str, Any] = {}   # task moid -> filter (guarded by _pc_lock)
        self._task_mos: dict[str, Any] = {}       # task moid -> task (guarded by _pc_lock)
        # Below: touched only on the event loop.
        self.vms: dict[str, Observed] = {}
        self.by_uid: dict[str, set[str]] = {}
        self.by_name: dict[str, str] = {}
        self._task_state: dict[str, dict[str, Any]] = {}
        self._task_waiters: dict[str, asyncio.Future] = {}
        self._resync_seen: set[str] | None = None
        self.synced = asyncio.Event()
        self.changed = asyncio.Condition()
        self.listeners: list[Callable[[Observed], None]] = []
        """Called on the event loop with a VM whose :meth:`Observed.watched` state changed."""

    @property
    def _service(self) -> _Service:
        """The endpoint's managers; raises HostUnavailable before ``_connect`` succeeded."""
        if self._connected is None:
            raise HostUnavailable(f"{self.config.url}: not connected")
        return self._connected

    @property
    def content(self) -> vim.ServiceInstanceContent:
        """The endpoint's service content (its managers); raises HostUnavailable before connecting."""
        return self._service.content

    @property
    def disk_manager(self) -> vim.VirtualDiskManager:
        """The VirtualDiskManager (ESXi and vCenter have one); HostUnavailable without it."""
        if self.content.virtualDiskManager is None:
            raise HostUnavailable(f"{self.config.url} has no virtual disk manager")
        return self.content.virtualDiskManager

    @property
    def file_manager(self) -> vim.FileManager:
        if self.content.fileManager is None:
            raise HostUnavailable(f"{self.config.url} has no file manager")
        return self.content.fileManager

    @property
    def is_vcenter(self) -> bool:
        return self.api_type == "VirtualCenter"

    # --- connection -------------------------------------------------------------------

    @classmethod
    async def open(cls, config: EsxiConfig) -> Session:
        """Connect, log in and start the watcher. Raises DriverError (HostUnavailable, TlsError...)."""
        session = cls(config, asyncio.get_running_loop())
        try:
            await session._loop.run_in_executor(session._pool, session._connect)
        except Exception as err:
            session._pool.shutdown(wait=False)
            raise to_driver_error(err, f"connect {config.url}") from err
        session._watcher = threading.Thread(target=session._watch, name="esxi-watch", daemon=True)
        session._watcher.start()
        return session

    def _ssl_context(self) -> ssl.SSLContext:
        if not self.config.verify_tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            return context
        return ssl.create_default_context(cafile=self.config.ca_file)

    def _connect(self) -> None:
        url = urlparse(self.config.url)
        https = url.scheme != "http"
        port = url.port or (443 if https else 80)
        self._stub = SmartStubAdapter(
            host=url.hostname, port=port if https else -port, path=url.path or "/sdk",
            poolSize=self.config.threads + 2, sslContext=self._ssl_context() if https else None,
            httpConnectionTimeout=30)
        if self._stub is None:
            raise HostUnavailable(f"{self.config.url} is not a vSphere endpoint")
        instance = vim.ServiceInstance("ServiceInstance", self._stub)
        self._connected = service = _Service.of(instance.RetrieveContent(), self.config.url)
        self.api_type = service.content.about.apiType
        service.sessions.Login(self.config.user, self.config.password, None)

    def _relogin(self, seen_generation: int) -> None:
        with self._login_lock:
            if self._login_generation != seen_generation:
                return  # another caller renewed the session since this one failed
            log.warning("vSphere session expired; logging in again", extra={"url": self.config.url})
            self._service.sessions.Login(self.config.user, self.config.password, None)
            self._login_generation += 1
            self.relogins += 1

    def expire_for_test(self) -> None:
        """Log the session out, as an idle timeout would. Blocking; for tests."""
        self._service.sessions.Logout()

    async def close(self) -> None:
        """Stop the watcher, log out, free the threads. Idempotent."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        if self._pc is not None:
            try:
                await self._loop.run_in_executor(self._pool, self._pc.CancelWaitForUpdates)
            except Exception:  # noqa: BLE001 - the watcher also stops on its own error
                pass
        if self._watcher is not None:
            await self._loop.run_in_executor(None, self._watcher.join, 2 * _WAIT_SECONDS)
        try:
            await self._loop.run_in_executor(self._pool, self._service.sessions.Logout)
        except Exception:  # noqa: BLE001 - logging out of an unreachable host is best effort
            pass
        self._pool.shutdown(wait=True, cancel_futures=True)
        for waiter in self._task_waiters.values():
            if not waiter.done():
                waiter.set_exception(HostUnavailable("session closed"))

    # --- calls ------------------------------------------------------------------------

    def _invoke(self, fn: Callable[..., Any], args: tuple) -> Any:
        generation = self._login_generation
        try:
            return fn(*args)
        except vim.fault.NotAuthenticated:
            self._relogin(generation)
            return fn(*args)

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a blocking pyvmomi call in the pool, logging in again if the session expired.
        Raises the vSphere fault as is (the driver maps it)."""
        if self._stopping.is_set():
            raise HostUnavailable("session closed")
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._invoke, fn, args)

    async def run_task(self, start: Callable[..., Any], *args: Any) -> Any:
        """Start a task and wait for it through the watcher; its result, or its fault raised."""
        task = await self.call(start, *args)
        return await self.wait_task(task)

    async def wait_task(self, task: Any) -> Any:
        moid = task._moId
        waiter = self._loop.create_future()
        self._task_waiters[moid] = waiter
        try:
            await self.call(self._watch_task, task)
            # Read the task once after subscribing: vSphere reports a new filter's values
            # at once, but vcsim only with some later change, so a task that ended before
            # its filter existed (a slow caller, a loaded machine) would be awaited forever.
            props = await self.call(self.retrieve, task, _TASK_PATHS)
            self._apply_task(moid, [(path, "assign", value) for path, value in props.items()])
            async with asyncio.timeout(self.config.task_timeout_s):
                return await waiter
        finally:
            self._task_waiters.pop(moid, None)
            self._task_state.pop(moid, None)
            self._pool.submit(self._unwatch_task, moid)

    def _watch_task(self, task: Any) -> None:
        with self._pc_lock:
            self._task_mos[task._moId] = task
            pc = self._pc
            if pc is None:
                return  # the watcher is rebuilding its collector, with a filter for this task
            try:
                self._task_filters[task._moId] = pc.CreateFilter(_task_filter(task), partialUpdates=True)
                return
            except vmodl.fault.ManagedObjectNotFound:
                pass  # the collector died with an expired session: build the next one now
        self._setup_collector(stale=pc)

    def _unwatch_task(self, moid: str) -> None:
        with self._pc_lock:
            self._task_mos.pop(moid, None)
            filt = self._task_filters.pop(moid, None)
        if filt is not None:
            try:
                filt.DestroyPropertyFilter()
            except Exception:  # noqa: BLE001 - gone with its session already
                pass

    # --- discovery --------------------------------------------------------------------

    async def discover_hosts(self) -> list[HostInfo]:
        """Every HostSystem (with datastores, networks, pool and VM folder). Raises DriverError."""
        try:
            return await self.call(self._discover_hosts)
        except Exception as err:
            raise to_driver_error(err, "discover hosts") from err

    def _discover_hosts(self) -> list[HostInfo]:
        service = self._service
        content = service.content
        view = service.views.CreateContainerView(content.rootFolder, [vim.HostSystem], True)
        try:
            hosts = []
            for host in view.view:
                datacenter = host.parent
                while not isinstance(datacenter, vim.Datacenter):
                    datacenter = datacenter.parent
                datastores = tuple(
                    Datastore(ds._moId, ds.name, ds.summary.capacity, ds.summary.freeSpace, ds)
                    for ds in host.datastore if ds.summary.accessible)
                hardware = host.hardware
                port_groups = tuple(pg for n in host.network if (pg := self._port_group(n)) is not None)
                hosts.append(HostInfo(
                    moid=host._moId, name=host.name, threads=hardware.cpuInfo.numCpuThreads,
                    memory_bytes=hardware.memorySize, version=content.about.version,
                    datastores=datastores, networks=tuple(pg.name for pg in port_groups),
                    mo=host, pool=host.parent.resourcePool, vm_folder=datacenter.vmFolder,
                    port_groups=port_groups, datacenter=datacenter))
            return hosts
        finally:
            view.Destroy()

    def _port_group(self, network: Any) -> PortGroup | None:
        """Blocking: what a NIC needs to name ``network``; None for a distributed switch's
        uplink port group (no VM NIC goes there)."""
        if not isinstance(network, vim.dvs.DistributedVirtualPortgroup):
            return PortGroup(network.name)
        props = self.retrieve(network, ["name", "key", "config.distributedVirtualSwitch", "config.uplink", "tag"])
        switch = props.get("config.distributedVirtualSwitch")
        if props.get("config.uplink") or switch is None or any(
                t.key == _UPLINK_TAG for t in props.get("tag") or ()):
            return None
        switch_props = self.retrieve(switch, ["uuid", "config.uplinkPortgroup"])
        if any(pg._moId == network._moId for pg in switch_props.get("config.uplinkPortgroup") or ()):
            return None
        return PortGroup(props.get("name", ""), props.get("key", ""), switch_props.get("uuid", ""))

    def retrieve(self, mo: Any, paths: list[str]) -> dict[str, Any]:
        """Blocking: the properties of one object that are set (unset ones are absent).

        Used instead of pyvmomi's attribute accessors for properties that may be
        unset: vcsim panics serving an accessor's Fetch of an unset property."""
        spec = vmodl.query.PropertyCollector.FilterSpec(
            objectSet=[vmodl.query.PropertyCollector.ObjectSpec(obj=mo, skip=False)],
            propSet=[vmodl.query.PropertyCollector.PropertySpec(type=type(mo), pathSet=paths)])
        result = self._service.content.propertyCollector.RetrievePropertiesEx(
            [spec], vmodl.query.PropertyCollector.RetrieveOptions())
        return {p.name: p.val for obj in (result.objects if result else ()) for p in obj.propSet or ()}

    def find_vm(self, folder: Any, name: str) -> bool:
        """Blocking: whether ``folder`` holds a VM named ``name``, asked of the server (not the cache)."""
        return self._service.search.FindChild(folder, name) is not None

    async def refresh(self, mo: Any) -> None:
        """Read one VM's watched properties directly into the cache (when the watcher lags)."""
        props = await self.call(self.retrieve, mo, _VM_PATHS)
        self._apply_vm("enter", mo._moId, [(name, "assign", value) for name, value in props.items()])

    def vm_mo(self, moid: str) -> Any:
        return vim.VirtualMachine(moid, self._stub)

    # --- the watcher (its own thread) -------------------------------------------------

    def _setup_collector(self, stale: Any = None) -> vmodl.query.PropertyCollector:
        """Make the watcher's collector (VM view plus pending task filters), unless one
        other than ``stale`` exists already; returns the one now in use. Called by the watcher, or by a caller that
        found the collector gone with an expired session (the watcher then switches)."""
        service = self._service
        with self._pc_lock:
            if self._pc is not None and self._pc is not stale:
                return self._pc
            pc = service.content.propertyCollector.CreatePropertyCollector()
            view = service.views.CreateContainerView(service.content.rootFolder, [vim.VirtualMachine], True)
            spec = vmodl.query.PropertyCollector.FilterSpec(
                objectSet=[vmodl.query.PropertyCollector.ObjectSpec(obj=view, skip=True, selectSet=[
                    vmodl.query.PropertyCollector.TraversalSpec(
                        name="view", path="view", skip=False, type=vim.view.ContainerView)])],
                propSet=[vmodl.query.PropertyCollector.PropertySpec(type=vim.VirtualMachine, pathSet=_VM_PATHS)])
            pc.CreateFilter(spec, partialUpdates=True)
            self._task_filters = {moid: pc.CreateFilter(_task_filter(task), partialUpdates=True)
                                  for moid, task in self._task_mos.items()}
            self._pc = pc
            return pc

    def _watch(self) -> None:
        version = ""
        current: vmodl.query.PropertyCollector | None = None
        options = vmodl.query.PropertyCollector.WaitOptions(maxWaitSeconds=_WAIT_SECONDS)
        backoff = 0.1
        while not self._stopping.is_set():
            generation = self._login_generation
            try:
                pc = self._pc
                if pc is None:
                    pc = self._setup_collector()
                if pc is not current:  # a new collector (ours, or a caller's): start over
                    version = ""
                    self._post(self._begin_resync)
                current = pc
                update = current.WaitForUpdatesEx(version, options)
                backoff = 0.1
                if current is not self._pc:
                    continue  # replaced while we waited: what it said is stale
            except vmodl.fault.RequestCanceled:
                continue
            except (vim.fault.NotAuthenticated, vmodl.fault.ManagedObjectNotFound) as err:
                # The session expired, and the collector and view with it.
                with self._pc_lock:
                    if self._pc is current:
                        self._pc = None
                if isinstance(err, vim.fault.NotAuthenticated):
                    try:
                        self._relogin(generation)
                    except Exception as login_err:  # noqa: BLE001 - retried after a backoff
                        log.warning("re-login failed", extra={"error": str(login_err)})
                        self._stopping.wait(backoff)
                        backoff = min(backoff * 2, 10.0)
                continue
            except Exception as err:  # noqa: BLE001 - the host is away: keep trying until closed
                if self._stopping.is_set():
                    return
                log.warning("vSphere watch failed; retrying", extra={"error": str(err), "url": self.config.url})
                with self._pc_lock:
                    if self._pc is current:
                        self._pc = None
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            if update is None:
                continue
            version = update.version
            changes = []
            for filter_update in update.filterSet or ():
                for obj in filter_update.objectSet or ():
                    changes.append((obj.kind, obj.obj, [(c.name, c.op, c.val) for c in obj.changeSet or ()]))
            self._post(self._apply, changes, not update.truncated)

    def _post(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop closed under us: we are shutting down
            self._stopping.set()

    # --- the cache (event loop only) --------------------------------------------------

    def _begin_resync(self) -> None:
        self._resync_seen = set()

    def _apply(self, changes: list, complete: bool) -> None:
        for kind, obj, props in changes:
            if isinstance(obj, vim.Task):
                self._apply_task(obj._moId, props)
            else:
                self._apply_vm(kind, obj._moId, props)
        if complete and self._resync_seen is not None:
            for moid in [m for m in self.vms if m not in self._resync_seen]:
                self._forget(moid)
            self._resync_seen = None
            self.synced.set()
        asyncio.ensure_future(self._notify())

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    def _apply_vm(self, kind: str, moid: str, props: list) -> None:
        if kind == "leave":
            self._forget(moid)
            return
        if self._resync_seen is not None:
            self._resync_seen.add(moid)
        vm = self.vms.get(moid)
        if vm is None:
            vm = self.vms[moid] = Observed(moid)
        uid, name, before = vm.uid, vm.name, vm.watched()
        guest_changed = False
        for path, op, value in props:
            if op == "remove":
                value = None
            if path == "name":
                vm.name = value or ""
            elif path == "runtime.powerState":
                vm.power = str(value)
            elif path == "runtime.host":
                vm.host = value._moId if value is not None else ""
            elif path == "config.extraConfig":
                # Read key by key: the bootstrap values are looked at, never kept.
                options = {o.key: o.value for o in value or ()}
                vm.uid, vm.vm_name, vm.record = (str(options.get(UID_KEY, "")), str(options.get(NAME_KEY, "")),
                                                 str(options.get(RECORD_KEY, "")))
                vm.bootstrapped = options.get(guestinfo.REPORT_KEY) == guestinfo.REPORT_DONE
                vm.bootstrap_present = guestinfo.present(options)
                del options
            elif path == f'config.extraConfig["{UID_KEY}"]':
                vm.uid = str(value.value) if value is not None else ""
            elif path == "config.hardware.numCPU":
                vm.vcpus = int(value or 0)
            elif path == "config.hardware.memoryMB":
                vm.memory_mib = int(value or 0)
            elif path == "config.cpuHotAddEnabled":
                vm.cpu_hot_add = bool(value)
            elif path == "config.memoryHotAddEnabled":
                vm.memory_hot_add = bool(value)
            elif path == "config.hardware.device":
                disk = root_disk(value or ())
                vm.disk_bytes = disk_bytes(disk) if disk is not None else 0
                vm.nic_backings = nic_backings(value or ())
                vm.disk_uids = tuple(uid for _, uid in persistent_disks(value or ()))
            elif path == "guest.toolsRunningStatus":
                vm.tools = str(value or "")
            elif path == "guest.net":
                vm.nics, guest_changed = tuple(value or ()), True
            elif path == "guest.ipAddress":
                vm.primary_ip, guest_changed = str(value or ""), True
        if guest_changed:
            vm.addresses = guest_addresses(vm.nics, vm.primary_ip)
        if uid != vm.uid:
            if uid:
                self.by_uid.get(uid, set()).discard(moid)
                if not self.by_uid.get(uid):
                    self.by_uid.pop(uid, None)
            if vm.uid:
                self.by_uid.setdefault(vm.uid, set()).add(moid)
        if name != vm.name:
            if name and self.by_name.get(name) == moid:
                del self.by_name[name]
            if vm.name:
                self.by_name[vm.name] = moid
        if vm.uid and (before != vm.watched() or uid != vm.uid):
            for listener in self.listeners:
                listener(vm)

    def _forget(self, moid: str) -> None:
        vm = self.vms.pop(moid, None)
        if vm is None:
            return
        if vm.uid:  # gone (destroyed, or moved away): its listeners re-read it
            for listener in self.listeners:
                listener(vm)
        if vm.uid:
            moids = self.by_uid.get(vm.uid, set())
            moids.discard(moid)
            if not moids:
                self.by_uid.pop(vm.uid, None)
        if vm.name and self.by_name.get(vm.name) == moid:
            del self.by_name[vm.name]

    def _apply_task(self, moid: str, props: list) -> None:
        state = self._task_state.setdefault(moid, {})
        for path, _op, value in props:
            state[path] = value
        waiter = self._task_waiters.get(moid)
        if waiter is None or waiter.done():
            return
        if state.get("info.state") == "success":
            waiter.set_result(state.get("info.result"))
        elif state.get("info.state") == "error":
            fault = state.get("info.error")
            waiter.set_exception(fault if isinstance(fault, BaseException) else vmodl.fault.SystemError(
                msg=f"task failed: {fault!r}"))

    async def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``predicate()`` holds after some watcher update; False at the deadline."""
        try:
            async with asyncio.timeout(timeout), self.changed:
                await self.changed.wait_for(predicate)
            return True
        except TimeoutError:
            return predicate()


def root_disk(devices: Any) -> Any:
    """The VM's root disk: the first VirtualDisk of ``devices`` by key (the order of the
    list is not stable: vcsim moves an edited device to its end) that is not a
    persistent disk (keys are the host's choice: vcsim reuses freed ones), or None. Pure."""
    disks = [d for d in devices if isinstance(d, vim.vm.device.VirtualDisk)
             and not _DISK_FILE.match(getattr(d.backing, "fileName", None) or "")]
    return min(disks, key=lambda d: d.key) if disks else None


def nic_backings(devices: Any) -> tuple[str, ...]:
    """What each NIC of ``devices`` is on, in key order: a standard port group's name,
    or ``DVPG_PREFIX`` + a distributed port group's key ("" for another backing). Pure."""
    found = []
    for card in sorted((d for d in devices if isinstance(d, vim.vm.device.VirtualEthernetCard)), key=lambda d: d.key):
        backing = card.backing
        if isinstance(backing, vim.vm.device.VirtualEthernetCard.DistributedVirtualPortBackingInfo):
            found.append(DVPG_PREFIX + (backing.port.portgroupKey or "") if backing.port is not None else "")
        elif isinstance(backing, vim.vm.device.VirtualEthernetCard.NetworkBackingInfo):
            found.append(backing.deviceName or "")
        else:
            found.append("")
    return tuple(found)


def disk_path(datastore: str, disk_uid: str) -> str:
    """The datastore path of persistent disk ``disk_uid`` on ``datastore``. Pure."""
    return f"[{datastore}] {DISK_DIR}/{disk_uid}.vmdk"


_DISK_FILE = re.compile(r"^\[[^\]]*\] ?" + DISK_DIR + r"/([A-Za-z0-9._-]+)\.vmdk$")


def persistent_disks(devices: Any) -> list[tuple[Any, str]]:
    """The persistent disks among ``devices`` (VirtualDisks whose file is a DISK_DIR
    file), each with its uid, in key order. Pure."""
    found = []
    for d in sorted((d for d in devices if isinstance(d, vim.vm.device.VirtualDisk)), key=lambda d: d.key):
        match = _DISK_FILE.match(getattr(d.backing, "fileName", None) or "")
        if match:
            found.append((d, match.group(1)))
    return found


def disk_bytes(disk: Any) -> int:
    """A VirtualDisk's capacity in bytes (capacityInBytes, else capacityInKB). Pure."""
    return int(disk.capacityInBytes or 0) or int(disk.capacityInKB or 0) * 1024


def guest_addresses(nics: tuple, primary: str) -> tuple[Address, ...]:
    """The addresses a guest reports (``guest.net``; ``guest.ipAddress`` is the
    primary, first): per NIC its ``ipConfig`` addresses, else its plain ``ipAddress``
    list; link-local ones left out (they say nothing about reachability). Pure."""
    found: list[Address] = []
    for nic in nics:
        config = getattr(nic, "ipConfig", None)
        ips = [a.ipAddress for a in (config.ipAddress or ())] if config is not None and config.ipAddress else \
            list(getattr(nic, "ipAddress", None) or ())
        for ip in ips:
            if ip and not _link_local(ip) and all(a.ip != ip for a in found):
                found.append(Address(ip=ip, mac=getattr(nic, "macAddress", None) or "",
                                     network=getattr(nic, "network", None) or "", family=6 if ":" in ip else 4))
    if primary and not _link_local(primary):
        first = next((a for a in found if a.ip == primary), None)
        if first is None:
            first = Address(ip=primary, family=6 if ":" in primary else 4)
        found = [first, *(a for a in found if a.ip != primary)]
    return tuple(found)


def _link_local(ip: str) -> bool:
    return ip.lower().startswith("fe80:") or ip.startswith("169.254.")


def _task_filter(task: Any) -> Any:
    return vmodl.query.PropertyCollector.FilterSpec(
        objectSet=[vmodl.query.PropertyCollector.ObjectSpec(obj=task, skip=False)],
        propSet=[vmodl.query.PropertyCollector.PropertySpec(type=vim.Task, pathSet=_TASK_PATHS)])
