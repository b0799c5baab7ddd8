"""Per-request logging context carried in contextvars, and a structured JSON formatter.

Set the contextvars at the edge of a unit of work (an RPC, a reconcile of one VM, a
shard's placement loop); every log record emitted inside it then carries them once
:class:`ContextFilter` is installed on the handler::

    handler = logging.StreamHandler()
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter())

contextvars follow asyncio tasks, so concurrent requests never see each other's ids.
"""

from __future__ import annotations

import contextvars
import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

#: The correlation id of the RPC being served (see controlplane.api.interceptors): it ties
#: the log lines and the audit record of one call together. Not a create's ``request_id``,
#: which is the idempotency key.
correlation_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("correlation_id", default=None)
method: contextvars.ContextVar[str | None] = contextvars.ContextVar("method", default=None)
tenant: contextvars.ContextVar[str | None] = contextvars.ContextVar("tenant", default=None)
vm: contextvars.ContextVar[str | None] = contextvars.ContextVar("vm", default=None)
host: contextvars.ContextVar[str | None] = contextvars.ContextVar("host", default=None)
shard: contextvars.ContextVar[str | None] = contextvars.ContextVar("shard", default=None)
subject: contextvars.ContextVar[str | None] = contextvars.ContextVar("subject", default=None)

#: Record attribute name -> contextvar copied onto every record by ContextFilter.
CONTEXT_VARS: dict[str, contextvars.ContextVar[str | None]] = {
    "correlation_id": correlation_id,
    "method": method,
    "tenant": tenant,
    "vm": vm,
    "host": host,
    "shard": shard,
    "subject": subject,
}


@contextmanager
def bound(**values: str | None) -> Iterator[None]:
    """Set some of :data:`CONTEXT_VARS` for the duration of a ``with`` block, then restore them.

    Raises KeyError for a name that is not a known context variable.
    """
    tokens = [(CONTEXT_VARS[name], CONTEXT_VARS[name].set(value)) for name, value in values.items()]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


class ContextFilter(logging.Filter):
    """Copies the context variables onto each record (as attributes; None when unset).

    Never drops a record. An attribute already set on the record (e.g. through
    ``extra=``) wins over the contextvar.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        for name, var in CONTEXT_VARS.items():
            if getattr(record, name, None) is None:
                setattr(record, name, var.get())
        return True


# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD_ATTRS = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys() | {"message", "asctime", "taskName"}
)


class JsonFormatter(logging.Formatter):
    """Formats a record as one line of JSON.

    Fields: ``ts`` (RFC 3339 UTC, milliseconds), ``level``, ``logger``, ``msg``, the
    context variables that are set, any ``extra=`` fields (made JSON-safe with
    ``str``), and ``exc`` with the formatted traceback when there is one.
    """

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name, var in CONTEXT_VARS.items():
            value = getattr(record, name, None)
            if value is None:
                value = var.get()
            if value is not None:
                out[name] = value
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and key not in CONTEXT_VARS and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str, ensure_ascii=False)
