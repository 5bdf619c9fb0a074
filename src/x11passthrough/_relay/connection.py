"""
One client connection: its setup phase, its connection to the display, and its two flows.

A connection reports to its server through :class:`ConnectionOwner` and
shares the relay's :class:`~x11passthrough._relay.stats.Shared`, so the server, the
connection and the flows form a line, not a circle.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import logging
import socket
import time

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from .._reasons import why
from .._validate import shown
from .._x11.gate import Accept, Reject
from .._x11.requests import Hidden, RequestFilter
from .._x11.wire import failed_reply
from . import shm
from .flows import (
    HAVE_SPLICE,
    MAX_SPLICE_PIPES,
    PIPE_SIZE,
    BodySpliceFlow,
    CopyFlow,
    Flow,
    SpliceFlow,
)
from .options import SetupFilter
from .passing import FdCopyFlow
from .sockets import TCP_FAMILIES, close_socket, open_pipe, widen_send_buffer
from .stats import Outcome, Shared


if TYPE_CHECKING:
    from .._display._endpoint import Endpoint


logger = logging.getLogger("x11passthrough")

#: Longest connection-setup message a setup filter is shown (a real one is at most ~128 KiB).
MAX_SETUP_BYTES = 256 * 1024
#: How long a refused client is given to read its "Failed" reply before the socket is closed.
REFUSAL_LINGER = 1.0
#: How long to wait for a client's first byte (its byte order) when the display is unreachable.
FIRST_BYTE_WAIT = 0.5
#: Pause between attempts to connect to a UNIX socket whose listener's backlog is full.
UNIX_CONNECT_RETRY = 0.01

_FILTER_FAILED = "x11passthrough: internal error while checking the connection setup"


class ConnectionOwner(Protocol):
    """What a connection needs from the server that accepted it."""

    @property
    def serving(self) -> bool:
        """True until the server stops."""

    def connection_closed(self, connection: Connection) -> None:
        """Forget `connection`, which closed."""

    async def admits(self, connection: Connection) -> bool:
        """Tell whether `connection`'s address is allowed, after refreshing the networks."""

    def setup_finished(self, connection: Connection) -> None:
        """Count `connection` as past its setup phase: no longer an unauthenticated one."""

    def may_warn(self, kind: str, source: object) -> int | None:
        """Tell whether to warn about `source` now (None: no; else how many were left out)."""


class Refusal(Exception):  # noqa: N818 - internal control flow, not an error to callers
    """Raised inside the setup phase to refuse a client with a "Failed" reply."""

    def __init__(
        self, reason: str, *, reply: bytes | None = None, outcome: Outcome = Outcome.REJECTED
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.reply = reply
        self.outcome = outcome


class Phase(enum.Enum):
    """Where a connection is: each moves forward only, SETUP to CLOSED."""

    #: Reading and checking the client's connection setup (counted as pending).
    SETUP = "setup"
    #: The setup passed: connecting to the display and learning what to hide.
    CONNECTING = "connecting"
    #: Both directions flow.
    RELAYING = "relaying"
    #: Both sockets are closed.
    CLOSED = "closed"


class Connection:
    """One client connection: its setup, its connection to the display and its two flows."""

    __slots__ = (
        "_outcome",
        "_owner",
        "_refused",
        "_setup_filter",
        "_shared",
        "_upstream",
        "address",
        "client",
        "display",
        "evicted",
        "flows",
        "forwarded",
        "loop",
        "number",
        "peer",
        "phase",
        "received",
        "refused",
        "source",
        "started",
        "unverified",
    )

    def __init__(
        self,
        owner: ConnectionOwner,
        shared: Shared,
        loop: asyncio.AbstractEventLoop,
        client: socket.socket,
        *,
        upstream: Endpoint,
        setup_filter: SetupFilter | None,
        peer: str,
        source: str,
        number: int,
        address: object = None,
        unverified: bool = False,
        refused: str | None = None,
    ) -> None:
        self._owner = owner
        self._shared = shared
        self._upstream = upstream
        self._setup_filter = setup_filter
        self.loop = loop
        self.client = client
        self.peer = peer
        self.address = address
        #: A TCP client from outside the allowed networks known so far (asked again).
        self.unverified = unverified
        #: Why this client is refused before its setup is read (its peer is not admitted).
        self.refused = refused
        self.source = source
        self.evicted: str | None = None
        self.number = number
        #: The connection to the X display (at `upstream`), once opened.
        self.display: socket.socket | None = None
        self.flows: tuple[Flow, ...] = ()
        self.phase = Phase.SETUP
        self.received = b""
        self.forwarded = 0
        self.started = time.monotonic()
        self._refused: Mapping[bytes, str] = {}
        #: How the connection ends, once decided and counted.
        self._outcome: Outcome | None = None

    @property
    def closed(self) -> bool:
        """Both sockets are closed."""
        return self.phase is Phase.CLOSED

    def evict(self, reason: str) -> None:
        """Mark this pending connection dropped for `reason` (its task is then cancelled)."""
        self.evicted = reason
        self._ended(Outcome.REJECTED)

    async def establish(self) -> None:
        """Run the setup filter (if any), connect to the display and start relaying."""
        owner = self._owner
        if not await self._admitted():
            return
        setup_filter = self._setup_filter
        forward = b""
        if setup_filter is not None:
            verdict = await self._negotiate(setup_filter)
            if verdict is None:
                return
            forward = verdict
        owner.setup_finished(self)
        self.phase = Phase.CONNECTING
        opened = await self._open_display()
        if opened is None:
            return
        display, hidden = opened
        request_filter = None
        descriptors = False
        if hidden is not None:
            attach_check = None
            if self._shared.options.shm and hidden.shm is not None:
                hidden, attach_check = shm.decide(self.client, display, hidden, self.number)
                descriptors = attach_check is not None
            self._refused = hidden.refused
            request_filter = RequestFilter(hidden, on_query=self._asked, attach_check=attach_check)
        if request_filter is not None and forward:
            forward = bytes(request_filter.feed(bytearray(forward)))
            if request_filter.problem is not None:
                logger.warning("relay: %s", request_filter.problem)
                self.fail(f"x11passthrough: {request_filter.problem}")
                return
        if forward:
            try:
                await self.loop.sock_sendall(display, forward)
            except OSError as exc:
                self.fail(f"X display connection failed: {why(exc)}")
                return
            self._shared.counters.bytes_up += len(forward)
            self.forwarded = len(forward)
        self.received = b""
        self._start_flows(display, request_filter, descriptors=descriptors)

    async def _open_display(self) -> tuple[socket.socket, Hidden | None] | None:
        """
        Connect to the display, check the connection, and learn what to keep from the client.

        Returns:
            The connection and the extensions to hide, or None if the client was refused.
        """
        owner = self._owner
        try:
            display = await self._connect()
        except (OSError, asyncio.TimeoutError) as exc:
            if not owner.serving:  # a cancellation that wait_for turned into a timeout
                raise asyncio.CancelledError from exc
            cause = why(exc, self._shared.options.connect_timeout)
            await self._display_refused(f"cannot reach the X display at {self._upstream}: {cause}")
            return None
        if not owner.serving:  # stop() ran while the last await completed
            self._close_display(display)
            raise asyncio.CancelledError
        check = self._shared.options.check_upstream
        problem = None if check is None else check(display)
        if problem is None:
            self.display = display
            hidden = await self._hidden()
            if self.closed:  # evicted while the extensions were learned
                return None
            if not isinstance(hidden, str):
                return display, hidden
            problem = hidden
            self.display = None
        self._close_display(display)
        await self._display_refused(problem)
        return None

    async def _hidden(self) -> Hidden | str | None:
        """Return what to keep from the client, for the server generation it reaches."""
        source = self._shared.options.hidden
        if source is None or isinstance(source, Hidden):
            return source
        # Asked once the connection to the display is up: a restarted server (new extension
        # numbers) accepts it only after it closed the connection that watches it.
        found = source.current()
        if found is not None:
            return found
        learned = await self.loop.run_in_executor(None, source.relearn)
        if not self._owner.serving:
            raise asyncio.CancelledError
        return learned

    async def _admitted(self) -> bool:
        """Refuse a client whose peer or address is not admitted; tell whether it may go on."""
        if self.refused is not None:
            await self._refuse(self.refused, Outcome.REJECTED)
            return False
        if self.unverified and not await self._owner.admits(self):
            await self._refuse_unknown()
            return False
        return True

    async def _negotiate(self, setup_filter: SetupFilter) -> bytes | None:
        """Collect the client's setup until the filter decides; return what to forward."""
        received = bytearray()
        try:
            forward = await self._collect(setup_filter, received)
        except Refusal as refusal:
            await self._refuse(
                refusal.reason, refusal.outcome, bytes(received), reply=refusal.reply
            )
            return None
        except OSError as exc:
            self.fail(f"client connection failed during setup: {why(exc)}")
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
            Refusal: The filter rejected or failed, or the client was too slow or too long.
            EOFError: The client closed its connection.
            OSError: The client connection failed.
        """
        timeout = self._shared.options.setup_timeout
        deadline = self.loop.time() + timeout
        while True:
            if not self._owner.serving or self.evicted is not None:
                # Python 3.11's wait_for can turn a cancellation into a timeout; stop() or an
                # eviction has already said so, so end here rather than wait out the deadline.
                raise asyncio.CancelledError
            remaining = deadline - self.loop.time()
            if remaining <= 0:
                raise Refusal(
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
                raise Refusal("x11passthrough: the connection setup message is too long")
            try:
                verdict = setup_filter(bytes(received))
            except Exception as exc:
                logger.exception("the relay's setup filter failed")
                raise Refusal(_FILTER_FAILED, outcome=Outcome.ERROR) from exc
            if isinstance(verdict, Accept):
                return verdict.forward
            if isinstance(verdict, Reject):
                raise Refusal(verdict.reason, reply=verdict.reply)
            if verdict is not None:
                logger.error("the relay's setup filter returned %r, not a verdict", verdict)
                raise Refusal(_FILTER_FAILED, outcome=Outcome.ERROR)

    async def _connect(self) -> socket.socket:
        """Open a non-blocking connection to the display within ``connect_timeout``."""
        timeout = self._shared.options.connect_timeout
        address = self._upstream.address
        if isinstance(address, str):
            return await self._connect_one(socket.AF_UNIX, 0, address, timeout)
        host, port = address
        infos = await asyncio.wait_for(
            self.loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), timeout
        )
        last: BaseException = OSError(errno.EHOSTUNREACH, "no address")
        for family, _, proto, _, resolved in infos:
            try:
                sock = await self._connect_one(family, proto, resolved, timeout)
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
        self._shared.descriptors.socket_opened()
        self.display = sock
        try:
            sock.setblocking(False)
            if family == socket.AF_UNIX:
                widen_send_buffer(sock)
                await self._connect_unix(sock, address, timeout)
            else:
                await asyncio.wait_for(self.loop.sock_connect(sock, address), timeout)
        except BaseException:
            self.display = None
            self._close_display(sock)
            raise
        self.display = None
        return sock

    def _close_display(self, sock: socket.socket | None) -> None:
        """Close a display socket this connection opened, and give its descriptor back."""
        if sock is not None and sock.fileno() >= 0:
            close_socket(sock)
            self._shared.descriptors.socket_closed()

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

    async def _refuse_unknown(self) -> None:
        """Refuse a client whose address is in no allowed network, saying how to admit it."""
        which = (
            "container networks"
            if self._shared.options.refresh_allow is not None
            else "networks the relay was told to allow"
        )
        reason = (
            f"x11passthrough: clients from {self.source} are not admitted (their address is "
            f"in none of the {which})"
        )
        left_out = self._owner.may_warn("unknown", self.source)
        if left_out is not None:
            logger.warning(
                "relay refused %s: not in the allowed client networks; the passthrough's "
                "allow= option (x11passthrough --allow) admits more%s",
                self.peer,
                f" ({left_out} similar warnings left out)" if left_out else "",
            )
        await self._refuse(reason, Outcome.REJECTED)

    async def _first_bytes(self) -> bytes:
        """Return what the client sent first (its byte order), waiting a moment for it."""
        if self.received:
            return self.received
        try:
            return await asyncio.wait_for(self.loop.sock_recv(self.client, 65536), FIRST_BYTE_WAIT)
        except (OSError, asyncio.TimeoutError):
            return b""

    async def _display_refused(self, problem: str) -> None:
        """Answer Failed naming `problem` (the display cannot serve this client): an error."""
        logger.warning("%s (connection #%d from %s)", problem, self.number, self.peer)
        await self._refuse(f"x11passthrough: {problem}", Outcome.ERROR)

    async def _refuse(
        self,
        reason: str,
        outcome: Outcome,
        received: bytes | None = None,
        *,
        reply: bytes | None = None,
    ) -> None:
        """Count the refusal, answer "Failed" (to `received`, else the first bytes), close."""
        if self.closed:
            return
        self._ended(outcome)  # counted now, however the refusal ends (an eviction, a stop)
        if received is None:
            received = await self._first_bytes()
        if received and self._owner.serving:
            if reply is None:
                reply = failed_reply(reason, received[0])
            with contextlib.suppress(OSError, asyncio.TimeoutError):
                await asyncio.wait_for(self.loop.sock_sendall(self.client, reply), REFUSAL_LINGER)
                self.client.shutdown(socket.SHUT_WR)
                # Read what the client still sends until it closes, so the reply is not lost
                # to a reset caused by unread data.
                deadline = self.loop.time() + REFUSAL_LINGER
                while self._owner.serving and (remaining := deadline - self.loop.time()) > 0:
                    chunk = await asyncio.wait_for(
                        self.loop.sock_recv(self.client, 65536), remaining
                    )
                    if not chunk:
                        break
        self.close(reason, outcome)

    def _start_flows(
        self, display: socket.socket, request_filter: RequestFilter | None, *, descriptors: bool
    ) -> None:
        """Start both directions; with `descriptors` they carry descriptors (no splice)."""
        shared = self._shared
        options = shared.options
        client = self.client
        flows: list[Flow] = []
        for src, dst, up in ((client, display, True), (display, client, False)):
            ends = (self, shared, self.loop, src, dst)
            pipe = None
            up_filter = request_filter if up else None
            if descriptors:
                flows.append(FdCopyFlow(*ends, up=up, request_filter=up_filter))
                continue
            if (
                options.splice
                and HAVE_SPLICE
                and src.family in TCP_FAMILIES
                and shared.descriptors.pipes < MAX_SPLICE_PIPES
            ):
                pipe = open_pipe(min(options.read_size, PIPE_SIZE))
            if pipe is not None and up_filter is not None:
                # Filtered: copied, but for the bodies of large requests (PutImage).
                flows.append(BodySpliceFlow(*ends, pipe=pipe, up=up, request_filter=up_filter))
            elif pipe is not None:
                flows.append(SpliceFlow(*ends, pipe=pipe, up=up))
            else:
                flows.append(CopyFlow(*ends, up=up, request_filter=up_filter))
        self.flows = tuple(flows)
        for flow in flows:
            flow.start()
        self.phase = Phase.RELAYING

    def _asked(self, name: bytes) -> None:
        """Say, once per relay, that a client asked for an extension it does not get."""
        told = self._shared.told
        if name in told:
            return
        told.add(name)
        logger.warning(
            "a client (connection #%d from %s) asked for the X extension %s, which it does not "
            "get: %s",
            self.number,
            self.peer,
            shown(name),
            self._refused.get(name, "it is hidden"),
        )

    def sent_eof(self, sock: socket.socket) -> bool:
        """Tell whether `sock` (the client or the display socket) sent EOF."""
        return any(flow.eof for flow in self.flows if flow.src is sock)

    def flow_finished(self, flow: Flow) -> None:
        """Close once both directions passed their end of stream on."""
        if all(f.finished for f in self.flows):
            self.close("both sides closed the connection")

    def stalled(self, flow: Flow, timeout: float) -> None:
        """Drop a client that stopped reading, before the X server buffers for it unbounded."""
        reason = (
            f"the client read nothing for {timeout:g} s with {flow.pending} bytes waiting; "
            "dropped, or the X server would buffer its replies without bound"
        )
        logger.warning("relay connection #%d from %s: %s", self.number, self.peer, reason)
        self.close(reason, Outcome.STALLED)

    def fail(self, reason: str) -> None:
        """Close the connection and count it as an error."""
        self.close(reason, Outcome.ERROR)

    def _ended(self, outcome: Outcome) -> None:
        """Count how this connection ends: the one place it is counted, once (first wins)."""
        if self._outcome is None:
            self._outcome = outcome
            self._shared.counters.count(outcome)

    def close(self, reason: str, outcome: Outcome = Outcome.CLOSED) -> None:
        """Close both sockets now, count how the connection ended (once), log its summary."""
        if self.closed:
            return
        self.phase = Phase.CLOSED
        for flow in self.flows:
            flow.detach()
        close_socket(self.client)
        self._shared.descriptors.socket_closed()
        self._close_display(self.display)
        self._ended(outcome)
        self._shared.counters.closed()
        self._owner.connection_closed(self)
        if logger.isEnabledFor(logging.DEBUG):
            up = sum(flow.sent for flow in self.flows if flow.up)
            down = sum(flow.sent for flow in self.flows if not flow.up)
            logger.debug(
                "relay connection #%d from %s to %s ended after %.3f s, %d bytes up, "
                "%d bytes down: %s",
                self.number,
                self.peer,
                self._upstream,
                time.monotonic() - self.started,
                up + self.forwarded,
                down,
                reason,
            )
