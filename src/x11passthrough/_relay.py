"""
The relay: forwards connections from listening sockets to an X display.

Strictly private: import the public names from :mod:`x11passthrough`.

Design, chosen by measuring variants with ``benchmarks/bench_relay.py`` (x11perf on a 2-core
virtual machine; times relative to a direct TCP connection to the X server):

- The data path uses raw non-blocking sockets watched with ``loop.add_reader`` and
  ``loop.add_writer``, not transports or streams. A readable socket is read with one
  ``recv_into`` into a large buffer shared by the whole relay and written at once with
  ``send``; only the part the other side does not take is copied into a per-direction
  backlog, and only then is a writer registered. A round trip costs one callback per
  direction, and a bulk transfer no per-chunk copy while the receiver keeps up.
- Reads are large (1 MiB): one read then keeps draining the X server's UNIX socket while the
  server refills it. With 256 KiB reads GetImage took 1.5x, with 1 MiB 1.15x.
- On Linux, bytes that arrive on a TCP socket move with ``os.splice`` through a pipe instead,
  so they never enter user space (PutImage 0.9x instead of 1.5x). Splicing *from* a UNIX
  socket measured slower than copying (GetImage 1.9x instead of 1.3x), so that direction
  copies.
- Backpressure: a direction stops reading when its backlog reaches ``high_water`` and resumes
  when it drains to ``low_water``; the backlog never exceeds ``high_water``.
- A relay that owns its event loop (:class:`RelayThread`) busy-polls for 50 microseconds after
  small exchanges before it sleeps. An X client waits for each reply, so the next event
  usually arrives within that time and a sleep and a wake-up are saved: a GetProperty round
  trip took 0.76x instead of 1.7x. It does not poll after bulk reads, where the CPU is better
  left to the X server and the client.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import fcntl
import ipaddress
import logging
import os
import selectors
import socket
import threading
import time

from collections.abc import Callable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

import attrs

from ._x11setup import Accept, Reject, failed_reply
from .exceptions import RelayError


if TYPE_CHECKING:
    from typing_extensions import Self

    from ._display import Endpoint


__all__ = ["Relay", "RelayStats", "RelayThread", "SetupFilter"]

logger = logging.getLogger("x11passthrough")

#: A setup filter: called with every byte a client sent so far, returns ``None`` for "need
#: more bytes", :class:`Accept` or :class:`Reject`.
SetupFilter = Callable[[bytes], "Accept | Reject | None"]

DEFAULT_READ_SIZE = 1024 * 1024
DEFAULT_HIGH_WATER = 1024 * 1024
DEFAULT_LOW_WATER = 256 * 1024
DEFAULT_BUSY_POLL = 50e-6

#: Longest connection-setup message a setup filter is shown (a real one is at most ~128 KiB).
MAX_SETUP_BYTES = 256 * 1024
#: How long a refused client is given to read its "Failed" reply before the socket is closed.
REFUSAL_LINGER = 1.0
#: How long to wait for a client's first byte (its byte order) when the display is unreachable.
FIRST_BYTE_WAIT = 0.5
#: Pause between attempts to connect to a UNIX socket whose listener's backlog is full.
UNIX_CONNECT_RETRY = 0.01
#: Send buffer requested for UNIX connections to the display.
UPSTREAM_SNDBUF = 1024 * 1024
#: A read at least this large is bulk transfer: the relay's loop then sleeps at once instead
#: of busy-polling, leaving the CPU to the programs that produce and consume the data.
BULK_READ = 64 * 1024
#: Size of a splice pipe (the kernel rounds it up to a power of two pages).
PIPE_SIZE = 256 * 1024
#: Most connections with a splice pipe at once: each pipe counts towards the per-user limit
#: of pipe memory (``/proc/sys/fs/pipe-user-pages-soft``), which other programs share.
MAX_SPLICE_PIPES = 64
#: Connections accepted per wake-up of a listener; the rest wait for the next loop iteration.
ACCEPT_BATCH = 64
#: Pause of a listener after the process ran out of file descriptors.
ACCEPT_BACKOFF = 0.1

_HAVE_SPLICE = hasattr(os, "splice") and hasattr(fcntl, "F_SETPIPE_SZ")
_SPLICE_FLAGS = (os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK) if _HAVE_SPLICE else 0
_RETRY = (BlockingIOError, InterruptedError)
_TCP_FAMILIES = frozenset({socket.AF_INET, socket.AF_INET6})
_FILTER_FAILED = "x11passthrough: internal error while checking the connection setup"


@attrs.frozen(kw_only=True)
class RelayStats:
    """
    A snapshot of a relay's counters.

    Attributes:
        connections_open: Client connections currently open (in setup or relaying).
        connections_total: Client connections accepted since the relay started.
        bytes_up: Bytes forwarded from clients to the X display.
        bytes_down: Bytes forwarded from the X display to clients.
        errors: Connections that ended abnormally: the display was unreachable, a socket
            failed or was reset, or the setup filter raised; plus failed ``accept`` calls.
        rejected: Connections refused before anything was forwarded: the client's address is
            not in ``allow``, the setup filter rejected them, or the client did not finish its
            setup within ``setup_timeout``.
        bytes_buffered: Bytes read from one side and not yet written to the other, now.
        bytes_buffered_peak: The highest ``bytes_buffered`` seen.
    """

    connections_open: int = 0
    connections_total: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    errors: int = 0
    rejected: int = 0
    bytes_buffered: int = 0
    bytes_buffered_peak: int = 0


class _Activity:
    """What the last burst of events did; read by :class:`_BusyPollSelector`."""

    __slots__ = ("bulk",)

    def __init__(self) -> None:
        self.bulk = False


class _Counters:
    """The mutable counters behind :class:`RelayStats` (updated on the event loop only)."""

    __slots__ = (
        "buffered",
        "buffered_peak",
        "bytes_down",
        "bytes_up",
        "errors",
        "open",
        "rejected",
        "total",
    )

    def __init__(self) -> None:
        self.open = self.total = self.errors = self.rejected = 0
        self.bytes_up = self.bytes_down = self.buffered = self.buffered_peak = 0

    def snapshot(self) -> RelayStats:
        return RelayStats(
            connections_open=self.open,
            connections_total=self.total,
            bytes_up=self.bytes_up,
            bytes_down=self.bytes_down,
            errors=self.errors,
            rejected=self.rejected,
            bytes_buffered=self.buffered,
            bytes_buffered_peak=self.buffered_peak,
        )


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _allowed(client: socket.socket, address: object, allow: tuple[IPNetwork, ...]) -> bool:
    """Tell whether a TCP client's address is in one of the `allow` networks."""
    if client.family not in _TCP_FAMILIES or not isinstance(address, tuple):
        return True
    try:
        ip = ipaddress.ip_address(address[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in net for net in allow)


def _check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise RelayError(f"{name} must be a positive number, not {value!r}")


def _describe_error(exc: BaseException, timeout: float) -> str:
    """Return a short, lower-case description of a connection failure."""
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return f"no answer within {timeout:g} s"
    text = str(exc) or type(exc).__name__
    if isinstance(exc, socket.gaierror) and exc.strerror:
        text = exc.strerror
    elif isinstance(exc, OSError) and exc.errno:
        # asyncio replaces strerror with its own words ("Connect call failed ...").
        text = os.strerror(exc.errno)
    return text[:1].lower() + text[1:]


def _describe_address(sock: socket.socket, peer: object) -> str:
    if sock.family in _TCP_FAMILIES and isinstance(peer, tuple):
        host, port = peer[0], peer[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return "a local client"


def _close_socket(sock: socket.socket | None) -> None:
    """Close `sock`, first reading what already arrived, so the close sends FIN, not RST."""
    if sock is None or sock.fileno() < 0:
        return
    with contextlib.suppress(OSError):
        for _ in range(4):
            if not sock.recv(65536):
                break
    sock.close()


def _upstream_address(endpoint: Endpoint) -> str | tuple[str, int]:
    """Return the AF_UNIX address, or the TCP host and port, of `endpoint`."""
    if endpoint.kind in ("unix", "abstract") and endpoint.path:
        return endpoint.path if endpoint.kind == "unix" else "\0" + endpoint.path
    if endpoint.kind == "tcp" and endpoint.host and endpoint.port is not None:
        return endpoint.host, endpoint.port
    # Endpoint validates its fields; this guards against objects that only look like one.
    raise RelayError(f"the relay cannot connect to the endpoint {endpoint!r}")  # pragma: no cover


def _check_listener(listener: socket.socket) -> socket.socket:
    if listener.fileno() < 0:
        raise RelayError(f"the relay listener {listener!r} is closed; pass an open socket")
    try:
        listening = listener.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    except OSError as exc:
        raise RelayError(f"cannot inspect the relay listener {listener!r}: {exc}") from exc
    if listener.type != socket.SOCK_STREAM or not listening:
        raise RelayError(
            f"the relay listener {listener!r} is not a listening stream socket; "
            "bind it and call listen() first"
        )
    return listener


class _Flow:
    """One direction of a relayed connection: bytes from `src` to `dst`."""

    __slots__ = (
        "_accounted",
        "_activity",
        "_conn",
        "_counters",
        "_dfd",
        "_dst",
        "_eof",
        "_high",
        "_loop",
        "_low",
        "_read_size",
        "_reading",
        "_sfd",
        "_src",
        "_writing",
        "finished",
        "pending",
        "sent",
        "up",
    )

    def __init__(
        self,
        conn: _Connection,
        src: socket.socket,
        dst: socket.socket,
        *,
        up: bool,
    ) -> None:
        relay = conn.relay
        self._conn = conn
        self._loop = conn.loop
        self._counters = relay.counters
        self._activity = relay.activity
        self._src = src
        self._dst = dst
        self._sfd = src.fileno()
        self._dfd = dst.fileno()
        self.up = up
        self._high = relay.high_water
        self._low = relay.low_water
        self._read_size = relay.read_size
        self._reading = False
        self._writing = False
        self._eof = False
        self._accounted = 0
        self.finished = False
        self.pending = 0
        self.sent = 0

    @property
    def src_role(self) -> str:
        return "client" if self.up else "X display"

    @property
    def dst_role(self) -> str:
        return "X display" if self.up else "client"

    def start(self) -> None:
        self._reading = True
        self._loop.add_reader(self._sfd, self._on_readable)

    def detach(self) -> None:
        """Unregister from the loop and forget the backlog (the connection is closing)."""
        if self._reading:
            self._reading = False
            self._loop.remove_reader(self._sfd)
        if self._writing:
            self._writing = False
            self._loop.remove_writer(self._dfd)
        self.pending = 0
        self._account()

    def _count(self, sent: int) -> None:
        self.sent += sent
        if self.up:
            self._counters.bytes_up += sent
        else:
            self._counters.bytes_down += sent

    def _account(self) -> None:
        delta = self.pending - self._accounted
        if delta:
            self._accounted = self.pending
            counters = self._counters
            counters.buffered += delta
            counters.buffered_peak = max(counters.buffered_peak, counters.buffered)

    def _pause(self) -> None:
        if self._reading:
            self._reading = False
            self._loop.remove_reader(self._sfd)

    def _resume(self) -> None:
        if not self._reading and not self._eof:
            self._reading = True
            self._loop.add_reader(self._sfd, self._on_readable)

    def _want_write(self) -> None:
        if not self._writing:
            self._writing = True
            self._loop.add_writer(self._dfd, self._on_writable)

    def _drained(self) -> None:
        """Call when the backlog became empty."""
        if self._writing:
            self._writing = False
            self._loop.remove_writer(self._dfd)
        if self._eof:
            self._finish()
        else:
            self._resume()

    def _on_eof(self) -> None:
        self._eof = True
        self._pause()
        if not self.pending:
            self._finish()

    def _finish(self) -> None:
        """Pass the end of stream on: half-close `dst`, keep the other direction going."""
        if self.finished:
            return
        self.finished = True
        with contextlib.suppress(OSError):
            self._dst.shutdown(socket.SHUT_WR)
        self._conn.flow_finished(self)

    def _failed(self, exc: OSError, role: str) -> None:
        conn = self._conn
        reason = f"{role} connection failed: {_describe_error(exc, 0)}"
        if role == self.dst_role and conn.sent_eof(self._dst):
            # A peer that sent EOF and then closed (not just half-closed) refuses what is
            # still on its way: it ended the connection, that is no error.
            conn.close(f"the {role} closed the connection ({reason})")
        else:
            conn.fail(reason)

    @property
    def eof(self) -> bool:
        """True once `src` sent EOF."""
        return self._eof

    @property
    def src(self) -> socket.socket:
        return self._src

    def _on_readable(self) -> None:
        raise NotImplementedError

    def _on_writable(self) -> None:
        raise NotImplementedError


class _CopyFlow(_Flow):
    """A direction that moves bytes through user space, copying only what `dst` refuses."""

    __slots__ = ("_backlog", "_offset", "_scratch")

    def __init__(
        self, conn: _Connection, src: socket.socket, dst: socket.socket, *, up: bool
    ) -> None:
        super().__init__(conn, src, dst, up=up)
        self._scratch = conn.relay.scratch
        self._backlog = bytearray()
        self._offset = 0

    def _on_readable(self) -> None:
        pending = self.pending
        size = min(self._read_size, self._high - pending) if pending else self._read_size
        scratch = self._scratch
        try:
            n = self._src.recv_into(scratch, size)
        except _RETRY:
            return
        except OSError as exc:
            self._failed(exc, self.src_role)
            return
        if not n:
            self._on_eof()
            return
        if n >= BULK_READ:
            self._activity.bulk = True
        if pending:
            self._backlog += scratch[:n]
            self.pending = pending + n
        else:
            try:
                sent = self._dst.send(scratch[:n])
            except _RETRY:
                sent = 0
            except OSError as exc:
                self._failed(exc, self.dst_role)
                return
            self._count(sent)
            if sent == n:
                return
            self._backlog += scratch[sent:n]
            self.pending = n - sent
            self._want_write()
        self._account()
        if self.pending >= self._high:
            self._pause()

    def _on_writable(self) -> None:
        backlog = self._backlog
        offset = self._offset
        try:
            with memoryview(backlog) as view:
                sent = self._dst.send(view[offset:])
        except _RETRY:
            return
        except OSError as exc:
            self._failed(exc, self.dst_role)
            return
        self._count(sent)
        self.pending -= sent
        if not self.pending:
            backlog.clear()
            self._offset = 0
            self._account()
            self._drained()
            return
        offset += sent
        if offset >= 65536 and offset * 2 >= len(backlog):
            del backlog[:offset]
            offset = 0
        self._offset = offset
        self._account()
        if self.pending <= self._low:
            self._resume()

    def detach(self) -> None:
        super().detach()
        self._backlog = bytearray()


class _SpliceFlow(_Flow):
    """A direction that moves bytes with ``os.splice`` through a pipe, never into user space."""

    __slots__ = ("_capacity", "_pipe_r", "_pipe_w", "_relay")

    def __init__(
        self,
        conn: _Connection,
        src: socket.socket,
        dst: socket.socket,
        pipe: tuple[int, int],
        *,
        up: bool,
    ) -> None:
        super().__init__(conn, src, dst, up=up)
        self._pipe_r, self._pipe_w = pipe
        self._relay = conn.relay
        self._relay.pipes_open += 1
        capacity = fcntl.fcntl(self._pipe_w, fcntl.F_GETPIPE_SZ)
        self._capacity = min(capacity, self._high)

    def _on_readable(self) -> None:
        pending = self.pending
        room = min(self._read_size, self._capacity - pending)
        try:
            n = os.splice(self._sfd, self._pipe_w, room, flags=_SPLICE_FLAGS)
        except _RETRY:
            if pending:
                # The pipe ran out of slots (it counts buffers, not bytes): wait for `dst`.
                self._pause()
            return
        except OSError as exc:
            self._failed(exc, self.src_role)
            return
        if not n:
            self._on_eof()
            return
        if n >= BULK_READ:
            self._activity.bulk = True
        pending += n
        if not self._writing:
            try:
                sent = os.splice(self._pipe_r, self._dfd, pending, flags=_SPLICE_FLAGS)
            except _RETRY:
                sent = 0
            except OSError as exc:
                self._failed(exc, self.dst_role)
                return
            self._count(sent)
            pending -= sent
            self.pending = pending
            if not pending:
                if self._accounted:
                    self._account()
                return
            self._want_write()
        self.pending = pending
        self._account()
        if pending >= self._capacity:
            self._pause()

    def _on_writable(self) -> None:
        try:
            sent = os.splice(self._pipe_r, self._dfd, self.pending, flags=_SPLICE_FLAGS)
        except _RETRY:
            return
        except OSError as exc:
            self._failed(exc, self.dst_role)
            return
        self._count(sent)
        self.pending -= sent
        self._account()
        if not self.pending:
            self._drained()
        elif self.pending <= self._low:
            self._resume()

    def detach(self) -> None:
        super().detach()
        if self._pipe_r >= 0:
            os.close(self._pipe_r)
            os.close(self._pipe_w)
            self._pipe_r = self._pipe_w = -1
            self._relay.pipes_open -= 1


def _open_pipe(size: int) -> tuple[int, int] | None:
    """Return a non-blocking pipe of about `size` bytes, or None if none can be made."""
    try:
        pipe_r, pipe_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    with contextlib.suppress(OSError):
        fcntl.fcntl(pipe_w, fcntl.F_SETPIPE_SZ, size)
    return pipe_r, pipe_w


class _Refusal(Exception):  # noqa: N818 - internal control flow, not an error to callers
    """Raised inside the setup phase to refuse a client with a "Failed" reply."""

    def __init__(self, reason: str, *, reply: bytes | None = None, error: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.reply = reply
        self.error = error


class _Connection:
    """One client connection: its setup, its upstream connection and its two flows."""

    __slots__ = (
        "client",
        "closed",
        "flows",
        "forwarded",
        "loop",
        "number",
        "peer",
        "received",
        "relay",
        "started",
        "upstream",
    )

    def __init__(
        self,
        relay: Relay,
        loop: asyncio.AbstractEventLoop,
        client: socket.socket,
        peer: str,
        number: int,
    ) -> None:
        self.relay = relay
        self.loop = loop
        self.client = client
        self.peer = peer
        self.number = number
        self.upstream: socket.socket | None = None
        self.flows: tuple[_Flow, ...] = ()
        self.closed = False
        self.received = b""
        self.forwarded = 0
        self.started = time.monotonic()

    async def establish(self) -> None:
        """Run the setup filter (if any), connect upstream and start relaying."""
        relay = self.relay
        forward = b""
        if relay.setup_filter is not None:
            verdict = await self._negotiate(relay.setup_filter)
            if verdict is None:
                return
            forward = verdict
        try:
            upstream = await self._connect()
        except (OSError, asyncio.TimeoutError) as exc:
            if not relay.serving:  # a cancellation that wait_for turned into a timeout
                raise asyncio.CancelledError from exc
            await self._unreachable(exc)
            return
        if not relay.serving:  # stop() ran while the last await completed
            _close_socket(upstream)
            raise asyncio.CancelledError
        self.upstream = upstream
        if forward:
            try:
                await self.loop.sock_sendall(upstream, forward)
            except OSError as exc:
                self.fail(f"X display connection failed: {_describe_error(exc, 0)}")
                return
            relay.counters.bytes_up += len(forward)
            self.forwarded = len(forward)
        self.received = b""
        self._start_flows(upstream)

    async def _negotiate(self, setup_filter: SetupFilter) -> bytes | None:
        """Collect the client's setup until the filter decides; return what to forward."""
        received = bytearray()
        try:
            forward = await self._collect(setup_filter, received)
        except _Refusal as refusal:
            counters = self.relay.counters
            if refusal.error:
                counters.errors += 1
            else:
                counters.rejected += 1
            await self._refuse(refusal.reason, bytes(received), reply=refusal.reply)
            return None
        except OSError as exc:
            self.fail(f"client connection failed during setup: {_describe_error(exc, 0)}")
            return None
        except EOFError:
            self.close("the client closed the connection during setup")
            return None
        self.received = bytes(received)
        return forward

    async def _collect(self, setup_filter: SetupFilter, received: bytearray) -> bytes:
        """
        Read into `received` until `setup_filter` accepts; return the bytes to forward.

        Raises:
            _Refusal: The filter rejected or failed, or the client was too slow or too long.
            EOFError: The client closed its connection.
            OSError: The client connection failed.
        """
        timeout = self.relay.setup_timeout
        deadline = self.loop.time() + timeout
        while True:
            if not self.relay.serving:
                # Python 3.11's wait_for can turn a cancellation into a timeout; stop() has
                # already changed the state, so end here rather than wait out the deadline.
                raise asyncio.CancelledError
            remaining = deadline - self.loop.time()
            if remaining <= 0:
                raise _Refusal(
                    "x11passthrough: the client did not complete its connection setup "
                    f"within {timeout:g} s"
                )
            try:
                chunk = await asyncio.wait_for(self.loop.sock_recv(self.client, 65536), remaining)
            except asyncio.TimeoutError:
                continue
            if not chunk:
                raise EOFError
            received += chunk
            if len(received) > MAX_SETUP_BYTES:
                raise _Refusal("x11passthrough: the connection setup message is too long")
            try:
                verdict = setup_filter(bytes(received))
            except Exception as exc:
                logger.exception("the relay's setup filter failed")
                raise _Refusal(_FILTER_FAILED, error=True) from exc
            if isinstance(verdict, Accept):
                return verdict.forward
            if isinstance(verdict, Reject):
                raise _Refusal(verdict.reason, reply=verdict.reply)
            if verdict is not None:
                logger.error("the relay's setup filter returned %r, not a verdict", verdict)
                raise _Refusal(_FILTER_FAILED, error=True)

    async def _connect(self) -> socket.socket:
        """Open a non-blocking connection to the display within ``connect_timeout``."""
        relay = self.relay
        timeout = relay.connect_timeout
        if isinstance(relay.address, str):
            return await self._connect_one(socket.AF_UNIX, 0, relay.address, timeout)
        host, port = relay.address
        infos = await asyncio.wait_for(
            self.loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), timeout
        )
        last: BaseException = OSError(errno.EHOSTUNREACH, "no address")
        for family, _, proto, _, address in infos:
            try:
                sock = await self._connect_one(family, proto, address, timeout)
            except (OSError, asyncio.TimeoutError) as exc:
                last = exc
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        raise last

    async def _connect_one(
        self, family: int, proto: int, address: str | tuple[Any, ...], timeout: float
    ) -> socket.socket:
        sock = socket.socket(family, socket.SOCK_STREAM, proto)
        self.upstream = sock
        try:
            sock.setblocking(False)
            if family == socket.AF_UNIX:
                # The sender's buffer limits a UNIX stream: a larger one means fewer wake-ups
                # of the X server per large request. The kernel caps it at net.core.wmem_max.
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, UPSTREAM_SNDBUF)
            if family == socket.AF_UNIX:
                await self._connect_unix(sock, address, timeout)
            else:
                await asyncio.wait_for(self.loop.sock_connect(sock, address), timeout)
        except BaseException:
            self.upstream = None
            sock.close()
            raise
        self.upstream = None
        return sock

    async def _connect_unix(
        self, sock: socket.socket, address: str | tuple[Any, ...], timeout: float
    ) -> None:
        """
        Connect a non-blocking UNIX socket, retrying while the server's backlog is full.

        A UNIX connect is never "in progress": it succeeds or fails at once, or fails with
        EAGAIN when the listener's backlog is full (asyncio's sock_connect would then wait
        for a writable socket and report success without a connection).
        """
        deadline = self.loop.time() + timeout
        while True:
            try:
                sock.connect(address)
            except BlockingIOError:
                if self.loop.time() >= deadline:
                    raise TimeoutError from None
                await asyncio.sleep(UNIX_CONNECT_RETRY)
            else:
                return

    async def _unreachable(self, exc: BaseException) -> None:
        relay = self.relay
        relay.counters.errors += 1
        reason = (
            f"x11passthrough: cannot reach the X display at {relay.upstream}: "
            f"{_describe_error(exc, relay.connect_timeout)}"
        )
        logger.warning("%s (connection #%d from %s)", reason, self.number, self.peer)
        received = self.received
        if not received:
            try:
                received = await asyncio.wait_for(
                    self.loop.sock_recv(self.client, 65536), FIRST_BYTE_WAIT
                )
            except (OSError, asyncio.TimeoutError):
                received = b""
        await self._refuse(reason, received)

    async def _refuse(self, reason: str, received: bytes, *, reply: bytes | None = None) -> None:
        """Answer the client with an X11 "Failed" reply (if it sent anything), then close."""
        if self.closed:
            return
        if received and self.relay.serving:
            if reply is None:
                reply = failed_reply(reason, received[0])
            with contextlib.suppress(OSError, asyncio.TimeoutError):
                await asyncio.wait_for(self.loop.sock_sendall(self.client, reply), REFUSAL_LINGER)
                self.client.shutdown(socket.SHUT_WR)
                # Read what the client still sends until it closes, so the reply is not lost
                # to a reset caused by unread data.
                deadline = self.loop.time() + REFUSAL_LINGER
                while self.relay.serving and (remaining := deadline - self.loop.time()) > 0:
                    chunk = await asyncio.wait_for(
                        self.loop.sock_recv(self.client, 65536), remaining
                    )
                    if not chunk:
                        break
        self.close(reason)

    def _start_flows(self, upstream: socket.socket) -> None:
        relay = self.relay
        client = self.client
        flows: list[_Flow] = []
        for src, dst, up in ((client, upstream, True), (upstream, client, False)):
            pipe = None
            if (
                relay.splice
                and src.family in _TCP_FAMILIES
                and relay.pipes_open < MAX_SPLICE_PIPES
            ):
                pipe = _open_pipe(min(relay.read_size, PIPE_SIZE))
            if pipe is not None:
                flows.append(_SpliceFlow(self, src, dst, pipe, up=up))
            else:
                flows.append(_CopyFlow(self, src, dst, up=up))
        self.flows = tuple(flows)
        for flow in flows:
            flow.start()

    def sent_eof(self, sock: socket.socket) -> bool:
        """Tell whether `sock` (the client or the upstream socket) sent EOF."""
        return any(flow.eof for flow in self.flows if flow.src is sock)

    def flow_finished(self, flow: _Flow) -> None:
        if all(f.finished for f in self.flows):
            self.close("both sides closed the connection")

    def fail(self, reason: str) -> None:
        if not self.closed:
            self.relay.counters.errors += 1
            self.close(reason)

    def close(self, reason: str) -> None:
        """Close both sockets now and log the connection's summary."""
        if self.closed:
            return
        self.closed = True
        for flow in self.flows:
            flow.detach()
        _close_socket(self.client)
        _close_socket(self.upstream)
        relay = self.relay
        relay.counters.open -= 1
        relay.connections.discard(self)
        if logger.isEnabledFor(logging.DEBUG):
            up = down = 0
            for flow in self.flows:
                up += flow.sent if flow.up else 0
                down += 0 if flow.up else flow.sent
            logger.debug(
                "relay connection #%d from %s to %s ended after %.3f s, %d bytes up, "
                "%d bytes down: %s",
                self.number,
                self.peer,
                relay.upstream,
                time.monotonic() - self.started,
                up + self.forwarded,
                down,
                reason,
            )


class Relay:
    """
    Forward connections from listening sockets to an X display, in the running event loop.

    Each accepted client gets its own new connection to `upstream`; bytes flow both ways
    unchanged (after the optional setup filter), with ``TCP_NODELAY`` on every TCP socket,
    half-close passed through and backpressure in both directions. When the display cannot be
    reached, the client receives an X11 "Failed" setup reply naming the reason, and the relay
    keeps serving.

    Use it from a coroutine: ``async with Relay(...) as relay:``, or ``await relay.start()`` and
    ``await relay.stop()``. Synchronous code uses :class:`RelayThread`.

    Args:
        listeners: Bound, listening stream sockets (any family). Once the relay is
            constructed it owns them, and :meth:`stop` closes them.
        upstream: Where the X display listens.
        setup_filter: Called with all bytes a client sent so far until it returns non-None:
            ``None`` asks for more bytes, :class:`Accept` forwards ``forward`` instead of them
            and relays unchanged from then on, :class:`Reject` sends ``reply`` to the client
            and closes. With a filter, nothing is forwarded and the display is not contacted
            before Accept.
        setup_timeout: Seconds a client has to satisfy the setup filter before it is dropped.
        connect_timeout: Seconds to wait for the display to accept a connection.
        high_water: Backlog in bytes (per connection and direction) at which the relay stops
            reading from the sender; the backlog never exceeds it.
        low_water: Backlog in bytes at which it reads again.
        read_size: Largest read, in bytes (one buffer of this size is shared by all
            connections). Large reads let one read drain the X server's socket while the
            server refills it.
        splice: On Linux, move the bytes that arrive on TCP sockets with ``os.splice``
            through a pipe, so they never enter user space (used for at most
            ``MAX_SPLICE_PIPES`` connections at once). False always copies.
        allow: Client networks to accept TCP connections from; anyone else is closed at
            once, before a byte is read or the display contacted. None accepts every client.

    Raises:
        RelayError: An option is out of range.
    """

    def __init__(
        self,
        listeners: Iterable[socket.socket],
        upstream: Endpoint,
        *,
        setup_filter: SetupFilter | None = None,
        setup_timeout: float = 10.0,
        connect_timeout: float = 5.0,
        high_water: int = DEFAULT_HIGH_WATER,
        low_water: int = DEFAULT_LOW_WATER,
        read_size: int = DEFAULT_READ_SIZE,
        splice: bool = True,
        allow: Iterable[IPNetwork] | None = None,
    ) -> None:
        _check_positive("setup_timeout", setup_timeout)
        _check_positive("connect_timeout", connect_timeout)
        _check_positive("read_size", read_size)
        _check_positive("high_water", high_water)
        if not 0 <= low_water < high_water:
            raise RelayError(
                f"low_water ({low_water!r}) must be at least 0 and below high_water "
                f"({high_water!r})"
            )
        if isinstance(listeners, (str, bytes, socket.socket)):
            raise RelayError(
                f"listeners must be a list of listening sockets, not {listeners!r}; "
                "pass [sock] for a single one"
            )
        self.listeners = tuple(listeners)
        for listener in self.listeners:
            if not isinstance(listener, socket.socket):
                raise RelayError(f"a relay listener must be a socket.socket, not {listener!r}")
        self.upstream = upstream
        self.address = _upstream_address(upstream)
        self.setup_filter = setup_filter
        self.setup_timeout = float(setup_timeout)
        self.connect_timeout = float(connect_timeout)
        self.high_water = int(high_water)
        self.low_water = int(low_water)
        self.read_size = int(read_size)
        self.splice = bool(splice) and _HAVE_SPLICE
        self.allow = None if allow is None else tuple(allow)
        self.counters = _Counters()
        self.activity = _Activity()
        self.pipes_open = 0
        self.connections: set[_Connection] = set()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.scratch = memoryview(b"")
        self._state: Literal["new", "serving", "stopped"] = "new"
        self._tasks: set[asyncio.Task[None]] = set()
        self._paused: set[socket.socket] = set()

    def __repr__(self) -> str:
        return f"<Relay {self._state} -> {self.upstream}>"

    @property
    def stats(self) -> RelayStats:
        """A snapshot of the relay's counters."""
        return self.counters.snapshot()

    @property
    def serving(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
        return self._state == "serving"

    async def start(self) -> None:
        """
        Start accepting connections in the running event loop.

        Calling it again while serving does nothing.

        Raises:
            RelayError: A listener is not a listening socket, the relay was stopped, or the
                running loop cannot watch sockets (it has no ``add_reader``).
        """
        if self._state == "serving":
            return
        if self._state == "stopped":
            raise RelayError("this relay was stopped and cannot start again; create a new one")
        loop = asyncio.get_running_loop()
        listeners = [_check_listener(listener) for listener in self.listeners]
        if not listeners:
            raise RelayError("a relay needs at least one listening socket")
        self.loop = loop
        self.scratch = memoryview(bytearray(self.read_size))
        added: list[socket.socket] = []
        try:
            for listener in listeners:
                listener.setblocking(False)
                loop.add_reader(listener.fileno(), self._on_acceptable, loop, listener)
                added.append(listener)
        except NotImplementedError as exc:
            for listener in added:
                loop.remove_reader(listener.fileno())
            raise RelayError(
                f"the running event loop ({type(loop).__name__}) cannot watch sockets; "
                "use a selector event loop or RelayThread"
            ) from exc
        self._state = "serving"
        logger.debug(
            "relay serving %s -> %s",
            ", ".join(str(_local_name(s)) for s in listeners),
            self.upstream,
        )

    async def stop(self) -> None:
        """
        Close every connection and every listening socket.

        Calling it again does nothing; a relay that never started just closes its listeners.
        """
        if self._state == "stopped":
            return
        loop = self.loop if self._state == "serving" else None
        self._state = "stopped"
        if loop is not None:
            for listener in self.listeners:
                if listener.fileno() >= 0 and listener not in self._paused:
                    loop.remove_reader(listener.fileno())
        self._paused.clear()
        self._close_listeners()
        # Connections in their setup phase end when their task is cancelled; the tasks must
        # end before their sockets close, so that no pending socket operation outlives its fd.
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for conn in list(self.connections):
            conn.close("the relay stopped")
        if loop is not None:
            logger.debug("relay to %s stopped: %s", self.upstream, self.stats)

    def _close_listeners(self) -> None:
        for listener in self.listeners:
            listener.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def _on_acceptable(self, loop: asyncio.AbstractEventLoop, listener: socket.socket) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                client, address = listener.accept()
            except _RETRY:
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                self.counters.errors += 1
                logger.warning(
                    "relay cannot accept a connection on %s: %s; retrying in %g s",
                    _local_name(listener),
                    _describe_error(exc, 0),
                    ACCEPT_BACKOFF,
                )
                self._pause_listener(loop, listener)
                return
            self._admit(loop, client, address)

    def _pause_listener(self, loop: asyncio.AbstractEventLoop, listener: socket.socket) -> None:
        """Stop accepting on `listener` for a moment (the process is out of descriptors)."""
        loop.remove_reader(listener.fileno())
        self._paused.add(listener)

        def resume() -> None:
            if self._state == "serving" and listener in self._paused:
                self._paused.discard(listener)
                loop.add_reader(listener.fileno(), self._on_acceptable, loop, listener)

        loop.call_later(ACCEPT_BACKOFF, resume)

    def _admit(
        self, loop: asyncio.AbstractEventLoop, client: socket.socket, address: object
    ) -> None:
        if self.allow is not None and not _allowed(client, address, self.allow):
            self.counters.rejected += 1
            logger.info("relay refused %s: not in the allowed client networks", address)
            client.close()
            return
        try:
            client.setblocking(False)
            if client.family in _TCP_FAMILIES:
                client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            # The client is already gone (reset before we looked at it).
            self.counters.errors += 1
            client.close()
            return
        counters = self.counters
        counters.open += 1
        counters.total += 1
        peer = _describe_address(client, address)
        conn = _Connection(self, loop, client, peer, counters.total)
        self.connections.add(conn)
        task = loop.create_task(self._run(conn))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, conn: _Connection) -> None:
        try:
            await conn.establish()
        except asyncio.CancelledError:
            conn.close("the relay stopped")
            raise
        except Exception as exc:  # pragma: no cover - a bug; keep serving the others
            logger.exception("relay connection #%d failed unexpectedly", conn.number)
            conn.fail(f"internal error: {exc!r}")


def _local_name(sock: socket.socket) -> object:
    try:
        name = sock.getsockname()
    except OSError:
        return "?"
    if isinstance(name, tuple):
        return f"{name[0]}:{name[1]}"
    return name or "?"


class _BusyPollSelector(selectors.DefaultSelector):
    """
    A selector that keeps polling for `busy_poll` seconds after events before it sleeps.

    An X client waits for each reply, so the next event usually follows within microseconds;
    catching it awake saves a sleep and a wake-up, which cost tens of microseconds on virtual
    machines. It does not poll after bulk transfers (`activity`), where the CPU is better left
    to the X server and the client, nor after `busy_poll` seconds without events, so an idle
    relay uses no CPU.
    """

    def __init__(self, busy_poll: float, activity: _Activity) -> None:
        super().__init__()
        self._busy_poll = busy_poll
        self._activity = activity
        self._hot = False

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        """Return the ready keys, polling a little before blocking if events came lately."""
        activity = self._activity
        if self._hot and (timeout is None or timeout > 0) and not activity.bulk:
            poll = super().select
            now = start = time.monotonic()
            spin = self._busy_poll if timeout is None else min(self._busy_poll, timeout)
            deadline = start + spin
            while now < deadline:
                ready = poll(0)
                if ready:
                    return ready
                now = time.monotonic()
            if timeout is not None:
                timeout = max(0.0, timeout - (now - start))
        activity.bulk = False
        ready = super().select(timeout)
        if ready:
            self._hot = True
        elif timeout is None or timeout > 0:
            self._hot = False
        return ready


class RelayThread:
    """
    Run a :class:`Relay` on its own event loop in a background thread, for synchronous code.

    It never touches the caller's event loop. :meth:`start` and :meth:`stop` are thread-safe
    and idempotent; use it as a context manager to pair them.

    Args:
        listeners: Bound, listening stream sockets (see :class:`Relay`); closed by
            :meth:`stop`, even if the relay never started.
        upstream: Where the X display listens.
        setup_filter: See :class:`Relay`. It runs on the relay's thread.
        setup_timeout: See :class:`Relay`.
        connect_timeout: See :class:`Relay`.
        high_water: See :class:`Relay`.
        low_water: See :class:`Relay`.
        read_size: See :class:`Relay`.
        allow: See :class:`Relay`.
        splice: See :class:`Relay`.
        busy_poll: Seconds the relay's loop keeps polling after small exchanges before it
            sleeps; 0 disables it. This trades some CPU while clients are busy for less
            than half the added round-trip latency; an idle relay uses none.

    Raises:
        RelayError: An option is out of range.
    """

    def __init__(
        self,
        listeners: Iterable[socket.socket],
        upstream: Endpoint,
        *,
        setup_filter: SetupFilter | None = None,
        setup_timeout: float = 10.0,
        connect_timeout: float = 5.0,
        high_water: int = DEFAULT_HIGH_WATER,
        low_water: int = DEFAULT_LOW_WATER,
        read_size: int = DEFAULT_READ_SIZE,
        splice: bool = True,
        busy_poll: float = DEFAULT_BUSY_POLL,
        allow: Iterable[IPNetwork] | None = None,
    ) -> None:
        if not busy_poll >= 0:
            raise RelayError(f"busy_poll must be 0 or a positive number, not {busy_poll!r}")
        self.relay = Relay(
            listeners,
            upstream,
            setup_filter=setup_filter,
            setup_timeout=setup_timeout,
            connect_timeout=connect_timeout,
            high_water=high_water,
            low_water=low_water,
            read_size=read_size,
            splice=splice,
            allow=allow,
        )
        self._busy_poll = float(busy_poll)
        self._lock = threading.Lock()
        self._state: Literal["new", "serving", "stopped"] = "new"
        self._thread: threading.Thread | None = None
        self._stopper: Callable[[], None] | None = None

    def __repr__(self) -> str:
        return f"<RelayThread {self._state} -> {self.relay.upstream}>"

    @property
    def stats(self) -> RelayStats:
        """A snapshot of the relay's counters."""
        return self.relay.stats

    @property
    def serving(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
        return self._state == "serving"

    def start(self) -> None:
        """
        Start the relay thread and return once the relay is serving.

        Calling it again while serving does nothing.

        Raises:
            RelayError: The relay could not start (the cause is chained), or it was stopped.
        """
        with self._lock:
            if self._state == "serving":
                return
            if self._state == "stopped":
                raise RelayError("this relay was stopped and cannot start again; create a new one")
            ready: concurrent.futures.Future[Callable[[], None]] = concurrent.futures.Future()
            thread = threading.Thread(
                target=self._main,
                args=(ready,),
                name=f"x11passthrough-relay-{self.relay.upstream}",
                daemon=True,
            )
            try:
                thread.start()
            except RuntimeError as exc:
                self._state = "stopped"
                self.relay._close_listeners()
                raise RelayError(f"the relay could not start its thread: {exc}") from exc
            try:
                self._stopper = ready.result()
            except BaseException as exc:
                thread.join()
                self._state = "stopped"
                self.relay._close_listeners()
                if isinstance(exc, RelayError):
                    raise
                raise RelayError(f"the relay could not start: {exc}") from exc
            self._thread = thread
            self._state = "serving"

    def stop(self) -> None:
        """
        Close every connection and listener, stop the loop and join the thread.

        Calling it again, or before :meth:`start`, only makes sure the listeners are closed.

        Raises:
            RelayError: Called from the relay's own thread (for example by a setup filter).
        """
        thread = self._thread
        if thread is not None and threading.current_thread() is thread:
            raise RelayError("RelayThread.stop() cannot be called from the relay's own thread")
        with self._lock:
            stopper, self._stopper = self._stopper, None
            thread, self._thread = self._thread, None
            self._state = "stopped"
            if stopper is not None:
                stopper()
            if thread is not None:
                thread.join()
            self.relay._close_listeners()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _main(self, ready: concurrent.futures.Future[Callable[[], None]]) -> None:
        selector = None
        if self._busy_poll:
            selector = _BusyPollSelector(self._busy_poll, self.relay.activity)
        loop = asyncio.SelectorEventLoop(selector)
        try:
            loop.run_until_complete(self._serve(loop, ready))
        except BaseException as exc:  # pragma: no cover - only a bug gets here
            if ready.done():
                logger.exception("the relay thread failed")
            else:
                ready.set_exception(exc)
        finally:
            loop.close()

    async def _serve(
        self,
        loop: asyncio.AbstractEventLoop,
        ready: concurrent.futures.Future[Callable[[], None]],
    ) -> None:
        stop_event = asyncio.Event()
        try:
            await self.relay.start()
        except BaseException as exc:
            ready.set_exception(exc)
            return

        def stopper() -> None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(stop_event.set)

        ready.set_result(stopper)
        try:
            await stop_event.wait()
        finally:
            await self.relay.stop()
