"""quanta.v1.VmService: validate, then read or write desired state in etcd.

Stateless: everything it knows comes from etcd (the flavor/image catalog is a
watched cache). Create returns at once with the VM PENDING. Every later change
(update, start, stop, restart, delete) goes through VmStore.update_spec, audited in
its transaction; a refusal writes nothing.

Bootstrap data (CreateVm's vm.bootstrap) is secret: it is stored in the create's
transaction under its own key, and nothing here logs it, puts it in an error or an
audit record, or returns more than its summary.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import replace

import grpc
from prometheus_client import Counter

from controlplane.addressing import static_problem
from controlplane.api import errors, paging, validation
from controlplane.api.access import audit_draft, require
from controlplane.api.convert import (
    ADDRESS_MODE_FROM_PROTO,
    BOOTSTRAP_FORMAT_FROM_PROTO,
    POWER_FROM_PROTO,
    POWER_OFF_MODE_FROM_PROTO,
    POWER_POLICY_FROM_PROTO,
    RESTART_POLICY_FROM_PROTO,
    SCOPE_FROM_PROTO,
    vm_set_to_proto,
    vm_to_proto,
)
from controlplane.api.interceptors import error_for_exception
from controlplane.api.plans import Planner, Refusal
from controlplane.api.streams import MAX_BATCH_BYTES, by_size, start_revision, watch_with_bookmarks
from controlplane.auth.policy import Action
from controlplane.disks import MAX_DISKS_PER_VM, DiskName
from controlplane.etcd import Compacted, ops
from controlplane.gen.quanta.v1 import common_pb2, vm_pb2, vm_pb2_grpc
from controlplane.models import (
    DEFAULT_STOP_GRACE_S,
    MAX_STOP_GRACE_S,
    AddressMode,
    BootstrapFormat,
    DiskRef,
    HostRegistration,
    Nic,
    Power,
    PowerOffMode,
    Scope,
    VmRef,
    VmSet,
    VmSetRef,
    VmSetState,
    VmSpec,
    VmState,
    datastore_label,
    now_ns,
)
from controlplane.store import bootstrap, idempotency
from controlplane.store.addresses import AddressInUse, NetworkGone, PoolExhausted
from controlplane.store.bootstrap import MAX_METADATA_BYTES, MAX_USER_DATA_BYTES, BootstrapData
from controlplane.store.catalog import Catalog
from controlplane.store.claims import MAX_NICS
from controlplane.store.disks import (
    DiskChanged,
    DiskDeleting,
    DiskInUse,
    DiskMissing,
    DiskStore,
    attach_exclusive,
    attach_ops,
    attach_refusal,
    detaching_ops,
)
from controlplane.store.disks import deletion as disk_deletion
from controlplane.store.errors import (
    AlreadyExists,
    Conflict,
    EtagMismatch,
    HostFull,
    NotFound,
    PlanEnded,
    RequestMismatch,
    RequestReplayed,
    StoreError,
)
from controlplane.store.keys import shard_of
from controlplane.store.ledger import ProjectDeleting, QuotaExceeded, refuse
from controlplane.store.networks import NetworkStore, NetworkView
from controlplane.store.plans import MAX_HOLD_S
from controlplane.store.vms import SpecUpdate, VmRecord, VmStore, pending_status
from controlplane.store.vmsets import Member, SetTooLarge, VmSetStore
from controlplane.tenancy import Usage

CREATIONS_ACCEPTED = Counter("quanta_vm_creations_accepted_total", "VM creations accepted by the API.")

MAX_LABELS_BYTES = 16 * 1024
MAX_CREATE_VMS = 1000
"""The most creates one CreateVms call takes."""
#: A CreateVms call lets its frontend's other calls and streams run after validating
#: this many of its VMs, and runs at most this many of its creates at once: a call of
#: 1,000 never holds the event loop (every call and watch on that frontend) for long.
#: (Eight calls of 1,000, each all at once, held it for seconds: health checks beside
#: them took up to 3.3 s, and the watch streams fell minutes behind.)
CREATE_VMS_STEP = 64
DEFAULT_SET_DEADLINE_S = 10 * 60
MAX_SET_DEADLINE_S = 24 * 3600
_DISK_ATTEMPTS = 4  # reads of a create's or attach's disks before it gives up (ABORTED)
_AUDIT_PLACEHOLDER = [ops.put(b"audit", b"")]  # a set's audit record, to measure its admission with


class VmService(vm_pb2_grpc.VmServiceServicer):
    def __init__(self, store: VmStore, catalog: Catalog, *, shards: int, bookmark_s: float = 10.0,
                 disks: DiskStore | None = None, networks: NetworkStore | None = None):
        self._store = store
        self._disks = disks or DiskStore(store.client, store.keys, store.requests, store.ledger)
        self._networks = networks or NetworkStore(store.client, store.keys, store.requests)
        self._sets = VmSetStore(store.client, store.keys, store.requests, store.ledger, store.addresses)
        self._planner = Planner(store)
        self._catalog = catalog
        self._shards = shards
        self._bookmark_s = bookmark_s

    async def CreateVm(self, request: vm_pb2.CreateVmRequest, context) -> vm_pb2.Vm:
        if request.validate_only:
            _dry_run()
        v = validation.Violations()
        parent = v.capture(validation.parse_project_parent, request.parent)
        if parent:
            require(Action.WRITE_VMS, *parent, kind="project", name=request.parent)
        networks = await self._resolve(parent, [request])
        spec, data = self._spec(request, parent, v, networks=networks)
        v.raise_if_any()
        spec = v.valid(spec)
        if request.validate_only:
            try:
                spec, _revisions = await self._take_disks(spec)
            except StoreError as err:
                raise _create_error(err, request.parent, request.request_id, spec.ref.name) from err
            error = (await self._preview(spec.ref.tenant, spec.ref.project, [spec], networks=networks))[0]
            if error is not None:
                raise _create_error(error, request.parent, request.request_id, spec.ref.name) from error
            return _would_make(spec, (await self._planner.hosts([spec]))[0])
        draft = audit_draft()
        # The bootstrap data goes in the create's own transaction (no round trip of its own).
        secret = [bootstrap.put_op(self._store.keys, spec.ref, data)] if data is not None else []
        try:
            record, created = await self._create_one(spec, [*(await draft.writes() if draft else ()), *secret],
                                                     _fingerprint(request, spec), networks)
        except StoreError as err:
            raise _create_error(err, request.parent, request.request_id, spec.ref.name) from err
        if created:
            CREATIONS_ACCEPTED.inc()
            if draft:
                draft.committed()
        return vm_to_proto(record)

    async def _create_one(self, spec: VmSpec, also: list, fingerprint: bytes,
                          networks: Mapping[str, NetworkView]) -> tuple[VmRecord, bool]:
        """VmStore.create with the spec's NICs on ``networks`` (as :meth:`_resolve` read
        them) and its disks taken as read just now (a disk that changed in between,
        e.g. relabelled, is read again)."""
        for _attempt in range(_DISK_ATTEMPTS):
            taken, revisions = await self._take_disks(spec)
            try:
                return await self._store.create(taken, also=also, fingerprint=fingerprint,
                                                networks=_by_name(networks), disk_revisions=revisions)
            except DiskChanged:
                continue
        raise Conflict(f"the disks of {spec.ref.name} kept changing; retry")

    async def _take_disks(self, spec: VmSpec) -> tuple[VmSpec, dict[str, int]]:
        """The spec with its disks (ids, as ``_spec`` left them) as they are now, and
        each disk's record revision: what its create compares. Raises DiskMissing,
        DiskDeleting or DiskInUse (another VM has it; one of this VM's name does not
        count: a retry of its create). Reads only; a spec without disks is returned as is."""
        if not spec.disks:
            return spec, {}
        names = [DiskName(spec.ref.tenant, spec.ref.project, d.disk_id) for d in spec.disks]
        views = await self._disks.get_many(names)
        refs = []
        revisions: dict[str, int] = {}
        for name, view in zip(names, views, strict=True):
            refusal = attach_refusal(view, name.name, spec.ref)
            if refusal is not None:
                raise refusal
            assert view is not None
            refs.append(view.disk.attached_as())
            revisions[name.disk_id] = view.revision
        return replace(spec, disks=tuple(refs)), revisions

    def _spec(self, request: vm_pb2.CreateVmRequest, parent: tuple[str, str] | None, v: validation.Violations,
              *, at: str = "", shard: int | None = None, vm_set: str = "",
              networks: Mapping[str, NetworkView] | None = None) -> tuple[VmSpec | None, BootstrapData | None]:
        """The VM (and its bootstrap data) a create ``request`` of ``parent`` (None: the
        parent was invalid, already in ``v``) would make: the one place for every rule
        of a VM's create (CreateVm, each request of CreateVms). Problems are added to
        ``v``, their fields prefixed by ``at`` (e.g. "requests[3]."); the spec is None
        when this request has any. ``shard``: a set's (default: by the VM's uid);
        ``vm_set``: the set's id; ``networks``: what its NICs' network references
        mean (:meth:`_resolve`). Pure apart from the catalog (a watched cache)."""
        before = len(v.items)
        # The id is optional (DESIGN.md): without one the server assigns "vm-<random>".
        vm_id = request.vm_id or f"vm-{uuid.uuid4().hex[:16]}"
        v.capture(validation.validate_resource_id, vm_id, f"{at}vm_id", "VM id")
        vm = request.vm
        flavor = self._catalog.flavor_for(parent[0], vm.flavor) if parent else None
        if not vm.flavor:
            v.add(f"{at}vm.flavor", "required")
        elif parent and flavor is None:
            known = ", ".join(sorted(self._catalog.flavors_for(parent[0])))
            v.add(f"{at}vm.flavor", f"unknown flavor {vm.flavor!r}; known: {known}")
        if not vm.image:
            v.add(f"{at}vm.image", "required")
        elif vm.image not in self._catalog.images:
            v.add(f"{at}vm.image", f"unknown image {vm.image!r}; known: {', '.join(sorted(self._catalog.images))}")
        v.capture(validation.validate_labels, vm.labels, f"{at}vm.labels")
        if sum(len(k) + len(val) for k, val in vm.labels.items()) > MAX_LABELS_BYTES:
            v.add(f"{at}vm.labels", f"labels exceed {MAX_LABELS_BYTES} bytes in total")
        v.capture(validation.validate_labels, vm.node_selector, f"{at}vm.node_selector")
        if vm.anti_affinity_group:
            v.capture(validation.validate_resource_id, vm.anti_affinity_group, f"{at}vm.anti_affinity_group",
                      "anti-affinity group")
        if vm.anti_affinity_scope not in SCOPE_FROM_PROTO:
            v.add(f"{at}vm.anti_affinity_scope", f"unknown scope {vm.anti_affinity_scope}; HOST or ZONE")
        elif SCOPE_FROM_PROTO[vm.anti_affinity_scope] is Scope.ZONE and not vm.anti_affinity_group:
            v.add(f"{at}vm.anti_affinity_scope", "ZONE needs an anti_affinity_group")
        if vm.affinity_group:
            v.capture(validation.validate_resource_id, vm.affinity_group, f"{at}vm.affinity_group",
                      "affinity group")
        if vm.affinity_scope not in SCOPE_FROM_PROTO:
            v.add(f"{at}vm.affinity_scope", f"unknown scope {vm.affinity_scope}; HOST or ZONE")
        elif SCOPE_FROM_PROTO[vm.affinity_scope] is Scope.ZONE and not vm.affinity_group:
            v.add(f"{at}vm.affinity_scope", "ZONE needs an affinity_group")
        if vm.restart_policy not in RESTART_POLICY_FROM_PROTO:
            v.add(f"{at}vm.restart_policy", f"unknown restart policy {vm.restart_policy}; ALWAYS or NEVER")
        if vm.power not in POWER_FROM_PROTO:
            v.add(f"{at}vm.power", f"unknown power state {vm.power}; POWERED_ON or POWERED_OFF")
        if vm.power_policy not in POWER_POLICY_FROM_PROTO:
            v.add(f"{at}vm.power_policy", f"unknown power policy {vm.power_policy}; KEEP_STOPPED or KEEP_RUNNING")
        v.capture(validation.validate_request_id, request.request_id, f"{at}request_id")
        if vm.name and parent and vm.name != validation.vm_name(*parent, vm_id):
            v.add(f"{at}vm.name", "output only; leave empty or equal to parent/vms/vm_id")
        disk_ids: list[str] = []
        if len(vm.disks) > MAX_DISKS_PER_VM:
            v.add(f"{at}vm.disks", f"{len(vm.disks)} disks; at most {MAX_DISKS_PER_VM}")
        elif parent:
            for j, named in enumerate(vm.disks):
                disk_id = v.capture(validation.parse_disk_of, named, *parent, f"{at}vm.disks[{j}]")
                if disk_id is not None and disk_id in disk_ids:
                    v.add(f"{at}vm.disks[{j}]", f"disk {disk_id!r} is named twice")
                elif disk_id is not None:
                    disk_ids.append(disk_id)
        nics = _nics(vm.nics, networks or {}, v, f"{at}vm.nics")
        uid = uuid.uuid4().hex
        data = _bootstrap_data(vm, uid, vm_id, v, f"{at}vm.bootstrap")
        if len(v.items) > before or parent is None or flavor is None:
            return None, data
        tenant, project = parent
        spec = VmSpec(
            ref=VmRef(tenant, project, vm_id), uid=uid, flavor=vm.flavor, image=vm.image,
            resources=flavor.resources, labels=dict(vm.labels),
            request_id=request.request_id, create_time_ns=now_ns(),
            shard=shard_of(uid, self._shards) if shard is None else shard,
            node_selector=dict(vm.node_selector), anti_affinity_group=vm.anti_affinity_group,
            restart_policy=RESTART_POLICY_FROM_PROTO[vm.restart_policy],
            anti_affinity_scope=SCOPE_FROM_PROTO[vm.anti_affinity_scope], affinity_group=vm.affinity_group,
            affinity_scope=SCOPE_FROM_PROTO[vm.affinity_scope],
            power=POWER_FROM_PROTO[vm.power], power_policy=POWER_POLICY_FROM_PROTO[vm.power_policy],
            bootstrap=data.summary() if data is not None else None, vm_set=vm_set, nics=nics,
            # Ids only until the create reads the disks (_take_disks): what the caller chose.
            disks=tuple(DiskRef(disk_id, "", 0) for disk_id in disk_ids),
        )
        return spec, data

    async def _resolve(self, parent: tuple[str, str] | None,
                       requests: Sequence[vm_pb2.CreateVmRequest]) -> dict[str, NetworkView]:
        """What the network references of ``requests``' NICs mean in ``parent`` (one
        round trip; none without NICs): see NetworkStore.resolve."""
        refs = [nic.network for one in requests for nic in one.vm.nics if nic.network]
        if parent is None or not refs:
            return {}
        return await self._networks.resolve(*parent, refs)

    async def _preview(self, tenant: str, project: str, specs: list[VmSpec], set_ref: VmSetRef | None = None,
                       networks: Mapping[str, NetworkView] | None = None) -> list[StoreError | None]:
        """What creating ``specs`` would meet now, read without writing (validate_only):
        per spec, None or the store error its create would raise. AlreadyExists: its
        name is taken (here or by an earlier spec); QuotaExceeded: the quota cannot
        take it after the specs before it that fit; ProjectDeleting; NotFound (no such
        project). With ``set_ref`` (an all-or-nothing set): the set's key must be free
        too, and the quota is checked for all specs at once; the first error stands for
        the set. Then their NICs' addresses (``networks``: what the NICs are on, by
        any name): AddressInUse, PoolExhausted (``AddressPicker.preview``). Two round
        trips at once, a third with static NICs; request_ids are not looked up (a
        retry's answer is the VM it made)."""
        keys = self._store.keys
        set_reads = [ops.get(keys.vm_set(set_ref.tenant, set_ref.project, set_ref.set_id))] if set_ref else []
        try:
            (record, usage, set_kvs), taken = await asyncio.gather(
                self._store.ledger.usage(tenant, project, set_reads),
                self._store.names_taken([spec.ref for spec in specs]))
        except NotFound as err:
            return [err] * len(specs)
        name = validation.project_name(tenant, project)
        subnets = {view.network.uid: view.network.subnet for view in (networks or {}).values()
                   if view.network.subnet is not None}
        addressed = await self._store.addresses.preview(specs, subnets) if any(s.nics for s in specs) else \
            [None] * len(specs)
        if set_ref is not None:
            error: StoreError | None = AlreadyExists(set_ref.name) if set_kvs[0] else next(
                (AlreadyExists(spec.ref.name) for spec, present in zip(specs, taken, strict=True) if present), None)
            total = sum((Usage.of_vm(spec.resources) for spec in specs), Usage())
            error = error or refuse(record, name, usage, total) or next((e for e in addressed if e), None)
            return [error] + [None] * (len(specs) - 1)
        out: list[StoreError | None] = []
        seen: set[VmRef] = set()
        delta = Usage()
        for spec, present in zip(specs, taken, strict=True):
            if present or spec.ref in seen:
                out.append(AlreadyExists(spec.ref.name))
                continue
            seen.add(spec.ref)
            grow = Usage.of_vm(spec.resources)
            refusal = refuse(record, name, usage + delta, grow) or addressed[len(out)]
            out.append(refusal)
            if refusal is None:
                delta = delta + grow
        return out

    async def CreateVms(self, request: vm_pb2.CreateVmsRequest, context) -> vm_pb2.CreateVmsResponse:
        if request.validate_only:
            _dry_run()
        v = validation.Violations()
        parent = v.capture(validation.parse_project_parent, request.parent)
        if parent:
            require(Action.WRITE_VMS, *parent, kind="project", name=request.parent)
        count = len(request.requests)
        if not 1 <= count <= MAX_CREATE_VMS:
            v.add("requests", f"{count} creates; 1 to {MAX_CREATE_VMS} per call")
        for i, one in enumerate(request.requests):
            if one.parent and one.parent != request.parent:
                v.add(f"requests[{i}].parent", "leave it empty or equal to the call's parent")
            if one.validate_only:
                v.add(f"requests[{i}].validate_only", "set validate_only on the CreateVms request instead")
        mode = request.mode or vm_pb2.CreateVmsRequest.INDEPENDENT
        deadline_s = 0
        plan = ""
        if mode == vm_pb2.CreateVmsRequest.INDEPENDENT:
            for field in ("set_id", "request_id", "deadline", "plan"):
                if request.HasField(field) if field == "deadline" else getattr(request, field):
                    v.add(field, "only for mode ALL_OR_NOTHING (each create has its own request_id)")
        elif mode == vm_pb2.CreateVmsRequest.ALL_OR_NOTHING:
            if request.set_id:
                v.capture(validation.validate_resource_id, request.set_id, "set_id", "set id")
            v.capture(validation.validate_request_id, request.request_id)
            deadline_s = v.capture(validation.duration_seconds, request.deadline.seconds, request.deadline.nanos,
                                   default=DEFAULT_SET_DEADLINE_S, maximum=MAX_SET_DEADLINE_S,
                                   field="deadline") or 0
            if request.plan:
                plan_name = v.capture(validation.parse_plan_name, request.plan)
                if plan_name and parent and plan_name[:2] != parent:
                    v.add("plan", "a plan of the call's parent")
                plan = plan_name[2] if plan_name else ""
        else:
            v.add("mode", f"unknown mode {mode}; INDEPENDENT or ALL_OR_NOTHING")
        v.raise_if_any()
        tenant, project = v.valid(parent)
        if mode == vm_pb2.CreateVmsRequest.ALL_OR_NOTHING:
            return await self._create_set(request, tenant, project, deadline_s, plan)
        return await self._create_each(request, tenant, project)

    async def _create_each(self, request: vm_pb2.CreateVmsRequest, tenant: str,
                           project: str) -> vm_pb2.CreateVmsResponse:
        """INDEPENDENT: each create as CreateVm would do it, CREATE_VMS_STEP at a time
        (the ledger group-commits them), each with its own outcome and audit record."""
        results = [vm_pb2.CreateVmsResult() for _ in request.requests]  # each set below
        valid: list[tuple[int, VmSpec, BootstrapData | None]] = []
        networks = await self._resolve((tenant, project), request.requests)
        for i, one in enumerate(request.requests):
            if i and i % CREATE_VMS_STEP == 0:
                await asyncio.sleep(0)  # let the frontend's other calls run (CREATE_VMS_STEP)
            v = validation.Violations()
            spec, data = self._spec(one, (tenant, project), v, networks=networks)
            try:
                v.raise_if_any()
            except errors.ApiError as err:
                results[i] = _refused(err)
                continue
            valid.append((i, v.valid(spec), data))
        if request.validate_only:
            async def take(i: int, spec: VmSpec, data: BootstrapData | None
                           ) -> tuple[int, VmSpec, BootstrapData | None] | None:
                try:
                    return i, (await self._take_disks(spec))[0], data
                except StoreError as err:
                    results[i] = _refused(_create_error(err, request.parent, spec.request_id, spec.ref.name))
                    return None
            valid = [t for t in await asyncio.gather(*(take(*one) for one in valid)) if t is not None]
            outcomes = await self._preview(tenant, project, [spec for _i, spec, _data in valid], networks=networks)
            fine = [spec for (_i, spec, _data), error in zip(valid, outcomes, strict=True) if error is None]
            hosts = iter(await self._planner.hosts(fine) if fine else [])
            for (i, spec, _data), error in zip(valid, outcomes, strict=True):
                results[i] = (vm_pb2.CreateVmsResult(vm=_would_make(spec, next(hosts))) if error is None else
                              _refused(_create_error(error, request.parent, spec.request_id, spec.ref.name)))
            return vm_pb2.CreateVmsResponse(results=results)
        draft = audit_draft()
        running = asyncio.Semaphore(CREATE_VMS_STEP)

        async def create(i: int, spec: VmSpec, data: BootstrapData | None) -> bool:
            secret = [bootstrap.put_op(self._store.keys, spec.ref, data)] if data is not None else []
            try:
                async with running:
                    record, created = await self._create_one(
                        spec, [*(await draft.writes(spec.ref.name) if draft else ()), *secret],
                        _fingerprint(request.requests[i], spec), networks)
            except StoreError as err:
                results[i] = _refused(_create_error(err, request.parent, spec.request_id, spec.ref.name))
                return False
            except Exception as err:  # noqa: BLE001 - one create's failure is its own outcome
                results[i] = _refused(error_for_exception(err))
                return False
            results[i] = vm_pb2.CreateVmsResult(vm=vm_to_proto(record))
            return created

        made = sum(await asyncio.gather(*(create(i, spec, data) for i, spec, data in valid)))
        if made:
            CREATIONS_ACCEPTED.inc(made)
            if draft:
                draft.committed()
        return vm_pb2.CreateVmsResponse(results=results)

    async def _create_set(self, request: vm_pb2.CreateVmsRequest, tenant: str, project: str,
                          deadline_s: int, plan: str) -> vm_pb2.CreateVmsResponse:
        """ALL_OR_NOTHING: every create valid, then the set and all its members admitted
        in one transaction (VmSetStore.admit), or nothing; one audit record, the set's.
        With a ``plan``: its hold must still exist, be the project's and name exactly
        these VMs (ids, flavors, resources), else FAILED_PRECONDITION PLAN_EXPIRED or
        PLAN_MISMATCH, nothing written; each member's spec names the plan (its shard
        binds the set onto the plan's hosts and consumes the hold)."""
        set_id = request.set_id or f"set-{uuid.uuid4().hex[:16]}"
        uid = uuid.uuid4().hex
        shard = shard_of(uid, self._shards)
        v = validation.Violations()
        members: list[Member] = []
        first: dict[str, int] = {}
        networks = await self._resolve((tenant, project), request.requests)
        statics: dict[tuple[str, str], int] = {}
        for i, one in enumerate(request.requests):
            if i and i % CREATE_VMS_STEP == 0:
                await asyncio.sleep(0)  # let the frontend's other calls run (CREATE_VMS_STEP)
            at = f"requests[{i}]."
            if one.request_id:
                v.add(f"{at}request_id", "the set's request_id covers its members; leave it empty")
            spec, data = self._spec(one, (tenant, project), v, at=at, shard=shard, vm_set=set_id,
                                    networks=networks)
            if spec is None:
                continue
            if _static_twice(spec, statics, i, v, at):
                continue
            if spec.ref.vm_id in first:
                v.add(f"{at}vm_id", f"{spec.ref.vm_id!r} is also the id of requests[{first[spec.ref.vm_id]}]")
                continue
            first[spec.ref.vm_id] = i
            members.append(Member(replace(spec, plan=plan) if plan else spec, data))
        named: dict[str, str] = {}
        for m in members:
            for d in m.spec.disks:
                if d.disk_id in named:
                    v.add(f"requests[{first[m.spec.ref.vm_id]}].vm.disks",
                          f"disk {d.disk_id!r} is also taken by {named[d.disk_id]!r}")
                named.setdefault(d.disk_id, m.spec.ref.vm_id)
        v.raise_if_any()
        if plan:
            await self._check_plan(request, tenant, project, plan, [m.spec for m in members])
        members = await self._take_set_disks(members, request.parent, request.request_id)
        at_ns = now_ns()
        ref = VmSetRef(tenant, project, set_id)
        vm_set = VmSet(ref, uid, tuple(m.spec.ref.vm_id for m in members), shard, VmSetState.PENDING,
                       create_time_ns=at_ns, deadline_ns=at_ns + deadline_s * 1_000_000_000,
                       request_id=request.request_id)
        if request.validate_only:
            too_large = self._sets.too_large(vm_set, members, also=_AUDIT_PLACEHOLDER)
            if too_large is not None:
                raise _set_too_large(too_large)
            outcomes = await self._preview(tenant, project, [m.spec for m in members], set_ref=ref,
                                           networks=networks)
            error = outcomes[0]
            if error is not None:
                raise _create_error(error, request.parent, request.request_id, ref.name) from error
            would = vm_set_to_proto(vm_set, 0)
            would.uid = ""
            hosts = await self._planner.hosts([m.spec for m in members])
            return vm_pb2.CreateVmsResponse(results=[vm_pb2.CreateVmsResult(vm=_would_make(m.spec, host))
                                                     for m, host in zip(members, hosts, strict=True)], set=would)
        fingerprint = idempotency.set_fingerprint(
            [_fingerprint(one, m.spec)
             for m, one in zip(members, request.requests, strict=True)],
            set_id=request.set_id, deadline_s=deadline_s, plan=request.plan)
        draft = audit_draft()
        try:
            for _attempt in range(_DISK_ATTEMPTS):
                try:
                    admitted = await self._sets.admit(vm_set, members,
                                                      also=await draft.writes(ref.name) if draft else (),
                                                      fingerprint=fingerprint, networks=_by_name(networks))
                    break
                except DiskChanged:
                    members = await self._take_set_disks(members, request.parent, request.request_id)
            else:
                raise Conflict(f"the disks of {ref.name} kept changing; retry")
        except SetTooLarge as err:
            raise _set_too_large(err) from err
        except StoreError as err:
            raise _create_error(err, request.parent, request.request_id, ref.name) from err
        if admitted.created:
            CREATIONS_ACCEPTED.inc(len(members))
            if draft:
                draft.committed()
        return vm_pb2.CreateVmsResponse(
            results=[vm_pb2.CreateVmsResult(vm=vm_to_proto(record)) for record in admitted.vms],
            set=vm_set_to_proto(admitted.vm_set, admitted.revision))

    async def _take_set_disks(self, members: list[Member], parent: str, request_id: str) -> list[Member]:
        """The members with their disks read now (:meth:`_take_disks`); a disk that
        cannot be taken refuses the whole set."""
        out = []
        for m in members:
            try:
                spec, revisions = await self._take_disks(m.spec)
            except StoreError as err:
                raise _create_error(err, parent, request_id, m.spec.ref.name) from err
            out.append(Member(spec, m.bootstrap, revisions))
        return out

    async def _check_plan(self, request: vm_pb2.CreateVmsRequest, tenant: str, project: str, plan: str,
                          specs: list[VmSpec]) -> None:
        """Raise FAILED_PRECONDITION PLAN_EXPIRED when the plan's hold is gone (or is
        another project's: not told apart, nothing leaks), PLAN_MISMATCH when it holds
        room for other VMs than ``specs`` (by id, flavor and resources). A retry of a
        create that was admitted (its request_id recorded) passes: its admission answers
        as the first did, though its set consumed the hold since. Reads only."""
        hold = await self._sets.hold(plan)
        if hold is None or (hold.tenant, hold.project) != (tenant, project):
            if request.request_id and await self._sets.made(tenant, project, request.request_id):
                return
            raise errors.failed_precondition(f"the hold of plan {request.plan} ended (or never was); plan again",
                                             "PLAN_EXPIRED", metadata={"plan": request.plan})
        planned = {vm.vm_id: (vm.flavor, vm.resources) for vm in hold.vms}
        asked = {spec.ref.vm_id: (spec.flavor, spec.resources) for spec in specs}
        if planned != asked:
            differ = sorted(set(planned) ^ set(asked)) or sorted(i for i in asked if asked[i] != planned[i])
            raise errors.failed_precondition(
                f"plan {request.plan} holds room for other VMs than these (first difference: {differ[0]!r}); "
                "create the VMs it was made for, or plan again", "PLAN_MISMATCH",
                metadata={"plan": request.plan, "vm_id": differ[0]})

    async def PlanVms(self, request: vm_pb2.PlanVmsRequest, context) -> vm_pb2.PlanVmsResponse:
        """Validated as CreateVms ALL_OR_NOTHING would validate the same creates (each
        with its vm_id), WRITE_VMS (a plan may hold room); request_id checked only with
        a hold (without one it is ignored); then ``Planner.plan``."""
        if not (request.hold.seconds or request.hold.nanos):
            _dry_run()  # writes nothing, whatever its outcome
        v = validation.Violations()
        parent = v.capture(validation.parse_project_parent, request.parent)
        if parent:
            require(Action.WRITE_VMS, *parent, kind="project", name=request.parent)
        count = len(request.requests)
        if not 1 <= count <= MAX_CREATE_VMS:
            v.add("requests", f"{count} creates; 1 to {MAX_CREATE_VMS} per call")
        hold_s = v.capture(validation.duration_seconds, request.hold.seconds, request.hold.nanos, default=0,
                           maximum=MAX_HOLD_S, field="hold") or 0
        if hold_s:
            v.capture(validation.validate_request_id, request.request_id)
        specs: list[VmSpec] = []
        first: dict[str, int] = {}
        networks = await self._resolve(parent, request.requests)
        statics: dict[tuple[str, str], int] = {}
        for i, one in enumerate(request.requests):
            at = f"requests[{i}]."
            if one.parent and one.parent != request.parent:
                v.add(f"{at}parent", "leave it empty or equal to the call's parent")
            if one.validate_only:
                v.add(f"{at}validate_only", "a plan writes nothing; leave it unset")
            if not one.vm_id:
                v.add(f"{at}vm_id", "required: a plan names its VMs")
                continue
            spec, _data = self._spec(one, parent, v, at=at, networks=networks)
            if spec is None or _static_twice(spec, statics, i, v, at):
                continue
            if spec.ref.vm_id in first:
                v.add(f"{at}vm_id", f"{spec.ref.vm_id!r} is also the id of requests[{first[spec.ref.vm_id]}]")
                continue
            first[spec.ref.vm_id] = i
            specs.append(spec)
        v.raise_if_any()
        # Placed as they would be made: with their disks' datastore classes.
        specs = [m.spec for m in await self._take_set_disks([Member(spec) for spec in specs], request.parent,
                                                             request.request_id)]
        return await self._planner.plan(request.parent, specs, hold_s,
                                        request_id=request.request_id if hold_s else "",
                                        refusals=await self._address_refusals(specs, networks))

    async def _address_refusals(self, specs: list[VmSpec], networks: Mapping[str, NetworkView]
                                ) -> list[Refusal | None]:
        """Per spec, in order, what its addresses would meet now (``AddressPicker.preview``:
        ADDRESS_POOL_EXHAUSTED, ADDRESS_IN_USE) as a plan says it; read, not held."""
        if not any(spec.nics for spec in specs):
            return [None] * len(specs)
        subnets = {view.network.uid: view.network.subnet for view in networks.values()
                   if view.network.subnet is not None}
        out: list[Refusal | None] = []
        for spec, error in zip(specs, await self._store.addresses.preview(specs, subnets), strict=True):
            out.append(Refusal(_create_error(error, "", "", spec.ref.name).reason, str(error))
                       if error is not None else None)
        return out

    async def GetVmSet(self, request: vm_pb2.GetVmSetRequest, context) -> vm_pb2.VmSet:
        tenant, project, set_id = validation.parse_vm_set_name(request.name)
        require(Action.READ, tenant, project, kind="vm set", name=request.name)
        try:
            vm_set, revision = await self._sets.get(VmSetRef(tenant, project, set_id))
        except NotFound as err:
            raise errors.not_found("vm set", request.name) from err
        return vm_set_to_proto(vm_set, revision)

    async def GetVm(self, request: vm_pb2.GetVmRequest, context) -> vm_pb2.Vm:
        tenant, project, vm_id = validation.parse_vm_name(request.name)
        require(Action.READ, tenant, project, kind="vm", name=request.name)
        try:
            return vm_to_proto(await self._store.get(VmRef(tenant, project, vm_id)))
        except NotFound as err:
            raise errors.not_found("vm", request.name) from err

    async def ListVms(self, request: vm_pb2.ListVmsRequest, context) -> vm_pb2.ListVmsResponse:
        listing = paging.project_listing("vms", request.parent, request.page_size, request.label_selector,
                                         request.page_token)
        selector, scope = listing.selector, listing.scope
        keys_after = VmRef(listing.tenant, listing.project, listing.after) if listing.after else None
        try:
            records, next_ref, revision = await self._store.list(
                listing.tenant, listing.project, page_size=listing.size, after=keys_after,
                revision=listing.revision,
                selector=(lambda spec: validation.matches(selector, spec.labels)) if selector else None,
            )
        except Compacted as err:
            raise errors.page_token_expired() from err
        return vm_pb2.ListVmsResponse(
            vms=[vm_to_proto(r) for r in records],
            next_page_token=encode_or_empty(scope, revision, next_ref),
            resource_version=revision,
        )

    async def DeleteVm(self, request: vm_pb2.DeleteVmRequest, context) -> vm_pb2.Vm:
        tenant, project, vm_id = validation.parse_vm_name(request.name)
        require(Action.WRITE_VMS, tenant, project, kind="vm", name=request.name)
        ref = VmRef(tenant, project, vm_id)
        draft = audit_draft()
        try:
            if request.delete_disks:
                deletion = await self._delete_with_disks(ref, request.etag, draft)
            else:
                deletion = await self._store.request_delete(ref, etag=request.etag,
                                                            also=await draft.writes() if draft else ())
        except NotFound as err:
            raise errors.not_found("vm", request.name) from err
        except EtagMismatch as err:
            raise errors.aborted(str(err), "ETAG_MISMATCH") from err
        except Conflict as err:
            raise errors.aborted(str(err)) from err
        if deletion.changed and draft:
            draft.committed()
        vm = vm_to_proto(deletion.record)
        vm.resource_version = deletion.revision
        return vm

    async def _delete_with_disks(self, ref: VmRef, etag: str, draft) -> SpecUpdate:
        """DeleteVm with ``delete_disks``: in the deletion's own transaction, each of the
        VM's disks is marked DELETING and its quota released (``disks.deletion``; the
        attachments stay until the VM is removed). A VM being deleted already gets
        only its disks marked, in one txn with the call's audit record. Only a disk
        whose attachment names this VM (its uid) is marked, its attachment compared as
        read: one the VM let go of (removed since it was read) and another VM took is
        never marked. Raises what request_delete raises."""
        for _attempt in range(_DISK_ATTEMPTS):
            record = await self._store.get(ref)
            uid = record.spec.uid
            names = [DiskName(ref.tenant, ref.project, d.disk_id) for d in record.spec.disks]
            views = [v for v in await self._disks.get_many(names)
                     if v is not None and not v.disk.deleting and v.attachment is not None
                     and v.attachment.vm_uid == uid]
            charges = [disk_deletion(self._store.keys, view, attached_ok=True) for view in views]
            read = record.spec.disks

            def check(now: VmRecord, read: tuple = read) -> None:
                if now.spec.disks != read:
                    raise _Reread()

            async def changed(views: list = views) -> None:
                now = await self._disks.get_many([v.disk.ref for v in views])
                if ([(v.revision, v.attachment_revision) if v else (0, 0) for v in now]
                        != [(v.revision, v.attachment_revision) for v in views]):
                    raise _Reread()

            also = [w for c in charges for w in c.writes]
            guard = [c for charge in charges for c in charge.compares]
            delta = sum((c.delta for c in charges), Usage())
            names_held = [n for c in charges for n in c.exclusive]
            try:
                if record.spec.deleting:
                    if not charges:
                        return SpecUpdate(record, False, record.resource_version, changed=False)
                    # Deleted already without its disks: mark them now, the VM unchanged, in
                    # one txn with the call's audit record (as the first DeleteVm).
                    if not await self._disks.delete_attached(views, also=await draft.writes() if draft else ()):
                        continue
                    return SpecUpdate(record, False, record.resource_version, changed=True)
                return await self._store.request_delete(
                    ref, etag=etag, guard=guard, also=[*also, *(await draft.writes() if draft else ())],
                    check=check, exclusive=names_held, delta=delta, on_conflict=changed)
            except _Reread:
                continue
        raise Conflict(f"the disks of {ref.name} kept changing; retry")

    # --- disks: AttachDisk, DetachDisk (through VmStore.update_spec) ---------------------

    async def AttachDisk(self, request: vm_pb2.AttachDiskRequest, context) -> vm_pb2.Vm:
        """The disk is taken for the VM in the transaction that adds it to the VM's spec
        (``disks.attach_ops``: its attachment absent, its record as read); a VM on a host
        needs the host to carry the disk's datastore label (its registration compared too)."""
        tenant, project, vm_id = validation.parse_vm_name(request.name)
        require(Action.WRITE_VMS, tenant, project, kind="vm", name=request.name)
        disk_id = validation.parse_disk_of(request.disk, tenant, project, "disk")
        ref = VmRef(tenant, project, vm_id)
        name = DiskName(tenant, project, disk_id)
        keys = self._store.keys
        for _attempt in range(_DISK_ATTEMPTS):
            record = await self._get_vm(ref, request.name)
            view = await self._get_disk(name)
            _refuse_deleting(record)
            if any(d.disk_id == disk_id for d in record.spec.disks):
                return _answer(SpecUpdate(record, False, record.resource_version, changed=False))
            refusal = attach_refusal(view, name.name, ref, record.spec.uid)
            if refusal is not None:
                raise _create_error(refusal, "", "", request.name)
            if len(record.spec.disks) >= MAX_DISKS_PER_VM:
                raise _too_many_disks(record)
            host = _host_of(record)
            guard: list = []
            if host:
                reg = await self._store.client.get(keys.host_reg(host))
                labels = HostRegistration.from_bytes(reg.value).labels if reg is not None else {}
                label = datastore_label(view.disk.datastore_class)
                if labels.get(label) != "true":
                    raise errors.failed_precondition(
                        f"vm {request.name!r} is on host {host}, which does not reach datastore class "
                        f"{view.disk.datastore_class!r} (label {label}=true)", "DATASTORE_UNREACHABLE",
                        metadata={"name": request.name, "host": host, "datastore_class": view.disk.datastore_class})
                guard.append(ops.mod_revision_is(keys.host_reg(host), reg.mod_revision if reg else 0))
            disk_ref = view.disk.attached_as()
            compares, writes = attach_ops(keys, ref, record.spec.uid, [disk_ref], {disk_id: view.revision})

            def check(now: VmRecord, host: str = host, uid: str = record.spec.uid) -> None:
                _refuse_deleting(now)
                if _host_of(now) != host or now.spec.uid != uid:
                    raise _Reread()  # placed or moved since: its host is checked again
                if len(now.spec.disks) >= MAX_DISKS_PER_VM and not any(d.disk_id == disk_id for d in now.spec.disks):
                    raise _too_many_disks(now)

            async def changed(revision: int = view.revision) -> None:
                now = (await self._disks.get_many([name]))[0]
                if now is None or now.revision != revision or now.attachment is not None:
                    raise _Reread()

            def attach(spec: VmSpec, disk_ref: DiskRef = disk_ref) -> VmSpec:
                if any(d.disk_id == disk_ref.disk_id for d in spec.disks):
                    return spec
                return replace(spec, disks=(*spec.disks, disk_ref))

            try:
                update = await self._change(
                    ref, request.name, attach,
                    etag=request.etag, check=check, guard=[*compares, *guard], also=writes,
                    exclusive=attach_exclusive(keys, ref, [disk_ref]), on_conflict=changed)
            except _Reread:
                continue
            return _answer(update)
        raise errors.aborted(f"disk {name.name} or vm {request.name} kept changing; retry")

    async def DetachDisk(self, request: vm_pb2.DetachDiskRequest, context) -> vm_pb2.Vm:
        """The disk leaves the VM's spec; in the same transaction its attachment is
        deleted (a VM not on a host: AVAILABLE at once) or marked detaching (the host's
        agent deletes it once it let go: ``AgentDiskStore.detach_done``)."""
        tenant, project, vm_id = validation.parse_vm_name(request.name)
        require(Action.WRITE_VMS, tenant, project, kind="vm", name=request.name)
        disk_id = validation.parse_disk_of(request.disk, tenant, project, "disk")
        ref = VmRef(tenant, project, vm_id)
        name = DiskName(tenant, project, disk_id)
        keys = self._store.keys
        attachment_key = keys.disk_attachment(tenant, project, disk_id)
        for _attempt in range(_DISK_ATTEMPTS):
            record = await self._get_vm(ref, request.name)
            view = (await self._disks.get_many([name]))[0]
            ours = view is not None and view.attachment is not None and view.attachment.vm_uid == record.spec.uid
            if not any(d.disk_id == disk_id for d in record.spec.disks):
                if ours:  # detaching already: a retry
                    return _answer(SpecUpdate(record, False, record.resource_version, changed=False))
                raise errors.failed_precondition(f"disk {name.name!r} is not attached to vm {request.name!r}",
                                                 "DISK_NOT_ATTACHED", metadata={"name": request.name,
                                                                                "disk": name.name})
            _refuse_deleting(record)
            host = _host_of(record)
            writes: list = []
            guard: list = []
            if ours:
                assert view is not None and view.attachment is not None
                guard.append(ops.mod_revision_is(attachment_key, view.attachment_revision))
                if host:
                    writes += detaching_ops(keys, tenant, project, disk_id, view.attachment)
                else:
                    writes.append(ops.delete(attachment_key))

            def check(now: VmRecord, host: str = host) -> None:
                _refuse_deleting(now)
                if _host_of(now) != host:
                    raise _Reread()

            async def changed(revision: int = view.attachment_revision if view else 0) -> None:
                now = (await self._disks.get_many([name]))[0]
                if (now.attachment_revision if now else 0) != revision:
                    raise _Reread()

            try:
                update = await self._change(
                    ref, request.name, lambda spec: replace(spec, disks=tuple(d for d in spec.disks
                                                                              if d.disk_id != disk_id)),
                    etag=request.etag, check=check, guard=guard, also=writes,
                    exclusive=(keys.disk_prefix(tenant, project, disk_id),), on_conflict=changed)
            except _Reread:
                continue
            return _answer(update)
        raise errors.aborted(f"disk {name.name} or vm {request.name} kept changing; retry")

    async def _get_vm(self, ref: VmRef, name: str) -> VmRecord:
        try:
            return await self._store.get(ref)
        except NotFound as err:
            raise errors.not_found("vm", name) from err

    async def _get_disk(self, name: DiskName):
        view = (await self._disks.get_many([name]))[0]
        if view is None:
            raise errors.not_found("disk", name.name)
        return view

    # --- changes after create: one path (VmStore.update_spec) ------------------------------

    async def UpdateVm(self, request: vm_pb2.UpdateVmRequest, context) -> vm_pb2.Vm:
        vm = request.vm
        tenant, project, vm_id = validation.parse_vm_name(vm.name, "vm.name")
        require(Action.WRITE_VMS, tenant, project, kind="vm", name=vm.name)
        v = validation.Violations()
        paths = v.capture(validation.update_mask, list(request.update_mask.paths), UPDATABLE,
                          write_once=WRITE_ONCE)
        v.raise_if_any()
        paths = v.valid(paths)
        labels = dict(vm.labels)
        if "labels" in paths:
            v.capture(validation.validate_labels, labels, "vm.labels")
            if sum(len(k) + len(val) for k, val in labels.items()) > MAX_LABELS_BYTES:
                v.add("vm.labels", f"labels exceed {MAX_LABELS_BYTES} bytes in total")
        flavor = None
        if "flavor" in paths:
            flavor = self._catalog.flavor_for(tenant, vm.flavor)
            if not vm.flavor:
                v.add("vm.flavor", "required when the mask names flavor")
            elif flavor is None:
                known = ", ".join(sorted(self._catalog.flavors_for(tenant)))
                v.add("vm.flavor", f"unknown flavor {vm.flavor!r}; known: {known}")
        v.raise_if_any()

        def change(spec: VmSpec) -> VmSpec:
            if "labels" in paths:
                spec = replace(spec, labels=labels)
            if flavor is not None and vm.flavor != spec.flavor:
                # A resize: what the VM holds (quota, and its host's allocation) moves with it.
                spec = replace(spec, flavor=vm.flavor, resources=flavor.resources)
            return spec

        def check(record: VmRecord) -> None:
            _refuse_deleting(record)
            if flavor is not None and vm.flavor != record.spec.flavor:
                _refuse_disk_shrink(record, vm.flavor, flavor.resources.disk_gib)

        update = await self._change(VmRef(tenant, project, vm_id), vm.name, change, etag=vm.etag, check=check)
        return _answer(update)

    async def StartVm(self, request: vm_pb2.StartVmRequest, context) -> vm_pb2.Vm:
        tenant, project, vm_id = validation.parse_vm_name(request.name)
        require(Action.WRITE_VMS, tenant, project, kind="vm", name=request.name)
        at = now_ns()
        update = await self._change(
            VmRef(tenant, project, vm_id), request.name,
            lambda spec: spec if spec.power is Power.ON else replace(spec, power=Power.ON, power_time_ns=at),
            etag=request.etag, check=_refuse_deleting)
        return _answer(update)

    async def StopVm(self, request: vm_pb2.StopVmRequest, context) -> vm_pb2.Vm:
        tenant, project, vm_id = validation.parse_vm_name(request.name)
        require(Action.WRITE_VMS, tenant, project, kind="vm", name=request.name)
        mode, grace = _power_off(request)
        at = now_ns()
        # Stopped already (or stopping): a retry or a second stop writes nothing, but a
        # HARD stop forces a SOFT one that the guest may never finish.
        update = await self._change(VmRef(tenant, project, vm_id), request.name,
                                    lambda spec: spec.stopped(mode, grace, at), etag=request.etag,
                                    check=_refuse_pending_or_deleting)
        return _answer(update)

    async def RestartVm(self, request: vm_pb2.RestartVmRequest, context) -> vm_pb2.Vm:
        tenant, project, vm_id = validation.parse_vm_name(request.name)
        require(Action.WRITE_VMS, tenant, project, kind="vm", name=request.name)
        mode, grace = _power_off(request)
        validation.validate_request_id(request.request_id)
        at = now_ns()

        def change(spec: VmSpec) -> VmSpec:
            if request.request_id and spec.restart_request_id == request.request_id:
                return spec  # a retry of the restart that applied: no second restart
            return replace(spec, power=Power.ON, restarts=spec.restarts + 1, power_off_mode=mode,
                           power_off_grace_s=grace, power_time_ns=at, restart_request_id=request.request_id)

        update = await self._change(VmRef(tenant, project, vm_id), request.name, change, etag=request.etag,
                                    check=_refuse_pending_or_deleting)
        return _answer(update)

    async def _change(self, ref: VmRef, name: str, change: Callable[[VmSpec], VmSpec], *, etag: str,
                      check: Callable[[VmRecord], None], guard: Sequence = (), also: Sequence = (),
                      exclusive: Sequence[bytes] = (),
                      on_conflict: Callable[[], Awaitable[None]] | None = None) -> SpecUpdate:
        """``change`` through VmStore.update_spec, audited in its transaction; store
        outcomes as API errors. Nothing is written when it refuses. ``guard``, ``also``,
        ``exclusive``, ``on_conflict``: what the change takes besides the VM (update_spec)."""
        draft = audit_draft()
        try:
            update = await self._store.update_spec(ref, change, etag=etag, check=check, guard=guard,
                                                   also=[*also, *(await draft.writes() if draft else ())],
                                                   exclusive=exclusive, on_conflict=on_conflict)
        except NotFound as err:
            raise errors.not_found("vm", name) from err
        except EtagMismatch as err:
            raise errors.aborted(str(err), "ETAG_MISMATCH") from err
        except Conflict as err:  # lost compares, the etag (if any) matching
            raise errors.aborted(str(err)) from err
        except QuotaExceeded as err:
            raise errors.resource_exhausted(
                str(err), "QUOTA_EXCEEDED",
                metadata={"project": validation.project_name(ref.tenant, ref.project),
                          "dimensions": ",".join(err.dimensions)}) from err
        except ProjectDeleting as err:
            raise errors.failed_precondition(
                str(err), "PROJECT_DELETING",
                metadata={"project": validation.project_name(ref.tenant, ref.project)}) from err
        except HostFull as err:
            raise errors.failed_precondition(
                str(err), "HOST_FULL" if err.registered else "HOST_UNAVAILABLE",
                metadata={"host": err.host, "dimensions": ",".join(err.dimensions)}) from err
        if update.changed and draft:
            draft.committed()
        return update

    async def WatchVms(self, request: vm_pb2.WatchVmsRequest, context) -> AsyncIterator[vm_pb2.VmEvent]:
        async for batch in self._event_batches(request):
            for event in batch:
                yield event

    async def WatchVmBatches(self, request: vm_pb2.WatchVmBatchesRequest,
                             context) -> AsyncIterator[vm_pb2.VmEventBatch]:
        async for batch in self._event_batches(request):
            for events in by_size(batch, MAX_BATCH_BYTES, key=_revision):
                yield vm_pb2.VmEventBatch(events=events)

    async def _event_batches(self, request: vm_pb2.WatchVmsRequest | vm_pb2.WatchVmBatchesRequest
                             ) -> AsyncIterator[list[vm_pb2.VmEvent]]:
        """The events of a watch of ``request`` (validated and authorised first), in
        order, as they come: a page of the initial listing, the bookmark after it, or
        one batch of store changes (a bookmark when it has none); never an empty list."""
        v = validation.Violations()
        parent = v.capture(validation.parse_project_parent, request.parent)
        selector = v.capture(validation.parse_label_selector, request.label_selector)
        v.capture(validation.validate_resource_version, request.resource_version)
        v.raise_if_any()
        tenant, project = v.valid(parent)
        require(Action.READ, tenant, project, kind="project", name=request.parent)
        wanted = (lambda spec: validation.matches(selector, spec.labels)) if selector else (lambda spec: True)
        start = start_revision(request.resource_version, await self._store.current_revision())
        seed: list = []
        if request.resource_version == 0:
            after = None
            while True:
                records, after, _ = await self._store.list(tenant, project, page_size=1000, after=after,
                                                           revision=start)
                seed.extend(records)
                page = [vm_pb2.VmEvent(type=common_pb2.ADDED, vm=vm_to_proto(record),
                                       resource_version=record.resource_version)
                        for record in records if wanted(record.spec)]
                if after is None:
                    page.append(vm_pb2.VmEvent(type=common_pb2.BOOKMARK, resource_version=start))
                    yield page
                    break
                if page:
                    yield page
        changes = self._store.watch(tenant, project, start_revision=start + 1, seed=seed)
        try:
            async for item in watch_with_bookmarks(changes, self._bookmark_s):
                if item is None:
                    yield [vm_pb2.VmEvent(type=common_pb2.BOOKMARK, resource_version=start)]
                    continue
                batch = []
                for change in item:
                    start = max(start, change.revision)
                    if change.record is None or not wanted(change.record.spec):
                        continue
                    vm = vm_to_proto(change.record)
                    if change.deleted:
                        kind = common_pb2.DELETED
                        vm.resource_version = change.revision
                    else:
                        # A create writes spec and status in one txn; nothing else does.
                        created = change.record.spec_revision == change.record.status_revision == change.revision
                        kind = common_pb2.ADDED if created else common_pb2.MODIFIED
                    batch.append(vm_pb2.VmEvent(type=kind, vm=vm, resource_version=change.revision))
                if not item:
                    batch.append(vm_pb2.VmEvent(type=common_pb2.BOOKMARK, resource_version=start))
                if batch:
                    yield batch
        except Compacted as err:
            raise errors.watch_expired(request.resource_version) from err


def _revision(event: vm_pb2.VmEvent) -> int:
    return event.resource_version


#: The paths UpdateVm changes; and those it refuses by name (set at create only).
UPDATABLE = ("labels", "flavor")
WRITE_ONCE = ("bootstrap",)


def _answer(update: SpecUpdate) -> vm_pb2.Vm:
    vm = vm_to_proto(update.record)
    vm.resource_version = update.revision
    return vm


def _create_error(err: StoreError, parent: str, request_id: str, name: str) -> errors.ApiError:
    """The API error for a store outcome of a create (of the VM or set ``name``): the
    one mapping CreateVm and CreateVms share."""
    if isinstance(err, RequestMismatch):
        return errors.ApiError(grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED", str(err),
                               metadata={"request_id": request_id, "created": err.made})
    if isinstance(err, RequestReplayed):
        return errors.ApiError(grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_ALREADY_USED", str(err),
                               metadata={"request_id": request_id, "created": err.made})
    if isinstance(err, DiskMissing):
        return errors.not_found("disk", str(err))
    if isinstance(err, DiskInUse):
        return errors.failed_precondition(str(err), "DISK_IN_USE", metadata={"disk": err.disk, "vm": err.vm})
    if isinstance(err, DiskDeleting):
        return errors.failed_precondition(str(err), "DISK_DELETING", metadata={"disk": err.disk})
    if isinstance(err, AlreadyExists):
        # A set's admission names what was taken: the set or one of its members.
        taken = str(err) or name
        return errors.already_exists("vm set" if VmSetRef.from_name(taken) else "vm", taken)
    if isinstance(err, NotFound):
        return errors.not_found("project", parent)
    if isinstance(err, ProjectDeleting):
        return errors.failed_precondition(str(err), "PROJECT_DELETING", metadata={"project": parent})
    if isinstance(err, QuotaExceeded):
        return errors.resource_exhausted(str(err), "QUOTA_EXCEEDED",
                                         metadata={"project": parent, "dimensions": ",".join(err.dimensions)})
    if isinstance(err, PlanEnded):
        return errors.failed_precondition(str(err), "PLAN_EXPIRED")
    if isinstance(err, PoolExhausted):
        return errors.resource_exhausted(str(err), "ADDRESS_POOL_EXHAUSTED", metadata={"network": err.network})
    if isinstance(err, AddressInUse):
        # The VM does not exist: what is in the way is the address, a state of the
        # network the caller must change first (google.rpc: FAILED_PRECONDITION).
        return errors.failed_precondition(str(err), "ADDRESS_IN_USE", metadata={"network": err.network, "ip": err.ip})
    if isinstance(err, NetworkGone):
        return errors.failed_precondition(str(err), "NETWORK_DELETED", metadata={"network": err.network})
    if isinstance(err, Conflict):
        return errors.aborted(str(err))
    return error_for_exception(err)


def _set_too_large(err: SetTooLarge) -> errors.ApiError:
    return errors.invalid_argument(
        [("requests", str(err))], "SET_TOO_LARGE",
        metadata={"max_members": str(err.most), "max_members_with_bootstrap": str(err.most_with_bootstrap),
                  "max_txn_ops": str(err.limit)})


def _dry_run() -> None:
    """validate_only: the call writes nothing and is not audited, whatever its outcome."""
    draft = audit_draft()
    if draft:
        draft.dry_run()


def _refused(err: errors.ApiError) -> vm_pb2.CreateVmsResult:
    return vm_pb2.CreateVmsResult(code=err.code.value[0], reason=err.reason, message=err.message)


def _would_make(spec: VmSpec, host: str = "") -> vm_pb2.Vm:
    """What a validate_only create answers: the VM it would make, PENDING, with no uid,
    etag or resource_version (nothing was stored); its create_time is the check's;
    ``host``: where it would be placed now ("": nowhere)."""
    vm = vm_to_proto(VmRecord(spec, pending_status(spec), 0, 0))
    vm.uid = vm.etag = ""
    vm.host = host
    return vm


class _Reread(Exception):
    """What a disk change was decided on changed (the VM was placed or moved, the disk
    changed): read both again and decide again."""


def _too_many_disks(record: VmRecord) -> errors.ApiError:
    return errors.failed_precondition(
        f"vm {record.ref.name!r} has {len(record.spec.disks)} disks; at most {MAX_DISKS_PER_VM}",
        "TOO_MANY_DISKS", metadata={"name": record.ref.name})


def _host_of(record: VmRecord) -> str:
    """The host a VM is bound to ("" while it waits in its shard's queue)."""
    return "" if record.status.state == VmState.PENDING else record.status.host


def _refuse_deleting(record: VmRecord) -> None:
    """Every verb refuses a VM being deleted (FAILED_PRECONDITION, VM_DELETING)."""
    if record.spec.deleting:
        raise errors.failed_precondition(f"vm {record.ref.name!r} is being deleted", "VM_DELETING",
                                         metadata={"name": record.ref.name})


def _refuse_disk_shrink(record: VmRecord, flavor: str, disk_gib: int) -> None:
    """A resize grows the root disk or keeps it, never shrinks it (as Nova): a flavor
    with a smaller disk is refused (FAILED_PRECONDITION, DISK_SHRINK_UNSUPPORTED)."""
    current = record.spec.resources.disk_gib
    if disk_gib < current:
        raise errors.failed_precondition(
            f"flavor {flavor!r} has a {disk_gib} GiB disk, smaller than the {current} GiB of vm "
            f"{record.ref.name!r}: a resize never shrinks a disk", "DISK_SHRINK_UNSUPPORTED",
            metadata={"name": record.ref.name, "flavor": flavor, "current_disk_gib": str(current),
                      "requested_disk_gib": str(disk_gib)})


def _refuse_pending_or_deleting(record: VmRecord) -> None:
    """Stop and restart also refuse a VM not placed (FAILED_PRECONDITION, VM_PENDING):
    there is nothing running to power off. Decided on the record update_spec compares."""
    _refuse_deleting(record)
    if record.status.state is VmState.PENDING:
        raise errors.failed_precondition(f"vm {record.ref.name!r} is pending (not placed on a host yet)",
                                         "VM_PENDING", metadata={"name": record.ref.name})


def _power_off(request: vm_pb2.StopVmRequest | vm_pb2.RestartVmRequest) -> tuple[PowerOffMode, int]:
    """(mode, grace in seconds) of a stop or restart; INVALID_ARGUMENT for an unknown
    mode or a grace that is negative or above MAX_STOP_GRACE_S."""
    v = validation.Violations()
    if request.mode not in POWER_OFF_MODE_FROM_PROTO:
        v.add("mode", f"unknown power-off mode {request.mode}; SOFT or HARD")
    grace = v.capture(validation.duration_seconds, request.grace.seconds, request.grace.nanos,
                      default=DEFAULT_STOP_GRACE_S, maximum=MAX_STOP_GRACE_S, field="grace")
    v.raise_if_any()
    return POWER_OFF_MODE_FROM_PROTO[request.mode], v.valid(grace)


def _bootstrap_data(vm: vm_pb2.Vm, uid: str, vm_id: str, v: validation.Violations,
                    field: str = "vm.bootstrap") -> BootstrapData | None:
    """The bootstrap data a create stores (None when ``vm.bootstrap`` is unset), its
    problems added to ``v`` under ``field``. Secret: no description repeats any of it."""
    if not vm.HasField("bootstrap"):
        return None
    b = vm.bootstrap
    for name in ("size_bytes", "sha256", "state"):
        if getattr(b, name):
            v.add(f"{field}.{name}", "output only; leave it unset")
    if b.format not in BOOTSTRAP_FORMAT_FROM_PROTO:
        v.add(f"{field}.format", f"unknown format {b.format}; CLOUD_INIT or IGNITION")
        return None
    fmt = BOOTSTRAP_FORMAT_FROM_PROTO[b.format]
    if not b.user_data and not b.HasField("metadata"):
        v.add(field, "set user_data or metadata, or leave bootstrap unset")
    if len(b.user_data) > MAX_USER_DATA_BYTES:
        v.add(f"{field}.user_data", f"{len(b.user_data)} bytes; at most {MAX_USER_DATA_BYTES}")
        v.reason = "USER_DATA_TOO_LARGE"
    elif fmt is BootstrapFormat.IGNITION and b.user_data and not _json_object(b.user_data):
        v.add(f"{field}.user_data", "an Ignition config must be a JSON object (UTF-8)")
    m = b.metadata
    problems = validation.bootstrap_metadata_violations(
        instance_id=m.instance_id, hostname=m.hostname, ssh_authorized_keys=list(m.ssh_authorized_keys),
        values=m.values, field=f"{field}.metadata")
    if problems:
        for path, why in problems:
            v.add(path, why)
        return None
    metadata = bootstrap.render_metadata(instance_id=m.instance_id or uid, hostname=m.hostname or vm_id,
                                         ssh_authorized_keys=list(m.ssh_authorized_keys), values=dict(m.values))
    if len(metadata) > MAX_METADATA_BYTES:
        v.add(f"{field}.metadata", f"{len(metadata)} bytes as rendered; at most {MAX_METADATA_BYTES}")
        v.reason = v.reason or "METADATA_TOO_LARGE"
    return BootstrapData(uid, fmt, b.user_data, metadata)


def _json_object(data: bytes) -> bool:
    try:
        return isinstance(json.loads(data.decode("utf-8")), dict)
    except (UnicodeDecodeError, ValueError):
        return False


def encode_or_empty(scope: str, revision: int, next_ref: VmRef | None) -> str:
    return validation.encode_page_token(scope, revision, next_ref.vm_id) if next_ref else ""


def _fingerprint(request: vm_pb2.CreateVmRequest, spec: VmSpec) -> bytes:
    """What makes a create with ``request``'s request_id the same request
    (:mod:`controlplane.store.idempotency`): the spec's chosen fields, and the
    bootstrap metadata as the request gave it (it is not in the spec)."""
    metadata = b""
    if spec.bootstrap is not None:
        m = request.vm.bootstrap.metadata
        metadata = idempotency.metadata_digest(
            instance_id=m.instance_id, hostname=m.hostname, ssh_authorized_keys=list(m.ssh_authorized_keys),
            values=m.values)
    return idempotency.fingerprint(spec, chosen_id=bool(request.vm_id), metadata=metadata)


def _nics(nics: Sequence[vm_pb2.NetworkInterface], networks: Mapping[str, NetworkView], v: validation.Violations,
          field: str) -> tuple[Nic, ...]:
    """The NICs a create asks for, as its spec holds them (each a copy of what its
    network says: full name, uid, backing, and for static modes the subnet's prefix,
    gateway and DNS; a STATIC_POOL address and every MAC are picked at commit), problems added to
    ``v`` under ``field``. ``networks``: what each reference means (absent: unknown,
    or not the caller's to use: told apart from nothing, so nothing leaks). Pure."""
    if len(nics) > MAX_NICS:
        v.add(field, f"{len(nics)} NICs; at most {MAX_NICS}")
        return ()
    out: list[Nic] = []
    statics: set[tuple[str, str]] = set()
    for i, nic in enumerate(nics):
        at = f"{field}[{i}]"
        for name in ("prefix_length", "gateway", "dns_servers", "backing", "mac_address"):
            if getattr(nic, name):
                v.add(f"{at}.{name}", "output only; leave it unset")
        if nic.address_mode not in ADDRESS_MODE_FROM_PROTO:
            v.add(f"{at}.address_mode", f"unknown address mode {nic.address_mode}; DHCP, STATIC_POOL or STATIC")
            continue
        mode = ADDRESS_MODE_FROM_PROTO[nic.address_mode]
        if not nic.network:
            v.add(f"{at}.network", "required: a network id of the project or the tenant, or its full name")
            continue
        view = networks.get(nic.network)
        if view is None:
            v.add(f"{at}.network", f"unknown network {nic.network!r}")
            continue
        network = view.network
        subnet = network.subnet
        if mode is not AddressMode.STATIC and nic.ip:
            v.add(f"{at}.ip", "only for address_mode STATIC (a STATIC_POOL address is chosen by Quanta)")
            continue
        if mode is not AddressMode.DHCP and subnet is None:
            v.add(f"{at}.address_mode", f"network {network.name!r} has no subnet: DHCP only")
            continue
        if mode is AddressMode.STATIC:
            assert subnet is not None
            problem = "required for address_mode STATIC" if not nic.ip else static_problem(subnet, nic.ip)
            if problem:
                v.add(f"{at}.ip", problem)
                continue
            if (network.backing, nic.ip) in statics:  # one pool per port group, whichever network
                v.add(f"{at}.ip", f"{nic.ip} is also another NIC's")
                continue
            statics.add((network.backing, nic.ip))
        static = subnet is not None and mode is not AddressMode.DHCP
        out.append(Nic(network.name, network.uid, network.backing, mode, nic.ip if mode is AddressMode.STATIC else "",
                       subnet.prefix_length if static and subnet else 0, subnet.gateway if static and subnet else "",
                       subnet.dns_servers if static and subnet else ()))
    return tuple(out)


def _static_twice(spec: VmSpec, seen: dict[tuple[str, str], int], i: int, v: validation.Violations,
                  at: str) -> bool:
    """True (with a violation in ``v``) when a STATIC address of ``spec`` (request ``i``
    of a set or plan) is also one of an earlier request's (``seen``, filled here)."""
    clash = False
    for j, nic in enumerate(spec.nics):
        if nic.address_mode is AddressMode.STATIC:
            other = seen.setdefault((nic.backing, nic.ip), i)  # one pool per port group
            if other != i:
                v.add(f"{at}vm.nics[{j}].ip", f"{nic.ip} is also requests[{other}]'s")
                clash = True
    return clash


def _by_name(networks: Mapping[str, NetworkView]) -> dict[str, NetworkView]:
    """The resolved networks by full name (as a spec's NICs name them)."""
    return {view.network.name: view for view in networks.values()}
