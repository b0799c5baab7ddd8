"""Authentication, rate limiting and audit as grpc.aio interceptors.

- :class:`AuthInterceptor` reads ``authorization: Bearer <token>``, verifies it
  offline (signature, expiry) and against the watched revocation list, binds the
  caller to :data:`controlplane.auth.principal.current` (and its subject to the log
  context; ``access.require`` adds the tenant it authorised), then spends one token
  of the caller's rate-limit bucket. Health checks and reflection need no token.
- :class:`AuditInterceptor` writes an audit record for every mutation an
  authenticated caller attempts (allowed or not), with its final status code;
  a mutation that succeeded is answered once its record is in etcd (see
  :mod:`controlplane.store.audit`), a refused attempt at once.

Both sit inside ErrorInterceptor (their ApiErrors become statuses) and the auth one
outside the audit one (records name the caller); see :func:`controlplane.frontend.serve`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from contextlib import aclosing, contextmanager
from typing import Any

import grpc
from prometheus_client import Counter

from controlplane import logcontext
from controlplane.api import errors
from controlplane.api.access import audit_scope
from controlplane.api.interceptors import (
    StreamBehavior,
    UnaryBehavior,
    _BehaviorInterceptor,
    error_for_exception,
    short_method,
)
from controlplane.auth.principal import Principal, current
from controlplane.auth.ratelimit import RateLimiter
from controlplane.auth.rateshare import RateShares
from controlplane.auth.revocations import RevocationList
from controlplane.auth.tokens import LEEWAY_S, InvalidToken, TokenAuthority
from controlplane.gen.quanta.store.v1 import tenancy_pb2 as trec
from controlplane.models import now_ns
from controlplane.store.audit import AuditLog

log = logging.getLogger(__name__)

AUTH_REFUSALS = Counter("quanta_api_auth_refusals_total",
                        "Requests refused before their handler: bad or missing tokens, and rate limits, by reason.",
                        ["reason"])

AUDIT_UNWRITTEN = Counter("quanta_api_audit_unwritten_answers_total",
                          "Mutations answered before their audit record was written (etcd too slow for the "
                          "caller's deadline); the record stays queued.")
MAX_AUDIT_WAIT_S = 5.0
MAX_FIELD = 500  # characters of an audit record's request-controlled fields

PUBLIC_METHOD_PREFIXES = ("/grpc.health.", "/grpc.reflection.")
_READ_VERBS = ("Get", "List", "Watch")


def _bearer(context: grpc.aio.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else ""
    return None


class AuthInterceptor(_BehaviorInterceptor):
    def __init__(self, authority: TokenAuthority, revocations: RevocationList, limiter: RateLimiter | None,
                 shares: RateShares | None = None):
        """``shares``: the caller's demand at the other frontends, so the limit holds
        across all of them (None: this frontend limits on its own)."""
        super().__init__()
        self._authority = authority
        self._revocations = revocations
        self._limiter = limiter
        self._shares = shares

    def authenticate(self, context: grpc.aio.ServicerContext) -> Principal:
        """The caller, or ApiError UNAUTHENTICATED / RESOURCE_EXHAUSTED (rate limit)."""
        try:
            return self._authenticate(context)
        except errors.ApiError as err:
            AUTH_REFUSALS.labels(err.reason).inc()
            raise

    def _authenticate(self, context: grpc.aio.ServicerContext) -> Principal:
        token = _bearer(context)
        if token is None:
            raise errors.unauthenticated('missing "authorization: Bearer <token>" metadata', "TOKEN_MISSING")
        if not token:
            raise errors.unauthenticated('malformed authorization metadata; expected "Bearer <token>"',
                                         "TOKEN_MALFORMED")
        try:
            principal = self._authority.verify(token)
        except InvalidToken as err:
            raise errors.unauthenticated(str(err), err.reason) from err
        if principal.token_id in self._revocations:
            raise errors.unauthenticated("the token has been revoked", "TOKEN_REVOKED")
        if self._limiter is not None:
            now = time.monotonic()
            part = 1.0 if self._shares is None else self._shares.record(principal.identity, now)
            wait_s = self._limiter.acquire(principal.identity, now, part)
            if wait_s > 0:
                raise errors.resource_exhausted(
                    f"rate limit of {self._limiter.rate:g} requests/s for {principal.subject} exceeded",
                    "RATE_LIMITED", retry_delay_s=wait_s, metadata={"subject": principal.subject})
        return principal

    def _wrap_handler(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        if method.startswith(PUBLIC_METHOD_PREFIXES):
            return handler
        return super()._wrap_handler(handler, method)

    @staticmethod
    @contextmanager
    def _bound(principal: Principal) -> Iterator[None]:
        """The caller, and its subject in the log context, for the RPC's duration. The
        log context's tenant starts empty: :func:`access.require` fills in the tenant
        the caller was found allowed to act on."""
        tokens = (current.set(principal), logcontext.subject.set(principal.subject), logcontext.tenant.set(None))
        try:
            yield
        finally:
            try:
                logcontext.tenant.reset(tokens[2])
                logcontext.subject.reset(tokens[1])
                current.reset(tokens[0])
            except ValueError:
                pass  # a stream closed from another context; the RPC's task context dies with it

    def wrap_unary(self, behavior: UnaryBehavior, method: str) -> UnaryBehavior:
        async def authenticated(request: Any, context: grpc.aio.ServicerContext) -> Any:
            with self._bound(self.authenticate(context)):
                return await behavior(request, context)

        return authenticated

    def wrap_stream(self, behavior: StreamBehavior, method: str) -> StreamBehavior:
        async def authenticated(request: Any, context: grpc.aio.ServicerContext):
            principal = self.authenticate(context)
            with self._bound(principal):
                async with aclosing(behavior(request, context)) as responses:
                    async for response in responses:
                        # A stream outlives its token's checks at the start: end it once the
                        # token is revoked or expires (quiet streams still get bookmarks).
                        if principal.token_id in self._revocations:
                            raise errors.unauthenticated("the token has been revoked", "TOKEN_REVOKED")
                        if time.time() > principal.expires_at + LEEWAY_S:
                            raise errors.unauthenticated("the token has expired", "TOKEN_EXPIRED")
                        yield response

        return authenticated


def resource_of(request: Any) -> str:
    """The resource a request acts on, as the request names it (best effort): its
    ``name``, else ``parent`` + the collection and id it creates, else the ``name`` of
    the resource it carries. Unchecked: a caller can put anything there."""
    name = getattr(request, "name", "")
    if isinstance(name, str) and name:
        return name
    parent = getattr(request, "parent", "")
    for field, value in request.ListFields():
        if field.name.endswith("_id") and isinstance(value, str) and field.name != "request_id":
            collection = field.name[:-3] + "s"
            return f"{parent}/{collection}/{value}" if parent else f"{collection}/{value}"
    for field, _value in request.ListFields():
        if field.message_type is not None and not field.is_repeated:
            inner = getattr(request, field.name)
            if getattr(inner, "name", ""):
                return inner.name
    return parent


def tenant_of(resource: str) -> str:
    parts = resource.split("/")
    return parts[1] if len(parts) >= 2 and parts[0] == "tenants" else ""


class AuditInterceptor(_BehaviorInterceptor):
    """Audits unary mutations (every method but Get*/List*/Watch*)."""

    def __init__(self, log: AuditLog):
        super().__init__()
        self._log = log

    def _wrap_handler(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        if method.startswith(PUBLIC_METHOD_PREFIXES) or short_method(method).startswith(_READ_VERBS):
            return handler
        return super()._wrap_handler(handler, method)

    def wrap_unary(self, behavior: UnaryBehavior, method: str) -> UnaryBehavior:
        short = short_method(method)

        async def audited(request: Any, context: grpc.aio.ServicerContext) -> Any:
            code, message = "OK", ""
            scope: dict = {}
            draft = scope["draft"] = _Draft(self, self._log, short, request, context, scope)
            token = audit_scope.set(scope)
            try:
                return await behavior(request, context)
            except grpc.aio.AbortError:
                code = context.code().name if isinstance(context.code(), grpc.StatusCode) else "UNKNOWN"
                raise
            except asyncio.CancelledError:
                code = "CANCELLED"
                raise
            except Exception as exc:
                api = error_for_exception(exc)
                code, message = api.code.name, api.message
                raise
            finally:
                audit_scope.reset(token)
                written = None
                if not draft.dry and not (draft.done and code == "OK"):  # else written with the mutation
                    try:
                        record = self.record(short, request, context, code, message, scope)
                        written = self._log.append(record) if record is not None else None
                    except Exception:  # noqa: BLE001 - auditing must never fail the call it records
                        log.exception("audit record failed", extra={"method": short})
                if written is not None and code == "OK":  # a mutation that happened: answered once recorded
                    await self._until_written(written, context, short)

        return audited

    async def _until_written(self, written: asyncio.Future, context: grpc.aio.ServicerContext, method: str) -> None:
        """Hold the answer until its audit record is in etcd, or until the caller's
        deadline is near (at most MAX_AUDIT_WAIT_S): then answer anyway, the record
        stays queued."""
        remaining = context.time_remaining()
        patience = MAX_AUDIT_WAIT_S if remaining is None else min(MAX_AUDIT_WAIT_S, max(0.0, remaining * 0.9))
        done, _ = await asyncio.wait({written}, timeout=patience)
        if not done:
            AUDIT_UNWRITTEN.inc()
            log.warning("answering before the audit record is written", extra={"method": method})

    def wrap_stream(self, behavior: StreamBehavior, method: str) -> StreamBehavior:
        return behavior

    def record(self, method: str, request: Any, context: grpc.aio.ServicerContext, code: str, message: str,
               scope: dict, *, resource: str = "") -> trec.AuditRecord | None:
        """The call's record (None for an unauthenticated call), filed under the tenant
        the caller was authorised (or visibly denied) for; an attempt that never got
        that far (bad input, a scope hidden from the caller, a global resource) goes
        to the system's log (tenant "")."""
        principal = current.get()
        if principal is None:
            return None
        resource = resource or resource_of(request)
        tenant = scope.get("tenant", "")
        if code == "OK":
            message = scope.get("note", "")  # what a success changed (audit_note), if the service said
        if tenant and tenant_of(resource) != tenant:
            resource = scope["resource"]  # what the request claims is not what was authorised
        # Fields a request controls are cut short, so a batch of records always fits etcd.
        return trec.AuditRecord(
            time_ns=now_ns(), subject=principal.subject, method=method, resource=resource[:MAX_FIELD],
            tenant=tenant, peer=context.peer() or "", code=code, message=message[:MAX_FIELD],
            correlation_id=(logcontext.correlation_id.get() or "")[:MAX_FIELD], token_id=principal.token_id,
        )


class _Draft:
    """:class:`controlplane.api.access.AuditDraft` of one audited call."""

    __slots__ = ("_interceptor", "_log", "_method", "_request", "_context", "_scope", "done", "dry")

    def __init__(self, interceptor: AuditInterceptor, log: AuditLog, method: str, request: Any,
                 context: grpc.aio.ServicerContext, scope: dict):
        self._interceptor, self._log, self._method, self._request = interceptor, log, method, request
        self._context, self._scope = context, scope
        self.done = self.dry = False

    async def writes(self, resource: str = "") -> list:
        record = self._interceptor.record(self._method, self._request, self._context, "OK", "", self._scope,
                                          resource=resource)
        return [] if record is None else [await self._log.put(record)]

    def committed(self) -> None:
        self.done = True

    def dry_run(self) -> None:
        self.dry = True
