"""
The relay at scale and over its life: thousands of connections, descriptor limits, start and
stop of Relay and RelayThread, stats and logs.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import re
import resource
import secrets
import socket
import struct
import threading
import time

from collections.abc import Callable, Iterator
from typing import Any

import attrs
import pytest

from x11passthrough import RelayStats
from x11passthrough._relay.options import Listener, RelayOptions
from x11passthrough._relay.server import Relay
from x11passthrough._relay.thread import RelayThread
from x11passthrough.display import Endpoint
from x11passthrough.exceptions import ConfigurationError, RelayError

from infra.ci import require
from infra.processes import wait_until
from infra.relay_peers import (
    SelectorEcho,
    Upstream,
    connect,
    echo,
    open_fds,
    parse_failed,
    prefix_filter,
    recv_all,
    recv_exactly,
    relay_address,
    tcp_listener,
    wait_idle,
)


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


def test_allow_list_refuses_other_clients_with_a_reason(
    upstream_factory: Callable[..., Upstream], relay_factory: Callable[..., RelayThread]
) -> None:
    """An outsider reads an X11 Failed reply naming why; the display is never contacted."""
    server = upstream_factory(echo)
    outside = relay_factory(server.endpoint, allow=[ipaddress.ip_network("192.0.2.0/24")])
    with connect(outside) as client:
        client.sendall(b"l")
        reason = parse_failed(recv_all(client))
    assert reason.startswith("x11passthrough: clients from 127.0.0.1 are not admitted")
    assert server.accepted == 0
    inside = relay_factory(server.endpoint, allow=[ipaddress.ip_network("127.0.0.0/8")])
    with connect(inside) as client:
        client.sendall(b"allowed")
        client.shutdown(socket.SHUT_WR)
        assert recv_all(client) == b"allowed"
    assert (wait_idle(outside).rejected, outside.stats.connections_total) == (1, 1)
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
    relay = RelayThread([Listener(listener, None)], server.endpoint)
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
    relay = RelayThread([Listener(tcp_listener(), None)], server.endpoint)
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
    relay = RelayThread([Listener(listener, None)], Endpoint.unix("/nonexistent"))
    relay.stop()
    assert listener.fileno() == -1
    with pytest.raises(RelayError, match="cannot start again"):
        relay.start()


def test_start_fails_clearly_on_a_socket_that_does_not_listen() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    relay = RelayThread([Listener(sock, None)], Endpoint.unix("/nonexistent"))
    with pytest.raises(RelayError, match="not a listening stream socket"):
        relay.start()
    assert relay_threads() == []
    assert sock.fileno() == -1
    relay.stop()


def test_start_fails_clearly_on_a_closed_socket_or_a_non_socket() -> None:
    closed = tcp_listener()
    closed.close()
    with pytest.raises(RelayError, match="is closed; pass an open socket"):
        RelayThread([Listener(closed, None)], Endpoint.unix("/nonexistent")).start()
    not_a_socket: Any = "127.0.0.1:6000"
    with pytest.raises(
        RelayError, match=re.escape("must be a Listener (a socket with its setup filter), not '")
    ):
        RelayThread([not_a_socket], Endpoint.unix("/nonexistent"))
    with pytest.raises(RelayError, match="must be a list of Listener values"):
        RelayThread(not_a_socket, Endpoint.unix("/nonexistent"))


def test_a_bare_socket_is_refused_with_how_to_wrap_it() -> None:
    """The relay takes listeners only: a socket without its setup filter is a clear error."""
    bare: Any = tcp_listener()
    try:
        with pytest.raises(RelayError, match=re.escape("wrap a socket as Listener(sock, None)")):
            RelayThread([bare], Endpoint.unix("/nonexistent"))
        with pytest.raises(RelayError, match=re.escape("pass [Listener(sock, setup_filter)]")):
            RelayThread(bare, Endpoint.unix("/nonexistent"))
    finally:
        bare.close()


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
    relay = RelayThread([Listener(tcp_listener(), lambda data: None)], server.endpoint)
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
        async with Relay([Listener(listener, None)], server.endpoint) as relay:
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
        relay = Relay([Listener(tcp_listener(), None)], Endpoint.unix("/nonexistent"))
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
        relay = RelayThread([Listener(tcp_listener(), None)], server.endpoint)
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
