"""Store outcomes that callers map to API errors (controlplane.api.service_errors)."""


class StoreError(Exception):
    pass


class NotFound(StoreError):
    pass


class AlreadyExists(StoreError):
    pass


class RequestReplayed(AlreadyExists):
    """A create's request_id already made a VM that is not this one any more
    (deleted, or replaced under its name): a retry must not make a second."""

    def __init__(self, request_id: str, made: str):
        super().__init__(f"request_id {request_id!r} already created {made}, which no longer exists; "
                         "use a new request_id to create another VM")
        self.made = made


class RequestMismatch(AlreadyExists):
    """A create's request_id was used before by a create that asked for something
    else (another VM id, flavor, image, labels or placement): not a retry."""

    def __init__(self, request_id: str, made: str):
        super().__init__(f"request_id {request_id!r} was used by another create (of {made}) with different "
                         "parameters; a retry must repeat the first request, a new request needs a new request_id")
        self.made = made


class Conflict(StoreError):
    """A compare-and-swap kept failing, or an etag did not match (:class:`EtagMismatch`)."""


class EtagMismatch(Conflict):
    """The etag the caller gave is not the resource's: it changed since the caller read it."""


class PlanEnded(StoreError):
    """The plan whose held room a set was to be bound to has no hold any more (its
    lease ended, or another set consumed it)."""


class HostAlive(StoreError):
    """The host's agent still heartbeats: it cannot be forgotten."""

    def __init__(self, host: str):
        super().__init__(f"host {host} is registered (its agent heartbeats); stop the agent first")


class HostNotEmpty(StoreError):
    """VMs are still bound to the host."""

    def __init__(self, host: str, vms: int):
        super().__init__(f"host {host} holds {vms} VM{'' if vms == 1 else 's'}; drain it, or let the scheduler "
                         "declare it dead")


class HostFull(StoreError):
    """A bound VM's resize would book more of its host than the host's allocatable in
    ``dimensions`` (those it grows: ``vcpus``, ``memory_mib``, ``disk_gib``).
    ``registered`` False: the host has no registration (its agent is not heartbeating),
    so no growth can be checked against it and none is taken. ``held``: room plans
    hold on the host was counted as taken (the message says so)."""

    def __init__(self, host: str, dimensions: list[str], *, registered: bool = True, held: bool = False):
        why = (f"would exceed its allocatable {', '.join(dimensions)}" if registered
               else "is not registered (its agent is not heartbeating), so it takes no growth")
        if registered and held:
            why += " (counting the room plans hold on it as taken)"
        super().__init__(f"host {host} has no room for the resize: it {why}")
        self.host = host
        self.dimensions = dimensions
        self.registered = registered
