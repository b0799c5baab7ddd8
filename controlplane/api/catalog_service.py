"""quanta.v1.FlavorService and ImageService: the catalog VMs are made from.

Public flavors and images are readable by every caller and written by system
admins; a tenant's private flavors are written by its admins and seen only within
it. Reads come from the frontend's watched catalog; writes wait until that catalog
shows them, so a create that follows on the same frontend sees the new entry.
"""

from __future__ import annotations

from controlplane.api import errors, validation
from controlplane.api.access import require
from controlplane.api.convert import flavor_to_proto, image_to_proto
from controlplane.api.paging import page
from controlplane.auth.policy import Action
from controlplane.gen.quanta.v1 import catalog_pb2, catalog_pb2_grpc
from controlplane.models import Flavor, Image, Resources
from controlplane.store.catalog import Catalog
from controlplane.store.errors import AlreadyExists, Conflict, NotFound
from controlplane.store.keys import Keys
from controlplane.store.records import KeyedRecords

_MAX_VCPUS = 1024
_MAX_MEMORY_MIB = 24 * 1024 * 1024
_MAX_DISK_GIB = 64 * 1024


def _resource_violations(v: validation.Violations, r, field: str) -> None:
    for name, value, cap in (("vcpus", r.vcpus, _MAX_VCPUS), ("memory_mib", r.memory_mib, _MAX_MEMORY_MIB),
                             ("disk_gib", r.disk_gib, _MAX_DISK_GIB)):
        if not 0 < value <= cap:
            v.add(f"{field}.{name}", f"must be between 1 and {cap}")


def _flavor_name(tenant: str, flavor_id: str) -> str:
    return f"tenants/{tenant}/flavors/{flavor_id}" if tenant else f"flavors/{flavor_id}"


class FlavorService(catalog_pb2_grpc.FlavorServiceServicer):
    def __init__(self, records: KeyedRecords, keys: Keys, catalog: Catalog):
        self._records = records
        self._keys = keys
        self._catalog = catalog

    def _key(self, tenant: str, flavor_id: str) -> bytes:
        return self._keys.tenant_flavor(tenant, flavor_id) if tenant else self._keys.flavor(flavor_id)

    def _require_write(self, tenant: str, name: str) -> None:
        require(Action.ADMIN if tenant else Action.SYSTEM, tenant, kind="flavor", name=name)

    async def CreateFlavor(self, request: catalog_pb2.CreateFlavorRequest, context) -> catalog_pb2.Flavor:
        v = validation.Violations()
        tenant = v.capture(validation.parse_flavor_parent, request.parent)
        v.capture(validation.validate_resource_id, request.flavor_id, "flavor_id", "flavor id")
        _resource_violations(v, request.flavor.resources, "flavor.resources")
        v.raise_if_any()
        tenant = v.valid(tenant)
        name = _flavor_name(tenant, request.flavor_id)
        if tenant:
            require(Action.ADMIN, tenant, kind="tenant", name=request.parent)
        else:
            require(Action.SYSTEM, kind="flavor", name=name)
        r = request.flavor.resources
        flavor = Flavor(request.flavor_id, Resources(r.vcpus, r.memory_mib, r.disk_gib))
        try:
            revision = await self._records.create(self._key(tenant, request.flavor_id), flavor.to_bytes())
        except AlreadyExists as err:
            raise errors.already_exists("flavor", name) from err
        await self._catalog.wait_for_flavor(revision, private=bool(tenant))
        return flavor_to_proto(flavor, name, not tenant, revision)

    async def GetFlavor(self, request: catalog_pb2.GetFlavorRequest, context) -> catalog_pb2.Flavor:
        tenant, flavor_id = validation.parse_flavor_name(request.name)
        require(Action.READ, tenant, kind="flavor", name=request.name)
        try:
            value, revision = await self._records.get(self._key(tenant, flavor_id))
        except NotFound as err:
            raise errors.not_found("flavor", request.name) from err
        return flavor_to_proto(Flavor.from_bytes(value), request.name, not tenant, revision)

    async def ListFlavors(self, request: catalog_pb2.ListFlavorsRequest, context) -> catalog_pb2.ListFlavorsResponse:
        tenant = validation.parse_flavor_parent(request.parent)
        require(Action.READ, tenant, kind="tenant", name=request.parent)
        entries = [(_flavor_name("", f.name), f, True) for f in self._catalog.flavors.values()]
        if tenant:
            private = self._catalog.private_flavors(tenant)
            entries = [e for e in entries if e[1].name not in private]
            entries += [(_flavor_name(tenant, fid), f, False) for fid, f in private.items()]
        chosen, token = page(entries, lambda e: e[1].name, page_size=request.page_size,
                             page_token=request.page_token, scope=f"flavors|{request.parent}")
        return catalog_pb2.ListFlavorsResponse(flavors=[flavor_to_proto(f, n, p) for n, f, p in chosen],
                                               next_page_token=token)

    async def UpdateFlavor(self, request: catalog_pb2.UpdateFlavorRequest, context) -> catalog_pb2.Flavor:
        v = validation.Violations()
        names = v.capture(validation.parse_flavor_name, request.flavor.name, "flavor.name")
        v.capture(validation.mask_paths, list(request.update_mask.paths), ("resources",))
        _resource_violations(v, request.flavor.resources, "flavor.resources")
        v.raise_if_any()
        tenant, flavor_id = v.valid(names)
        self._require_write(tenant, request.flavor.name)
        r = request.flavor.resources
        updated = Flavor(flavor_id, Resources(r.vcpus, r.memory_mib, r.disk_gib))
        try:
            _value, revision = await self._records.update(self._key(tenant, flavor_id), lambda _old: updated.to_bytes(),
                                                          etag=request.flavor.etag)
        except NotFound as err:
            raise errors.not_found("flavor", request.flavor.name) from err
        except Conflict as err:
            raise errors.aborted(str(err), "ETAG_MISMATCH") from err
        await self._catalog.wait_for_flavor(revision, private=bool(tenant))
        return flavor_to_proto(updated, request.flavor.name, not tenant, revision)

    async def DeleteFlavor(self, request: catalog_pb2.DeleteFlavorRequest, context) -> catalog_pb2.Flavor:
        tenant, flavor_id = validation.parse_flavor_name(request.name)
        self._require_write(tenant, request.name)
        try:
            value = await self._records.delete(self._key(tenant, flavor_id), etag=request.etag)
        except NotFound as err:
            raise errors.not_found("flavor", request.name) from err
        except Conflict as err:
            raise errors.aborted(str(err), "ETAG_MISMATCH") from err
        return flavor_to_proto(Flavor.from_bytes(value), request.name, not tenant)


class ImageService(catalog_pb2_grpc.ImageServiceServicer):
    _FIELDS = ("source", "size_gib", "os")

    def __init__(self, records: KeyedRecords, keys: Keys, catalog: Catalog):
        self._records = records
        self._keys = keys
        self._catalog = catalog

    @staticmethod
    def _violations(v: validation.Violations, image: catalog_pb2.Image,
                    fields: tuple[str, ...] | set[str] = ("source", "size_gib", "os")) -> None:
        if "source" in fields and not image.source:
            v.add("image.source", "required: where drivers clone the image from")
        if "source" in fields and len(image.source) > 1024:
            v.add("image.source", "at most 1024 characters")
        if "size_gib" in fields and not 0 <= image.size_gib <= 1024 * 1024:
            v.add("image.size_gib", "must be between 0 and 1048576")
        if "os" in fields and len(image.os) > 128:
            v.add("image.os", "at most 128 characters")

    async def CreateImage(self, request: catalog_pb2.CreateImageRequest, context) -> catalog_pb2.Image:
        v = validation.Violations()
        v.capture(validation.validate_resource_id, request.image_id, "image_id", "image id")
        self._violations(v, request.image)
        v.raise_if_any()
        require(Action.SYSTEM, kind="image", name=f"images/{request.image_id}")
        image = Image(request.image_id, request.image.os, request.image.source, request.image.size_gib)
        try:
            revision = await self._records.create(self._keys.image(image.name), image.to_bytes())
        except AlreadyExists as err:
            raise errors.already_exists("image", f"images/{image.name}") from err
        await self._catalog.wait_for_image(revision)
        return image_to_proto(image, revision)

    async def GetImage(self, request: catalog_pb2.GetImageRequest, context) -> catalog_pb2.Image:
        image_id = validation.parse_image_name(request.name)
        require(Action.READ, kind="image", name=request.name)
        try:
            value, revision = await self._records.get(self._keys.image(image_id))
        except NotFound as err:
            raise errors.not_found("image", request.name) from err
        return image_to_proto(Image.from_bytes(value), revision)

    async def ListImages(self, request: catalog_pb2.ListImagesRequest, context) -> catalog_pb2.ListImagesResponse:
        require(Action.READ, kind="image", name="images")
        chosen, token = page(list(self._catalog.images.values()), lambda i: i.name, page_size=request.page_size,
                             page_token=request.page_token, scope="images")
        return catalog_pb2.ListImagesResponse(images=[image_to_proto(i) for i in chosen], next_page_token=token)

    async def UpdateImage(self, request: catalog_pb2.UpdateImageRequest, context) -> catalog_pb2.Image:
        v = validation.Violations()
        image_id = v.capture(validation.parse_image_name, request.image.name, "image.name")
        paths = v.capture(validation.mask_paths, list(request.update_mask.paths), self._FIELDS)
        if paths:
            self._violations(v, request.image, paths)
        v.raise_if_any()
        image_id, paths = v.valid(image_id), v.valid(paths)
        require(Action.SYSTEM, kind="image", name=request.image.name)

        def change(old: bytes) -> bytes:
            image = Image.from_bytes(old)
            return Image(image.name, request.image.os if "os" in paths else image.os,
                         request.image.source if "source" in paths else image.source,
                         request.image.size_gib if "size_gib" in paths else image.size_gib).to_bytes()

        try:
            value, revision = await self._records.update(self._keys.image(image_id), change, etag=request.image.etag)
        except NotFound as err:
            raise errors.not_found("image", request.image.name) from err
        except Conflict as err:
            raise errors.aborted(str(err), "ETAG_MISMATCH") from err
        await self._catalog.wait_for_image(revision)
        return image_to_proto(Image.from_bytes(value), revision)

    async def DeleteImage(self, request: catalog_pb2.DeleteImageRequest, context) -> catalog_pb2.Image:
        image_id = validation.parse_image_name(request.name)
        require(Action.SYSTEM, kind="image", name=request.name)
        try:
            value = await self._records.delete(self._keys.image(image_id), etag=request.etag)
        except NotFound as err:
            raise errors.not_found("image", request.name) from err
        except Conflict as err:
            raise errors.aborted(str(err), "ETAG_MISMATCH") from err
        return image_to_proto(Image.from_bytes(value))
