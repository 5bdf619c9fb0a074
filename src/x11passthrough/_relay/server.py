"""The relay server: accept connections on listening sockets and hand each to a Connection."""

from __future__ import annotations

import asyncio
import logging
import socket

from collections.abc import Callable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Literal

from .._reasons import why
from .._validate import IPNetwork
from ..exceptions import RelayError
from .admission import Admission, WarnLimiter, left_out_text
from .connection import Connection
from .options import Listener, RelayOptions
from .peers import OwnUids, peer_of
from .sockets import (
    TCP_FAMILIES,
    allowed,
    check_listener,
    describe_address,
    local_name,
    widen_send_buffer,
)
from .stats import Outcome, RelayStats, Shared


if TYPE_CHECKING:
    from typing_extensions import Self

    from .._display._endpoint import Endpoint


logger = logging.getLogger("x11passthrough")

#: Connections accepted per wake-up of a listener; the rest wait for the next loop iteration.
ACCEPT_BATCH = 64
#: Pause of a listener after the process ran out of file descriptors.
ACCEPT_BACKOFF = 0.1
#: Least seconds between two refreshes of the allowed networks (unknown clients trigger them).
REFRESH_EVERY = 1.0
_RETRY = (BlockingIOError, InterruptedError)


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
        listeners: Where clients connect: each a bound, listening stream socket (any family)
            with the setup filter for its clients and the peers it admits. Once the relay
            is constructed it owns the sockets, and :meth:`stop` closes them.
        upstream: Where the X display listens.
        options: How connections are treated (timeouts, buffers, allowlist).

    Raises:
        RelayError: `listeners` is not a list of :class:`~.options.Listener` values.
    """

    def __init__(
        self,
        listeners: Iterable[Listener],
        upstream: Endpoint,
        options: RelayOptions | None = None,
    ) -> None:
        if isinstance(listeners, (str, bytes, socket.socket, Listener)):
            raise RelayError(
                f"listeners must be a list of Listener values, not {listeners!r}; "
                "pass [Listener(sock, setup_filter)] for a single one"
            )
        self.options = options or RelayOptions()
        self._listeners: dict[socket.socket, Listener] = {}
        for listener in listeners:
            if not isinstance(listener, Listener):
                raise RelayError(
                    f"a relay listener must be a Listener (a socket with its setup filter), "
                    f"not {listener!r}; wrap a socket as Listener(sock, None)"
                )
            self._listeners[listener.socket] = listener
        #: The listening sockets (of `listeners`), in the order given.
        self.sockets = tuple(self._listeners)
        self.upstream = upstream
        self.shared = Shared(self.options)
        self.connections: set[Connection] = set()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._state: Literal["new", "serving", "stopped"] = "new"
        self._tasks: dict[Connection, asyncio.Task[None]] = {}
        self._paused: set[socket.socket] = set()
        self._budget_paused = False
        self.admission = Admission(self.options)
        self._warnings: dict[str, WarnLimiter] = {}
        self.shared.descriptors.budget = self.admission.budget
        self.allow = self.options.allow
        self._refreshed = -REFRESH_EVERY
        self._refreshing: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        return f"<Relay {self._state} -> {self.upstream}>"

    @property
    def stats(self) -> RelayStats:
        """A snapshot of the relay's counters."""
        return self.shared.counters.snapshot()

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
        listeners = [check_listener(listener) for listener in self.sockets]
        if not listeners:
            raise RelayError("a relay needs at least one listening socket")
        self.loop = loop
        self.shared.scratch = memoryview(bytearray(self.options.read_size))
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
            ", ".join(str(local_name(s)) for s in listeners),
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
            for listener in self.sockets:
                if listener.fileno() >= 0 and listener not in self._paused:
                    loop.remove_reader(listener.fileno())
        self._paused.clear()
        self.close_listeners()
        # Connections in their setup phase end when their task is cancelled; the tasks must
        # end before their sockets close, so that no pending socket operation outlives its fd.
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for conn in list(self.connections):
            conn.close("the relay stopped")
        if loop is not None:
            logger.debug("relay to %s stopped: %s", self.upstream, self.stats)

    def close_listeners(self) -> None:
        """Close every listening socket (also when the relay never started)."""
        for listener in self.sockets:
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
            if not self.shared.descriptors.room_for_a_client(self.admission.budget):
                victim = self.admission.oldest_pending()
                if victim is None:
                    self._pause_for_budget(loop)
                    return
                self._evict(victim, "the relay is at its descriptor budget")
            try:
                client, address = listener.accept()
            except _RETRY:
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                self.shared.counters.count(Outcome.ERROR)
                logger.warning(
                    "relay cannot accept a connection on %s: %s; retrying in %g s",
                    local_name(listener),
                    why(exc),
                    ACCEPT_BACKOFF,
                )
                self._pause_listener(loop, listener)
                return
            self._admit(loop, client, address, self._listeners[listener])

    def _pause_listener(self, loop: asyncio.AbstractEventLoop, listener: socket.socket) -> None:
        """Stop accepting on `listener` for a moment (the process is out of descriptors)."""
        loop.remove_reader(listener.fileno())
        self._paused.add(listener)

        def resume() -> None:
            if self._state == "serving" and listener in self._paused:
                self._paused.discard(listener)
                loop.add_reader(listener.fileno(), self._on_acceptable, loop, listener)

        loop.call_later(ACCEPT_BACKOFF, resume)

    def _pause_for_budget(self, loop: asyncio.AbstractEventLoop) -> None:
        """Stop accepting until a connection closes: the descriptor budget is used up."""
        if self._budget_paused:
            return
        self._budget_paused = True
        for listener in self.sockets:
            if listener.fileno() >= 0 and listener not in self._paused:
                loop.remove_reader(listener.fileno())
        logger.warning(
            "relay at its descriptor budget (%d of the process's limit, the rest is kept for "
            "the host process); new clients wait until one leaves",
            self.admission.budget,
        )

    def _resume_after_budget(self) -> None:
        loop = self.loop
        if not self._budget_paused or loop is None or self._state != "serving":
            return
        if not self.shared.descriptors.room_for_a_client(self.admission.budget):
            return
        self._budget_paused = False
        for listener in self.sockets:
            if listener.fileno() >= 0 and listener not in self._paused:
                loop.add_reader(listener.fileno(), self._on_acceptable, loop, listener)

    def _evict(self, connection: Connection, reason: str) -> None:
        """Drop a pending connection now (its setup phase is cancelled)."""
        self.admission.done(connection)
        connection.evict(reason)
        task = self._tasks.get(connection)
        if task is not None:
            task.cancel()
        else:  # pragma: no cover - every connection gets its task at once
            connection.close(reason, Outcome.REJECTED)

    def _admit(
        self,
        loop: asyncio.AbstractEventLoop,
        client: socket.socket,
        address: object,
        listener: Listener,
    ) -> None:
        unverified = self.allow is not None and not allowed(client, address, self.allow)
        try:
            client.setblocking(False)
            if client.family in TCP_FAMILIES:
                client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            elif client.family == socket.AF_UNIX:
                widen_send_buffer(client)  # large replies (GetImage) in one send
        except OSError:
            # The client is already gone (reset before we looked at it).
            self.shared.counters.count(Outcome.ERROR)
            client.close()
            return
        peer_uid = None
        if client.family in TCP_FAMILIES and isinstance(address, tuple):
            source = str(address[0])
            key = (source, "")
        else:
            unix_peer = peer_of(client)
            source = "local clients" if unix_peer is None else f"local {unix_peer}"
            key = ("local clients", "") if unix_peer is None else unix_peer.key
            peer_uid = None if unix_peer is None else unix_peer.uid
        admit, victim = self.admission.room_for(key)
        if victim is not None:
            self._evict(victim, "too many connections of this source are in their setup")
        if not admit:
            self.shared.counters.count(Outcome.REJECTED)
            client.close()
            return
        number = self.shared.counters.opened()
        self.shared.descriptors.socket_opened()
        peer = describe_address(client, address)
        peers = listener.peers
        refused = None
        if peers is not None and (peer_uid is None or not peers.admits(peer_uid)):
            refused = self._refuse_peer(source, peer_uid, listener.socket, peers)
        conn = Connection(
            self,
            self.shared,
            loop,
            client,
            upstream=self.upstream,
            setup_filter=listener.setup_filter,
            peer=peer,
            source=source,
            number=number,
            address=address,
            unverified=unverified,
            refused=refused,
        )
        self.connections.add(conn)
        self.admission.add(conn, key)
        task = loop.create_task(self._run(conn))
        self._tasks[conn] = task
        task.add_done_callback(lambda _task: self._tasks.pop(conn, None))

    def _refuse_peer(
        self, source: str, uid: int | None, listener: socket.socket, peers: OwnUids
    ) -> str:
        """Return the reason a UNIX peer is refused on `listener`, and warn (rate-limited)."""
        left_out = self.may_warn("peer", uid)
        if left_out is not None:
            logger.warning(
                "relay refused %s on %s: this listener cannot check a cookie (auth='forward' "
                "with a display that needs none), so it admits only %s%s",
                source,
                local_name(listener),
                peers.describe(),
                left_out_text(left_out),
            )
        return (
            f"x11passthrough: {source} is not admitted here: this display is lent without a "
            "cookie (auth='forward'), so this socket admits only its owner's processes"
        )

    def may_warn(self, kind: str, source: object) -> int | None:
        """
        Tell whether to log a warning of `kind` about `source` (rate-limited per kind).

        Returns:
            None to stay silent, else how many such warnings were left out since the last.
        """
        limiter = self._warnings.get(kind)
        if limiter is None:
            limiter = self._warnings[kind] = WarnLimiter()
        return limiter.allow(source)

    def connection_closed(self, connection: Connection) -> None:
        """Forget a connection that closed."""
        self.connections.discard(connection)
        self.admission.done(connection)
        self._resume_after_budget()

    async def admits(self, connection: Connection) -> bool:
        """Check `connection`'s address again, after refreshing the networks if due."""
        refresh = self.options.refresh_allow
        if refresh is not None:
            loop = asyncio.get_running_loop()
            if self._refreshing is None and loop.time() - self._refreshed >= REFRESH_EVERY:
                self._refreshed = loop.time()
                self._refreshing = asyncio.ensure_future(self._refresh(refresh))
            if self._refreshing is not None:
                await asyncio.shield(self._refreshing)
        allow = self.allow
        return allow is None or allowed(connection.client, connection.address, allow)

    async def _refresh(self, refresh: Callable[[], tuple[IPNetwork, ...]]) -> None:
        try:
            self.allow = await asyncio.get_running_loop().run_in_executor(None, refresh)
        except Exception:  # the engine is not needed to serve known clients
            logger.warning("cannot refresh the allowed client networks", exc_info=True)
        finally:
            self._refreshing = None

    def setup_finished(self, connection: Connection) -> None:
        """Stop counting a connection that passed its setup phase as pending."""
        self.admission.done(connection)

    async def _run(self, conn: Connection) -> None:
        try:
            await conn.establish()
        except asyncio.CancelledError:
            if conn.evicted is not None:
                conn.close(conn.evicted, Outcome.REJECTED)
                if self._state == "serving":
                    return  # only this connection ends
            conn.close("the relay stopped")
            raise
        except Exception as exc:  # pragma: no cover - a bug; keep serving the others
            logger.exception("relay connection #%d failed unexpectedly", conn.number)
            conn.fail(f"internal error: {exc!r}")
