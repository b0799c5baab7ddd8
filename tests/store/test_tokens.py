"""TokenAuthority: issue and verify round trip, expiry with its leeway (also for
cached verifications), every kind of forged or tampered token refused as
INVALID_TOKEN; and load_authority against a real etcd, where concurrent first
starts agree on one signing key."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from controlplane.auth.principal import Grant, Role
from controlplane.auth.tokens import ISSUER, LEEWAY_S, InvalidToken, TokenAuthority, load_authority
from controlplane.etcd import EtcdClient
from controlplane.store.keys import Keys

T0 = 1_700_000_000.0
GRANTS = (Grant(Role.PROJECT_MEMBER, "acme", "web"), Grant(Role.VIEWER, "acme"))


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def authority(key: Ed25519PrivateKey) -> TokenAuthority:
    return TokenAuthority(key, "k1")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _claims(**changes) -> dict:
    claims = {"iss": ISSUER, "sub": "alice", "jti": "tok-forged", "iat": int(time.time()),
              "exp": int(time.time()) + 3600, "grants": [{"role": "system-admin"}]}
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def _refused(authority: TokenAuthority, bearer: str, reason: str = "INVALID_TOKEN", **kwargs) -> None:
    with pytest.raises(InvalidToken) as caught:
        authority.verify(bearer, **kwargs)
    assert caught.value.reason == reason


# --- round trip -------------------------------------------------------------------------

def test_issue_then_verify(authority: TokenAuthority) -> None:
    issued = authority.issue("alice", GRANTS, ttl_s=600)
    principal = authority.verify(issued.bearer)
    assert principal.subject == "alice"
    assert principal.grants == GRANTS
    assert principal.token_id == issued.principal.token_id and principal.token_id.startswith("tok-")
    assert principal.expires_at == issued.principal.expires_at == float(int(issued.issued_at + 600))
    assert principal == issued.principal
    assert not principal.is_system_admin
    header = jwt.get_unverified_header(issued.bearer)
    assert header["alg"] == "EdDSA" and header["kid"] == "k1"


def test_issue_with_explicit_time_and_no_grants(authority: TokenAuthority) -> None:
    issued = authority.issue("robot", (), ttl_s=60, now=T0)
    assert issued.issued_at == T0
    principal = authority.verify(issued.bearer, now=T0 + 1)
    assert principal.grants == () and principal.subject == "robot"
    assert principal.expires_at == T0 + 60


def test_token_ids_are_unique(authority: TokenAuthority) -> None:
    ids = {authority.issue("alice", GRANTS).principal.token_id for _ in range(200)}
    assert len(ids) == 200


def test_system_admin_round_trip(authority: TokenAuthority) -> None:
    principal = authority.verify(authority.issue("root", (Grant(Role.SYSTEM_ADMIN),)).bearer)
    assert principal.is_system_admin and principal.grants == (Grant(Role.SYSTEM_ADMIN),)


# --- expiry -----------------------------------------------------------------------------

def test_expired_token_is_token_expired(authority: TokenAuthority) -> None:
    bearer = authority.issue("alice", GRANTS, ttl_s=60, now=T0).bearer
    _refused(authority, bearer, "TOKEN_EXPIRED", now=T0 + 60 + LEEWAY_S + 1)


def test_expiry_leeway(authority: TokenAuthority) -> None:
    # Fresh tokens each time, so each verification decodes (no cache).
    at_edge = authority.issue("alice", GRANTS, ttl_s=60, now=T0).bearer
    assert authority.verify(at_edge, now=T0 + 60 + LEEWAY_S).subject == "alice"
    just_in = authority.issue("alice", GRANTS, ttl_s=60, now=T0).bearer
    assert authority.verify(just_in, now=T0 + 60 + LEEWAY_S - 0.5).subject == "alice"
    just_out = authority.issue("alice", GRANTS, ttl_s=60, now=T0).bearer
    _refused(authority, just_out, "TOKEN_EXPIRED", now=T0 + 60 + LEEWAY_S + 0.5)


def test_expired_by_the_wall_clock(authority: TokenAuthority) -> None:
    # Without `now`, PyJWT checks the wall clock: a token that ended a minute ago is expired.
    bearer = authority.issue("alice", GRANTS, ttl_s=60, now=time.time() - 120).bearer
    _refused(authority, bearer, "TOKEN_EXPIRED")


def test_cached_verification_still_enforces_expiry(authority: TokenAuthority) -> None:
    bearer = authority.issue("alice", GRANTS, ttl_s=60, now=T0).bearer
    first = authority.verify(bearer, now=T0 + 1)
    assert authority.verify(bearer, now=T0 + 59) is first  # served from the cache
    assert authority.verify(bearer, now=T0 + 60 + LEEWAY_S) is first  # leeway also when cached
    _refused(authority, bearer, "TOKEN_EXPIRED", now=T0 + 60 + LEEWAY_S + 1)
    # Dropped from the cache, it stays expired when decoded again.
    _refused(authority, bearer, "TOKEN_EXPIRED", now=T0 + 60 + LEEWAY_S + 1)


def test_cached_wall_clock_verification_enforces_expiry(authority: TokenAuthority) -> None:
    now = time.time()
    bearer = authority.issue("alice", GRANTS, ttl_s=30, now=now).bearer
    assert authority.verify(bearer).subject == "alice"  # cached under the wall clock
    _refused(authority, bearer, "TOKEN_EXPIRED", now=now + 30 + LEEWAY_S + 1)


def test_cache_is_bounded(key: Ed25519PrivateKey) -> None:
    authority = TokenAuthority(key, "k1", cache_size=3)
    bearers = [authority.issue(f"u{i}", GRANTS, ttl_s=60, now=T0).bearer for i in range(5)]
    for bearer in bearers:
        authority.verify(bearer, now=T0)
    # Evicted or not, every token still verifies and still expires.
    for i, bearer in enumerate(bearers):
        assert authority.verify(bearer, now=T0 + 1).subject == f"u{i}"
        _refused(authority, bearer, "TOKEN_EXPIRED", now=T0 + 60 + LEEWAY_S + 1)


# --- forgeries --------------------------------------------------------------------------

def test_payload_changed_without_re_signing(authority: TokenAuthority) -> None:
    bearer = authority.issue("alice", GRANTS, ttl_s=600).bearer
    header, payload, signature = bearer.split(".")
    claims = json.loads(_unb64(payload))
    claims["grants"] = [{"role": "system-admin"}]
    forged = ".".join((header, _b64(json.dumps(claims).encode()), signature))
    _refused(authority, forged)
    # A longer life, likewise.
    claims = json.loads(_unb64(payload))
    claims["exp"] += 10 * 365 * 24 * 3600
    _refused(authority, ".".join((header, _b64(json.dumps(claims).encode()), signature)))


def test_payload_changed_after_a_verified_use(authority: TokenAuthority) -> None:
    """The cache is keyed by the whole token: a verified token does not vouch for an
    edited copy."""
    bearer = authority.issue("alice", GRANTS, ttl_s=600).bearer
    assert authority.verify(bearer).subject == "alice"
    header, payload, signature = bearer.split(".")
    claims = json.loads(_unb64(payload))
    claims["sub"] = "mallory"
    _refused(authority, ".".join((header, _b64(json.dumps(claims).encode()), signature)))


@pytest.mark.parametrize("position", [0, 10, -1])
def test_signature_bytes_flipped(authority: TokenAuthority, position: int) -> None:
    bearer = authority.issue("alice", GRANTS, ttl_s=600).bearer
    header, payload, signature = bearer.split(".")
    raw = bytearray(_unb64(signature))
    assert len(raw) == 64
    raw[position] ^= 0x01
    _refused(authority, ".".join((header, payload, _b64(bytes(raw)))))


def test_signature_removed(authority: TokenAuthority) -> None:
    header, payload, _signature = authority.issue("alice", GRANTS).bearer.split(".")
    _refused(authority, f"{header}.{payload}.")


def test_header_changed(authority: TokenAuthority) -> None:
    _header, payload, signature = authority.issue("alice", GRANTS).bearer.split(".")
    header = _b64(json.dumps({"alg": "EdDSA", "typ": "JWT", "kid": "other"}).encode())
    _refused(authority, ".".join((header, payload, signature)))


def test_signed_by_another_key(authority: TokenAuthority) -> None:
    other = TokenAuthority(Ed25519PrivateKey.generate(), "k1")  # even under the same key id
    bearer = other.issue("alice", (Grant(Role.SYSTEM_ADMIN),)).bearer
    assert other.verify(bearer).is_system_admin
    _refused(authority, bearer)


def test_alg_none(authority: TokenAuthority) -> None:
    header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    payload = _b64(json.dumps(_claims()).encode())
    _refused(authority, f"{header}.{payload}.")
    _refused(authority, jwt.encode(_claims(), None, algorithm="none"))


@pytest.mark.parametrize("secret_form", ["pem", "raw"])
def test_hs256_with_the_public_key_as_secret(authority: TokenAuthority, key: Ed25519PrivateKey,
                                             secret_form: str) -> None:
    public = key.public_key()
    secret = (public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
              if secret_form == "pem" else
              public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "k1"}).encode())
    payload = _b64(json.dumps(_claims()).encode())
    signature = _b64(hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest())
    _refused(authority, f"{header}.{payload}.{signature}")


@pytest.mark.parametrize("claims", [
    pytest.param(_claims(iss="someone-else"), id="wrong-issuer"),
    pytest.param(_claims(iss=None), id="no-issuer"),
    pytest.param(_claims(exp=None), id="no-exp"),
    pytest.param(_claims(sub=None), id="no-sub"),
    pytest.param(_claims(jti=None), id="no-jti"),
    pytest.param(_claims(iat=None), id="no-iat"),
    pytest.param(_claims(grants=[{"role": "root"}]), id="unknown-role"),
    pytest.param(_claims(grants=[{"tenant": "acme"}]), id="grant-without-role"),
    pytest.param(_claims(grants="system-admin"), id="grants-not-a-list"),
])
def test_malformed_claims_under_our_own_key(authority: TokenAuthority, key: Ed25519PrivateKey,
                                            claims: dict) -> None:
    """Even with a good signature, a token that does not have our shape is refused
    (INVALID_TOKEN, not a crash)."""
    bearer = jwt.encode(claims, key, algorithm="EdDSA")
    _refused(authority, bearer)
    _refused(authority, bearer, now=time.time())


@pytest.mark.parametrize("bearer", [
    "", "garbage", "a.b.c", "a.b", "....", "Bearer abc", "\u00e9\u00e9.\u00e9.\u00e9",
    "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ4In0.AAAA", "e30.e30.", "bnVsbA.bnVsbA.bnVsbA",
])
def test_garbage(authority: TokenAuthority, bearer: str) -> None:
    _refused(authority, bearer)
    _refused(authority, bearer, now=T0)


# --- load_authority ---------------------------------------------------------------------

def test_load_authority_concurrent_first_starts_agree(etcd_endpoint: str, root: str) -> None:
    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as one, EtcdClient(etcd_endpoint) as two:
            first, second = await asyncio.gather(load_authority(one, keys), load_authority(two, keys))
            assert first.key_id == second.key_id
            bearer = first.issue("alice", GRANTS).bearer
            assert second.verify(bearer).grants == GRANTS
            assert first.verify(second.issue("bob", ()).bearer).subject == "bob"

            # A later start loads the same key; another root has its own.
            third = await load_authority(one, keys)
            assert third.key_id == first.key_id and third.verify(bearer).subject == "alice"
            elsewhere = await load_authority(one, Keys(root + "-other"))
            assert elsewhere.key_id != first.key_id
            _refused(elsewhere, bearer)

    asyncio.run(asyncio.wait_for(main(), timeout=20))


def test_load_authority_many_concurrent(etcd_endpoint: str, root: str) -> None:
    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as client:
            authorities = await asyncio.gather(*(load_authority(client, keys) for _ in range(8)))
            assert len({a.key_id for a in authorities}) == 1
            bearer = authorities[3].issue("alice", GRANTS).bearer
            assert all(a.verify(bearer).subject == "alice" for a in authorities)

    asyncio.run(asyncio.wait_for(main(), timeout=20))
