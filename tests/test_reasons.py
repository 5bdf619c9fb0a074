"""
The one wording of a failed socket operation (``_reasons.why``), from real failures.

Each failure is caused for real where this process can cause it; a permission error cannot be
caused by root (root connects anywhere), so that one is constructed.
"""

from __future__ import annotations

import asyncio
import errno
import socket

from pathlib import Path

import pytest

from x11passthrough._reasons import why

from infra.relay_peers import tcp_listener


def closed_port() -> tuple[str, int]:
    with tcp_listener() as placeholder:
        address: tuple[str, int] = placeholder.getsockname()
    return address


def test_refused_says_nothing_listens() -> None:
    with pytest.raises(ConnectionRefusedError) as info:
        socket.create_connection(closed_port(), timeout=10)
    assert why(info.value) == "connection refused (nothing listens there)"


def test_refused_in_asyncio_words_reads_the_same() -> None:
    """asyncio rewords a refused connect ("Connect call failed ..."); the reason does not."""

    async def connect() -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        with sock:
            await asyncio.get_running_loop().sock_connect(sock, closed_port())

    with pytest.raises(ConnectionRefusedError, match="Connect call failed") as info:
        asyncio.run(connect())
    assert why(info.value) == "connection refused (nothing listens there)"


def test_a_missing_socket_file(tmp_path: Path) -> None:
    with (
        socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock,
        pytest.raises(FileNotFoundError) as info,
    ):
        sock.connect(str(tmp_path / "X0"))
    assert why(info.value) == "no such file or directory"


def test_a_full_listen_queue_says_the_server_is_busy(tmp_path: Path) -> None:
    """A UNIX listener whose backlog is full refuses a non-blocking connect with EAGAIN."""
    path = str(tmp_path / "busy")
    queued = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(path)
        listener.listen(0)
        try:
            with pytest.raises(BlockingIOError) as info:  # noqa: PT012 - until the queue is full
                for _ in range(64):
                    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    sock.setblocking(False)
                    queued.append(sock)
                    sock.connect(path)
        finally:
            for sock in queued:
                sock.close()
    assert info.value.errno == errno.EAGAIN
    assert why(info.value) == "the server's listen queue is full (server busy or hung)"


def test_no_answer_names_the_timeout() -> None:
    left, right = socket.socketpair()
    with left, right:
        left.settimeout(0.05)
        with pytest.raises(TimeoutError) as info:
            left.recv(1)
    assert why(info.value, 0.05) == "no answer within 0.05 s"
    assert why(asyncio.TimeoutError(), 5) == "no answer within 5 s"


def test_an_unresolvable_host_name() -> None:
    with pytest.raises(socket.gaierror) as info:
        socket.getaddrinfo("no-such-host.invalid", 6000)
    assert why(info.value).startswith("cannot resolve the host name (")


@pytest.mark.parametrize("code", [errno.EACCES, errno.EPERM])
def test_permission_denied(code: int) -> None:
    """Constructed: root, which runs these tests, is never refused a connect."""
    assert why(PermissionError(code, "Permission denied")) == "permission denied"


def test_any_other_errno_is_its_own_words_in_lower_case() -> None:
    left, right = socket.socketpair()
    right.close()
    with left, pytest.raises(BrokenPipeError) as info:
        left.send(b"x")
    assert why(info.value) == "broken pipe"
