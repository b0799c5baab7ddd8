"""quanta.v1.TokenService: issue, inspect and revoke bearer tokens.

A caller only grants what it holds: system admins anything, tenant admins roles
within their tenant. A token's record is visible to system admins, to the admins of
the one tenant all its grants are in, and to the token itself; to anyone else it
does not exist.
"""

from __future__ import annotations

import time

from controlplane.api import errors, validation
from controlplane.api.access import audit_scope, caller
from controlplane.api.convert import ROLE_FROM_PROTO, token_to_proto
from controlplane.auth.policy import may_grant
from controlplane.auth.principal import Grant, Principal, Role, scope_error
from controlplane.auth.revocations import RevocationList
from controlplane.auth.tokens import DEFAULT_TTL_S, MAX_TTL_S, TokenAuthority, issue_recorded
from controlplane.etcd import EtcdClient
from controlplane.gen.quanta.store.v1 import tenancy_pb2 as trec
from controlplane.gen.quanta.v1 import auth_pb2, auth_pb2_grpc
from controlplane.store.errors import NotFound
from controlplane.store.keys import Keys
from controlplane.store.records import KeyedRecords

_MAX_SUBJECT = 128
_MAX_GRANTS = 32


def _may_see(principal: Principal, record: trec.TokenRecord) -> bool:
    if principal.is_system_admin or principal.token_id == record.token_id:
        return True
    tenants = {g.tenant for g in record.grants}
    return len(tenants) == 1 and "" not in tenants and may_grant(principal, next(iter(tenants)), False)


class TokenService(auth_pb2_grpc.TokenServiceServicer):
    def __init__(self, client: EtcdClient, keys: Keys, authority: TokenAuthority, revocations: RevocationList):
        self._etcd = client
        self._keys = keys
        self._authority = authority
        self._revocations = revocations
        self._records = KeyedRecords(client)

    async def CreateToken(self, request: auth_pb2.CreateTokenRequest, context) -> auth_pb2.CreateTokenResponse:
        principal = caller()
        v = validation.Violations()
        if not request.subject or len(request.subject) > _MAX_SUBJECT or not request.subject.isprintable():
            v.add("subject", f"required, 1-{_MAX_SUBJECT} printable characters")
        if not request.grants:
            v.add("grants", "at least one grant is required")
        if len(request.grants) > _MAX_GRANTS:
            v.add("grants", f"at most {_MAX_GRANTS} grants")
        grants: list[Grant] = []
        for i, g in enumerate(request.grants):
            if g.role not in ROLE_FROM_PROTO:
                v.add(f"grants[{i}].role", "required")
                continue
            grant = Grant(ROLE_FROM_PROTO[g.role], g.tenant, g.project)
            problem = scope_error(grant)
            for part, given in (("tenant", g.tenant), ("project", g.project)):
                if given:
                    v.capture(validation.validate_resource_id, given, f"grants[{i}].{part}", f"{part} id")
            if problem:
                v.add(f"grants[{i}]", problem)
            grants.append(grant)
        ttl_s = request.ttl.seconds if request.HasField("ttl") else DEFAULT_TTL_S
        if not 0 < ttl_s <= MAX_TTL_S:
            v.add("ttl", f"must be between 1 s and {MAX_TTL_S} s")
        v.raise_if_any()
        for grant in grants:
            if not may_grant(principal, grant.tenant, grant.role is Role.SYSTEM_ADMIN):
                raise errors.permission_denied(f"{principal.subject} may not grant {grant}", "GRANT_NOT_ALLOWED")
        tenants = {g.tenant for g in grants}
        if not principal.is_system_admin:
            # A tenant admin names its own users only: "who@tenant", never another's "admin".
            if len(tenants) != 1 or not request.subject.endswith(f"@{next(iter(tenants))}"):
                raise errors.invalid_argument(
                    [("subject", f"tokens issued by a tenant admin are for one tenant, and their subject ends "
                                 f"with @<tenant> (e.g. dev@{sorted(tenants)[0]})")], "SUBJECT_NOT_IN_TENANT")
            scope = audit_scope.get()
            if scope is not None:
                scope.update(tenant=next(iter(tenants)), resource="tokens")
        # A token never outlives the one that issued it.
        ttl_s = min(ttl_s, max(1, int(principal.expires_at - time.time()))) if principal.expires_at else ttl_s
        issued = await issue_recorded(self._etcd, self._keys, self._authority, request.subject, tuple(grants),
                                      ttl_s, issued_by=principal.subject)
        value, _revision = await self._records.get(self._keys.token(issued.principal.token_id))
        return auth_pb2.CreateTokenResponse(token=token_to_proto(trec.TokenRecord.FromString(value), False),
                                            bearer_token=issued.bearer)

    async def _visible(self, name: str) -> trec.TokenRecord:
        token_id = validation.parse_token_name(name)
        try:
            value, _revision = await self._records.get(self._keys.token(token_id))
        except NotFound as err:
            raise errors.not_found("token", name) from err
        record = trec.TokenRecord.FromString(value)
        if not _may_see(caller(), record):
            raise errors.not_found("token", name)
        return record

    async def GetToken(self, request: auth_pb2.GetTokenRequest, context) -> auth_pb2.Token:
        record = await self._visible(request.name)
        return token_to_proto(record, record.token_id in self._revocations)

    async def RevokeToken(self, request: auth_pb2.RevokeTokenRequest, context) -> auth_pb2.Token:
        record = await self._visible(request.name)
        expires_in = record.expire_time_ns / 1e9 - time.time()
        if expires_in > 0:
            await self._revocations.revoke(record.token_id, expires_in_s=expires_in, revoked_by=caller().subject)
        return token_to_proto(record, True)

    async def GetCaller(self, request: auth_pb2.GetCallerRequest, context) -> auth_pb2.Token:
        principal = caller()
        try:
            value, _revision = await self._records.get(self._keys.token(principal.token_id))
            return token_to_proto(trec.TokenRecord.FromString(value), False)
        except NotFound:
            record = trec.TokenRecord(
                token_id=principal.token_id, subject=principal.subject, expire_time_ns=int(principal.expires_at * 1e9),
                grants=[trec.Grant(role=g.role.value, tenant=g.tenant, project=g.project) for g in principal.grants])
            return token_to_proto(record, False)
