"""Store outcomes that callers map to API errors (controlplane.api.service_errors)."""


class StoreError(Exception):
    pass


class NotFound(StoreError):
    pass


class AlreadyExists(StoreError):
    pass


class Conflict(StoreError):
    """A compare-and-swap kept failing, or an etag did not match."""
