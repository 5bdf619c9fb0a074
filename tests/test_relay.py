"""
The relay with real sockets and small upstream servers written here: the data path, the setup
filter, faults, scale and the lifecycle of Relay and RelayThread.

Tests with real X servers and X clients are in test_relay_x11.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ipaddress
import logging
import os
import re
import resource
import secrets
import selectors
import socket
import struct
import threading
import time

from collections.abc import Callable, Iterator
from typing import Any

import attrs
import pytest

from x11passthrough import RelayStats
from x11passthrough._relay.options import RelayOptions
from x11passthrough._relay.server import Relay
from x11passthrough._relay.thread import RelayThread
from x11passthrough._x11.gate import Accept, Reject
from x11passthrough._x11.wire import failed_reply
from x11passthrough.display import Endpoint
from x11passthrough.exceptions import ConfigurationError, RelayError

from support import require


MODES = [pytest.param(True, id="splice"), pytest.param(False, id="copy")]


# --- helpers -------------------------------------------------------------------------------------


def tcp_listener(backlog: int = 128) -> socket.socket:
    """A listening socket on 127.0.0.1 with a free port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(backlog)
    return sock


def connect(relay: RelayThread | Relay, index: int = 0) -> socket.socket:
    """A blocking client connection to the relay's `index`-th listener."""
    inner = relay.relay if isinstance(relay, RelayThread) else relay
    listener = inner.listeners[index]
    address = listener.getsockname()
    sock = socket.socket(listener.family, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(address)
    return sock


def relay_address(relay: RelayThread | Relay, index: int = 0) -> Any:
    inner = relay.relay if isinstance(relay, RelayThread) else relay
    return inner.listeners[index].getsockname()


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(min(size - len(data), 1 << 20))
        if not chunk:
            raise AssertionError(f"EOF after {len(data)} of {size} bytes")
        data += chunk
    return bytes(data)


def recv_all(sock: socket.socket) -> bytes:
    """Everything until EOF."""
    data = bytearray()
    while chunk := sock.recv(1 << 20):
        data += chunk
    return bytes(data)


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll `predicate` until it holds; fail naming `what` if it does not within `timeout`."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def wait_idle(relay: RelayThread) -> RelayStats:
    wait_until(lambda: relay.stats.connections_open == 0, "all relay connections to close")
    return relay.stats


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def pattern(size: int, seed: int = 0) -> bytes:
    block = bytes((seed + i * 7) % 251 for i in range(65536))
    return (block * (size // len(block) + 1))[:size]


def parse_failed(reply: bytes) -> str:
    """Return the reason of an X11 "Failed" setup reply (little-endian), checking its framing."""
    assert reply[0] == 0, reply[:8]
    length = reply[1]
    (units,) = struct.unpack("<H", reply[6:8])
    assert len(reply) == 8 + 4 * units, (len(reply), units)
    return reply[8 : 8 + length].decode()


class Upstream:
    """
    A server on an abstract UNIX socket: one thread per connection runs `handler`.

    `accepted` counts connections; every socket and thread is closed and joined by close().
    """

    def __init__(self, handler: Callable[[socket.socket], None], *, tcp: bool = False) -> None:
        self._handler = handler
        if tcp:
            self._listener = tcp_listener(1024)
            host, port = self._listener.getsockname()
            self.endpoint = Endpoint.tcp(host, port)
        else:
            name = f"x11passthrough-test-{secrets.token_hex(6)}"
            self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._listener.bind("\0" + name)
            self._listener.listen(1024)
            self.endpoint = Endpoint.abstract(name)
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self.accepted = 0
        self._closing = False
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True)
        self._acceptor.start()

    def _accept_loop(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                if self._closing:
                    conn.close()
                    return
                self.accepted += 1
                self._sockets.append(conn)
                thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
                self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            with contextlib.suppress(OSError):
                self._handler(conn)
        finally:
            with self._lock:
                conn.close()

    def close(self) -> None:
        with self._lock:
            self._closing = True
        self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._acceptor.join()
        with self._lock:
            for sock in self._sockets:
                if sock.fileno() >= 0:
                    sock.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join()
        for sock in self._sockets:
            sock.close()


def echo(conn: socket.socket) -> None:
    """Echo until EOF, then close."""
    while data := conn.recv(1 << 20):
        conn.sendall(data)
    conn.shutdown(socket.SHUT_WR)


class SelectorEcho:
    """A single-threaded echo server on an abstract socket, for thousands of connections."""

    def __init__(self) -> None:
        self.name = f"x11passthrough-echo-{secrets.token_hex(6)}"
        self.endpoint = Endpoint.abstract(self.name)
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind("\0" + self.name)
        self._listener.listen(4096)
        self._listener.setblocking(False)
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._listener, selectors.EVENT_READ, None)
        sel.register(self._wake_r, selectors.EVENT_READ, None)
        conns: set[socket.socket] = set()
        try:
            while True:
                for key, _ in sel.select():
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    if sock is self._wake_r:
                        return
                    if sock is self._listener:
                        with contextlib.suppress(BlockingIOError):
                            while True:
                                conn, _ = self._listener.accept()
                                conn.setblocking(True)
                                conn.settimeout(5)
                                conns.add(conn)
                                sel.register(conn, selectors.EVENT_READ, None)
                        continue
                    try:
                        data = sock.recv(65536)
                        if data:
                            sock.sendall(data)
                            continue
                    except OSError:
                        pass
                    sel.unregister(sock)
                    conns.discard(sock)
                    sock.close()
        finally:
            for conn in conns:
                conn.close()
            sel.close()

    def close(self) -> None:
        self._wake_w.send(b"x")
        self._thread.join()
        self._listener.close()
        self._wake_r.close()
        self._wake_w.close()


@pytest.fixture(name="upstream_factory")
def _upstream_factory() -> Iterator[Callable[..., Upstream]]:
    servers: list[Upstream] = []

    def make(handler: Callable[[socket.socket], None], *, tcp: bool = False) -> Upstream:
        server = Upstream(handler, tcp=tcp)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


@pytest.fixture(name="relay_factory")
def _relay_factory() -> Iterator[Callable[..., RelayThread]]:
    """Start RelayThreads on fresh 127.0.0.1 listeners; all are stopped after the test."""
    relays: list[RelayThread] = []

    def make(upstream: Endpoint, **options: Any) -> RelayThread:
        listeners = options.pop("listeners", None) or [tcp_listener()]
        relay = RelayThread(listeners, upstream, RelayOptions(**options))
        relays.append(relay)
        relay.start()
        return relay

    yield make
    for relay in relays:
        relay.stop()


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
    """Wait until a sender makes no progress for a while (it is blocked on a full socket)."""
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
                assert conn.upstream is not None
                for sock in (conn.client, conn.upstream):
                    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


def test_serves_several_listeners_of_any_family(
    upstream_factory: Callable[..., Upstream],
    relay_factory: Callable[..., RelayThread],
) -> None:
    """A TCP and a UNIX listener are served alike."""
    server = upstream_factory(echo)
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind(f"\0x11passthrough-test-listener-{secrets.token_hex(6)}")
    unix.listen(8)
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
        (Endpoint.abstract("x11passthrough-nobody-listens-here"), "connection refused"),
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
        f"x11passthrough: cannot reach the X display at tcp:{host}:{port}: connection refused"
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


# --- the setup filter ----------------------------------------------------------------------------


def prefix_filter(size: int, replacement: bytes) -> Callable[[bytes], Accept | Reject | None]:
    """Accept once `size` bytes arrived, forwarding `replacement` plus the rest."""

    def check(data: bytes) -> Accept | Reject | None:
        if len(data) < size:
            return None
        if data.startswith(b"bad"):
            return Reject("bad client", failed_reply("no thanks"))
        return Accept(replacement + data[size:])

    return check


def recorder(log: list[bytes], done: threading.Event) -> Callable[[socket.socket], None]:
    def handler(conn: socket.socket) -> None:
        log.append(recv_all(conn))
        done.set()

    return handler


def test_filter_sees_everything_so_far_and_nothing_goes_upstream_before_accept(
    upstream_factory: Callable[..., Upstream], relay_factory: Callable[..., RelayThread]
) -> None:
    """The filter gets all bytes from the start; upstream is contacted only after Accept."""
    log: list[bytes] = []
    done = threading.Event()
    server = upstream_factory(recorder(log, done))
    calls: list[bytes] = []
    called = threading.Semaphore(0)
    inner = prefix_filter(12, b"REWRITTEN-HEADER")

    def setup_filter(data: bytes) -> Accept | Reject | None:
        calls.append(data)
        called.release()
        return inner(data)

    relay = relay_factory(server.endpoint, setup_filter=setup_filter)
    with connect(relay) as client:
        client.sendall(b"12345")
        assert called.acquire(timeout=10)
        # The filter asked for more: the display must not have been contacted.
        assert server.accepted == 0
        assert relay.stats.bytes_up == 0
        client.sendall(b"6789012tail")
        assert called.acquire(timeout=10)
        client.sendall(b" and more")
        client.shutdown(socket.SHUT_WR)
        assert done.wait(10)
    assert calls[0] == b"12345"
    assert calls[-1].startswith(b"123456789012tail")
    assert log == [b"REWRITTEN-HEADERtail and more"]
    assert server.accepted == 1
    stats = wait_idle(relay)
    assert stats.bytes_up == len(log[0])


def test_filter_reject_sends_its_reply_and_never_contacts_upstream(
    upstream_factory: Callable[..., Upstream], relay_factory: Callable[..., RelayThread]
) -> None:
    """Reject: the client gets exactly the reply, then EOF; the display never sees it."""
    server = upstream_factory(echo)
    relay = relay_factory(server.endpoint, setup_filter=prefix_filter(4, b""))
    with connect(relay) as client:
        client.sendall(b"bad request")
        assert recv_all(client) == failed_reply("no thanks")
    stats = wait_idle(relay)
    assert (stats.rejected, stats.errors, stats.bytes_up, server.accepted) == (1, 0, 0, 0)


def test_setup_timeout_drops_a_stalled_client(
    upstream_factory: Callable[..., Upstream], relay_factory: Callable[..., RelayThread]
) -> None:
    """A client that stalls before the filter decides gets a Failed reply and is dropped."""
    server = upstream_factory(echo)
    relay = relay_factory(server.endpoint, setup_filter=prefix_filter(12, b""), setup_timeout=0.3)
    with connect(relay) as client:
        client.sendall(b"B\0")
        reply = recv_all(client)
    assert reply == failed_reply(
        "x11passthrough: the client did not complete its connection setup within 0.3 s", ord("B")
    )
    stats = wait_idle(relay)
    assert (stats.rejected, server.accepted) == (1, 0)


def test_setup_filter_that_raises_is_an_internal_error(
    upstream_factory: Callable[..., Upstream],
    relay_factory: Callable[..., RelayThread],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A filter bug refuses that client, is logged, and the relay keeps serving."""
    server = upstream_factory(echo)

    def broken(data: bytes) -> Accept | Reject | None:
        if data.startswith(b"l"):
            raise ValueError("filter bug")
        return Accept(data)

    relay = relay_factory(server.endpoint, setup_filter=broken)
    with caplog.at_level(logging.ERROR, logger="x11passthrough"), connect(relay) as client:
        client.sendall(b"l\0")
        reason = parse_failed(recv_all(client))
    assert reason == "x11passthrough: internal error while checking the connection setup"
    assert "filter bug" in caplog.text
    with connect(relay) as client:
        client.sendall(b"fine")
        client.shutdown(socket.SHUT_WR)
        assert recv_all(client) == b"fine"
    assert wait_idle(relay).errors == 1


def test_setup_longer_than_any_real_one_is_rejected(
    upstream_factory: Callable[..., Upstream], relay_factory: Callable[..., RelayThread]
) -> None:
    server = upstream_factory(echo)
    relay = relay_factory(server.endpoint, setup_filter=lambda data: None)
    with connect(relay) as client:
        with contextlib.suppress(OSError):  # the relay may close while we still send
            client.sendall(b"l" + bytes(300 * 1024))
        client.shutdown(socket.SHUT_WR)
        reason = parse_failed(recv_all(client))
    assert reason == "x11passthrough: the connection setup message is too long"
    stats = wait_idle(relay)
    assert (stats.rejected, server.accepted) == (1, 0)


def test_setup_filter_returning_nonsense_is_an_internal_error(
    relay_factory: Callable[..., RelayThread], caplog: pytest.LogCaptureFixture
) -> None:
    relay = relay_factory(Endpoint.unix("/nonexistent"), setup_filter=lambda data: "yes")
    with caplog.at_level(logging.ERROR, logger="x11passthrough"), connect(relay) as client:
        client.sendall(b"l\0")
        reason = parse_failed(recv_all(client))
    assert reason == "x11passthrough: internal error while checking the connection setup"
    assert "returned 'yes', not a verdict" in caplog.text
    assert wait_idle(relay).errors == 1


def test_client_leaving_during_setup_is_not_an_error(
    upstream_factory: Callable[..., Upstream], relay_factory: Callable[..., RelayThread]
) -> None:
    server = upstream_factory(echo)
    relay = relay_factory(server.endpoint, setup_filter=prefix_filter(12, b""))
    with connect(relay) as client:
        client.sendall(b"l\0")
    stats = wait_idle(relay)
    assert (stats.errors, stats.rejected, server.accepted) == (0, 0, 0)


# --- scale and leaks -----------------------------------------------------------------------------


def test_ten_thousand_sequential_connections_leak_no_file_descriptor(
    relay_factory: Callable[..., RelayThread],
) -> None:
    """10,000 connections one after the other: every socket and pipe is closed again."""
    server = SelectorEcho()
    try:
        relay = relay_factory(server.endpoint)
        with connect(relay) as client:  # warm up lazily created loop resources
            client.sendall(b"x")
            assert client.recv(1) == b"x"
        wait_idle(relay)
        before = open_fds()
        address = relay_address(relay)
        for i in range(10_000):
            with socket.create_connection(address) as client:
                client.sendall(b"%d" % (i % 10))
                assert client.recv(1) == b"%d" % (i % 10)
        stats = wait_idle(relay)
        assert open_fds() == before
        assert (stats.connections_total, stats.errors) == (10_001, 0)
    finally:
        server.close()


@pytest.fixture(name="many_fds")
def _many_fds() -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 16384
    require(
        f"RLIMIT_NOFILE hard limit of {wanted}",
        hard == resource.RLIM_INFINITY or hard >= wanted,
        f"it is {hard}; raise it with ulimit -Hn",
    )
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.usefixtures("many_fds")
def test_a_thousand_concurrent_connections(relay_factory: Callable[..., RelayThread]) -> None:
    """1,000 clients connected at once each get their own echo back."""
    server = SelectorEcho()
    clients: list[socket.socket] = []
    try:
        relay = relay_factory(server.endpoint, listeners=[tcp_listener(backlog=1024)])
        address = relay_address(relay)
        for _ in range(1000):
            clients.append(socket.create_connection(address, timeout=20))
        for i, client in enumerate(clients):
            client.sendall(struct.pack("<I", i))
        for i, client in enumerate(clients):
            assert recv_exactly(client, 4) == struct.pack("<I", i)
        assert relay.stats.connections_open == 1000
    finally:
        for client in clients:
            client.close()
    stats = wait_idle(relay)
    server.close()
    assert (stats.connections_total, stats.errors, stats.bytes_up) == (1000, 0, 4000)


def test_allow_list_closes_other_clients_at_once(
    upstream_factory: Callable[..., Upstream], relay_factory: Callable[..., RelayThread]
) -> None:
    server = upstream_factory(echo)
    outside = relay_factory(server.endpoint, allow=[ipaddress.ip_network("192.0.2.0/24")])
    with connect(outside) as client:
        assert recv_all(client) == b""
    inside = relay_factory(server.endpoint, allow=[ipaddress.ip_network("127.0.0.0/8")])
    with connect(inside) as client:
        client.sendall(b"allowed")
        client.shutdown(socket.SHUT_WR)
        assert recv_all(client) == b"allowed"
    assert (outside.stats.rejected, outside.stats.connections_total) == (1, 0)
    assert (wait_idle(inside).rejected, server.accepted) == (0, 1)


def test_running_out_of_file_descriptors_pauses_accepting(
    upstream_factory: Callable[..., Upstream],
    relay_factory: Callable[..., RelayThread],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """accept() failing with EMFILE is logged and retried; the waiting client is served."""
    server = upstream_factory(echo)
    relay = relay_factory(server.endpoint)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with caplog.at_level(logging.WARNING, logger="x11passthrough"):
        client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            lowest_free = os.dup(0)
            os.close(lowest_free)
            # From here on, no new descriptor fits: the relay's accept() fails with EMFILE.
            resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))
            try:
                client.connect(relay_address(relay))
                client.sendall(b"late")
                wait_until(lambda: relay.stats.errors == 1, "accept() to fail")
            finally:
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            client.shutdown(socket.SHUT_WR)
            assert recv_all(client) == b"late"
        finally:
            client.close()
    assert "relay cannot accept a connection" in caplog.text
    assert "too many open files" in caplog.text.lower()
    assert wait_idle(relay).connections_total == 1


# --- lifecycle -----------------------------------------------------------------------------------


def relay_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("x11passthrough-relay")]


def test_thread_start_stop_are_idempotent_and_clean_up(
    upstream_factory: Callable[..., Upstream],
) -> None:
    """start() serves at once; stop() ends connections, closes listeners, joins the thread."""
    server = upstream_factory(echo)
    listener = tcp_listener()
    address = listener.getsockname()
    relay = RelayThread([listener], server.endpoint)
    assert not relay.serving
    relay.start()
    relay.start()
    assert relay.serving
    assert len(relay_threads()) == 1
    client = socket.create_connection(address, timeout=10)
    client.sendall(b"x")
    assert client.recv(1) == b"x"
    relay.stop()
    relay.stop()
    assert not relay.serving
    assert relay_threads() == []
    assert listener.fileno() == -1
    assert recv_all(client) == b""  # the relay closed the connection
    client.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address, timeout=10).close()
    with pytest.raises(RelayError, match="cannot start again"):
        relay.start()


def thread_cpu_seconds(thread: threading.Thread) -> float:
    with open(f"/proc/self/task/{thread.native_id}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_busy_polling_stops_when_traffic_stops(
    upstream_factory: Callable[..., Upstream], relay_factory: Callable[..., RelayThread]
) -> None:
    """After a burst of round trips the relay thread sleeps: an idle relay uses no CPU."""
    server = upstream_factory(echo)
    relay = relay_factory(server.endpoint, busy_poll=0.001)
    (thread,) = relay_threads()
    with connect(relay) as client:
        for _ in range(200):
            client.sendall(b"ping")
            assert recv_exactly(client, 4) == b"ping"
        before = thread_cpu_seconds(thread)
        time.sleep(1.0)
        idle_cpu = thread_cpu_seconds(thread) - before
    assert idle_cpu < 0.1, f"the relay thread used {idle_cpu} s of CPU while idle"


def test_thread_start_stop_from_many_threads(upstream_factory: Callable[..., Upstream]) -> None:
    server = upstream_factory(echo)
    relay = RelayThread([tcp_listener()], server.endpoint)
    barrier = threading.Barrier(8)

    def hammer(action: Callable[[], None]) -> None:
        barrier.wait()
        action()

    for action in (relay.start, relay.stop):
        workers = [threading.Thread(target=hammer, args=(action,)) for _ in range(8)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        assert len(relay_threads()) == (1 if action == relay.start else 0)


def test_stop_before_start_closes_the_listeners() -> None:
    listener = tcp_listener()
    relay = RelayThread([listener], Endpoint.unix("/nonexistent"))
    relay.stop()
    assert listener.fileno() == -1
    with pytest.raises(RelayError, match="cannot start again"):
        relay.start()


def test_start_fails_clearly_on_a_socket_that_does_not_listen() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    relay = RelayThread([sock], Endpoint.unix("/nonexistent"))
    with pytest.raises(RelayError, match="not a listening stream socket"):
        relay.start()
    assert relay_threads() == []
    assert sock.fileno() == -1
    relay.stop()


def test_start_fails_clearly_on_a_closed_socket_or_a_non_socket() -> None:
    closed = tcp_listener()
    closed.close()
    with pytest.raises(RelayError, match="is closed; pass an open socket"):
        RelayThread([closed], Endpoint.unix("/nonexistent")).start()
    not_a_socket: Any = "127.0.0.1:6000"
    with pytest.raises(
        RelayError, match=re.escape("must be a socket.socket, not '127.0.0.1:6000'")
    ):
        RelayThread([not_a_socket], Endpoint.unix("/nonexistent"))
    with pytest.raises(RelayError, match="must be a list of listening sockets"):
        RelayThread(not_a_socket, Endpoint.unix("/nonexistent"))


def test_start_fails_clearly_without_listeners() -> None:
    relay = RelayThread([], Endpoint.unix("/nonexistent"))
    with pytest.raises(RelayError, match="at least one listening socket"):
        relay.start()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"setup_timeout": 0}, "setup_timeout=0 must be a positive number of seconds"),
        ({"connect_timeout": -1.0}, r"connect_timeout=-1\.0 must be a positive number"),
        ({"read_size": 0}, "read_size=0 must be a whole number >= 1"),
        ({"high_water": 10, "low_water": 10}, r"low_water=10 must be .* below high_water \(10\)"),
        ({"busy_poll": -1}, "busy_poll=-1 must be 0 or a positive number"),
        ({"allow": []}, r"allow=\[\] admits no client"),
    ],
)
def test_bad_options_are_refused(options: dict[str, Any], message: str) -> None:
    """Each bad option is a ConfigurationError naming it, raised before any relay exists."""
    with pytest.raises(ConfigurationError, match=message):
        RelayOptions(**options)


def test_stop_ends_connections_in_setup_and_leaks_nothing(
    upstream_factory: Callable[..., Upstream],
) -> None:
    """A client waiting in the setup filter is closed by stop(); its task ends quietly."""
    server = upstream_factory(echo)
    relay = RelayThread(
        [tcp_listener()], server.endpoint, RelayOptions(setup_filter=lambda data: None)
    )
    relay.start()
    before = open_fds()
    client = connect(relay)
    client.sendall(b"l\0")
    wait_until(lambda: relay.stats.connections_open == 1, "the relay to accept")
    relay.stop()
    assert recv_all(client) == b""
    client.close()
    assert open_fds() <= before - 1  # the listener is closed too
    assert relay.stats.connections_open == 0


def test_stats_is_a_frozen_snapshot(relay_factory: Callable[..., RelayThread]) -> None:
    relay = relay_factory(Endpoint.unix("/nonexistent"))
    stats = relay.stats
    assert stats == RelayStats()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        stats.errors = 1  # type: ignore[misc]


def test_connection_summary_is_logged_at_debug(
    upstream_factory: Callable[..., Upstream],
    relay_factory: Callable[..., RelayThread],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Each connection's end is logged with its peer, byte counts, duration and reason."""
    server = upstream_factory(echo)
    cookie = secrets.token_bytes(16)
    relay = relay_factory(server.endpoint, setup_filter=prefix_filter(2, b"hi"))
    with caplog.at_level(logging.DEBUG, logger="x11passthrough"):
        with connect(relay) as client:
            port = client.getsockname()[1]
            client.sendall(b"ab" + cookie)
            client.shutdown(socket.SHUT_WR)
            assert recv_all(client) == b"hi" + cookie
        wait_idle(relay)
    (summary,) = [r.getMessage() for r in caplog.records if "ended after" in r.getMessage()]
    assert f"from 127.0.0.1:{port} to {server.endpoint}" in summary
    assert "18 bytes up, 18 bytes down" in summary
    assert "both sides closed the connection" in summary
    assert cookie.hex() not in caplog.text


def test_async_relay_runs_in_the_callers_loop(upstream_factory: Callable[..., Upstream]) -> None:
    """`async with Relay(...)` serves from the running loop; leaving it stops everything."""
    server = upstream_factory(echo)
    listener = tcp_listener()
    address = listener.getsockname()

    async def main() -> bytes:
        loop = asyncio.get_running_loop()
        async with Relay([listener], server.endpoint) as relay:
            assert relay.serving
            assert relay.loop is loop
            reader, writer = await asyncio.open_connection(*address)
            writer.write(b"async hello")
            writer.write_eof()
            data = await reader.read()
            writer.close()
            await writer.wait_closed()
        assert not relay.serving
        return data

    assert asyncio.run(main()) == b"async hello"
    assert listener.fileno() == -1


def test_async_relay_cannot_restart() -> None:
    async def main() -> None:
        relay = Relay([tcp_listener()], Endpoint.unix("/nonexistent"))
        await relay.start()
        await relay.start()
        await relay.stop()
        await relay.stop()
        with pytest.raises(RelayError, match="cannot start again"):
            await relay.start()

    asyncio.run(main())


def test_relay_thread_leaves_the_callers_loop_alone(
    upstream_factory: Callable[..., Upstream],
) -> None:
    """A RelayThread started from inside a running loop uses its own loop in its own thread."""
    server = upstream_factory(echo)

    async def main() -> None:
        relay = RelayThread([tcp_listener()], server.endpoint)
        relay.start()
        try:
            inner = relay.relay
            assert inner.loop is not asyncio.get_running_loop()
            reader, writer = await asyncio.open_connection(*relay_address(relay))
            writer.write(b"ok")
            assert await reader.readexactly(2) == b"ok"
            writer.close()
            await writer.wait_closed()
        finally:
            relay.stop()

    asyncio.run(main())
