"""MAC addresses Quanta gives NICs: the one place for their range and form. Pure.

A NIC's MAC is chosen by the frontend when the VM is created, at random in VMware's
range for manually set MACs, ``00:50:56:00:00:00``-``00:50:56:3f:ff:ff`` (22 bits),
kept in the VM's spec (``Nic.mac``) and claimed on the NIC's backing
(``macs/{backing}/{mac}``, compared absent in the create's transaction,
``store/claims.py``): no two NICs on one port group share a MAC, and a VM made again
(another host, a retried reconcile) keeps its MACs. Form: lower case, colons.
"""

from __future__ import annotations

import random
import re
from collections.abc import Collection

PREFIX = "00:50:56"
#: How many MACs the range holds (00:00:00-3f:ff:ff after the prefix).
SPAN = 0x400000
_FORM = re.compile(r"^00:50:56:[0-3][0-9a-f]:[0-9a-f]{2}:[0-9a-f]{2}$")


def mac_of(value: int) -> str:
    """The MAC at offset ``value`` (0 <= value < SPAN) of the range."""
    if not 0 <= value < SPAN:
        raise ValueError(f"MAC offset {value} is outside 0..{SPAN - 1}")
    return f"{PREFIX}:{value >> 16:02x}:{(value >> 8) & 0xFF:02x}:{value & 0xFF:02x}"


def random_mac(rng: random.Random, avoid: Collection[str] = ()) -> str:
    """A MAC of the range at random, not one of ``avoid`` (a small collection: the
    call's other NICs). Raises ValueError when ``avoid`` holds the whole range."""
    if len(avoid) >= SPAN:
        raise ValueError("every MAC of the range is avoided")
    while (mac := mac_of(rng.randrange(SPAN))) in avoid:
        pass
    return mac


def is_mac(text: str) -> bool:
    """Whether ``text`` is a MAC of the range in its stored form."""
    return bool(_FORM.match(text))
