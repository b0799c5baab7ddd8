"""Flavors and images: seeded defaults and watched in-memory mirrors.

Frontends validate creates against the mirrors (no etcd read on the hot path); they
are rebuilt from etcd by list + watch and are never authoritative.
"""

from __future__ import annotations

from controlplane.etcd import EtcdClient, ops
from controlplane.models import DEFAULT_FLAVORS, DEFAULT_IMAGES, Flavor, Image
from controlplane.store.keys import Keys
from controlplane.store.mirror import PrefixMirror


async def seed_defaults(client: EtcdClient, keys: Keys) -> None:
    """Create the default flavors and images where absent. Idempotent, safe to
    run from several processes at once (each put is guarded by absence)."""
    requests = [(keys.flavor(f.name), f.to_bytes()) for f in DEFAULT_FLAVORS]
    requests += [(keys.image(i.name), i.to_bytes()) for i in DEFAULT_IMAGES]
    await client.txn([], [ops.txn([ops.absent(key)], [ops.put(key, value)]) for key, value in requests])


class Catalog:
    """Mirrors of public flavors, tenant-private flavors and images.
    ``start()`` returns once all three are listed."""

    def __init__(self, client: EtcdClient, keys: Keys):
        self._public = PrefixMirror(client, keys.flavors_prefix(), Flavor.from_bytes)
        self._private = PrefixMirror(client, keys.tenant_flavors_prefix(), Flavor.from_bytes)
        self._images = PrefixMirror(client, keys.images_prefix(), Image.from_bytes)

    @property
    def flavors(self) -> dict[str, Flavor]:
        """Public flavors by id."""
        return self._public.items

    @property
    def images(self) -> dict[str, Image]:
        return self._images.items

    def flavor_for(self, tenant: str, flavor_id: str) -> Flavor | None:
        """The flavor ``flavor_id`` means for ``tenant``: its private one, else the public one."""
        return self._private.items.get(f"{tenant}/{flavor_id}") or self._public.items.get(flavor_id)

    def flavors_for(self, tenant: str) -> dict[str, Flavor]:
        """Every flavor id ``tenant`` may use (a private one hides a public one)."""
        return {**self._public.items, **self.private_flavors(tenant)}

    def private_flavors(self, tenant: str) -> dict[str, Flavor]:
        prefix = f"{tenant}/"
        return {k[len(prefix):]: f for k, f in self._private.items.items() if k.startswith(prefix)}

    async def wait_for_flavor(self, revision: int, *, private: bool) -> None:
        """Block (briefly) until the flavor mirror a write went to reflects ``revision``:
        read-your-writes for the API calls that change the catalog."""
        await (self._private if private else self._public).wait_for_revision(revision)

    async def wait_for_image(self, revision: int) -> None:
        await self._images.wait_for_revision(revision)

    async def start(self) -> None:
        for mirror in (self._public, self._private, self._images):
            await mirror.start()

    async def stop(self) -> None:
        for mirror in (self._public, self._private, self._images):
            await mirror.stop()
