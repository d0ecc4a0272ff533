"""The network guard of tests/fixtures.py: sockets connect to this machine only."""

import contextlib
import errno
import socket
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures import NetworkRefused, is_loopback, refuse_off_machine, take_refused

OFF_MACHINE = ("93.184.216.34", 80)  # example.com


def test_a_connection_off_this_machine_is_refused_before_anything_is_sent() -> None:
    """93.184.216.34:80 is refused by the installed guard, through connect, connect_ex and
    create_connection alike, and the real connect is never called, so no packet leaves."""
    real_calls: list[Any] = []
    guarded = refuse_off_machine(lambda sock, address: real_calls.append(address))
    with socket.socket() as sock, pytest.raises(NetworkRefused, match=r"93\.184\.216\.34"):
        guarded(sock, OFF_MACHINE)
    assert real_calls == []

    with socket.socket() as sock:
        with pytest.raises(NetworkRefused):
            sock.connect(OFF_MACHINE)
        with pytest.raises(NetworkRefused):
            sock.connect_ex(OFF_MACHINE)
        with pytest.raises(OSError):  # never connected
            sock.getpeername()
    with pytest.raises(NetworkRefused):
        socket.create_connection(OFF_MACHINE, timeout=1)
    assert take_refused() == [OFF_MACHINE] * 4  # refused on purpose: cleared, test passes


def test_a_refusal_the_code_swallows_is_still_recorded() -> None:
    """Code that catches the refusal cannot hide it: the attempt stays on record (and the
    autouse fixture fails any test that leaves one there)."""
    with contextlib.suppress(Exception):  # what careless code under test would do
        socket.create_connection(("10.1.2.3", 443), timeout=1)
    assert take_refused() == [("10.1.2.3", 443)]


def test_a_datagram_route_probe_is_refused_but_not_held_against_the_test() -> None:
    """A UDP connect to 8.8.8.8 (how dask finds its own address) sends nothing: it is
    refused as an unreachable network, which such code falls back from, and not recorded."""
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with udp, pytest.raises(OSError) as refused:
        udp.connect(("8.8.8.8", 80))
    assert refused.value.errno == errno.ENETUNREACH
    assert take_refused() == []


def test_loopback_and_unix_sockets_connect(tmp_path: Path, connections: list[Any]) -> None:
    """A listener on 127.0.0.1 and one on a Unix socket accept; each attempt is recorded."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        tcp = server.getsockname()
        with socket.create_connection(tcp, timeout=5) as client:
            assert client.getpeername() == tcp
    path = str(tmp_path / "s")
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(path)
        server.listen()
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(path)
            assert client.getpeername() == path
    assert [c for c in connections if c in (tcp, path)] == [tcp, path]


@pytest.mark.parametrize(
    ("family", "address", "loopback"),
    [
        (socket.AF_INET, ("127.0.0.1", 80), True),
        (socket.AF_INET, ("127.8.9.10", 80), True),
        (socket.AF_INET, ("localhost", 80), True),
        (socket.AF_INET6, ("::1", 80, 0, 0), True),
        (socket.AF_INET6, ("::ffff:127.0.0.1", 80, 0, 0), True),
        (socket.AF_UNIX, "/tmp/any.sock", True),
        (socket.AF_INET, ("0.0.0.0", 80), False),
        (socket.AF_INET, ("192.168.1.1", 80), False),
        (socket.AF_INET, ("example.com", 80), False),
        (socket.AF_INET6, ("2606:2800:220:1:248:1893:25c8:1946", 80, 0, 0), False),
    ],
)
def test_only_loopback_counts_as_this_machine(family: int, address: Any, loopback: bool) -> None:
    """127.0.0.0/8, ::1, localhost and Unix sockets are this machine; names and others not."""
    assert is_loopback(family, address) == loopback
