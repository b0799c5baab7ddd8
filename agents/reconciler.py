"""Makes one host's bound VMs true, one VM at a time per key.

``reconcile(host, ref)`` compares desired state (the binding, from etcd) with
observed state (the driver) and acts: create and power on, or destroy and hand
the removal to the Remover. Idempotent: a VM the driver already has (made by
an earlier run of this agent) is adopted, never made twice. Never runs twice
at once for one VM (the work queue guarantees it). Driver errors marked
transient are retried with backoff by the caller; permanent ones set ERROR.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping

from agents import metrics
from agents.drivers.protocol import DriverError, HostDriver, PowerState, VmRequest
from agents.orphans import OrphanKeeper
from agents.remover import Remover
from agents.status_writer import StatusWriter
from controlplane.logcontext import bound
from controlplane.models import VmRef, VmState, VmStatus, now_ns
from controlplane.store.hostagent import BoundVm, StatusUpdate
from controlplane.store.orphans import spec_record

log = logging.getLogger(__name__)

Key = tuple[str, VmRef]


async def _timed(op: str, call):
    started = time.perf_counter()
    result = "ok"
    try:
        return await call
    except DriverError as err:
        result = err.reason
        raise
    finally:
        metrics.DRIVER_SECONDS.labels(op, result).observe(time.perf_counter() - started)


class Reconciler:
    def __init__(self, drivers: Mapping[str, HostDriver], statuses: StatusWriter, remover: Remover,
                 *, per_host_concurrency: int = 8, orphans: OrphanKeeper | None = None):
        self._drivers = drivers
        #: Decides the fate of a VM whose binding went without a deletion (None: keep it).
        self._orphans = orphans
        self._statuses = statuses
        self._remover = remover
        self.desired: dict[Key, BoundVm] = {}
        #: VMs whose binding went away without a deletion (moved to another host):
        #: the next reconcile of their key hands them to the OrphanKeeper, which
        #: destroys them by their tombstone (or quarantines them without one).
        self.unbound: dict[Key, str] = {}
        #: Last state written per VM, so unchanged states are not written again.
        self.reported: dict[Key, VmState] = {}
        self._host_slots = {host: asyncio.Semaphore(per_host_concurrency) for host in drivers}
        #: Reconciles in driver calls now.
        self.acting = 0
        self._stopping = False

    def stop(self) -> None:
        """Start no new host work: a reconcile not yet acting returns without acting
        (the VM stays desired in etcd for the next agent); those acting finish."""
        self._stopping = True

    def _report(self, key: Key, vm: BoundVm, state: VmState, reason: str = "", message: str = "") -> None:
        if self.reported.get(key) == state and not reason:
            return
        self.reported[key] = state
        host, ref = key
        self._statuses.submit(StatusUpdate(host, ref, vm.create_revision, VmStatus(
            state, host=host, reason=reason, message=message, update_time_ns=now_ns(),
            accepted_time_ns=vm.binding.spec.create_time_ns)))

    def unbind(self, key: Key) -> None:
        """The binding of ``key`` is gone. Unless it went because its VM was deleted
        (destroyed already), the VM was moved off this host: remember its uid so
        that reconcile releases it (destroyed only with a tombstone)."""
        vm = self.desired.pop(key, None)
        if vm is not None and not (vm.binding.deleting or vm.binding.evicting):
            self.unbound[key] = vm.binding.spec.uid

    async def reconcile(self, key: Key) -> None:
        """Bring one VM to its desired state. Raises DriverError when a transient
        fault should be retried later."""
        host, ref = key
        vm = self.desired.get(key)
        if vm is None:
            self.reported.pop(key, None)
            uid = self.unbound.get(key)
            if uid is not None:
                with bound(vm=ref.name, host=host):
                    log.info("binding gone without a deletion; releasing the VM (destroyed only with a tombstone)")
                    if self._orphans is not None:
                        async with self._host_slots[host]:
                            await self._orphans.release(host, uid)
                self.unbound.pop(key, None)
            return
        self.unbound.pop(key, None)  # bound here again: adopt it, if it still exists
        driver = self._drivers[host]
        spec = vm.binding.spec
        with bound(vm=ref.name, host=host):
            async with self._host_slots[host]:
                if self._stopping:
                    return
                metrics.INFLIGHT.inc()
                self.acting += 1
                try:
                    if vm.binding.deleting or vm.binding.evicting:
                        # Evicting (a drain): destroyed here first; removing the binding then
                        # queues the VM again, so it never runs on two hosts at once.
                        await _timed("destroy", driver.destroy_vm(spec.uid))
                        self._statuses.discard(host, ref)
                        self._remover.submit(host, vm)
                        return
                    try:
                        await self._make_running(key, vm, driver)
                    except DriverError as err:
                        if err.transient:
                            raise
                        log.warning("VM failed", extra={"reason": err.reason, "error": str(err)})
                        metrics.VMS_FAILED.labels(err.reason).inc()
                        self._report(key, vm, VmState.ERROR, err.reason, str(err))
                finally:
                    metrics.INFLIGHT.dec()
                    self.acting -= 1

    async def _make_running(self, key: Key, vm: BoundVm, driver: HostDriver) -> None:
        spec = vm.binding.spec
        info = await _timed("get", driver.get_vm(spec.uid))
        acted = info is None or info.power is not PowerState.ON
        if info is None:
            self._report(key, vm, VmState.CREATING)
            info = await _timed("create", driver.create_vm(VmRequest(
                vm_uid=spec.uid, name=spec.ref.name, image=spec.image, vcpus=spec.resources.vcpus,
                memory_mib=spec.resources.memory_mib, disk_gib=spec.resources.disk_gib, record=spec_record(spec))))
        if info.power is not PowerState.ON:
            await _timed("power_on", driver.power_on(spec.uid))
        if acted:
            metrics.VMS_RUNNING.inc()
            metrics.ACCEPTED_TO_RUNNING.observe(max(0.0, (now_ns() - spec.create_time_ns) / 1e9))
        self._report(key, vm, VmState.RUNNING)
