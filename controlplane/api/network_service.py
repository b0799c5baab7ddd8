"""quanta.v1.NetworkService: networks of a project (its members manage them) and a
tenant's shared networks (tenant admins manage them; every project of the tenant
reads and uses them). Another tenant's network is NOT_FOUND, never listed.

Every mutation is audited in its own transaction (the audit draft's writes go with
it). Store outcomes map to API errors in one place (:func:`_store_error`).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator

import grpc

from controlplane import backings
from controlplane.addressing import parse_subnet
from controlplane.api import errors, paging, validation
from controlplane.api.access import audit_draft, require
from controlplane.api.convert import network_to_proto
from controlplane.api.interceptors import error_for_exception
from controlplane.api.streams import start_revision, watch_with_bookmarks
from controlplane.auth.policy import Action
from controlplane.etcd import Compacted
from controlplane.gen.quanta.v1 import common_pb2, network_pb2, network_pb2_grpc
from controlplane.models import now_ns
from controlplane.store.errors import (
    AlreadyExists,
    Conflict,
    EtagMismatch,
    NotFound,
    RequestMismatch,
    RequestReplayed,
    StoreError,
)
from controlplane.store.networks import (
    SHARED,
    BackingNotGranted,
    GatewayInUse,
    Network,
    NetworkInUse,
    NetworkStore,
    NetworkView,
    network_name,
)

MAX_DESCRIPTION = 1024
UPDATABLE = ("labels", "description", "subnet.dns_servers")


def _owner_name(tenant: str, project: str) -> str:
    return f"tenants/{tenant}" if project == SHARED else validation.project_name(tenant, project)


def _require_write(tenant: str, project: str, name: str) -> None:
    """A project's members (and tenant admins) manage its networks; only tenant admins
    manage the tenant's shared ones."""
    if project == SHARED:
        require(Action.ADMIN, tenant, kind="network", name=name)
    else:
        require(Action.WRITE_VMS, tenant, project, kind="network", name=name)


def _require_read(tenant: str, project: str, name: str, kind: str = "network") -> None:
    require(Action.READ, tenant, None if project == SHARED else project, kind=kind, name=name)


def _check_position(position: str) -> None:
    """A ListNetworks page token's position: "p:{id}" in the project's networks,
    "s:{id}" in the tenant's shared ones (no id: that section's start)."""
    section, _, after = position.partition(":")
    if section not in ("p", "s") or (after and not validation.RESOURCE_ID.match(after)):
        raise validation.invalid_page_token("not a token of this listing")


def _store_error(err: StoreError, kind: str, name: str, request_id: str = "") -> errors.ApiError:
    if isinstance(err, RequestMismatch):
        return errors.ApiError(grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED", str(err),
                               metadata={"request_id": request_id, "created": err.made})
    if isinstance(err, RequestReplayed):
        return errors.ApiError(grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_ALREADY_USED", str(err),
                               metadata={"request_id": request_id, "created": err.made})
    if isinstance(err, AlreadyExists):
        return errors.already_exists("network", name)
    if isinstance(err, NotFound):
        return errors.not_found(kind, name)
    if isinstance(err, BackingNotGranted):
        return errors.ApiError(grpc.StatusCode.PERMISSION_DENIED, "BACKING_NOT_GRANTED", str(err),
                               metadata={"backing": err.backing, "tenant": err.tenant},
                               field_violations=[("network.backing", f"{err.backing!r} is not granted to the tenant")])
    if isinstance(err, GatewayInUse):
        return errors.ApiError(grpc.StatusCode.FAILED_PRECONDITION, "ADDRESS_IN_USE", str(err),
                               metadata={"network": err.name, "ip": err.gateway},
                               field_violations=[("network.subnet.gateway",
                                                  f"{err.gateway} is an address a VM holds on the backing")])
    if isinstance(err, NetworkInUse):
        return errors.failed_precondition(str(err), "NETWORK_IN_USE", metadata={"name": name, "vms": str(err.vms)})
    if isinstance(err, EtagMismatch):
        return errors.aborted(str(err), "ETAG_MISMATCH")
    if isinstance(err, Conflict):
        return errors.aborted(str(err))
    return error_for_exception(err)


def _check_text(v: validation.Violations, network: network_pb2.Network, field: str = "network") -> None:
    v.capture(validation.validate_labels, network.labels, f"{field}.labels")
    if len(network.description) > MAX_DESCRIPTION:
        v.add(f"{field}.description", f"{len(network.description)} characters; at most {MAX_DESCRIPTION}")


class NetworkService(network_pb2_grpc.NetworkServiceServicer):
    def __init__(self, store: NetworkStore, *, bookmark_s: float = 10.0):
        self._store = store
        self._bookmark_s = bookmark_s

    async def CreateNetwork(self, request: network_pb2.CreateNetworkRequest, context) -> network_pb2.Network:
        v = validation.Violations()
        owner = v.capture(validation.parse_network_owner, request.parent)
        v.capture(validation.validate_resource_id, request.network_id, "network_id", "network id")
        v.capture(validation.validate_request_id, request.request_id)
        n = request.network
        _check_text(v, n)
        backing = n.backing
        if not backing:
            v.add("network.backing", "required: the port group on the hosts (one granted to the tenant)")
        elif (why := backings.name_problem(backing)) is not None:
            v.add("network.backing", why)
        for out_field in ("name", "uid", "etag", "addresses_used", "addresses_total", "resource_version"):
            if getattr(n, out_field):
                v.add(f"network.{out_field}", "output only; leave it unset")
        subnet = None
        if n.HasField("subnet"):
            s = n.subnet
            subnet, problems = parse_subnet(s.cidr, s.gateway, list(s.dns_servers), s.range_start, s.range_end,
                                            field="network.subnet")
            for path, why in problems:
                v.add(path, why)
        v.raise_if_any()
        tenant, project = v.valid(owner)
        name = network_name(tenant, project, request.network_id)
        _require_write(tenant, project, name)
        at = now_ns()
        network = Network(tenant, project, request.network_id, uuid.uuid4().hex, backing, dict(n.labels),
                          n.description, subnet, at, at, request.request_id)
        draft = audit_draft()
        try:
            view, created = await self._store.create(network, fingerprint=_fingerprint(request),
                                                     also=await draft.writes() if draft else ())
        except NotFound as err:
            raise errors.not_found("tenant" if project == SHARED else "project", request.parent) from err
        except StoreError as err:
            raise _store_error(err, "network", name, request.request_id) from err
        if created and draft:
            draft.committed()
        return network_to_proto(view)

    async def GetNetwork(self, request: network_pb2.GetNetworkRequest, context) -> network_pb2.Network:
        tenant, project, network_id = validation.parse_network_name(request.name)
        _require_read(tenant, project, request.name)
        try:
            return network_to_proto(await self._store.get(tenant, project, network_id))
        except NotFound as err:
            raise errors.not_found("network", request.name) from err

    async def ListNetworks(self, request: network_pb2.ListNetworksRequest,
                           context) -> network_pb2.ListNetworksResponse:
        listing = paging.project_listing(
            "networks", request.parent, request.page_size, request.label_selector, request.page_token,
            parse_parent=validation.parse_network_owner, shape=[str(int(request.include_shared))],
            project_only=("include_shared",) if request.include_shared else (), check_position=_check_position)
        tenant, project, size, selector, revision = (listing.tenant, listing.project, listing.size,
                                                     listing.selector, listing.revision)
        section, _, after = listing.after.partition(":")
        sections = [(project, "p")] + ([(SHARED, "s")] if request.include_shared else [])
        if section == "s":
            sections = sections[1:]

        def wanted(network: Network) -> bool:
            return validation.matches(selector, network.labels)

        views: list[NetworkView] = []
        next_position = ""
        try:
            # One revision for the whole listing: the first read's, then every later one at it.
            for i, (owner_project, tag) in enumerate(sections):
                if len(views) >= size:
                    next_position = f"{tag}:"
                    break
                page, last, revision = await self._store.list(
                    tenant, owner_project, page_size=size - len(views), after=after if i == 0 else "",
                    revision=revision, selector=wanted if selector else None)
                views += page
                if last:
                    next_position = f"{tag}:{last}"
                    break
        except Compacted as err:
            raise errors.page_token_expired() from err
        token_out = validation.encode_page_token(listing.scope, revision, next_position) if next_position else ""
        return network_pb2.ListNetworksResponse(networks=[network_to_proto(view) for view in views],
                                                next_page_token=token_out, resource_version=revision)

    async def UpdateNetwork(self, request: network_pb2.UpdateNetworkRequest, context) -> network_pb2.Network:
        n = request.network
        v = validation.Violations()
        parsed = v.capture(validation.parse_network_name, n.name, "network.name")
        mask = list(request.update_mask.paths)
        paths = set(UPDATABLE) if mask == ["*"] else v.capture(validation.mask_paths, mask, UPDATABLE)
        _check_text(v, n)
        if n.HasField("subnet"):
            for i, server in enumerate(n.subnet.dns_servers):
                _, problems = parse_subnet("192.0.2.0/24", dns_servers=[server], field="network.subnet")
                for _path, why in problems:
                    v.add(f"network.subnet.dns_servers[{i}]", why)
        v.raise_if_any()
        tenant, project, network_id = v.valid(parsed)
        paths = v.valid(paths)
        _require_write(tenant, project, n.name)

        def change(network: Network) -> Network:
            labels = dict(n.labels) if "labels" in paths else network.labels
            description = n.description if "description" in paths else network.description
            subnet = network.subnet
            if "subnet.dns_servers" in paths:
                if subnet is None:
                    raise errors.failed_precondition(f"network {n.name!r} has no subnet", "NETWORK_HAS_NO_SUBNET",
                                                     metadata={"name": n.name})
                subnet = type(subnet)(subnet.cidr, subnet.gateway, tuple(n.subnet.dns_servers), subnet.range_start,
                                      subnet.range_end)
            return Network(network.tenant, network.project, network.network_id, network.uid, network.backing,
                           labels, description, subnet, network.create_time_ns, network.update_time_ns,
                           network.request_id)

        draft = audit_draft()
        try:
            view, changed = await self._store.update(tenant, project, network_id, change, etag=n.etag,
                                                     also=await draft.writes() if draft else ())
        except StoreError as err:
            raise _store_error(err, "network", n.name) from err
        if changed and draft:
            draft.committed()
        return network_to_proto(view)

    async def DeleteNetwork(self, request: network_pb2.DeleteNetworkRequest, context) -> network_pb2.Network:
        tenant, project, network_id = validation.parse_network_name(request.name)
        _require_write(tenant, project, request.name)
        draft = audit_draft()
        try:
            view = await self._store.delete(tenant, project, network_id, etag=request.etag,
                                            also=await draft.writes() if draft else ())
        except StoreError as err:
            raise _store_error(err, "network", request.name) from err
        if draft:
            draft.committed()
        return network_to_proto(view)

    async def WatchNetworks(self, request: network_pb2.WatchNetworksRequest,
                            context) -> AsyncIterator[network_pb2.NetworkEvent]:
        v = validation.Violations()
        owner = v.capture(validation.parse_network_owner, request.parent)
        selector = v.capture(validation.parse_label_selector, request.label_selector)
        v.capture(validation.validate_resource_version, request.resource_version)
        v.raise_if_any()
        tenant, project = v.valid(owner)
        _require_read(tenant, project, request.parent, "tenant" if project == SHARED else "project")

        def wanted(network: Network) -> bool:
            return not selector or validation.matches(selector, network.labels)

        start = start_revision(request.resource_version, await self._store.current_revision())
        if request.resource_version == 0:
            after = ""
            while True:
                views, after, _ = await self._store.list(tenant, project, page_size=1000, after=after,
                                                         revision=start)
                for view in views:
                    if wanted(view.network):
                        yield network_pb2.NetworkEvent(type=common_pb2.ADDED, network=network_to_proto(view),
                                                       resource_version=view.revision)
                if not after:
                    break
            yield network_pb2.NetworkEvent(type=common_pb2.BOOKMARK, resource_version=start)
        try:
            changes = self._store.watch(tenant, project, start_revision=start + 1)
            async for item in watch_with_bookmarks(changes, self._bookmark_s):
                if item is None:
                    yield network_pb2.NetworkEvent(type=common_pb2.BOOKMARK, resource_version=start)
                    continue
                for change in item:
                    start = max(start, change.revision)
                    if not wanted(change.view.network):
                        continue
                    network = network_to_proto(change.view)
                    if change.deleted:
                        kind = common_pb2.DELETED
                        network.resource_version = change.revision
                    else:
                        kind = common_pb2.ADDED if change.view.create_revision == change.revision \
                            else common_pb2.MODIFIED
                    yield network_pb2.NetworkEvent(type=kind, network=network, resource_version=change.revision)
                if not item:
                    yield network_pb2.NetworkEvent(type=common_pb2.BOOKMARK, resource_version=start)
        except Compacted as err:
            raise errors.watch_expired(request.resource_version) from err


def _fingerprint(request: network_pb2.CreateNetworkRequest) -> bytes:
    """What makes two creates with one request_id the same request: what the caller
    chose (the id, labels, description, backing, subnet)."""
    chosen = network_pb2.CreateNetworkRequest(parent=request.parent, network_id=request.network_id,
                                              network=request.network)
    return hashlib.sha256(b"network-create-v1\0" + chosen.SerializeToString(deterministic=True)).digest()
