"""What a CreateVms or PlanVms call answered, read once for both clients and the CLI.

:class:`CreatedVms` holds one :class:`VmOutcome` per VM asked for, in the order
asked, and the set (ALL_OR_NOTHING); :class:`PlannedVms` one :class:`VmPlacement`
per VM planned, whether the set fits, the quota headroom and the held plan. Pure:
built from the response message.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import grpc

from controlplane.gen.quanta.v1 import tenancy_pb2, vm_pb2
from quanta.errors import QuantaError, error_class

#: google.rpc.Code numbers → grpc.StatusCode (a result carries the number).
_CODES = {code.value[0]: code for code in grpc.StatusCode}


def status_code(number: int) -> grpc.StatusCode:
    """The grpc.StatusCode of a google.rpc.Code number (UNKNOWN for one it does not know)."""
    return _CODES.get(number, grpc.StatusCode.UNKNOWN)


@dataclass(frozen=True, slots=True)
class VmOutcome:
    """One VM of a CreateVms call: ``name`` (as asked; "" when the server was to
    assign the id and refused it), ``vm`` (the VM made, PENDING; or, for a retry, the
    one the first attempt made; None when refused), and for a refusal ``code``,
    ``reason`` (the ErrorInfo reason CreateVm would carry, e.g. QUOTA_EXCEEDED) and
    ``message``."""

    name: str
    vm: vm_pb2.Vm | None
    code: grpc.StatusCode = grpc.StatusCode.OK
    reason: str = ""
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.code is grpc.StatusCode.OK

    def error(self) -> QuantaError | None:
        """The typed exception CreateVm would have raised for this VM (None if it was made);
        its metadata ``vm`` names the VM."""
        if self.ok:
            return None
        message = f"{self.name.rsplit('/', 1)[-1] or 'a VM'}: {self.message}" if self.message else self.name
        return error_class(self.code, self.reason)(self.code, self.reason, message, metadata={"vm": self.name})


@dataclass(frozen=True, slots=True)
class CreatedVms:
    """The answer of ``create_vms``: ``outcomes`` (one per VM, in the order asked),
    ``set`` (the VmSet the VMs form, ALL_OR_NOTHING; None otherwise) and
    ``response`` (the CreateVmsResponse as received)."""

    outcomes: tuple[VmOutcome, ...]
    set: vm_pb2.VmSet | None
    response: vm_pb2.CreateVmsResponse

    @classmethod
    def of(cls, response: vm_pb2.CreateVmsResponse, names: Sequence[str], *,
           raise_refusal: bool = False) -> CreatedVms:
        """Read ``response`` to a CreateVms of the VMs ``names`` (full names, "" for
        an id the server assigns). ``raise_refusal`` (ALL_OR_NOTHING): a refused VM
        refuses the set, so raise its typed error."""
        outcomes = []
        for index, result in enumerate(response.results):
            vm = result.vm if result.HasField("vm") and result.code == 0 else None
            name = vm.name if vm is not None else (names[index] if index < len(names) else "")
            outcomes.append(VmOutcome(name, vm, status_code(result.code), result.reason, result.message))
        created = cls(tuple(outcomes), response.set if response.HasField("set") else None, response)
        if raise_refusal:
            created.raise_for_refusals()
        return created

    @property
    def ok(self) -> bool:
        """Whether every VM asked for was made (or, validate_only, would be)."""
        return all(o.ok for o in self.outcomes)

    @property
    def vms(self) -> list[vm_pb2.Vm]:
        """The VMs made, in the order asked."""
        return [o.vm for o in self.outcomes if o.vm is not None]

    @property
    def refused(self) -> list[VmOutcome]:
        return [o for o in self.outcomes if not o.ok]

    @property
    def names(self) -> list[str]:
        """The names of the VMs made."""
        return [vm.name for vm in self.vms]

    def raise_for_refusals(self) -> None:
        """Raise the typed error of the first refused VM (the others are in ``refused``)."""
        for outcome in self.outcomes:
            if (err := outcome.error()) is not None:
                raise err

    def __len__(self) -> int:
        return len(self.outcomes)


#: The quota dimensions a headroom has, in the order shown.
DIMENSIONS = ("vms", "vcpus", "memory_mib", "disk_gib")
#: What the API sends for a dimension without a limit (int64's largest).
UNLIMITED = 2**63 - 1


def headroom(usage: tenancy_pb2.ResourceUsage) -> Mapping[str, int | None]:
    """A PlanVmsResponse's quota_headroom: dimension → what is left once the set is
    made (negative: short by that much), None where there is no limit."""
    return MappingProxyType({d: None if getattr(usage, d) == UNLIMITED else getattr(usage, d) for d in DIMENSIONS})


@dataclass(frozen=True, slots=True)
class VmPlacement:
    """One VM of a plan: ``name`` (its full name), ``host`` (the host's id, as
    ``Vm.host`` names it, e.g. ``sim-00003``; "" when it fits nowhere with the others
    placed), and when it fits nowhere ``filtered`` (filter → hosts it removed, e.g.
    ``{"ZoneAntiAffinity": 6}``) and ``message`` (why, for people)."""

    name: str
    host: str
    filtered: Mapping[str, int]
    message: str = ""

    @property
    def placed(self) -> bool:
        return bool(self.host)


@dataclass(frozen=True, slots=True)
class PlannedVms:
    """The answer of ``plan_vms``: ``placements`` (one per VM, in the order asked),
    ``fits`` (every VM at once, quota and hosts), ``quota_headroom`` (see
    :func:`headroom`), and for a hold that was made ``plan`` (its full name, what
    ``create_vms(plan=...)`` takes) and ``expire_time`` (when the hold ends, UTC);
    ``response``: the PlanVmsResponse as received. A plan that fits may still show a
    VM placed where another placement then takes the room, unless it was held."""

    placements: tuple[VmPlacement, ...]
    fits: bool
    quota_headroom: Mapping[str, int | None]
    plan: str
    expire_time: datetime.datetime | None
    response: vm_pb2.PlanVmsResponse

    @classmethod
    def of(cls, response: vm_pb2.PlanVmsResponse) -> PlannedVms:
        placements = tuple(VmPlacement(p.vm, p.host.removeprefix("hosts/"), MappingProxyType(dict(p.filtered)),
                                       p.message) for p in response.placements)
        expire = (response.expire_time.ToDatetime(tzinfo=datetime.UTC)
                  if response.plan and response.HasField("expire_time") else None)
        return cls(placements, response.fits, headroom(response.quota_headroom), response.plan, expire, response)

    @property
    def held(self) -> bool:
        """Whether its room is held (a plan was made)."""
        return bool(self.plan)

    @property
    def hosts(self) -> dict[str, str]:
        """VM name → host id, for the VMs placed."""
        return {p.name: p.host for p in self.placements if p.host}

    @property
    def unplaced(self) -> list[VmPlacement]:
        """The VMs that fit nowhere (with the others placed)."""
        return [p for p in self.placements if not p.host]

    @property
    def quota_short(self) -> dict[str, int]:
        """The dimensions the set would exceed the quota in, and by how much."""
        return {d: -v for d, v in self.quota_headroom.items() if v is not None and v < 0}

    def __len__(self) -> int:
        return len(self.placements)
