"""Removes destroyed VMs from etcd in batches, one compare-and-swap txn per host
(their keys go and the host's allocation shrinks atomically)."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable

from controlplane.etcd import EtcdError
from controlplane.store.hostagent import AgentStore, BoundVm

log = logging.getLogger(__name__)


class Remover:
    def __init__(self, store: AgentStore, on_removed: Callable[[BoundVm], None] = lambda vm: None):
        """``on_removed`` is called with each VM once its removal is written."""
        self._store = store
        self._on_removed = on_removed
        self._pending: dict[str, dict[object, BoundVm]] = defaultdict(dict)
        self._wakeup = asyncio.Event()
        self._closing = False

    def close(self) -> None:
        """Make :meth:`run` return once every removal submitted so far is written."""
        self._closing = True
        self._wakeup.set()

    def submit(self, host: str, vm: BoundVm) -> None:
        """Queue the removal of a VM its host has destroyed; never blocks. Idempotent."""
        self._pending[host][vm.ref] = vm
        self._wakeup.set()

    def _take_batch(self) -> tuple[dict[str, dict[object, BoundVm]], dict[str, dict[object, BoundVm]]]:
        """Up to one txn's worth of removals per host; the rest stays pending."""
        limit = self._store.max_removals_per_txn()
        batch: dict[str, dict[object, BoundVm]] = {}
        rest: dict[str, dict[object, BoundVm]] = defaultdict(dict)
        for host, vms in self._pending.items():
            items = list(vms.items())
            batch[host] = dict(items[:limit])
            if len(items) > limit:
                rest[host].update(items[limit:])
                self._wakeup.set()
        return batch, rest

    async def run(self) -> None:
        while True:
            if not self._closing:
                await self._wakeup.wait()
            self._wakeup.clear()
            batch, self._pending = self._take_batch()
            if self._closing and not any(batch.values()):
                return
            results = await asyncio.gather(
                *(self._store.remove_destroyed(host, list(vms.values())) for host, vms in batch.items()),
                return_exceptions=True,
            )
            for (host, vms), result in zip(batch.items(), results, strict=True):
                if result is True:
                    for vm in vms.values():
                        self._on_removed(vm)
                    continue
                if isinstance(result, BaseException) and not isinstance(result, EtcdError):
                    raise result
                # Lost a race on the allocation (a bind landed meanwhile) or etcd hiccup: retry.
                for ref, vm in vms.items():
                    self._pending[host].setdefault(ref, vm)
                self._wakeup.set()
            if self._wakeup.is_set():
                # Retries (lost races, an etcd hiccup) after a short pause, so steady
                # conflicts on one host do not spin; fresh work waits no longer.
                await asyncio.sleep(0.05 if any(r is not True for r in results) else 0)
