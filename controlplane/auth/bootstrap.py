"""The first token: a system-admin token minted straight from etcd (whoever can
reach etcd already holds every key), for `quanta up` and for a new deployment's
operator (`quanta token bootstrap`)."""

from __future__ import annotations

from controlplane.auth.principal import Grant, Role
from controlplane.auth.tokens import issue_recorded, load_authority
from controlplane.etcd import EtcdClient
from controlplane.store.keys import Keys

BOOTSTRAP_TTL_S = 30 * 24 * 3600


async def bootstrap_admin_token(etcd: str, root: str, *, subject: str = "admin",
                                ttl_s: int = BOOTSTRAP_TTL_S) -> str:
    """A new system-admin bearer token for ``subject`` (making the signing key if the
    system has none yet)."""
    keys = Keys(root)
    async with EtcdClient(etcd) as client:
        await client.wait_ready()
        authority = await load_authority(client, keys)
        issued = await issue_recorded(client, keys, authority, subject, (Grant(Role.SYSTEM_ADMIN),), ttl_s,
                                      issued_by="bootstrap")
    return issued.bearer
