"""PlanVms: where a set of VMs would be placed now, and optionally a hold on that room.

The frontend places with the scheduler's own pure code (``controlplane.placement``):
it reads the fleet once per call (``FleetStore.read``: hosts, zone group counts and
live holds at one revision; the room of live holds counts as taken, as the scheduler
counts it), turns it into the same ``HostSnapshot``s (``fleet.snapshot_of``) and
places every VM together with ``place_set``, as an ALL_OR_NOTHING set is placed
(anti-affinity among members holds). The scorer is the scheduler's default (spread,
image locality 0.5): a scheduler run with another policy may choose other hosts,
which a held plan does not affect (its room is on the planned hosts).

Without a hold nothing is written (and no audit record filed). With one, and only
when the set fits (quota and hosts), the room is held in ONE txn (``plans.hold_txn``)
under a lease of the hold's length; a lost race (a planned host's allocation or a
relied-on zone count changed since the read) re-reads and plans again, at most
``HOLD_ATTEMPTS`` times, then answers fits False saying so. The audit record of a
held plan (resource: the plan's name) is written in the hold's txn.

A hold with a request_id is idempotent: its plan id is derived from the project and
the request_id (:func:`plan_id`), so the hold txn's ``absent(holds/{plan})`` compare
makes a second hold impossible. A retry finds the first attempt's hold live among the
fleet's plans (it reads them anyway) and answers from it, writing nothing: the same
plan name and expire_time, its hosts; with other VMs it is refused REQUEST_ID_REUSED.
Once the hold has ended (used by a create, or expired) the request_id holds again.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from controlplane.api import errors
from controlplane.api.access import audit_draft
from controlplane.api.convert import usage_to_proto
from controlplane.gen.quanta.v1 import vm_pb2
from controlplane.models import HeldRoom, Hold, PlannedVm, VmSpec, now_ns
from controlplane.placement import SetPlacement, member_of, place_set, policy
from controlplane.store.errors import NotFound
from controlplane.store.fleet import Fleet, FleetStore
from controlplane.store.ledger import ProjectDeleting, refuse
from controlplane.store.plans import HeldHost, HoldStore, held_room
from controlplane.store.vms import VmStore
from controlplane.store.zones import ZoneCount, ZoneGroupId
from controlplane.tenancy import Usage

log = logging.getLogger(__name__)

#: How often a hold that lost a race to another writer is planned again.
HOLD_ATTEMPTS = 3
#: The scheduler's default scorer (SchedulerConfig: spread, image locality 0.5).
SCORER = policy("spread", image_locality_weight=0.5)
#: How old the fleet validate_only places on may be (seconds).
RECENT_S = 1.0


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a planned VM could not be created whatever the hosts: the ErrorInfo reason
    its create would carry (e.g. ADDRESS_POOL_EXHAUSTED) and a message for people."""

    reason: str
    message: str


class Planner:
    def __init__(self, store: VmStore):
        self._store = store
        self._fleet = FleetStore(store.client, store.keys)
        self._holds = HoldStore(store.client, store.keys)
        self._rng = random.Random()
        self._recent: tuple[float, Fleet] | None = None  # validate_only's fleet, read at (monotonic)

    async def place(self, specs: Sequence[VmSpec], *, fleet: Fleet | None = None) -> tuple[Fleet, SetPlacement[int]]:
        """``specs`` placed together on ``fleet`` (default: the fleet as it is now; keys:
        their indexes); nothing assumed stays anywhere (the view is this call's own)."""
        fleet = fleet or await self._fleet.read()
        view, counts = fleet.view()
        members = [member_of(i, spec, counts) for i, spec in enumerate(specs)]
        return fleet, place_set(members, view, counts, rng=self._rng, scorer=SCORER)

    async def _recent_fleet(self) -> Fleet:
        """The fleet as read at most RECENT_S ago: validate_only's hosts are advice, and a
        create with validate_only must not cost a read of every host each time."""
        now = time.monotonic()
        if self._recent is None or now - self._recent[0] > RECENT_S:
            self._recent = (now, await self._fleet.read())
        return self._recent[1]

    async def hosts(self, specs: Sequence[VmSpec]) -> list[str]:
        """Per spec, the host it would be placed on now with the specs before it
        placed ("": none fits): validate_only's answer, on a fleet read at most
        RECENT_S ago. Writes nothing."""
        _fleet, placement = await self.place(specs, fleet=await self._recent_fleet())
        hosts = [""] * len(specs)
        for i, host, _zone in placement.hosts or placement.partial:
            hosts[i] = host
        return hosts

    async def plan(self, parent: str, specs: Sequence[VmSpec], hold_s: int, *,
                   request_id: str = "", refusals: Sequence[Refusal | None] = ()) -> vm_pb2.PlanVmsResponse:
        """The answer to PlanVms for valid ``specs`` of project ``parent`` (ids unique),
        holding the room for ``hold_s`` seconds (0: none) when the set fits.
        ``refusals``: per spec, why it could not be created whatever the hosts (its
        addresses: ``AddressPicker.preview``), or None; any makes the set not fit.
        ``request_id`` (with a hold only): a retry returns the live hold the first
        attempt made (see the module docstring). Raises ApiError: NOT_FOUND (no such
        project), ALREADY_EXISTS (a VM id is taken; REQUEST_ID_REUSED: the
        request_id's live hold is for other VMs), FAILED_PRECONDITION PROJECT_DELETING."""
        tenant, project = specs[0].ref.tenant, specs[0].ref.project
        plan = plan_id(tenant, project, request_id) if hold_s and request_id else ""
        total = sum((Usage.of_vm(spec.resources) for spec in specs), Usage())
        for attempt in range(1, HOLD_ATTEMPTS + 1):
            try:
                (record, usage, _), taken, fleet = await asyncio.gather(
                    self._store.ledger.usage(tenant, project), self._store.names_taken([s.ref for s in specs]),
                    self._fleet.read())
            except NotFound as err:
                raise errors.not_found("project", parent) from err
            for spec, present in zip(specs, taken, strict=True):
                if present:
                    raise errors.already_exists("vm", spec.ref.name)
            # The project's live holds count against its quota here, so that plans cannot
            # hold more of the fleet than the project may use (a create from a plan then
            # charges its VMs as any create, and its hold ends).
            holding = sum((Usage.of_vm(vm.resources) for h in fleet.plans.values()
                           if (h.tenant, h.project) == (tenant, project) for vm in h.vms), Usage())
            refusal = refuse(record, parent, usage + holding, total)
            if isinstance(refusal, ProjectDeleting):
                raise errors.failed_precondition(str(refusal), "PROJECT_DELETING", metadata={"project": parent})
            if plan and (held := fleet.plans.get(plan)) is not None:
                _writes_nothing()  # the first attempt held it (and filed its audit record)
                return _held_answer(specs, held, request_id, headroom=record.quota.headroom(usage + holding))
            fleet, placement = await self.place(specs, fleet=fleet)
            answer = _answer(specs, placement, quota_ok=refusal is None,
                             headroom=record.quota.headroom(usage + holding + total), refusals=refusals)
            if not hold_s or not answer.fits:
                _writes_nothing()
                return answer
            held = await self._hold(specs, fleet, placement, hold_s, plan=plan)
            if held is not None:
                answer.plan = held.name
                answer.expire_time.CopyFrom(_timestamp(held.expire_ns))
                return answer
            log.info("a plan's hold lost a race; planning again", extra={"project": parent, "attempt": attempt})
        _writes_nothing()
        answer.fits = False
        for p in answer.placements:
            p.message = (f"the planned hosts changed {HOLD_ATTEMPTS} times while holding their room; "
                         "plan again")
        return answer

    async def _hold(self, specs: Sequence[VmSpec], fleet: Fleet, placement: SetPlacement[int],
                    hold_s: int, *, plan: str = "") -> Hold | None:
        """Hold the room ``placement`` found (it fits) for ``hold_s`` s as plan ``plan``
        (default: a random id); None when the fleet changed since ``fleet`` was read or
        the plan's key exists (nothing written)."""
        spec0 = specs[0]
        plan = plan or f"plan-{uuid.uuid4().hex[:16]}"
        rooms: dict[str, list[HeldRoom]] = defaultdict(list)
        zone_counts: dict[ZoneGroupId, ZoneCount] = {}
        vms = []
        for i, host, zone in placement.hosts:
            spec = specs[i]
            group = spec.host_group
            rooms[host].append(HeldRoom(spec.resources, 1, {group: 1} if group else {}))
            vms.append(PlannedVm(spec.ref.vm_id, host, spec.flavor, spec.resources))
            for g in (spec.zone_group, spec.zone_affinity_group):
                if zone and g:
                    zone_counts[(zone, g)] = fleet.zones.get((zone, g), ZoneCount())
        hosts = [HeldHost(host, fleet.hosts[host].allocation, fleet.hosts[host].alloc_revision, held_room(room))
                 for host, room in rooms.items()]
        hold = Hold(spec0.ref.tenant, spec0.ref.project, plan, tuple(vms), now_ns() + hold_s * 1_000_000_000)
        draft = audit_draft()
        result = await self._holds.hold(hold, hosts, ttl_s=hold_s, live=fleet.plans, zone_counts=zone_counts,
                                        also=await draft.writes(hold.name) if draft else ())
        if not result.committed:
            return None
        if draft:
            draft.committed()
        log.info("plan held", extra={"plan": hold.name, "vms": len(vms), "hosts": len(hosts), "hold_s": hold_s,
                                     "revision": result.revision})
        return hold


def plan_id(tenant: str, project: str, request_id: str) -> str:
    """The plan id a hold with ``request_id`` takes in project ``tenant/project``: the
    same for every retry, so only one hold can exist under it at a time."""
    digest = hashlib.sha256(f"{tenant}/{project}/{request_id}".encode()).hexdigest()
    return f"plan-{digest[:16]}"


def _held_answer(specs: Sequence[VmSpec], held: Hold, request_id: str, *,
                 headroom: Usage) -> vm_pb2.PlanVmsResponse:
    """The answer of a retried hold: the live ``held`` (what its first attempt
    answered: each VM's planned host, the plan and its expire_time; ``headroom`` counts
    the hold already). Raises ALREADY_EXISTS REQUEST_ID_REUSED when ``held`` was made
    for other VMs (ids, flavors or sizes) or in another project."""
    planned = {vm.vm_id: vm for vm in held.vms}
    ref = specs[0].ref
    if ((held.tenant, held.project) != (ref.tenant, ref.project) or set(planned) != {s.ref.vm_id for s in specs}
            or any((planned[s.ref.vm_id].flavor, planned[s.ref.vm_id].resources) != (s.flavor, s.resources)
                   for s in specs)):
        raise errors.ApiError(
            grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED",
            f"request_id {request_id!r} already holds a plan for other VMs; use a new request_id for another plan",
            metadata={"request_id": request_id})
    placements = [vm_pb2.VmPlacement(vm=s.ref.name, host=f"hosts/{planned[s.ref.vm_id].host}") for s in specs]
    answer = vm_pb2.PlanVmsResponse(placements=placements, fits=True, quota_headroom=usage_to_proto(headroom),
                                    plan=held.name)
    answer.expire_time.CopyFrom(_timestamp(held.expire_ns))
    return answer


def _answer(specs: Sequence[VmSpec], placement: SetPlacement[int], *, quota_ok: bool,
            headroom: Usage, refusals: Sequence[Refusal | None] = ()) -> vm_pb2.PlanVmsResponse:
    placements = [vm_pb2.VmPlacement(vm=spec.ref.name) for spec in specs]
    for i, host, _zone in placement.hosts or placement.partial:
        placements[i].host = f"hosts/{host}"
    for i, missed in placement.missing:
        placements[i].filtered.update(missed.filtered)
        placements[i].message = missed.message()
    for p, refused in zip(placements, refusals, strict=False):
        if refused is not None:
            p.reason, p.message = refused.reason, refused.message
    return vm_pb2.PlanVmsResponse(placements=placements,
                                  fits=quota_ok and placement.fits and not any(refusals),
                                  quota_headroom=usage_to_proto(headroom))


def _writes_nothing() -> None:
    """The call wrote nothing (no hold asked, or none made): no audit record either."""
    draft = audit_draft()
    if draft:
        draft.dry_run()


def _timestamp(ns: int) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(ns)
    return ts


