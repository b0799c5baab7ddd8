"""The SDK is ``quanta``; the old ``controlplane.sdk`` still imports, with a warning."""

from __future__ import annotations

import importlib
import sys
import warnings

import quanta
import quanta.client


def test_the_sdk_is_importable_as_quanta() -> None:
    assert quanta.Client is quanta.client.Client
    assert quanta.__version__


def test_the_old_import_path_warns_and_gives_the_same_client() -> None:
    sys.modules.pop("controlplane.sdk", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        old = importlib.import_module("controlplane.sdk")
    assert old.Client is quanta.Client
    assert [w.category for w in caught if "controlplane.sdk" in str(w.message)] == [DeprecationWarning]
