"""
The relay's data path with real sockets and small upstream servers: bytes, half-close,
backpressure, resets, and what happens when the display cannot be reached.

Tests with real X servers and X clients are in test_relay_x11.py.
"""

from __future__ import annotations

import gc
import secrets
import socket
import struct
import threading
import time

from collections.abc import Callable

import pytest

from x11passthrough import RelayStats
from x11passthrough._relay.sockets import UNIX_SNDBUF
from x11passthrough._relay.thread import RelayThread
from x11passthrough._x11.wire import failed_reply
from x11passthrough.display import Endpoint

from infra.processes import wait_until
from infra.relay_peers import (
    MODES,
    Upstream,
    abstract_listener,
    connect,
    echo,
    open_fds,
    parse_failed,
    pattern,
    recv_all,
    recv_exactly,
    rss_bytes,
    tcp_listener,
    wait_idle,
)


# --- the data path -------------------------------------------------------------------------------


@pytest.mark.parametrize("tcp_upstream", [False, True], ids=["unix-upstream", "tcp-upstream"])
@pytest.mark.parametrize("splice", MODES)
def test_bytes_flow_both_ways_unchanged(
    splice: bool,
    tcp_upstream: bool,
    upstream_factory: Callable[..., Upstream],
    relay_factory: Callable[..., RelayThread],
) -> None:
    """8 MB sent while the echo comes back arrive unchanged, and the counters add up."""
    server = upstream_factory(echo, tcp=tcp_upstream)
    relay = relay_factory(server.endpoint, splice=splice)
    payload = pattern(8 << 20, seed=3)
    with connect(relay) as client:

        def send() -> None:
            client.sendall(payload)
            client.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send)
        sender.start()
        received = recv_all(client)
        sender.join()
    assert received == payload
    stats = wait_idle(relay)
    assert stats.bytes_up == stats.bytes_down == len(payload)
    assert (stats.connections_total, stats.errors, stats.rejected) == (1, 0, 0)
    assert stats.bytes_buffered == 0


@pytest.mark.parametrize("splice", MODES)
def test_half_close_from_client_keeps_the_other_direction(
    splice: bool,
    upstream_factory: Callable[..., Upstream],
    relay_factory: Callable[..., RelayThread],
) -> None:
    """Client EOF reaches the server, which can still answer; then the client sees EOF."""
    seen: list[bytes] = []

    def handler(conn: socket.socket) -> None:
        seen.append(recv_all(conn))  # until the client's EOF arrives
        conn.sendall(b"answer after your EOF")
        conn.shutdown(socket.SHUT_WR)

    server = upstream_factory(handler)
    relay = relay_factory(server.endpoint, splice=splice)
    with connect(relay) as client:
        client.sendall(b"request")
        client.shutdown(socket.SHUT_WR)
        assert recv_all(client) == b"answer after your EOF"
    assert seen == [b"request"]
    assert wait_idle(relay).errors == 0


@pytest.mark.parametrize("splice", MODES)
def test_half_close_from_server_keeps_the_other_direction(
    splice: bool,
    upstream_factory: Callable[..., Upstream],
    relay_factory: Callable[..., RelayThread],
) -> None:
    """Server EOF reaches the client, which can still send; the server receives it all."""
    seen: list[bytes] = []

    def handler(conn: socket.socket) -> None:
        conn.sendall(b"hello")
        conn.shutdown(socket.SHUT_WR)
        seen.append(recv_all(conn))

    server = upstream_factory(handler)
    relay = relay_factory(server.endpoint, splice=splice)
    with connect(relay) as client:
        assert recv_all(client) == b"hello"
        client.sendall(b"still talking " * 1000)
        client.shutdown(socket.SHUT_WR)
        wait_until(lambda: bool(seen), "the server to see the client's EOF")
    assert seen == [b"still talking " * 1000]
    assert wait_idle(relay).errors == 0


@pytest.mark.parametrize(
    ("splice", "tcp_upstream"),
    [(False, False), (True, True)],
    ids=["copy", "splice"],  # splice is used for bytes that come from a TCP socket
)
def test_backpressure_bounds_memory_while_a_client_does_not_read(
    splice: bool,
    tcp_upstream: bool,
    upstream_factory: Callable[..., Upstream],
    relay_factory: Callable[..., RelayThread],
    record_property: Callable[[str, object], None],
) -> None:
    """
    A server streams 100 MB to a client that does not read: the relay stops reading at its
    high-water mark (so the server stalls), its memory stays bounded, and once the client
    reads, every byte arrives in order.
    """
    total = 100 << 20
    block = pattern(1 << 20, seed=5)
    progress = [0]

    def stream(conn: socket.socket) -> None:
        for _ in range(total // len(block)):
            conn.sendall(block)
            progress[0] += len(block)
        conn.shutdown(socket.SHUT_WR)

    high_water, read_size = 1 << 20, 256 << 10
    server = upstream_factory(stream, tcp=tcp_upstream)
    relay = relay_factory(
        server.endpoint,
        splice=splice,
        high_water=high_water,
        low_water=high_water // 4,
        read_size=read_size,
        stall_timeout=0,  # this client stops reading on purpose: keep it
    )
    gc.collect()
    rss_before = rss_bytes()
    with connect(relay) as client:
        wait_until(lambda: progress[0] >= 2 * len(block), "the server to send 2 MB")
        wait_stalled(progress)
        stats = relay.stats
        rss_growth = rss_bytes() - rss_before
        record_property("stalled_after_bytes", progress[0])
        record_property("bytes_buffered_peak", stats.bytes_buffered_peak)
        record_property("rss_growth", rss_growth)
        assert progress[0] < total // 2, "the relay did not push back on the server"
        assert 0 < stats.bytes_buffered <= stats.bytes_buffered_peak <= high_water + read_size
        assert rss_growth < 32 << 20
        received = 0
        while chunk := client.recv(1 << 20):
            offset = received % len(block)
            assert chunk == (block + block)[offset : offset + len(chunk)]
            received += len(chunk)
    assert received == total
    stats = wait_idle(relay)
    assert stats.bytes_down == total
    assert stats.bytes_buffered == 0


def wait_stalled(progress: list[int]) -> None:
    """
    Wait until a sender makes no progress for 0.3 s: it is blocked on a full socket.

    Stalling is the absence of progress over time, so this condition is judged over a window.
    """
    last = -1
    while progress[0] != last:
        last = progress[0]
        time.sleep(0.3)


@pytest.mark.parametrize(
    ("splice", "tcp_upstream"),
    [(True, False), (False, False), (False, True)],
    ids=["splice", "copy", "copy-tcp-upstream"],
)
def test_backpressure_towards_a_server_that_does_not_read(
    splice: bool,
    tcp_upstream: bool,
    upstream_factory: Callable[..., Upstream],
    relay_factory: Callable[..., RelayThread],
) -> None:
    """
    A client floods a server that does not read, first in large writes, then in thousands of
    tiny ones (each its own TCP segment): the relay's backlog stays bounded, and when the
    server reads, slowly, the stream arrives complete and in order.
    """
    start_reading = threading.Event()
    received: list[bytes] = []

    def handler(conn: socket.socket) -> None:
        assert start_reading.wait(30)
        data = bytearray()
        while chunk := conn.recv(8192):  # small reads: the relay's writes come out partial
            data += chunk
        received.append(bytes(data))

    high_water = 1 << 20
    server = upstream_factory(handler, tcp=tcp_upstream)
    relay = relay_factory(
        server.endpoint, splice=splice, high_water=high_water, low_water=high_water // 4
    )
    big = pattern(4 << 20, seed=9)
    small = [b"%06d" % i for i in range(5000)]
    progress = [0]
    with connect(relay) as client:
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def send() -> None:
            client.sendall(big)
            for piece in small:
                client.sendall(piece)
                progress[0] += 1
            client.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send)
        sender.start()
        wait_until(lambda: relay.stats.bytes_buffered_peak > 0, "the relay to buffer")
        wait_stalled(progress)
        assert relay.stats.bytes_buffered_peak <= high_water
        start_reading.set()
        sender.join()
        wait_until(lambda: bool(received), "the server to read everything")
    assert received[0] == big + b"".join(small)
    stats = wait_idle(relay)
    assert (stats.bytes_up, stats.errors) == (len(received[0]), 0)


@pytest.mark.parametrize("splice", MODES)
def test_client_reset_is_cleaned_up(
    splice: bool,
    upstream_factory: Callable[..., Upstream],
    relay_factory: Callable[..., RelayThread],
) -> None:
    """A client that resets its connection (SO_LINGER 0) ends it upstream too, counted once."""
    upstream_eof = threading.Event()

    def handler(conn: socket.socket) -> None:
        echo(conn)
        upstream_eof.set()

    server = upstream_factory(handler)
    relay = relay_factory(server.endpoint, splice=splice)
    before = open_fds()
    client = connect(relay)
    client.sendall(b"ping")
    assert recv_exactly(client, 4) == b"ping"
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()
    stats = wait_idle(relay)
    assert upstream_eof.wait(10)
    assert stats == RelayStats(
        connections_open=0,
        connections_total=1,
        bytes_up=4,
        bytes_down=4,
        errors=1,
        rejected=0,
        bytes_buffered=0,
        bytes_buffered_peak=stats.bytes_buffered_peak,
    )
    wait_until(lambda: open_fds() == before, "every socket of the connection to be closed")


def test_client_closing_after_eof_while_data_flows_is_no_error(
    upstream_factory: Callable[..., Upstream], relay_factory: Callable[..., RelayThread]
) -> None:
    """
    An X client that sent EOF and then closed while the server still streams makes the
    relay's writes fail; that ends the connection normally, not as an error.
    """
    client_eof = threading.Event()

    def handler(conn: socket.socket) -> None:
        recv_all(conn)
        client_eof.set()
        while True:
            conn.sendall(b"event" * 1000)

    server = upstream_factory(handler)
    relay = relay_factory(server.endpoint)
    client = connect(relay)
    client.shutdown(socket.SHUT_WR)
    assert client_eof.wait(10)
    assert client.recv(5, socket.MSG_PEEK) == b"event"
    client.close()  # with unread data: a reset
    stats = wait_idle(relay)
    assert (stats.errors, stats.connections_total) == (0, 1)


def test_server_reset_closes_the_client(
    upstream_factory: Callable[..., Upstream], relay_factory: Callable[..., RelayThread]
) -> None:
    """A server that resets its side makes the client's connection end, counted as an error."""

    def handler(conn: socket.socket) -> None:
        conn.recv(4)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.sendall(b"bye")

    server = upstream_factory(handler)
    relay = relay_factory(server.endpoint)
    with connect(relay) as client:
        client.sendall(b"ping" * 3)  # unread data makes the server's close a reset
        assert recv_all(client) == b"bye"
    wait_until(lambda: relay.stats.errors == 1, "the reset to be counted")
    assert wait_idle(relay).connections_total == 1


def test_tcp_nodelay_on_every_tcp_socket(relay_factory: Callable[..., RelayThread]) -> None:
    """The accepted socket and a TCP upstream connection both have TCP_NODELAY."""
    with tcp_listener() as server:
        host, port = server.getsockname()
        relay = relay_factory(Endpoint.tcp(host, port))
        with connect(relay) as client:
            client.sendall(b"x")
            accepted, _ = server.accept()
            with accepted:
                assert accepted.recv(1) == b"x"
                (conn,) = relay.relay.connections
                assert conn.display is not None
                for sock in (conn.client, conn.display):
                    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


def test_large_send_buffers_on_unix_sockets(
    upstream_factory: Callable[..., Upstream],
    relay_factory: Callable[..., RelayThread],
) -> None:
    """Both UNIX sockets of a connection send up to 1 MiB at once (where the kernel allows)."""
    server = upstream_factory(echo)
    unix = abstract_listener()
    relay = relay_factory(server.endpoint, listeners=[unix])
    with connect(relay) as client:
        client.sendall(b"x")
        assert recv_exactly(client, 1) == b"x"
        (conn,) = relay.relay.connections
        assert conn.display is not None
        with open("/proc/sys/net/core/wmem_max") as limit:
            allowed = min(int(limit.read()), UNIX_SNDBUF)
        for sock in (conn.client, conn.display):
            # Linux reports twice what was set (its bookkeeping overhead).
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) >= 2 * allowed


def test_serves_several_listeners_of_any_family(
    upstream_factory: Callable[..., Upstream],
    relay_factory: Callable[..., RelayThread],
) -> None:
    """A TCP and a UNIX listener are served alike."""
    server = upstream_factory(echo)
    unix = abstract_listener()
    relay = relay_factory(server.endpoint, listeners=[tcp_listener(), unix])
    for index in (0, 1):
        with connect(relay, index) as client:
            client.sendall(b"via %d" % index)
            client.shutdown(socket.SHUT_WR)
            assert recv_all(client) == b"via %d" % index
    assert wait_idle(relay).connections_total == 2


# --- upstream failures ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "description"),
    [
        (Endpoint.unix("/nonexistent/x11passthrough/X0"), "no such file or directory"),
        (
            Endpoint.abstract("x11passthrough-nobody-listens-here"),
            "connection refused (nothing listens there)",
        ),
    ],
    ids=["missing-socket", "refused"],
)
def test_unreachable_display_answers_failed_and_keeps_serving(
    endpoint: Endpoint, description: str, relay_factory: Callable[..., RelayThread]
) -> None:
    """Each client gets a "Failed" reply in its byte order naming the display and the cause."""
    relay = relay_factory(endpoint)
    for order in (b"l", b"B"):
        with connect(relay) as client:
            client.sendall(order + b"\0")
            reply = recv_all(client)
        expected = f"x11passthrough: cannot reach the X display at {endpoint}: {description}"
        assert reply == failed_reply(expected, order[0])
    stats = wait_idle(relay)
    assert (stats.connections_total, stats.errors, stats.bytes_up) == (2, 2, 0)


def test_unreachable_tcp_display_is_reported(relay_factory: Callable[..., RelayThread]) -> None:
    """A TCP display that refuses: the reason says so."""
    with tcp_listener() as placeholder:
        host, port = placeholder.getsockname()
    relay = relay_factory(Endpoint.tcp(host, port))
    with connect(relay) as client:
        client.sendall(b"l\0\x0b\0")
        reason = parse_failed(recv_all(client))
    assert reason == (
        f"x11passthrough: cannot reach the X display at tcp:{host}:{port}: "
        "connection refused (nothing listens there)"
    )


def test_display_that_does_not_answer_in_time(relay_factory: Callable[..., RelayThread]) -> None:
    """A display whose listen backlog is full: the client hears so after connect_timeout."""
    name = f"x11passthrough-test-busy-{secrets.token_hex(6)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as busy:
        busy.bind("\0" + name)
        busy.listen(0)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as first:
            first.connect("\0" + name)  # fills the backlog; nobody accepts
            endpoint = Endpoint.abstract(name)
            relay = relay_factory(endpoint, connect_timeout=0.2)
            with connect(relay) as client:
                client.sendall(b"l\0")
                reason = parse_failed(recv_all(client))
    assert reason == (
        f"x11passthrough: cannot reach the X display at {endpoint}: no answer within 0.2 s"
    )


def test_unreachable_display_and_silent_client_closes_without_reply(
    relay_factory: Callable[..., RelayThread],
) -> None:
    """Without the client's first byte the byte order is unknown: the relay just closes."""
    relay = relay_factory(Endpoint.unix("/nonexistent/x11passthrough/X0"))
    with connect(relay) as client:
        assert recv_all(client) == b""
    assert wait_idle(relay).errors == 1
