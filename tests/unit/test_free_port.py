"""free_port picks a port outside the kernel's ephemeral range, which outgoing
connections take their local ports from (one did take a test frontend's port)."""

from __future__ import annotations

import socket

from controlplane.etcd import server
from controlplane.etcd.server import _ephemeral_range, free_port


def test_ports_are_outside_the_ephemeral_range_and_free() -> None:
    low, high = _ephemeral_range()
    ports = [free_port() for _ in range(50)]
    assert all(not low <= port <= high and port >= 1024 for port in ports), ports
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", ports[-1]))  # nothing is bound to it


def test_a_port_in_use_is_not_handed_out(monkeypatch) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", free_port()))
        held.listen()
        taken = held.getsockname()[1]
        other = free_port()
        picks = iter([taken, taken, other])

        class Drawn:  # the ports free_port draws: the one in use first
            def choice(self, spans):
                return spans[0]

            def randint(self, first, last):
                return next(picks)

        monkeypatch.setattr(server.random, "SystemRandom", Drawn)
        assert free_port() == other
