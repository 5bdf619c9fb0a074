"""DisplayLocator.reserve: free display numbers, checked against real servers and sockets."""

from __future__ import annotations

import contextlib
import errno
import multiprocessing
import os
import queue
import re
import shutil
import socket
import subprocess
import sys
import tempfile

from collections.abc import Iterator
from pathlib import Path

import pytest

from display_workers import reserve_and_hold, reserve_as_nobody
from x11passthrough.display import DEFAULT_DISPLAY_RANGE, DisplayLocator
from x11passthrough.exceptions import (
    BindError,
    ConfigurationError,
    NoFreeDisplayError,
    X11PassthroughError,
)

from infra.ci import require
from infra.xvfb import XServer


#: Display numbers the synthetic tests use: away from the Xvfb fixtures (which take the
#: lowest free numbers) and from the numbers the default range tries first (50-299).
TEST_RANGE = range(400, 500)


@pytest.fixture(name="locator")
def _locator(tmp_path: Path) -> DisplayLocator:
    """A locator whose socket and lock directories are private to the test."""
    socket_dir = tmp_path / ".X11-unix"
    socket_dir.mkdir()
    return DisplayLocator(socket_dir=socket_dir, lock_dir=tmp_path)


def _free_number(locator: DisplayLocator) -> int:
    """A number whose TCP port was free a moment ago."""
    with locator.reserve(range=TEST_RANGE) as reservation:
        return reservation.number


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@contextlib.contextmanager
def _stray_listener(family: socket.AddressFamily, address: str) -> Iterator[int]:
    """Listen on `address`, port 6000+M for some M in TEST_RANGE; yield M."""
    for number in TEST_RANGE:
        sock = socket.socket(family, socket.SOCK_STREAM)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            sock.bind((address, 6000 + number))
            sock.listen()
        except OSError:
            sock.close()
            continue
        with sock:
            yield number
        return
    pytest.fail(f"no port from 6400 to 6499 is free on {address}")


def _listen_again(port: int) -> None:
    """Listen on 127.0.0.1:`port`, as a new server would (fails if anything still holds it)."""
    with socket.socket() as again:
        # Like X servers: SO_REUSEADDR only lets us bind over connections in TIME_WAIT,
        # which earlier tests may have left on this port; never over a bound socket.
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", port))
        again.listen()


def test_reserve_returns_listening_sockets(locator: DisplayLocator) -> None:
    """The reservation holds a bound, listening, blocking socket on 6000+M per address."""
    with locator.reserve(range=TEST_RANGE) as reservation:
        assert reservation.number in TEST_RANGE
        assert reservation.port == 6000 + reservation.number
        assert reservation.addresses == (("127.0.0.1", reservation.port),)
        (server,) = reservation.sockets
        assert server.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        assert server.getblocking()
        with socket.create_connection(("127.0.0.1", reservation.port), timeout=5):
            peer, _ = server.accept()
            peer.close()
    assert reservation.closed
    assert server.fileno() == -1


def test_reserve_ipv6_and_several_addresses(locator: DisplayLocator) -> None:
    """IPv6 addresses get AF_INET6 sockets with V6ONLY; all share one port."""
    require("an IPv6 loopback address (::1)", _has_ipv6_loopback())
    with locator.reserve(range=TEST_RANGE, bind=["127.0.0.1", "::1", "127.0.0.1"]) as r:
        assert r.addresses == (("127.0.0.1", r.port), ("::1", r.port))
        v4, v6 = r.sockets
        assert v4.family == socket.AF_INET
        assert v6.family == socket.AF_INET6
        assert v6.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
        with socket.create_connection(("::1", r.port), timeout=5):
            v6.accept()[0].close()


def test_close_frees_the_port(locator: DisplayLocator) -> None:
    """After close() (twice: it is idempotent) the port can be bound again."""
    reservation = locator.reserve(range=TEST_RANGE)
    reservation.close()
    reservation.close()
    _listen_again(reservation.port)
    with locator.reserve(range=[reservation.number]) as second:
        assert second.number == reservation.number


def test_reserve_skips_a_live_xvfb(xvfb: XServer, tmp_path: Path) -> None:
    """A running X server's number is never reserved, even with only its abstract socket."""
    locator = DisplayLocator()
    with locator.reserve(range=range(xvfb.number, xvfb.number + 40)) as reservation:
        assert reservation.number > xvfb.number
    with pytest.raises(NoFreeDisplayError, match="1 held by X servers"):
        locator.reserve(range=[xvfb.number])
    # Without the socket file and the lock (another lock_dir), the abstract socket remains.
    os.unlink(xvfb.unix_path)
    abstract_only = DisplayLocator(lock_dir=tmp_path)
    with pytest.raises(NoFreeDisplayError, match="1 held by X servers"):
        abstract_only.reserve(range=[xvfb.number])


def _lock_text(pid: int, style: str) -> bytes:
    return {"xorg": b"%10d\n", "wlroots": b"%10d\0", "bare": b"%d"}[style] % pid


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.mark.parametrize("style", ["xorg", "wlroots", "bare"])
def test_reserve_skips_a_lock_of_a_live_process(locator: DisplayLocator, style: str) -> None:
    """A lock file whose pid is alive holds its number (X.Org's and wlroots' formats)."""
    number = _free_number(locator)
    Path(locator.lock_path(number)).write_bytes(_lock_text(os.getpid(), style))
    with pytest.raises(NoFreeDisplayError) as info:
        locator.reserve(range=[number])
    assert "1 held by X servers" in str(info.value)
    assert "0 with TCP port 6000+N in use" in str(info.value)
    assert info.value.option == "range"  # DisplayLocator.reserve's own keyword
    assert f"e.g. range=range({number}, {number + 501})" in str(info.value)


@pytest.mark.parametrize("content", [b"", b"garbage\n", b"         0\n", b"-5\n"])
def test_reserve_treats_unreadable_locks_as_held(locator: DisplayLocator, content: bytes) -> None:
    """A lock file without a usable pid is respected, as an X server would."""
    number = _free_number(locator)
    Path(locator.lock_path(number)).write_bytes(content)
    with pytest.raises(NoFreeDisplayError, match="1 held by X servers"):
        locator.reserve(range=[number])


@pytest.mark.parametrize("style", ["xorg", "wlroots"])
def test_reserve_reclaims_a_stale_lock(locator: DisplayLocator, style: str) -> None:
    """A lock file whose pid is dead does not hold the number, and is left alone."""
    number = _free_number(locator)
    lock = Path(locator.lock_path(number))
    lock.write_bytes(_lock_text(_dead_pid(), style))
    with locator.reserve(range=[number]) as reservation:
        assert reservation.number == number
    assert lock.exists()


def test_reserve_respects_another_users_lock(tmp_path: Path) -> None:
    """EPERM from kill(pid, 0) means alive: a lock of another user's process holds."""
    if os.geteuid() != 0:
        # pid 1 belongs to root; kill(1, 0) fails with EPERM for us.
        require("pid 1 owned by another user", os.stat("/proc/1").st_uid != os.geteuid())
        locator = DisplayLocator(socket_dir=tmp_path, lock_dir=tmp_path)
        Path(locator.lock_path(450)).write_bytes(b"%10d\n" % 1)
        with pytest.raises(NoFreeDisplayError, match=re.escape("live pid 1 (another user's)")):
            locator.reserve(range=[450])
        return
    # As root: a process that drops to user "nobody" checks a lock held by this process.
    shared = Path(tempfile.mkdtemp(prefix="x11pt-lock-", dir="/tmp"))
    try:
        shared.chmod(0o755)
        (shared / ".X450-lock").write_bytes(b"%10d\n" % os.getpid())
        locator = DisplayLocator(socket_dir=shared, lock_dir=shared)
        context = multiprocessing.get_context("spawn")
        results: multiprocessing.Queue[str] = context.Queue()
        worker = context.Process(target=reserve_as_nobody, args=(locator, [450], results))
        worker.start()
        try:
            outcome = results.get(timeout=60)
        finally:
            worker.join(30)
            results.close()
            results.join_thread()
    finally:
        shutil.rmtree(shared)
    assert "NoFreeDisplayError" in outcome
    assert f"live pid {os.getpid()} (another user's)" in outcome


def test_reserve_skips_socket_files_and_abstract_sockets(locator: DisplayLocator) -> None:
    """Any entry named X<M> in the socket directory, or an abstract socket, holds M."""
    number = _free_number(locator)
    Path(locator.socket_path(number)).write_text("")
    with pytest.raises(NoFreeDisplayError, match="1 held by X servers"):
        locator.reserve(range=[number])
    Path(locator.socket_path(number)).unlink()
    with socket.socket(socket.AF_UNIX) as abstract:
        abstract.bind("\0" + locator.socket_path(number))
        abstract.listen()
        with pytest.raises(NoFreeDisplayError, match="1 held by X servers"):
            locator.reserve(range=[number])
    with locator.reserve(range=[number]) as reservation:
        assert reservation.number == number


STRAY_LISTENERS = [
    (socket.AF_INET, "127.0.0.1"),
    (socket.AF_INET, "0.0.0.0"),
    (socket.AF_INET, "127.0.0.2"),
    (socket.AF_INET6, "::1"),
    (socket.AF_INET6, "::"),
]


@pytest.mark.parametrize(
    ("family", "address"), STRAY_LISTENERS, ids=[a for _, a in STRAY_LISTENERS]
)
def test_reserve_skips_a_port_with_a_listener(
    locator: DisplayLocator, family: socket.AddressFamily, address: str
) -> None:
    """A listener on 6000+M on any address (even one we do not bind) makes M unavailable."""
    if family == socket.AF_INET6:
        require("an IPv6 loopback address (::1)", _has_ipv6_loopback())
    with _stray_listener(family, address) as number:
        with pytest.raises(NoFreeDisplayError) as info:
            locator.reserve(range=[number])
        assert "0 held by X servers" in str(info.value)
        assert "1 with TCP port 6000+N in use" in str(info.value)
        with locator.reserve(range=range(number, number + 50)) as reservation:
            assert reservation.number != number


def test_twenty_processes_get_twenty_numbers(locator: DisplayLocator) -> None:
    """Processes reserving at the same moment never share a number: the bind is the lock."""
    count = 20
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(count)
    results: multiprocessing.Queue[tuple[str, int | str]] = context.Queue()
    done = context.Event()
    workers = [
        context.Process(
            target=reserve_and_hold, args=(locator, TEST_RANGE, barrier, results, done)
        )
        for _ in range(count)
    ]
    for worker in workers:
        worker.start()
    try:
        reported = [results.get(timeout=120) for _ in range(count)]
    except queue.Empty:
        pytest.fail("not every worker reported a number")
    finally:
        done.set()
        for worker in workers:
            worker.join(30)
            if worker.is_alive():
                worker.kill()
                worker.join()
        results.close()
        results.join_thread()
    errors = [value for status, value in reported if status != "ok"]
    assert not errors
    numbers = [value for _, value in reported]
    assert len(set(numbers)) == count, numbers
    assert all(isinstance(n, int) and n in TEST_RANGE for n in numbers)


def test_bind_errors_name_the_address(locator: DisplayLocator) -> None:
    """An address this host lacks is a BindError; one that is not an IP address is refused."""
    with pytest.raises(BindError) as info:
        locator.reserve(range=TEST_RANGE, bind=("192.0.2.1",))
    assert info.value.errno == errno.EADDRNOTAVAIL
    assert "192.0.2.1" in str(info.value)
    assert "ip addr" in str(info.value)
    assert isinstance(info.value, OSError)
    with pytest.raises(ConfigurationError, match="'localhost' is not an IP address"):
        locator.reserve(range=TEST_RANGE, bind=("localhost",))
    with pytest.raises(ConfigurationError, match="names no address"):
        locator.reserve(range=TEST_RANGE, bind=())
    with pytest.raises(ConfigurationError, match=r"0\.0\.0\.0 already covers"):
        locator.reserve(range=TEST_RANGE, bind=("0.0.0.0", "127.0.0.1"))
    # A single string is one address, not a sequence of characters.
    with locator.reserve(range=TEST_RANGE, bind="127.0.0.1") as reservation:
        assert reservation.addresses[0][0] == "127.0.0.1"


def test_bind_error_keeps_no_socket_open(locator: DisplayLocator) -> None:
    """When the second address fails, the first address's socket is closed again."""
    number = _free_number(locator)
    with pytest.raises(BindError):
        locator.reserve(range=[number], bind=("127.0.0.1", "192.0.2.1"))
    _listen_again(6000 + number)


@pytest.mark.parametrize(
    ("numbers", "why"),
    [
        (range(0), "is empty"),
        ([], "is empty"),
        (range(59530, 59540), "59539"),
        ([-1], "-1"),
        (["5"], "'5'"),
        (12, "not a range"),
    ],
)
def test_reserve_rejects_bad_ranges(locator: DisplayLocator, numbers: object, why: str) -> None:
    """Empty ranges and impossible numbers are refused before anything is bound."""
    with pytest.raises(ConfigurationError, match=why):
        locator.reserve(range=numbers)  # type: ignore[arg-type]


def test_no_free_number_suggests_a_wider_range(locator: DisplayLocator) -> None:
    """The error names the range, why numbers were taken, and suggests a wider one."""
    with _stray_listener(socket.AF_INET, "127.0.0.1") as number:
        Path(locator.lock_path(number + 1)).write_bytes(b"%10d\n" % os.getpid())
        with pytest.raises(NoFreeDisplayError) as info:
            locator.reserve(range=range(number, number + 2))
    message = str(info.value)
    assert f"range({number}, {number + 2})" in message
    assert "1 held by X servers" in message
    assert "1 with TCP port 6000+N in use" in message
    assert f"pass a wider range, e.g. range=range({number}, {number + 502})" in message
    assert (info.value.option, info.value.value) == ("range", range(number, number + 502))
    assert isinstance(info.value, X11PassthroughError)


def test_default_range() -> None:
    """The default range starts with Briefcase's 50-299 and goes on to 9999 (squatters)."""
    assert range(50, 10000) == DEFAULT_DISPLAY_RANGE
