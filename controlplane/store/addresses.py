"""Choosing a create's addresses: STATIC_POOL addresses out of the pools of its NICs'
backings, and a MAC per NIC. A pick is only a proposal: the create's transaction
compares each address and MAC absent on its backing (``claims.create_claims``), and a
create that loses one picks again.

A pool is a network's range on its backing (``addresses/{backing}/{ip}``, one key
space per port group, whichever network took a key: see ``controlplane/addressing.py``).
Free addresses are found from a random start by a window read of a few keys
(``addressing.PoolSearch``): a create reads O(window) keys, not O(taken); the whole
range is read only when windows come back full, and PoolExhausted is said only when
the whole range has no free address.

Within one process, addresses proposed by creates still in flight are not proposed
again (the "assumed" state of a Kubernetes scheduler cache, forgotten once the
create is decided): concurrent creates of one frontend never collide with each
other, and frontends collide rarely since each starts at random. A create that finds
only in-flight addresses free waits until one of them is decided.

MACs are drawn at random from VMware's manual range (``controlplane/macs.py``), distinct
within one call; with 22 bits a draw meets a taken MAC rarely, and the compare turns
that into a pick again, never into two NICs with one MAC.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from prometheus_client import Counter

from controlplane import macs
from controlplane.addressing import PoolSearch, Skip, Subnet, pool_spans, to_int, to_ip
from controlplane.etcd import EtcdClient, ops
from controlplane.models import AddressMode, VmSpec
from controlplane.store.errors import StoreError
from controlplane.store.keys import Keys

ADDRESS_PICK_CONFLICTS = Counter(
    "quanta_address_pick_conflicts_total",
    "STATIC_POOL addresses picked for a create and lost to another create (another frontend) before its "
    "commit: picked again.")
ADDRESS_POOL_EXHAUSTED = Counter("quanta_address_pool_exhausted_total",
                                 "Creates refused because a network's address pool had no free address.")
MAC_PICK_CONFLICTS = Counter("quanta_mac_pick_conflicts_total",
                             "MACs drawn for a create's NICs that were taken on their backing: drawn again.")

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


@dataclass(frozen=True, slots=True)
class Pool:
    """A network's pool as keys see it: its range on its backing, and its gateway. The
    one place that says which keys a pool's addresses are (:meth:`key_ranges`: what
    counting its taken addresses reads, here and in ``networks.py``)."""

    backing: str
    lo: int
    hi: int
    gateway: int | None

    @classmethod
    def of(cls, backing: str, subnet: Subnet) -> Pool:
        lo, hi = subnet.bounds
        return cls(backing, lo, hi, subnet.gateway_value)

    @property
    def spans(self) -> tuple[tuple[int, int], ...]:
        return pool_spans(self.lo, self.hi, self.gateway)

    @property
    def size(self) -> int:
        return sum(b - a + 1 for a, b in self.spans)

    def key_ranges(self, keys: Keys) -> list[tuple[bytes, bytes]]:
        """The pool's addresses as key ranges on its backing, [start, end) per span (the
        range split around its gateway): every key in them is an address it cannot
        give, whichever network or gateway took it. Pure."""
        return [(keys.address_at(self.backing, a), keys.address_at(self.backing, b + 1)) for a, b in self.spans]


class AddressPicker:
    """Proposes STATIC_POOL addresses and MACs (see the module docstring). One per process."""

    def __init__(self, client: EtcdClient, keys: Keys, rng: random.Random | None = None):
        self._etcd = client
        self._keys = keys
        self._rng = rng or random.Random()
        self._inflight: dict[str, set[int]] = {}  # backing -> addresses proposed, not yet decided
        self._decided = asyncio.Condition()

    def with_macs(self, specs: Sequence[VmSpec]) -> list[VmSpec]:
        """``specs`` with a random MAC for every NIC that has none, distinct from every
        other MAC of ``specs``. Pure but for the random draws."""
        used = {nic.mac for spec in specs for nic in spec.nics if nic.mac}
        out = []
        for spec in specs:
            if all(nic.mac for nic in spec.nics):
                out.append(spec)
                continue
            nics = []
            for nic in spec.nics:
                if not nic.mac:
                    nic = replace(nic, mac=macs.random_mac(self._rng, used))
                    used.add(nic.mac)
                nics.append(nic)
            out.append(replace(spec, nics=tuple(nics)))
        return out

    def redraw_mac(self, specs: Sequence[VmSpec], at: int, nic: int) -> list[VmSpec]:
        """``specs`` with NIC ``nic`` of ``specs[at]`` given another random MAC (its own
        was taken on its backing), distinct from every MAC of ``specs``."""
        MAC_PICK_CONFLICTS.inc()
        used = {n.mac for spec in specs for n in spec.nics if n.mac}
        spec = specs[at]
        nics = list(spec.nics)
        nics[nic] = replace(nics[nic], mac=macs.random_mac(self._rng, used))
        return [*specs[:at], replace(spec, nics=tuple(nics)), *specs[at + 1:]]

    async def propose(self, specs: Sequence[VmSpec], subnets: Mapping[str, Subnet]) -> list[VmSpec]:
        """``specs`` with an address chosen for every STATIC_POOL NIC (distinct across
        all of them and from their STATIC addresses on the same backing), from the
        pools ``subnets`` gives by network uid; held in flight until :meth:`forget`.
        Raises PoolExhausted (nothing held) when a pool has too few free addresses;
        may wait for in-flight proposals of this process."""
        slots: dict[Pool, list[tuple[int, int]]] = {}  # pool -> (spec, NIC) asking it, in order
        for si, spec in enumerate(specs):
            for ni, nic in enumerate(spec.nics):
                if nic.address_mode is AddressMode.STATIC_POOL:
                    slots.setdefault(Pool.of(nic.backing, subnets[nic.network_uid]), []).append((si, ni))
        if not slots:
            return list(specs)
        while True:
            # STATIC addresses of this very call are not the pools' to give.
            hard: dict[str, set[int]] = {}
            for spec in specs:
                for nic in spec.nics:
                    if nic.address_mode is AddressMode.STATIC:
                        hard.setdefault(nic.backing, set()).add(to_int(nic.ip))
            picked: dict[tuple[int, int], int] = {}
            held: list[tuple[str, int]] = []
            short = False
            for pool, asking in slots.items():
                mine = hard.setdefault(pool.backing, set())
                own = mine | ({pool.gateway} if pool.gateway is not None else set())
                inflight = self._inflight.setdefault(pool.backing, set())
                search = await self._search(pool, len(asking), Skip(own, inflight))
                if len(search.picked) < len(asking):
                    if search.free_besides(own) < len(asking):
                        self._release(held)
                        ADDRESS_POOL_EXHAUSTED.inc()
                        raise PoolExhausted(specs[asking[0][0]].nics[asking[0][1]].network)
                    short = True  # only addresses in flight here are free
                    continue
                for slot, value in zip(asking, search.picked, strict=False):
                    picked[slot] = value
                    mine.add(value)
                    inflight.add(value)
                    held.append((pool.backing, value))
            if not short:
                return [replace(spec, nics=tuple(replace(nic, ip=to_ip(picked[(si, ni)])) if (si, ni) in picked
                                                 else nic for ni, nic in enumerate(spec.nics)))
                        for si, spec in enumerate(specs)]
            # Only addresses other creates of this process are trying are free: wait
            # until one is decided (it may give its address back), then read again.
            self._release(held)
            async with self._decided:
                try:
                    await asyncio.wait_for(self._decided.wait(), _WAIT_S)
                except TimeoutError:
                    pass

    async def _search(self, pool: Pool, want: int, skip: Skip) -> PoolSearch:
        """The free addresses of ``pool`` (``want`` of them, or as many as it has),
        found from a random start (see ``addressing.PoolSearch``)."""
        search = PoolSearch(pool.lo, pool.hi, pool.lo + self._rng.randrange(pool.hi - pool.lo + 1), want, skip)
        k = self._keys
        while (read := search.next_read()) is not None:
            first, last, limit = read
            start, end = k.address_at(pool.backing, first), k.address_at(pool.backing, last + 1)
            if limit:
                result = await self._etcd.range(start, end, limit=limit, keys_only=True)
                kvs, full = result.kvs, result.more
            else:
                kvs, _revision = await self._etcd.range_all(start, end)
                full = False
            search.seen([k.parse_address_key(pool.backing, kv.key) for kv in kvs], full)
        return search

    @staticmethod
    def lost() -> None:
        """A create lost a proposed address to another create (it picks again)."""
        ADDRESS_PICK_CONFLICTS.inc()

    async def forget(self, specs: Iterable[VmSpec]) -> None:
        """The creates of ``specs`` are decided (committed or not): their STATIC_POOL
        addresses are no longer in flight here."""
        self._release([(nic.backing, to_int(nic.ip)) for spec in specs for nic in spec.nics
                       if nic.address_mode is AddressMode.STATIC_POOL and nic.ip])
        async with self._decided:
            self._decided.notify_all()

    async def preview(self, specs: Sequence[VmSpec], subnets: Mapping[str, Subnet]) -> list[StoreError | None]:
        """What creating ``specs`` in order would meet now for their addresses, read
        without writing (validate_only, PlanVms): per spec None, AddressInUse (a STATIC
        address is taken on its backing, or an earlier spec's) or PoolExhausted (its
        pool has fewer free addresses than it and the specs before it that fit ask
        for). One round trip: a count per pool (keys in its range but the gateway) and
        a read per STATIC address. Two pools that overlap on one backing are counted
        apart (advice, not a claim: the create's compare decides)."""
        pools = list(dict.fromkeys(Pool.of(nic.backing, subnets[nic.network_uid]) for spec in specs
                                   for nic in spec.nics if nic.address_mode is AddressMode.STATIC_POOL))
        statics = list(dict.fromkeys((nic.backing, to_int(nic.ip)) for spec in specs for nic in spec.nics
                                     if nic.address_mode is AddressMode.STATIC))
        k = self._keys
        ranges = [pool.key_ranges(k) for pool in pools]
        reads = [ops.get(start, end, count_only=True) for parts in ranges for start, end in parts]
        reads += [ops.get(k.address_at(backing, value), keys_only=True) for backing, value in statics]
        responses = await self._etcd.txn_chunked(reads) if reads else []
        free: dict[Pool, int] = {}
        at = 0
        for pool, parts in zip(pools, ranges, strict=True):
            n = len(parts)
            free[pool] = pool.size - sum(r.response_range.count for r in responses[at:at + n])
            at += n
        taken = {s for s, r in zip(statics, responses[at:], strict=True) if r.response_range.kvs}
        out: list[StoreError | None] = []
        for spec in specs:
            error: StoreError | None = None
            claimed: list[tuple[str, int]] = []
            wants: dict[Pool, int] = {}
            for nic in spec.nics:
                if nic.address_mode is AddressMode.STATIC:
                    key = (nic.backing, to_int(nic.ip))
                    if key in taken:
                        error = error or AddressInUse(nic.network, nic.ip)
                    claimed.append(key)
                elif nic.address_mode is AddressMode.STATIC_POOL:
                    pool = Pool.of(nic.backing, subnets[nic.network_uid])
                    wants[pool] = wants.get(pool, 0) + 1
                    if free[pool] < wants[pool]:
                        error = error or PoolExhausted(nic.network)
            if error is None:
                for backing, value in claimed:
                    taken.add((backing, value))
                    for pool in free:  # a STATIC address inside a pool's range is one it cannot give
                        if pool.backing == backing and pool.lo <= value <= pool.hi and value != pool.gateway:
                            free[pool] -= 1
                for pool, n in wants.items():
                    free[pool] -= n
            out.append(error)
        return out

    def _release(self, held: Iterable[tuple[str, int]]) -> None:
        for backing, value in held:
            pending = self._inflight.get(backing)
            if pending is not None:
                pending.discard(value)
                if not pending:
                    del self._inflight[backing]
