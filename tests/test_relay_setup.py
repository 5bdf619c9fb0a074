"""
The relay's setup filter: it sees every byte a client sent, nothing reaches the display
before it accepts, and stalled, oversized or failing setups end cleanly.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading

from collections.abc import Callable

import pytest

from x11passthrough._relay.thread import RelayThread
from x11passthrough._x11.gate import Accept, Reject
from x11passthrough._x11.wire import failed_reply
from x11passthrough.display import Endpoint

from infra.relay_peers import (
    Upstream,
    connect,
    echo,
    parse_failed,
    prefix_filter,
    recv_all,
    wait_idle,
)


# --- the setup filter ----------------------------------------------------------------------------


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
