"""Signed bearer tokens: Ed25519 JWTs (PyJWT) that any frontend verifies offline.

The signing key lives in etcd (``secrets/signing-key``), made once by whichever
process needs it first; frontends load it at start. Verification needs no store
lookup: only revocation (revocations.py) is checked against a watched set.
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from controlplane.auth.principal import Grant, Principal, scope_error
from controlplane.etcd import EtcdClient, ops
from controlplane.gen.quanta.store.v1 import tenancy_pb2 as trec
from controlplane.models import now_ns
from controlplane.store.keys import Keys

ISSUER = "quanta"
ALGORITHM = "EdDSA"
MAX_TTL_S = 365 * 24 * 3600
DEFAULT_TTL_S = 24 * 3600
LEEWAY_S = 5


class InvalidToken(Exception):
    """The token cannot be trusted; ``reason`` is an ErrorInfo reason word."""

    def __init__(self, message: str, reason: str = "INVALID_TOKEN"):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class IssuedToken:
    bearer: str
    principal: Principal
    issued_at: float


class TokenAuthority:
    """Signs and verifies tokens with one Ed25519 key. Verification results are cached
    per token string (until the token expires), so a busy caller costs one signature
    check, not one per request."""

    def __init__(self, key: Ed25519PrivateKey, key_id: str, *, cache_size: int = 10_000):
        self._key = key
        self._public = key.public_key()
        self.key_id = key_id
        self._cache: OrderedDict[str, Principal] = OrderedDict()
        self._cache_size = cache_size

    def issue(self, subject: str, grants: tuple[Grant, ...], ttl_s: int = DEFAULT_TTL_S,
              *, now: float | None = None) -> IssuedToken:
        """A new token for ``subject`` with ``grants``, valid for ``ttl_s`` seconds."""
        issued = time.time() if now is None else now
        token_id = f"tok-{uuid.uuid4().hex[:24]}"
        expires = int(issued + ttl_s)
        claims = {
            "iss": ISSUER, "sub": subject, "jti": token_id, "iat": int(issued), "exp": expires,
            "grants": [g.to_claim() for g in grants],
        }
        bearer = jwt.encode(claims, self._key, algorithm=ALGORITHM, headers={"kid": self.key_id})
        return IssuedToken(bearer, Principal(subject, tuple(grants), token_id, float(expires)), issued)

    def verify(self, bearer: str, *, now: float | None = None) -> Principal:
        """The principal ``bearer`` stands for. Raises InvalidToken (bad signature or
        shape: ``INVALID_TOKEN``; past its expiry: ``TOKEN_EXPIRED``). Does not check
        revocation."""
        moment = time.time() if now is None else now
        principal = self._cache.get(bearer)
        if principal is None:
            principal = self._decode(bearer)
            self._cache[bearer] = principal
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        if moment > principal.expires_at + LEEWAY_S:
            self._cache.pop(bearer, None)
            raise InvalidToken("the token has expired", "TOKEN_EXPIRED")
        return principal

    def _decode(self, bearer: str) -> Principal:
        """The principal of a token whose signature and claims hold; its expiry is the
        caller's to check (against the wall clock or, in tests, a given moment)."""
        try:
            claims = jwt.decode(bearer, self._public, algorithms=[ALGORITHM], issuer=ISSUER,
                                options={"require": ["exp", "iat", "sub", "jti", "iss"], "verify_exp": False,
                                         "verify_iat": False})
            grants = tuple(Grant.from_claim(c) for c in claims.get("grants", []))
            malformed = [str(g) for g in grants if scope_error(g)]
            if malformed:  # only our key signs tokens, and issuing checks grants: defence in depth
                raise ValueError(f"malformed grants {malformed}")
            return Principal(str(claims["sub"]), grants, str(claims["jti"]), float(claims["exp"]))
        except (jwt.PyJWTError, KeyError, ValueError, TypeError) as err:
            raise InvalidToken(f"the token is not valid: {err}") from err


async def load_authority(client: EtcdClient, keys: Keys) -> TokenAuthority:
    """The system's token authority: its signing key from etcd, made there first if
    absent (create-if-absent, so concurrent first starts agree on one key)."""
    key = Ed25519PrivateKey.generate()
    record = trec.SigningKey(
        key_id=uuid.uuid4().hex[:12], create_time_ns=now_ns(),
        private_key_pem=key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()),
    )
    path = keys.signing_key()
    result = await client.txn([ops.absent(path)], [ops.put(path, record.SerializeToString())], [ops.get(path)])
    if not result.succeeded:
        record = trec.SigningKey.FromString(result.kvs(0)[0].value)
    private = serialization.load_pem_private_key(record.private_key_pem, password=None)
    if not isinstance(private, Ed25519PrivateKey):
        raise ValueError("the stored signing key is not an Ed25519 key")
    return TokenAuthority(private, record.key_id)


async def issue_recorded(client: EtcdClient, keys: Keys, authority: TokenAuthority, subject: str,
                         grants: tuple[Grant, ...], ttl_s: int, *, issued_by: str) -> IssuedToken:
    """Issue a token and store its record (never the token itself) under a lease that
    ends with the token, so it can be looked up and revoked by id."""
    issued = authority.issue(subject, grants, ttl_s)
    lease, _ttl = await client.grant(ttl_s + 60)
    record = trec.TokenRecord(
        token_id=issued.principal.token_id, subject=subject, issued_by=issued_by,
        grants=[trec.Grant(role=g.role.value, tenant=g.tenant, project=g.project) for g in grants],
        issue_time_ns=int(issued.issued_at * 1e9), expire_time_ns=int(issued.principal.expires_at * 1e9),
    )
    await client.put(keys.token(issued.principal.token_id), record.SerializeToString(), lease=lease)
    return issued
