"""
Peers for the relay tests: small upstream servers, socket helpers, and the relay fixtures.

Loaded as a pytest plugin (see conftest.py), so the fixtures ``upstream_factory`` and
``relay_factory`` serve every relay test module.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import selectors
import socket
import struct
import threading

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from x11passthrough import RelayStats
from x11passthrough._relay.options import Listener, RelayOptions
from x11passthrough._relay.server import Relay
from x11passthrough._relay.thread import RelayThread
from x11passthrough._x11.gate import Accept, Reject
from x11passthrough._x11.wire import failed_reply
from x11passthrough.display import Endpoint

from .processes import wait_until


MODES = [pytest.param(True, id="splice"), pytest.param(False, id="copy")]


def tcp_listener(backlog: int = 128) -> socket.socket:
    """A listening socket on 127.0.0.1 with a free port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(backlog)
    return sock


def abstract_listener(backlog: int = 8) -> socket.socket:
    """A listening UNIX socket with a fresh abstract name."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(f"\0x11passthrough-test-listener-{secrets.token_hex(6)}")
    sock.listen(backlog)
    return sock


def connect(relay: RelayThread | Relay, index: int = 0) -> socket.socket:
    """A blocking client connection to the relay's `index`-th listener."""
    inner = relay.relay if isinstance(relay, RelayThread) else relay
    listener = inner.sockets[index]
    address = listener.getsockname()
    sock = socket.socket(listener.family, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(address)
    return sock


def relay_address(relay: RelayThread | Relay, index: int = 0) -> Any:
    inner = relay.relay if isinstance(relay, RelayThread) else relay
    return inner.sockets[index].getsockname()


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
        """Options as RelayOptions takes them, plus `listeners` and their `setup_filter`."""
        sockets = options.pop("listeners", None) or [tcp_listener()]
        setup_filter = options.pop("setup_filter", None)
        listeners = [s if isinstance(s, Listener) else Listener(s, setup_filter) for s in sockets]
        relay = RelayThread(listeners, upstream, RelayOptions(**options))
        relays.append(relay)
        relay.start()
        return relay

    yield make
    for relay in relays:
        relay.stop()


def prefix_filter(size: int, replacement: bytes) -> Callable[[bytes], Accept | Reject | None]:
    """Accept once `size` bytes arrived, forwarding `replacement` plus the rest."""

    def check(data: bytes) -> Accept | Reject | None:
        if len(data) < size:
            return None
        if data.startswith(b"bad"):
            return Reject("bad client", failed_reply("no thanks"))
        return Accept(replacement + data[size:])

    return check
