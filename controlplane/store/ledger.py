"""Quota charging: every change to a project's VMs moves its usage in the same etcd
transaction, checked against the project's limits.

A project's usage is the sum of a few stripe keys (``usage/{t}/{p}/{stripe}``); each
ledger (frontend) writes one stripe of its own, chosen at random at start.

- A project with limits: every commit compares that no stripe changed since the
  usage it read (one range compare) and the project's revision, so the sum it checked
  against the limits is the sum it changes. Concurrent frontends then conflict like
  on one key, and lose a round trip when they meet (the failure branch reads the
  stripes again).
- A project without limits (e.g. ``default``): nothing to check the sum against, so a
  commit compares only its own stripe and the project's revision; frontends with
  different stripes never conflict.

Per-request compare-and-swap on a hot key would let only one of N concurrent creates
win each round, so the ledger also group-commits: per project, the charges that
arrive while a transaction is in flight go together in the next one (one set of
compares, one put of the stripe, plus each charge's own compares and writes). Charges
are admitted in arrival order; one that would exceed a limit is refused without
holding up the rest, so 50 concurrent creates against a limit of 10 make exactly 10
VMs, whatever the number of frontends. A refusal is final only once the charges
counted before it are known to commit: when some fail their own compares (e.g. a
create of a taken name), the refusals are decided again without them. A project
marked as being deleted (its record's ``delete_time_ns``) takes no growth at all.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc
from prometheus_client import Counter, Histogram

from controlplane.etcd import EtcdClient, EtcdError, KeyValue, ops, prefix_end
from controlplane.etcd.client import TxnResult, caller_deadline
from controlplane.store.errors import Conflict, NotFound, StoreError
from controlplane.store.keys import Keys
from controlplane.tenancy import Limits, Project, Usage

log = logging.getLogger(__name__)

_MAX_ROUNDS = 32
USAGE_STRIPES = 8
#: Bytes of a group commit's request besides its charges: the project's and the
#: stripes' compares and reads, the stripe's put, gRPC framing; generous.
_OWN_BYTES = 16 * 1024

QUOTA_BATCH_SIZE = Histogram(
    "quanta_quota_commit_batch_size", "Charges (VM creates/deletes) per quota group-commit transaction.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024))
QUOTA_CONFLICTS = Counter(
    "quanta_quota_commit_conflicts_total",
    "Quota group commits retried because the project's usage or limits changed under them "
    "(another frontend's commit, or a limit update).")
QUOTA_REFUSALS = Counter("quanta_quota_exceeded_total", "Charges refused because they would exceed a quota.")


class QuotaExceeded(StoreError):
    """``usage``: what the project would use with the refused change."""

    def __init__(self, project: str, dimensions: list[str], limits: Limits, usage: Usage):
        shown = ", ".join(f"{d} would be {getattr(usage, d)} (limit {getattr(limits, d)})" for d in dimensions)
        super().__init__(f"quota of {project} exceeded: {shown}")
        self.dimensions = dimensions
        self.limits = limits
        self.usage = usage


class ProjectDeleting(StoreError):
    """The project is being deleted: it takes no growth (no new VMs)."""

    def __init__(self, project: str):
        super().__init__(f"{project} is being deleted; it takes no new VMs")
        self.project = project


class GuardFailed(StoreError):
    """A charge's own compares did not hold; ``kvs`` are what its failure reads returned
    (one list per read, in order)."""

    def __init__(self, kvs: list[list[KeyValue]]):
        super().__init__("the change's preconditions did not hold")
        self.kvs = kvs


@dataclass(slots=True)
class Charge:
    """One change of a project's VMs: its usage ``delta``, the ``compares`` that must
    hold for it, the ``writes`` that make it and the ``reads`` that explain a failed
    compare (returned in GuardFailed). ``exclusive``: names (e.g. the VM's key prefix,
    its request key) that no other charge in the same transaction may touch, since
    etcd refuses a txn that writes one key twice."""

    delta: Usage
    compares: list = field(default_factory=list)
    writes: list = field(default_factory=list)
    reads: list = field(default_factory=list)
    exclusive: tuple[bytes, ...] = ()
    size: int = -1  # bytes of its compares and writes on the wire (-1: not measured yet)

    def measured(self) -> int:
        """Bytes its compares and writes take in a transaction (measured once)."""
        if self.size < 0:
            self.size = sum(op.ByteSize() for op in self.writes) + sum(c.ByteSize() for c in self.compares)
        return self.size


@dataclass(slots=True)
class _State:
    """A project's keys as last known: its record and, per stripe, (usage, mod revision).
    ``complete_at``: every stripe is known as of this revision (0: only our own is)."""

    project: Project | None
    project_revision: int
    stripes: dict[int, tuple[Usage, int]]
    complete_at: int

    @property
    def total(self) -> Usage:
        return sum((usage for usage, _revision in self.stripes.values()), Usage())


def stripes_from(kvs: list[KeyValue]) -> dict[int, tuple[Usage, int]]:
    """Usage stripes by number, from a range over a project's usage prefix."""
    return {int(kv.key.rsplit(b"/", 1)[1]): (Usage.from_bytes(kv.value), kv.mod_revision) for kv in kvs}


@dataclass(slots=True)
class _Lane:
    pending: list[tuple[Charge, asyncio.Future]] = field(default_factory=list)
    draining: bool = False


def _heard(future: asyncio.Future) -> None:
    """Retrieve ``future``'s outcome (its caller, if still there, hears it too). A
    failure that is not a store's or etcd's answer (a defect) is logged here, since
    its caller may be gone."""
    if future.cancelled():
        return
    error = future.exception()
    if error is not None and not isinstance(error, (StoreError, EtcdError)):
        log.error("quota ledger batch failed unexpectedly", exc_info=error)


def _fail(future: asyncio.Future, error: BaseException) -> None:
    if not future.done():  # its caller may have gone (cancelled)
        future.set_exception(error)


def _refuse(refused: list[tuple[asyncio.Future, StoreError]]) -> None:
    QUOTA_REFUSALS.inc(sum(isinstance(error, QuotaExceeded) for _future, error in refused))
    for future, error in refused:
        _fail(future, error)


def _succeed(future: asyncio.Future, revision: int) -> None:
    if not future.done():
        future.set_result(revision)


def refuse(project: Project, name: str, usage: Usage, delta: Usage) -> StoreError | None:
    """Why ``delta`` may not be applied to a project using ``usage`` (ProjectDeleting:
    a growth of a project being deleted; QuotaExceeded: a growth over a limit), or
    None. Only growth is ever refused. Pure: the one rule the ledger's commits and
    validate-only checks (:meth:`UsageLedger.check`) share."""
    if not delta.grows:
        return None
    if project.deleting:
        return ProjectDeleting(name)
    after = usage + delta
    over = project.quota.exceeded(after)
    return QuotaExceeded(name, over, project.quota, after) if over else None


def _txn(compares: list, writes: list, reads: list, charges: list[Charge]) -> tuple[list, list, list]:
    """The group commit's txn: the ledger's own ``compares``, ``writes`` (its stripe)
    and ``reads`` (the state its failure branch re-reads), then each charge's
    compares and writes, and per charge a nested txn in the failure branch that tells
    whether its own compares held (and reads what explains it)."""
    for charge in charges:
        compares.extend(charge.compares)
        writes.extend(charge.writes)
        reads.append(ops.txn(list(charge.compares), [], list(charge.reads)))
    return compares, writes, reads


def _frame() -> tuple[list, list, list]:
    """The ledger's own part of a commit, as :meth:`UsageLedger._commit` builds it
    (values aside), to measure op costs with."""
    keys = Keys("/")
    prefix = keys.usage_prefix("t", "p")
    return ([ops.mod_revision_is(keys.project("t", "p"), 0), ops.mod_revision_is(prefix, 0)],
            [ops.put(keys.usage("t", "p", 0), b"")],
            [ops.get(keys.project("t", "p")), ops.get(prefix, prefix_end(prefix))])


_FRAME = tuple(len(part) for part in _frame())  # the ledger's own (compares, writes, reads)


def txn_ops(charge: Charge) -> int:
    """What a commit of ``charge`` alone counts against etcd's --max-txn-ops (the
    ledger's own compares, write and reads included): a charge above the limit can
    never be applied. Measured on the ops the commit builds."""
    compares, writes, reads = _txn(*_frame(), [charge])
    nested = max(len(charge.compares), len(charge.reads))
    return max(len(compares), len(writes), len(reads)) + nested


class UsageLedger:
    """Applies charges to project usage with group commit (see the module docstring).
    One per process; safe for any number of processes at once."""

    def __init__(self, client: EtcdClient, keys: Keys, *, stripe: int | None = None):
        self._etcd = client
        self._keys = keys
        self.stripe = random.randrange(USAGE_STRIPES) if stripe is None else stripe
        self._lanes: dict[tuple[str, str], _Lane] = {}
        self._drains: set[asyncio.Task] = set()  # held: the loop keeps only weak references
        # What each project's keys held after our last txn: a stale entry only costs
        # one failed compare (whose failure branch reads them again).
        self._states: dict[tuple[str, str], _State] = {}

    async def apply(self, tenant: str, project: str, charge: Charge) -> int:
        """Apply ``charge`` atomically with the usage change; returns the revision.

        Raises NotFound (no such project), QuotaExceeded (a growth over a limit:
        nothing written), ProjectDeleting (a growth of a project being deleted:
        nothing written; every commit compares the project's record, so a
        deletion that began before the commit is always seen), GuardFailed (the charge's compares failed: nothing
        written) or Conflict (the usage key kept changing under it)."""
        lane = self._lanes.setdefault((tenant, project), _Lane())
        future = asyncio.get_running_loop().create_future()
        # The batch's outcome may reach nobody: the caller gone (its call cancelled, or
        # past its deadline) by the time the txn ends. Heard here, it is not reported
        # as an error "never retrieved" (thousands of them when etcd was slow).
        future.add_done_callback(_heard)
        lane.pending.append((charge, future))
        if not lane.draining:
            lane.draining = True
            task = asyncio.get_running_loop().create_task(self._drain(tenant, project, lane))
            self._drains.add(task)
            task.add_done_callback(self._drains.discard)
        deadline = caller_deadline()
        if deadline is None:
            return await future
        # The batch may commit for others after our caller gave up (e.g. etcd without
        # quorum): the caller hears "unknown outcome" in time, as from its own txn.
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                return await asyncio.shield(future)
        except TimeoutError:
            raise EtcdError("quota ledger: the caller's deadline passed waiting for the batch's txn",
                            grpc.StatusCode.DEADLINE_EXCEEDED) from None

    async def usage(self, tenant: str, project: str, reads: Sequence = ()) -> tuple[Project, Usage, list]:
        """The project and its usage now, read in one round trip with ``reads`` (their
        kvs returned, one list per read): what a validate-only call checks against
        (:func:`refuse`). Writes nothing. Raises NotFound (no such project)."""
        result = await self._etcd.txn([], [*self._state_reads(tenant, project), *reads])
        state = self._state_from(result, 0)
        if state.project is None:
            raise NotFound(f"tenants/{tenant}/projects/{project}")
        return state.project, state.total, [result.kvs(2 + i) for i in range(len(reads))]

    async def _drain(self, tenant: str, project: str, lane: _Lane) -> None:
        try:
            while lane.pending:
                batch, lane.pending = self._take(lane.pending)
                try:
                    await self._commit(tenant, project, batch)
                except BaseException as err:  # noqa: BLE001 - every waiter must hear of it
                    self._states.pop((tenant, project), None)
                    for _charge, future in batch:
                        _fail(future, err if isinstance(err, Exception) else Conflict("cancelled"))
                    if not isinstance(err, Exception):
                        raise
        finally:
            lane.draining = False
            if not lane.pending and self._lanes.get((tenant, project)) is lane:
                del self._lanes[(tenant, project)]

    def _take(self, pending: list) -> tuple[list, list]:
        """As many charges as fit one transaction under etcd's --max-txn-ops (measured by
        :func:`txn_ops`) and --max-request-bytes (bootstrap data makes a create up to
        ~80 KiB), in arrival order, leaving for later those that touch a name already
        taken. The first always goes (a charge too large alone is refused by etcd)."""
        limit = self._etcd.max_txn_ops
        # Room for the ledger's own compares and reads and the request's framing.
        byte_budget = self._etcd.max_request_bytes - _OWN_BYTES
        compares, writes, reads = _FRAME
        nested = 0  # etcd counts a parent's ops and its largest nested txn's together
        size = 0
        taken: set[bytes] = set()
        batch: list = []
        later: list = []
        for item in pending:
            charge = item[0]
            c, w = compares + len(charge.compares), writes + len(charge.writes)
            n = max(nested, len(charge.compares), len(charge.reads))
            if taken.intersection(charge.exclusive) or (batch and (
                    max(c, w, reads + 1) + n > limit or size + charge.measured() > byte_budget)):
                later.append(item)
                continue
            compares, writes, reads, nested = c, w, reads + 1, n
            size += charge.measured()
            taken.update(charge.exclusive)
            batch.append(item)
        return batch, later

    def _state_reads(self, tenant: str, project: str) -> list:
        prefix = self._keys.usage_prefix(tenant, project)
        return [ops.get(self._keys.project(tenant, project)), ops.get(prefix, prefix_end(prefix))]

    async def _read_state(self, tenant: str, project: str) -> _State:
        return self._state_from(await self._etcd.txn([], self._state_reads(tenant, project)), 0)

    @staticmethod
    def _state_from(result: TxnResult, first: int) -> _State:
        project_kvs, usage_kvs = result.kvs(first), result.kvs(first + 1)
        project = Project.from_bytes(project_kvs[0].value) if project_kvs else None
        return _State(project, project_kvs[0].mod_revision if project_kvs else 0, stripes_from(usage_kvs),
                      result.revision)

    def _remember(self, tenant: str, project: str, state: _State) -> None:
        if len(self._states) >= 10_000:
            self._states.clear()
        self._states[(tenant, project)] = state

    async def _commit(self, tenant: str, project: str, batch: list) -> None:
        k = self._keys
        project_key = k.project(tenant, project)
        prefix = k.usage_prefix(tenant, project)
        mine = k.usage(tenant, project, self.stripe)
        name = f"tenants/{tenant}/projects/{project}"
        fresh = False  # refusals and NotFound are only ever decided on a state read just now
        for _round in range(_MAX_ROUNDS):
            state = self._states.get((tenant, project))
            if state is None:
                state, fresh = await self._read_state(tenant, project), True
                self._remember(tenant, project, state)
            if state.project is None:
                self._states.pop((tenant, project), None)
                if not fresh:
                    continue
                for _charge, future in batch:
                    _fail(future, NotFound(name))
                return
            limited = bool(state.project.quota.limited())
            if limited and not state.complete_at:
                self._states.pop((tenant, project), None)  # only our stripe is known: read them all
                continue
            accepted: list[tuple[Charge, asyncio.Future]] = []
            refused: list[tuple[asyncio.Future, StoreError]] = []
            total = state.total
            own = state.stripes.get(self.stripe, (Usage(), 0))
            delta = Usage()
            for charge, future in batch:
                refusal = refuse(state.project, name, total + delta, charge.delta)
                if refusal is not None:
                    refused.append((future, refusal))
                    continue
                delta = delta + charge.delta
                accepted.append((charge, future))
            if refused and not fresh:
                self._states.pop((tenant, project), None)
                continue
            if not accepted:
                _refuse(refused)
                return
            compares = [ops.mod_revision_is(project_key, state.project_revision)]
            if limited:
                compares.append(ops.unchanged_since(prefix, prefix_end(prefix), state.complete_at))
            else:
                compares.append(ops.mod_revision_is(mine, own[1]))
            compares, writes, reads = _txn(compares, [ops.put(mine, (own[0] + delta).to_bytes())],
                                           self._state_reads(tenant, project), [c for c, _f in accepted])
            QUOTA_BATCH_SIZE.observe(len(accepted))
            result = await self._etcd.txn(compares, writes, reads)
            if result.succeeded:
                stripes = {**state.stripes, self.stripe: (own[0] + delta, result.revision)}
                # A limited commit compared every stripe, so all are known as of its revision.
                self._remember(tenant, project, _State(state.project, state.project_revision, stripes,
                                                       result.revision if limited else 0))
                _refuse(refused)
                for _charge, future in accepted:
                    _succeed(future, result.revision)
                return
            QUOTA_CONFLICTS.inc()
            self._remember(tenant, project, self._state_from(result, 0))
            fresh = True
            doomed = set()
            for i, (charge, future) in enumerate(accepted):
                guard = result.nested(_FRAME[2] + i)
                if not guard.succeeded:
                    _fail(future, GuardFailed([guard.kvs(j) for j in range(len(charge.reads))]))
                    doomed.add(future)
            # The refusals were decided with the doomed charges counted (e.g. a create of
            # a taken name): decide them again without, in arrival order.
            batch = [(charge, future) for charge, future in batch if future not in doomed]
            if not batch:
                return
        for _charge, future in batch:
            _fail(future, Conflict(f"the usage of {name} kept changing; retry"))
