"""The revocation list: token ids revoked before their expiry, mirrored from etcd.

Each entry lives under a lease that ends with its token's expiry (a token past its
expiry is refused anyway), so the list stays as small as the set of live revoked
tokens. Every frontend watches it: a revocation takes effect everywhere within a
watch round trip.
"""

from __future__ import annotations

from controlplane.auth.tokens import LEEWAY_S
from controlplane.etcd import EtcdClient, ops
from controlplane.gen.quanta.store.v1 import tenancy_pb2 as trec
from controlplane.models import now_ns
from controlplane.store.keys import Keys
from controlplane.store.mirror import PrefixMirror


class RevocationList:
    def __init__(self, client: EtcdClient, keys: Keys):
        self._etcd = client
        self._keys = keys
        self._mirror = PrefixMirror(client, keys.revocations_prefix(), trec.Revocation.FromString)

    def __contains__(self, token_id: str) -> bool:
        return token_id in self._mirror.items

    async def start(self) -> None:
        await self._mirror.start()

    async def stop(self) -> None:
        await self._mirror.stop()

    async def revoke(self, token_id: str, *, expires_in_s: float, revoked_by: str) -> None:
        """Revoke ``token_id`` until its expiry (idempotent). Returns once this process's
        own mirror refuses the token."""
        # Outlive the token's expiry plus the leeway verification allows after it.
        lease, _ttl = await self._etcd.grant(max(1, int(expires_in_s) + LEEWAY_S + 5))
        record = trec.Revocation(token_id=token_id, revoke_time_ns=now_ns(), revoked_by=revoked_by)
        result = await self._etcd.txn([], [ops.put(self._keys.revocation(token_id), record.SerializeToString(),
                                                   lease=lease)])
        await self._mirror.wait_for_revision(result.revision)

    async def revoke_tenant(self, tenant_id: str, *, revoked_by: str) -> int:
        """Revoke every live token with a grant in ``tenant_id`` (its deletion: a tenant
        re-created under the same id must not be reachable by the old tokens). Returns
        how many were revoked."""
        kvs, _revision = await self._etcd.range_prefix(self._keys.tokens_prefix())
        now_s = now_ns() / 1e9
        revoked = 0
        for kv in kvs:
            record = trec.TokenRecord.FromString(kv.value)
            if any(g.tenant == tenant_id for g in record.grants) and record.token_id not in self:
                await self.revoke(record.token_id, expires_in_s=max(0.0, record.expire_time_ns / 1e9 - now_s),
                                  revoked_by=revoked_by)
                revoked += 1
        return revoked
