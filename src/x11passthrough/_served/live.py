"""
The host display behind a served display, followed through its X server's restarts.

Strictly private.

A served display outlives X servers: the user logs out and in, a display manager restarts
Xorg or Xwayland, and the new server on the same display number has a new cookie (in the
user's Xauthority, rewritten by the display manager) and may number its extensions anew.
:class:`LiveDisplay` keeps one connection to the server open, as the relay's
:class:`~x11passthrough._upstream.ExtensionWatch` does; a thread waits on it. When the server
closes it, the display is *gone*: the gate refuses clients with a "Failed" reply naming that
(instead of letting them reach a server that would refuse the old cookie). The thread then
tries the display again (every :data:`RETRY` seconds) and, once a server answers, reads the
authority file again, proves the cookie it finds with one X11 setup, learns the extensions,
and serves clients again: the name, the socket and the containers' cookie never change.

A client the gate admitted just before a restart may reach the new server with the old
cookie; :meth:`current` then finds the watched connection ended (a new server accepts
connections only after the old one closed all of its), and the client is refused with the
reason: connect again.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import threading

from .._display._endpoint import Endpoint
from .._display._locator import DisplayLocator
from .._display._name import DisplayName
from .._display._owner import ownership_problem
from .._upstream import HostSide
from .._x11.handshake import still_open
from .._x11.requests import Hidden
from .._x11.wire import MIT_MAGIC_COOKIE_1
from ..exceptions import DisplayError


logger = logging.getLogger("x11passthrough")

#: Seconds between two attempts to reach a display that went away.
RETRY = 0.1


class LiveDisplay:
    """
    The display behind a served display: its cookie, its extensions, and whether it is there.

    It is a :class:`~x11passthrough._relay.options.HiddenSource` for the relay, and its
    :meth:`present` feeds :class:`~x11passthrough._x11.gate.LiveCookieGate`.
    """

    def __init__(self, *, locator: DisplayLocator, name: DisplayName, host: HostSide) -> None:
        self._locator = locator
        self._name = name
        self._host = host
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._cookie: bytes | None = None
        self._hidden: Hidden | None = None
        self._gone: str | None = "the display is not open yet"
        self._wake_r, self._wake_w = socket.socketpair()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        self.endpoint: Endpoint | None = None
        #: How many times the display came back after it went away.
        self.returns = 0
        #: Set whenever the display is served (again); cleared while it is gone.
        self.ready = threading.Event()

    def open(self) -> None:
        """
        Reach the display and prove its cookie, then follow it in a thread.

        Raises:
            DisplayError: (and subclasses) The display cannot be reached or refused the cookie.
            XauthorityError: The authority file cannot be read.
        """
        sock, cookie, hidden, endpoint = self._reach()
        self.endpoint = endpoint
        with self._lock:
            self._sock, self._cookie, self._hidden, self._gone = sock, cookie, hidden, None
        self.ready.set()
        self._thread = threading.Thread(
            target=self._follow, name="x11passthrough-served-display", daemon=True
        )
        self._thread.start()

    def _reach(self) -> tuple[socket.socket, bytes | None, Hidden, Endpoint]:
        connection = self._locator.connect(self._name)
        try:
            entry = self._host._real_cookie(connection)
            cookie = None if entry is None else entry.data
            hidden = self._host._check(connection, cookie)
        except BaseException:
            connection.close()
            raise
        return connection.socket, cookie, hidden, connection.endpoint

    # -- what the gate and the relay ask ------------------------------------------------------

    def present(self) -> tuple[bytes, bytes] | str:
        """Return what to present to the X server now, or why the display cannot serve."""
        with self._lock:
            if self._gone is not None:
                return self._gone
            cookie = self._cookie
        return (MIT_MAGIC_COOKIE_1, cookie) if cookie else (b"", b"")

    def current(self) -> Hidden | None:
        """Return the extensions of the server the relay reaches, or None if it went away."""
        with self._lock:
            sock, hidden = self._sock, self._hidden
        if sock is None or hidden is None:
            return None
        try:
            return hidden if still_open(sock) else None
        except OSError:
            return None

    def relearn(self) -> Hidden | str:
        """Refuse a client that reached a server other than the one its cookie was for."""
        return f"the X display {self._name} restarted while this client connected; connect again"

    def check(self, sock: socket.socket) -> str | None:
        """Return why a new relay connection to the display must not be used, or None."""
        endpoint = self.endpoint
        if endpoint is None:
            return "the display is not open"
        return ownership_problem(sock, endpoint, self._host.trusted_owners)

    # -- following the server -------------------------------------------------------------------

    def _follow(self) -> None:
        while not self._closed.is_set():
            with self._lock:
                sock = self._sock
            if sock is not None and not self._wait_for_end(sock):
                return
            self._went_away()
            if not self._come_back():
                return

    def _wait_for_end(self, sock: socket.socket) -> bool:
        """Wait until the server closes `sock`; False if we are closing instead."""
        while True:
            try:
                readable, _, _ = select.select([sock, self._wake_r], [], [])
            except (OSError, ValueError):
                return not self._closed.is_set()
            if self._wake_r in readable or self._closed.is_set():
                return False
            try:
                data = sock.recv(65536, socket.MSG_DONTWAIT)
            except BlockingIOError:
                continue
            except OSError:
                return True
            if not data:
                return True  # events we never asked for are read and dropped

    def _went_away(self) -> None:
        reason = (
            f"the X display {self._name} behind this served display is gone (its X server "
            "exited or is restarting); x11passthrough serves it again when it is back"
        )
        with self._lock:
            old, self._sock, self._hidden, self._gone = self._sock, None, None, reason
        self.ready.clear()
        if old is not None:
            old.close()
        logger.warning("the X display %s went away; waiting for it to come back", self._name)

    def _come_back(self) -> bool:
        """Try the display until it answers and accepts its cookie; False if closing."""
        last = ""
        while not self._closed.wait(RETRY):
            try:
                sock, cookie, hidden, endpoint = self._reach()
            except DisplayError as e:
                problem = str(e)
                if problem != last and "refused" in problem:
                    logger.warning("the X display %s is back but: %s", self._name, problem)
                last = problem
                continue
            except Exception as e:  # an unreadable authority file, ...: try again later
                if str(e) != last:
                    logger.warning("the X display %s: %s", self._name, e)
                last = str(e)
                continue
            with self._lock:
                if self._closed.is_set():
                    sock.close()
                    return False
                self._sock, self._cookie, self._hidden, self._gone = sock, cookie, hidden, None
                self.endpoint = endpoint
                self.returns += 1
            self.ready.set()
            logger.warning(
                "the X display %s is back; its cookie was proven again, serving it", self._name
            )
            return True
        return False

    def close(self) -> None:
        """Stop following the display and close the watched connection."""
        self._closed.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()
        with self._lock:
            sock, self._sock = self._sock, None
            self._gone = "the served display is stopping"
        self.ready.clear()
        if sock is not None:
            sock.close()
        self._wake_r.close()
        self._wake_w.close()
