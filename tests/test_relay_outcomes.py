"""
How each relayed connection ended, counted once: RelayStats against a real Xvfb.

A real relay (RelayThread, the cookie gate as its listener's setup filter) in front of a real
Xvfb with cookie authentication; every way a connection can end is caused for real and the
counters are read once the relay is idle: each ending lands in exactly one of ``rejected``,
``errors`` and ``stalled`` (or in none, for a normal close), once.
"""

from __future__ import annotations

import contextlib
import ipaddress
import secrets
import socket
import struct
import threading

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from x11passthrough import RelayStats
from x11passthrough._relay.options import Listener, RelayOptions
from x11passthrough._relay.thread import RelayThread
from x11passthrough._x11.gate import CookieGate
from x11passthrough._x11.wire import MIT_MAGIC_COOKIE_1, encode_setup_request
from x11passthrough.display import Endpoint

from infra.processes import wait_until
from infra.relay_peers import recv_all, tcp_listener, wait_idle
from infra.xvfb import XServer


LSB = 0x6C
GET_IMAGE = 73
Z_PIXMAP = 2
#: The session cookie the gate admits (it swaps in the server's).
SESSION_COOKIE = secrets.token_bytes(16)


@contextlib.contextmanager
def gated_relay(
    xvfb: XServer, upstream: Endpoint | None = None, **options: Any
) -> Iterator[RelayThread]:
    """A relay to `xvfb` on 127.0.0.1 whose listener admits SESSION_COOKIE only."""
    gate = CookieGate(
        expected_data=SESSION_COOKIE,
        replacement_name=MIT_MAGIC_COOKIE_1,
        replacement_data=xvfb.cookie,
    )
    relay = RelayThread(
        [Listener(tcp_listener(), gate)],
        upstream or Endpoint.unix(xvfb.unix_path),
        RelayOptions(**options),
    )
    relay.start()
    try:
        yield relay
    finally:
        relay.stop()


def client(relay: RelayThread) -> socket.socket:
    return socket.create_connection(relay.relay.sockets[0].getsockname(), timeout=10)


def setup(cookie: bytes = SESSION_COOKIE) -> bytes:
    return encode_setup_request(LSB, MIT_MAGIC_COOKIE_1, cookie)


def read_setup_reply(sock: socket.socket) -> tuple[int, bytes]:
    """The setup reply's status and body."""
    head = sock.recv(8, socket.MSG_WAITALL)
    assert len(head) == 8, head
    (words,) = struct.unpack_from("<H", head, 6)
    return head[0], sock.recv(4 * words, socket.MSG_WAITALL)


def root_window(body: bytes) -> int:
    vendor_length, _, _, formats = struct.unpack_from("<HHBB", body, 16)
    (root,) = struct.unpack_from("<I", body, 32 + (vendor_length + 3) // 4 * 4 + 8 * formats)
    return int(root)


def closes_normally(relay: RelayThread) -> None:
    with client(relay) as sock:
        sock.sendall(setup())
        assert read_setup_reply(sock)[0] == 1  # Success


def refused_by_allow(relay: RelayThread) -> None:
    with client(relay) as sock:
        sock.sendall(setup())
        assert b"are not admitted" in recv_all(sock)


def refused_by_the_setup_filter(relay: RelayThread) -> None:
    with client(relay) as sock:
        sock.sendall(setup(secrets.token_bytes(16)))
        assert b"wrong authorization cookie" in recv_all(sock)


def too_slow_for_the_setup(relay: RelayThread) -> None:
    with client(relay) as sock:
        sock.sendall(setup()[:6])
        assert b"did not complete its connection setup" in recv_all(sock)


def display_unreachable(relay: RelayThread) -> None:
    with client(relay) as sock:
        sock.sendall(setup())
        assert b"cannot reach the X display" in recv_all(sock)


def stalls(relay: RelayThread) -> None:
    """Ask for images and never read them: dropped after stall_timeout."""
    with client(relay) as sock:
        sock.sendall(setup())
        status, body = read_setup_reply(sock)
        assert status == 1
        request = struct.pack(
            "<BBHIhhHHI", GET_IMAGE, Z_PIXMAP, 5, root_window(body), 0, 0, 500, 500, 0xFFFFFFFF
        )
        dropped = threading.Event()

        def flood() -> None:
            try:
                while True:
                    sock.sendall(request * 16)
            except OSError:
                dropped.set()

        thread = threading.Thread(target=flood, daemon=True)
        thread.start()
        wait_until(lambda: relay.stats.stalled > 0, "the client to be dropped", timeout=30)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        thread.join(30)
        assert dropped.is_set()


CASES: dict[str, tuple[Callable[[RelayThread], None], dict[str, Any], RelayStats]] = {
    "closed": (closes_normally, {}, RelayStats()),
    "allow": (
        refused_by_allow,
        {"allow": [ipaddress.ip_network("192.0.2.0/24")]},
        RelayStats(rejected=1),
    ),
    "setup-filter": (refused_by_the_setup_filter, {}, RelayStats(rejected=1)),
    "setup-timeout": (too_slow_for_the_setup, {"setup_timeout": 0.3}, RelayStats(rejected=1)),
    "unreachable": (display_unreachable, {}, RelayStats(errors=1)),
    "stalled": (stalls, {"stall_timeout": 0.3}, RelayStats(stalled=1)),
}


def outcome(stats: RelayStats) -> RelayStats:
    """The counters of how connections ended (and how many opened and are open)."""
    return attrs.evolve(stats, bytes_up=0, bytes_down=0, bytes_buffered=0, bytes_buffered_peak=0)


@pytest.mark.parametrize("case", list(CASES))
def test_each_way_a_connection_ends_is_counted_once(
    xvfb: XServer, tmp_path: Path, case: str
) -> None:
    """One connection, one ending, counted in exactly one field (none for a normal close)."""
    cause, options, counted = CASES[case]
    upstream = Endpoint.unix(str(tmp_path / "nothing-listens")) if case == "unreachable" else None
    with gated_relay(xvfb, upstream, **options) as relay:
        cause(relay)
        stats = wait_idle(relay)
    assert outcome(stats) == RelayStats(
        connections_total=1,
        errors=counted.errors,
        rejected=counted.rejected,
        stalled=counted.stalled,
    )


def test_a_refused_client_evicted_while_it_reads_its_refusal_is_counted_once(
    xvfb: XServer,
) -> None:
    """
    A refusal under way (the relay waits for the client to read its reply and leave) can be
    evicted by a newcomer of the same source: still one rejected connection, not two.
    """
    with (
        gated_relay(xvfb, setup_timeout=1.0, max_pending_per_source=1) as relay,
        client(relay) as slow,
    ):
        slow.sendall(setup()[:6])  # never finishes its setup, and stays
        slow.settimeout(30)
        assert slow.recv(1) == b"\0"  # the start of its Failed reply: refused, lingering
        assert relay.stats.rejected == 1
        # The newcomer comes while the relay still lingers on the refused one (it waits
        # up to a second for it to leave), which has waited longer than the source's
        # rotation age (the setup timeout): the newcomer takes its place.
        with client(relay) as newcomer:
            newcomer.sendall(setup())
            assert read_setup_reply(newcomer)[0] == 1
        recv_all(slow)  # the relay closed it
        stats = wait_idle(relay)
    assert outcome(stats) == RelayStats(connections_total=2, rejected=1)
