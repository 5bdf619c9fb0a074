"""The relay on its own thread, for synchronous callers, with an optional busy-polling selector."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import selectors
import threading
import time

from collections.abc import Callable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Literal

from ..exceptions import RelayError
from .options import Listener, RelayOptions
from .server import Relay
from .stats import Activity, RelayStats


if TYPE_CHECKING:
    from typing_extensions import Self

    from .._display._endpoint import Endpoint


logger = logging.getLogger("x11passthrough")


class BusyPollSelector(selectors.DefaultSelector):
    """
    A selector that keeps polling for `busy_poll` seconds after events before it sleeps.

    An X client waits for each reply, so the next event usually follows within microseconds;
    catching it awake saves a sleep and a wake-up, which cost tens of microseconds on virtual
    machines. It does not poll after bulk transfers (`activity`), where the CPU is better left
    to the X server and the client, nor after `busy_poll` seconds without events, so an idle
    relay uses no CPU.
    """

    def __init__(self, busy_poll: float, activity: Activity) -> None:
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
        listeners: Where clients connect: listening sockets with their setup filters (see
            :class:`Relay`); the sockets are closed by :meth:`stop`, even if the relay never
            started.
        upstream: Where the X display listens.
        options: See :class:`Relay`; the setup filter runs on the relay's thread, and
            ``busy_poll`` applies (the thread owns its event loop).

    Raises:
        RelayError: `listeners` is not a list of :class:`~.options.Listener` values.
    """

    def __init__(
        self,
        listeners: Iterable[Listener],
        upstream: Endpoint,
        options: RelayOptions | None = None,
    ) -> None:
        self.relay = Relay(listeners, upstream, options)
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
                self.relay.close_listeners()
                raise RelayError(f"the relay could not start its thread: {exc}") from exc
            try:
                self._stopper = ready.result()
            except BaseException as exc:
                thread.join()
                self._state = "stopped"
                self.relay.close_listeners()
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
            self.relay.close_listeners()

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
        busy_poll = self.relay.options.busy_poll
        if busy_poll:
            selector = BusyPollSelector(busy_poll, self.relay.shared.activity)
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
