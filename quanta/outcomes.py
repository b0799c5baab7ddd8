"""What a CreateVms call answered, read once for both clients and the CLI.

:class:`CreatedVms` holds one :class:`VmOutcome` per VM asked for, in the order
asked, and the set (ALL_OR_NOTHING). Pure: built from the response message.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import grpc

from controlplane.gen.quanta.v1 import vm_pb2
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
