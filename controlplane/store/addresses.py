"""Choosing STATIC_POOL addresses for creates: read a pool's taken addresses (keys
only), pick a random free one (``addressing.choose_free``). A pick is only a
proposal: the create's transaction compares the address absent
(``claims.create_claims``), and a create that loses it picks again.

Within one process, addresses proposed by creates still in flight are not proposed
again (the "assumed" state of a Kubernetes scheduler cache, forgotten once the
create is decided): concurrent creates of one frontend never collide with each
other, and frontends collide rarely since each picks at random. A create that finds
only in-flight addresses free waits until one of them is decided.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace

from prometheus_client import Counter

from controlplane.addressing import Subnet, choose_free, free_count
from controlplane.etcd import EtcdClient, ops, prefix_end
from controlplane.models import AddressMode, VmSpec
from controlplane.store.errors import StoreError
from controlplane.store.keys import Keys

ADDRESS_PICK_CONFLICTS = Counter(
    "quanta_address_pick_conflicts_total",
    "STATIC_POOL addresses picked for a create and lost to another create (another frontend) before its "
    "commit: picked again.")
ADDRESS_POOL_EXHAUSTED = Counter("quanta_address_pool_exhausted_total",
                                 "Creates refused because a network's address pool had no free address.")

_WAIT_S = 1.0  # at most, for an in-flight proposal to be decided, before reading again


class PoolExhausted(StoreError):
    """The pool of ``network`` has no free address."""

    def __init__(self, network: str):
        super().__init__(f"the address pool of network {network} is exhausted")
        self.network = network


class AddressInUse(StoreError):
    """A STATIC address is another NIC's (``network``, ``ip``)."""

    def __init__(self, network: str, ip: str):
        super().__init__(f"address {ip} of network {network} is in use")
        self.network = network
        self.ip = ip


class NetworkGone(StoreError):
    """A network a create's NICs are on was deleted (or re-created) meanwhile."""

    def __init__(self, network: str):
        super().__init__(f"network {network} was deleted while the VM was being created")
        self.network = network


class AddressPicker:
    """Proposes STATIC_POOL addresses (see the module docstring). One per process."""

    def __init__(self, client: EtcdClient, keys: Keys, rng: random.Random | None = None):
        self._etcd = client
        self._keys = keys
        self._rng = rng or random.Random()
        self._inflight: dict[str, set[str]] = {}  # network uid -> proposed, not yet decided
        self._decided = asyncio.Condition()

    async def propose(self, specs: Sequence[VmSpec], subnets: Mapping[str, Subnet]) -> list[VmSpec]:
        """``specs`` with an address chosen for every STATIC_POOL NIC (distinct across
        all of them), from the pools ``subnets`` gives by network uid; held in flight
        until :meth:`forget`. Raises PoolExhausted (nothing held) when a pool has too
        few free addresses; may wait for in-flight proposals of this process."""
        uids = sorted({nic.network_uid for spec in specs for nic in spec.nics
                       if nic.address_mode is AddressMode.STATIC_POOL})
        if not uids:
            return list(specs)
        while True:
            taken = await self._taken(uids)
            for spec in specs:  # STATIC ones of this very call are not the pool's to give
                for nic in spec.nics:
                    if nic.address_mode is AddressMode.STATIC and nic.network_uid in taken:
                        taken[nic.network_uid].add(nic.ip)
            chosen: list[VmSpec] = []
            held: list[tuple[str, str]] = []
            short = ""
            for spec in specs:
                nics = list(spec.nics)
                for i, nic in enumerate(nics):
                    if nic.address_mode is not AddressMode.STATIC_POOL:
                        continue
                    subnet = subnets[nic.network_uid]
                    busy = taken[nic.network_uid] | self._inflight.get(nic.network_uid, set())
                    ip = choose_free(subnet, busy, self._rng)
                    if ip is None:
                        short = short or nic.network
                        if choose_free(subnet, taken[nic.network_uid], self._rng) is None:
                            self._release(held)
                            ADDRESS_POOL_EXHAUSTED.inc()
                            raise PoolExhausted(nic.network)
                        continue
                    nics[i] = replace(nic, ip=ip)
                    taken[nic.network_uid].add(ip)
                    self._inflight.setdefault(nic.network_uid, set()).add(ip)
                    held.append((nic.network_uid, ip))
                chosen.append(replace(spec, nics=tuple(nics)))
            if not short:
                return chosen
            # Only addresses other creates of this process are trying are free: wait
            # until one is decided (it may give its address back), then read again.
            self._release(held)
            async with self._decided:
                try:
                    await asyncio.wait_for(self._decided.wait(), _WAIT_S)
                except TimeoutError:
                    pass

    @staticmethod
    def lost() -> None:
        """A create lost a proposed address to another create (it picks again)."""
        ADDRESS_PICK_CONFLICTS.inc()

    async def forget(self, specs: Iterable[VmSpec]) -> None:
        """The creates of ``specs`` are decided (committed or not): their STATIC_POOL
        addresses are no longer in flight here."""
        self._release([(nic.network_uid, nic.ip) for spec in specs for nic in spec.nics
                       if nic.address_mode is AddressMode.STATIC_POOL and nic.ip])
        async with self._decided:
            self._decided.notify_all()

    async def preview(self, specs: Sequence[VmSpec], subnets: Mapping[str, Subnet]) -> list[StoreError | None]:
        """What creating ``specs`` in order would meet now for their addresses, read
        without writing (validate_only): per spec None, AddressInUse (a STATIC address
        is taken, or an earlier spec's) or PoolExhausted (its pool has fewer free
        addresses than it and the specs before it that fit ask for). One round trip."""
        uids = sorted({nic.network_uid for spec in specs for nic in spec.nics if nic.static})
        taken = await self._taken(uids) if uids else {}
        asked: dict[str, int] = {}  # pool addresses the specs so far would take, per network
        out: list[StoreError | None] = []
        for spec in specs:
            error: StoreError | None = None
            statics: list[tuple[str, str]] = []
            wants: dict[str, int] = {}
            for nic in spec.nics:
                if nic.address_mode is AddressMode.STATIC:
                    if nic.ip in taken[nic.network_uid]:
                        error = error or AddressInUse(nic.network, nic.ip)
                    statics.append((nic.network_uid, nic.ip))
                elif nic.address_mode is AddressMode.STATIC_POOL:
                    wants[nic.network_uid] = wants.get(nic.network_uid, 0) + 1
                    subnet = subnets[nic.network_uid]
                    if free_count(subnet, taken[nic.network_uid]) < asked.get(nic.network_uid, 0) + \
                            wants[nic.network_uid]:
                        error = error or PoolExhausted(nic.network)
            if error is None:
                for uid, ip in statics:
                    taken[uid].add(ip)
                for uid, n in wants.items():
                    asked[uid] = asked.get(uid, 0) + n
            out.append(error)
        return out

    def _release(self, held: Iterable[tuple[str, str]]) -> None:
        for uid, ip in held:
            pending = self._inflight.get(uid)
            if pending is not None:
                pending.discard(ip)
                if not pending:
                    del self._inflight[uid]

    async def _taken(self, uids: Sequence[str]) -> dict[str, set[str]]:
        """The addresses handed out of each network (keys only, one round trip)."""
        k = self._keys
        result = await self._etcd.txn([], [ops.get(k.addresses_prefix(uid), prefix_end(k.addresses_prefix(uid)),
                                                   keys_only=True) for uid in uids])
        out = {}
        for i, uid in enumerate(uids):
            prefix = k.addresses_prefix(uid)
            out[uid] = {kv.key[len(prefix):].decode() for kv in result.kvs(i)}
        return out
