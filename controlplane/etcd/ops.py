"""Builders for etcd transaction compares and operations.

These are the only place outside ``client.py`` that touches etcd protobufs, so
that store code reads as ``txn([mod(k) == r], [put(k, v)])``.
"""

from __future__ import annotations

from collections.abc import Sequence

from controlplane.gen.etcd.v3 import rpc_pb2 as pb

Compare = pb.Compare
RequestOp = pb.RequestOp


def prefix_end(prefix: bytes) -> bytes:
    """The range_end that selects every key starting with ``prefix``."""
    end = bytearray(prefix)
    for i in range(len(end) - 1, -1, -1):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\0"


def _cmp(key: bytes, target: pb.Compare.CompareTarget, result: pb.Compare.CompareResult, **value) -> pb.Compare:
    return pb.Compare(key=key, target=target, result=result, **value)


def mod_revision_is(key: bytes, revision: int) -> pb.Compare:
    """True when ``key``'s mod_revision equals ``revision`` (0: the key is absent)."""
    return _cmp(key, pb.Compare.MOD, pb.Compare.EQUAL, mod_revision=revision)


def unchanged_since(key: bytes, range_end: bytes, revision: int) -> pb.Compare:
    """True when no key in [key, range_end) was written after ``revision`` (nor created:
    a new key has a later mod_revision; an empty range passes)."""
    return pb.Compare(key=key, range_end=range_end, target=pb.Compare.MOD, result=pb.Compare.LESS,
                      mod_revision=revision + 1)


def create_revision_is(key: bytes, revision: int) -> pb.Compare:
    """True when ``key``'s create_revision equals ``revision`` (0: the key is absent)."""
    return _cmp(key, pb.Compare.CREATE, pb.Compare.EQUAL, create_revision=revision)


def version_is(key: bytes, version: int) -> pb.Compare:
    """True when ``key`` has been written exactly ``version`` times since it was created
    (1: never changed since; 0: absent)."""
    return _cmp(key, pb.Compare.VERSION, pb.Compare.EQUAL, version=version)


def absent(key: bytes) -> pb.Compare:
    """True when ``key`` does not exist."""
    return create_revision_is(key, 0)


def present(key: bytes) -> pb.Compare:
    """True when ``key`` exists."""
    return _cmp(key, pb.Compare.CREATE, pb.Compare.GREATER, create_revision=0)


def none_under(prefix: bytes) -> pb.Compare:
    """True when no key starts with ``prefix``: a range compare of create_revision == 0
    over [prefix, prefix_end), which etcd holds vacuously true on an empty range and
    false as soon as one key exists there."""
    return pb.Compare(key=prefix, range_end=prefix_end(prefix), target=pb.Compare.CREATE,
                      result=pb.Compare.EQUAL, create_revision=0)


def value_is(key: bytes, value: bytes) -> pb.Compare:
    """True when ``key`` exists and holds exactly ``value``."""
    return _cmp(key, pb.Compare.VALUE, pb.Compare.EQUAL, value=value)


def put(key: bytes, value: bytes, lease: int = 0) -> pb.RequestOp:
    return pb.RequestOp(request_put=pb.PutRequest(key=key, value=value, lease=lease))


def delete(key: bytes, range_end: bytes = b"") -> pb.RequestOp:
    return pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=key, range_end=range_end))


def get(key: bytes, range_end: bytes = b"", limit: int = 0, revision: int = 0, *, keys_only: bool = False,
        count_only: bool = False) -> pb.RequestOp:
    """A range read; ``revision`` > 0 reads the store as it was then."""
    return pb.RequestOp(request_range=pb.RangeRequest(key=key, range_end=range_end, limit=limit,
                                                      revision=revision, keys_only=keys_only,
                                                      count_only=count_only))


def txn(compare: list[pb.Compare], success: list[pb.RequestOp], failure: Sequence[pb.RequestOp] = ()) -> pb.RequestOp:
    """A nested transaction, evaluated on its own inside an outer one (etcd >= 3.3).

    Lets one round trip carry many independent compare-and-swaps: each nested
    txn succeeds or fails alone, and the outer response says which did.
    """
    return pb.RequestOp(
        request_txn=pb.TxnRequest(compare=compare, success=success, failure=list(failure))
    )
