"""quanta.v1.VmService: validate, then read or write desired state in etcd.

Stateless: everything it knows comes from etcd (the flavor/image catalog is a
watched cache). Create returns at once with the VM PENDING.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import grpc
from prometheus_client import Counter

from controlplane.api import errors, validation
from controlplane.api.access import audit_draft, require
from controlplane.api.convert import RESTART_POLICY_FROM_PROTO, SCOPE_FROM_PROTO, vm_to_proto
from controlplane.api.streams import start_revision, watch_with_bookmarks
from controlplane.auth.policy import Action
from controlplane.etcd import Compacted
from controlplane.gen.quanta.v1 import common_pb2, vm_pb2, vm_pb2_grpc
from controlplane.models import Scope, VmRef, VmSpec, now_ns
from controlplane.store import idempotency
from controlplane.store.catalog import Catalog
from controlplane.store.errors import AlreadyExists, Conflict, NotFound, RequestMismatch, RequestReplayed
from controlplane.store.keys import shard_of
from controlplane.store.ledger import ProjectDeleting, QuotaExceeded
from controlplane.store.vms import VmStore

CREATIONS_ACCEPTED = Counter("quanta_vm_creations_accepted_total", "VM creations accepted by the API.")

MAX_LABELS_BYTES = 16 * 1024


class VmService(vm_pb2_grpc.VmServiceServicer):
    def __init__(self, store: VmStore, catalog: Catalog, *, shards: int, bookmark_s: float = 10.0):
        self._store = store
        self._catalog = catalog
        self._shards = shards
        self._bookmark_s = bookmark_s

    async def CreateVm(self, request: vm_pb2.CreateVmRequest, context) -> vm_pb2.Vm:
        v = validation.Violations()
        parent = v.capture(validation.parse_project_parent, request.parent)
        # The id is optional (DESIGN.md): without one the server assigns "vm-<random>".
        vm_id = request.vm_id or f"vm-{uuid.uuid4().hex[:16]}"
        v.capture(validation.validate_resource_id, vm_id, "vm_id", "VM id")
        vm = request.vm
        if parent:
            require(Action.WRITE_VMS, *parent, kind="project", name=request.parent)
        flavor = self._catalog.flavor_for(parent[0], vm.flavor) if parent else None
        if not vm.flavor:
            v.add("vm.flavor", "required")
        elif parent and flavor is None:
            known = ", ".join(sorted(self._catalog.flavors_for(parent[0])))
            v.add("vm.flavor", f"unknown flavor {vm.flavor!r}; known: {known}")
        if not vm.image:
            v.add("vm.image", "required")
        elif vm.image not in self._catalog.images:
            v.add("vm.image", f"unknown image {vm.image!r}; known: {', '.join(sorted(self._catalog.images))}")
        v.capture(validation.validate_labels, vm.labels, "vm.labels")
        if sum(len(k) + len(val) for k, val in vm.labels.items()) > MAX_LABELS_BYTES:
            v.add("vm.labels", f"labels exceed {MAX_LABELS_BYTES} bytes in total")
        v.capture(validation.validate_labels, vm.node_selector, "vm.node_selector")
        if vm.anti_affinity_group:
            v.capture(validation.validate_resource_id, vm.anti_affinity_group, "vm.anti_affinity_group",
                      "anti-affinity group")
        if vm.anti_affinity_scope not in SCOPE_FROM_PROTO:
            v.add("vm.anti_affinity_scope", f"unknown scope {vm.anti_affinity_scope}; HOST or ZONE")
        elif SCOPE_FROM_PROTO[vm.anti_affinity_scope] is Scope.ZONE and not vm.anti_affinity_group:
            v.add("vm.anti_affinity_scope", "ZONE needs an anti_affinity_group")
        if vm.affinity_group:
            v.capture(validation.validate_resource_id, vm.affinity_group, "vm.affinity_group", "affinity group")
        if vm.affinity_scope not in SCOPE_FROM_PROTO:
            v.add("vm.affinity_scope", f"unknown scope {vm.affinity_scope}; HOST or ZONE")
        elif SCOPE_FROM_PROTO[vm.affinity_scope] is Scope.ZONE and not vm.affinity_group:
            v.add("vm.affinity_scope", "ZONE needs an affinity_group")
        if vm.restart_policy not in RESTART_POLICY_FROM_PROTO:
            v.add("vm.restart_policy", f"unknown restart policy {vm.restart_policy}; ALWAYS or NEVER")
        v.capture(validation.validate_request_id, request.request_id)
        if vm.name and parent and vm.name != validation.vm_name(*parent, vm_id):
            v.add("vm.name", "output only; leave empty or equal to parent/vms/vm_id")
        v.raise_if_any()
        tenant, project = v.valid(parent)
        flavor = v.valid(flavor)
        uid = uuid.uuid4().hex
        spec = VmSpec(
            ref=VmRef(tenant, project, vm_id), uid=uid, flavor=vm.flavor, image=vm.image,
            resources=flavor.resources, labels=dict(vm.labels),
            request_id=request.request_id, create_time_ns=now_ns(), shard=shard_of(uid, self._shards),
            node_selector=dict(vm.node_selector), anti_affinity_group=vm.anti_affinity_group,
            restart_policy=RESTART_POLICY_FROM_PROTO[vm.restart_policy],
            anti_affinity_scope=SCOPE_FROM_PROTO[vm.anti_affinity_scope], affinity_group=vm.affinity_group,
            affinity_scope=SCOPE_FROM_PROTO[vm.affinity_scope],
        )
        draft = audit_draft()
        try:
            record, created = await self._store.create(
                spec, also=await draft.writes() if draft else (),
                fingerprint=idempotency.fingerprint(spec, chosen_id=bool(request.vm_id)))
        except RequestMismatch as err:
            raise errors.ApiError(grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED", str(err),
                                  metadata={"request_id": request.request_id, "created": err.made}) from err
        except RequestReplayed as err:
            raise errors.ApiError(grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_ALREADY_USED", str(err),
                                  metadata={"request_id": request.request_id, "created": err.made}) from err
        except AlreadyExists as err:
            raise errors.already_exists("vm", spec.ref.name) from err
        except NotFound as err:
            raise errors.not_found("project", request.parent) from err
        except ProjectDeleting as err:
            raise errors.failed_precondition(str(err), "PROJECT_DELETING",
                                             metadata={"project": request.parent}) from err
        except QuotaExceeded as err:
            raise errors.resource_exhausted(
                str(err), "QUOTA_EXCEEDED",
                metadata={"project": request.parent, "dimensions": ",".join(err.dimensions)}) from err
        except Conflict as err:
            raise errors.aborted(str(err)) from err
        if created:
            CREATIONS_ACCEPTED.inc()
            if draft:
                draft.committed()
        return vm_to_proto(record)

    async def GetVm(self, request: vm_pb2.GetVmRequest, context) -> vm_pb2.Vm:
        tenant, project, vm_id = validation.parse_vm_name(request.name)
        require(Action.READ, tenant, project, kind="vm", name=request.name)
        try:
            return vm_to_proto(await self._store.get(VmRef(tenant, project, vm_id)))
        except NotFound as err:
            raise errors.not_found("vm", request.name) from err

    async def ListVms(self, request: vm_pb2.ListVmsRequest, context) -> vm_pb2.ListVmsResponse:
        v = validation.Violations()
        parent = v.capture(validation.parse_project_parent, request.parent)
        size = v.capture(validation.page_size, request.page_size)
        selector = v.capture(validation.parse_label_selector, request.label_selector)
        v.raise_if_any()
        tenant, project = v.valid(parent)
        size, selector = v.valid(size), v.valid(selector)
        require(Action.READ, tenant, project, kind="project", name=request.parent)
        scope = f"vms|{request.parent}|{validation.format_label_selector(selector)}"
        token = validation.decode_page_token(request.page_token, scope)
        revision, after_vm = token if token else (0, "")
        if after_vm:
            validation.validate_resource_id(after_vm, "page_token", "page token position")
        keys_after = VmRef(tenant, project, after_vm) if after_vm else None
        try:
            records, next_ref, revision = await self._store.list(
                tenant, project, page_size=size, after=keys_after, revision=revision,
                selector=(lambda spec: validation.matches(selector, spec.labels)) if selector else None,
            )
        except Compacted as err:
            raise errors.out_of_range("the listing's revision was compacted; start it again",
                                      "PAGE_TOKEN_EXPIRED") from err
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
            deletion = await self._store.request_delete(ref, etag=request.etag,
                                                        also=await draft.writes() if draft else ())
        except NotFound as err:
            raise errors.not_found("vm", request.name) from err
        except Conflict as err:
            raise errors.aborted(str(err), "ETAG_MISMATCH" if request.etag else "CONFLICT") from err
        if deletion.changed and draft:
            draft.committed()
        vm = vm_to_proto(deletion.record)
        vm.resource_version = deletion.revision
        return vm

    async def WatchVms(self, request: vm_pb2.WatchVmsRequest, context) -> AsyncIterator[vm_pb2.VmEvent]:
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
                for record in records:
                    if wanted(record.spec):
                        yield vm_pb2.VmEvent(type=common_pb2.ADDED, vm=vm_to_proto(record),
                                             resource_version=record.resource_version)
                if after is None:
                    break
            yield vm_pb2.VmEvent(type=common_pb2.BOOKMARK, resource_version=start)
        changes = self._store.watch(tenant, project, start_revision=start + 1, seed=seed)
        try:
            async for item in watch_with_bookmarks(changes, self._bookmark_s):
                if item is None:
                    yield vm_pb2.VmEvent(type=common_pb2.BOOKMARK, resource_version=start)
                    continue
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
                    yield vm_pb2.VmEvent(type=kind, vm=vm, resource_version=change.revision)
                if not item:
                    yield vm_pb2.VmEvent(type=common_pb2.BOOKMARK, resource_version=start)
        except Compacted as err:
            raise errors.out_of_range(
                f"resource_version {request.resource_version} is too old; list again and watch from its "
                "resource_version", "RESOURCE_VERSION_EXPIRED") from err


def encode_or_empty(scope: str, revision: int, next_ref: VmRef | None) -> str:
    return validation.encode_page_token(scope, revision, next_ref.vm_id) if next_ref else ""
