"""
The host side of a passthrough: the display, the cookie the relay presents, the upstream check.

One connection to the X server serves locating it, verifying its owner,
picking the cookie libxcb would send on it, and the one real X11 setup that proves the cookie
(or, in ``untrusted`` mode, python-xlib's trusted connection that asks for the untrusted cookie).
"""

from __future__ import annotations

import logging
import socket
import threading

from collections.abc import Collection

import attrs

from ._cleanup import Cleanup
from ._display._endpoint import Endpoint
from ._display._locate import DisplayConnection
from ._display._owner import ownership_problem
from ._x11.extensions import ServerExtensions, learn_extensions
from ._x11.handshake import CookieKeeper, handshake, still_open
from ._x11.requests import HIDDEN_EXTENSIONS, Hidden
from ._x11.security import SecurityClient, UntrustedCookie
from ._x11.wire import MIT_MAGIC_COOKIE_1, SetupStatus
from ._x11.xlib import SetupRefusedError, open_display
from ._xauth.authority import Xauthority
from ._xauth.format import XauthEntry
from .exceptions import (
    DisplayAuthorizationError,
    DisplayError,
    DisplayOwnerError,
    Mention,
    SecurityExtensionError,
    X11SetupError,
)


logger = logging.getLogger("x11passthrough")


@attrs.frozen(kw_only=True)
class Upstream:
    """
    The display the relay serves, and what it presents there.

    Attributes:
        endpoint: Where the X server listens (its owner checked).
        real: The user's cookie for the display, or None where the server needs none.
        family: The family of the authority entry `real` came from (None without one).
        present: What the relay presents to the server: `real`, or the untrusted cookie.
        keeper: In ``untrusted`` mode, the connection that holds the untrusted cookie.
        untrusted: In ``untrusted`` mode, the cookie (its id names it to the server).
        trusted_owners: Who may own the endpoint (None: root and the current user).
        hidden: The extensions the relay keeps from its clients and the ones it lets through,
            numbered by the server they reach: a :class:`ExtensionWatch` that learns them
            again when the server restarts, or (``untrusted`` mode, where a restart ends the
            cookie and with it every new connection) the numbering learned at start.
    """

    endpoint: Endpoint
    real: bytes | None
    family: int | None = None
    present: bytes | None
    keeper: CookieKeeper | None = None
    untrusted: UntrustedCookie | None = None
    trusted_owners: Collection[int] | None = None
    hidden: ExtensionWatch | Hidden | None = None

    def check(self, sock: socket.socket) -> str | None:
        """Return why a new relay connection to the display must not be used, or None."""
        if self.keeper is not None:
            problem = self.keeper.problem()
            if problem is not None:
                return problem
        return ownership_problem(sock, self.endpoint, self.trusted_owners)


@attrs.frozen(kw_only=True)
class HostSide:
    """
    How to reach the display: the authority file and the timeouts.

    Attributes:
        authority: The authority file's path as libXau picks it (``""`` for none).
        connect_timeout: Seconds each exchange with the X server may take.
        untrusted_timeout: Seconds an untrusted cookie outlives this process.
        trusted_owners: Who may own the endpoint (None: root and the current user).
    """

    authority: str
    connect_timeout: float
    untrusted_timeout: int
    trusted_owners: Collection[int] | None

    def open(
        self, connection: DisplayConnection, *, untrusted: bool, cleanup: Cleanup
    ) -> Upstream:
        """
        Prove the display on `connection` (which this takes over) and say what to present.

        Raises:
            DisplayAuthorizationError: The server refused the cookie (or its absence).
            SecurityExtensionError: ``untrusted`` and the server cannot issue a cookie.
            DisplayError: The server did not complete a setup.
        """
        if not untrusted:
            try:
                entry = self._real_cookie(connection)
                real = entry.data if entry is not None else None
                hidden = self._check(connection, real)
            except BaseException:
                connection.close()
                raise
            # The connection that learned the extensions stays open: when the server restarts
            # it ends, and the next client waits until they are learned again.
            watch = ExtensionWatch(
                self, endpoint=connection.endpoint, present=real, sock=connection.socket
            )
            watch.learned = hidden
            cleanup.add("closing the connection that watches the X server", watch.close)
            return Upstream(
                endpoint=connection.endpoint,
                real=real,
                family=entry.family if entry is not None else None,
                present=real,
                trusted_owners=self.trusted_owners,
                hidden=watch,
            )
        try:
            entry = self._real_cookie(connection)
            real = entry.data if entry is not None else None
        except BaseException:
            connection.close()
            raise
        cookie, keeper, hidden = self._untrusted_cookie(connection, real, cleanup)
        return Upstream(
            endpoint=connection.endpoint,
            real=real,
            family=entry.family if entry is not None else None,
            present=cookie.data,
            keeper=keeper,
            untrusted=cookie,
            trusted_owners=self.trusted_owners,
            hidden=hidden,
        )

    def _real_cookie(self, connection: DisplayConnection) -> XauthEntry | None:
        """Return the MIT cookie's entry a client would send on `connection`, or None."""
        entries = Xauthority.load(self.authority)
        entry = entries.for_connection(connection.socket, connection.name.number)
        if entry is None:
            logger.info(
                "no MIT-MAGIC-COOKIE-1 for display %s in %s; the X server must accept clients "
                "without one (xhost, SI:localuser or no access control)",
                connection.name,
                self.authority or "any authority file (XAUTHORITY is empty)",
            )
            return None
        return entry

    def _refused(
        self, connection: DisplayConnection, real: bytes | None, reason: str
    ) -> DisplayAuthorizationError:
        where = self.authority or "no authority file (XAUTHORITY is empty)"
        if real is None:
            what = (
                "a connection without a cookie (there is no entry for display "
                f"{connection.name} in {where})"
            )
            hint: tuple[str | Mention, ...] = (
                "add one (xauth add), or point XAUTHORITY / ",
                Mention("xauthority"),
                " at the right file",
            )
        else:
            what = f"the cookie for display {connection.name} from {where}"
            hint = (
                "the file holds a stale cookie: log in again, or point ",
                Mention("xauthority"),
                " at the file your X server uses",
            )
        return DisplayAuthorizationError(
            f"the X server at {connection.endpoint} refused {what}: "
            f"{reason.strip() or 'no reason given'}",
            option="xauthority",
            value=self.authority,
            hint=hint,
        )

    def _check(self, connection: DisplayConnection, real: bytes | None) -> Hidden:
        """Prove the cookie the relay will present; learn the opcodes of the hidden extensions."""
        try:
            reply = handshake(
                connection.socket,
                MIT_MAGIC_COOKIE_1 if real else b"",
                real or b"",
                timeout=self.connect_timeout,
            )
            if reply.status is SetupStatus.SUCCESS:
                found = learn_extensions(connection.socket, timeout=self.connect_timeout)
        except X11SetupError as e:
            raise DisplayError(f"the X display at {connection.endpoint}: {e}") from e
        if reply.status is not SetupStatus.SUCCESS:
            raise self._refused(connection, real, reply.reason)
        if real is None:
            logger.info("the X display %s admits clients without a cookie", connection.name)
        return found.hidden()

    def learn(self, endpoint: Endpoint, present: bytes | None) -> tuple[socket.socket, Hidden]:
        """
        Connect to `endpoint` again, check its owner, and learn its extensions.

        Returns:
            The connection (open, to watch) and what the relay keeps from clients.

        Raises:
            DisplayError: The display cannot be reached, is owned by someone else, refused
                the cookie, or did not answer.
        """
        try:
            sock = endpoint.connect(self.connect_timeout)
        except OSError as e:
            raise DisplayError(f"cannot reach the X display at {endpoint}: {e}") from e
        try:
            problem = ownership_problem(sock, endpoint, self.trusted_owners)
            reply = None
            if problem is None:
                reply = handshake(
                    sock,
                    MIT_MAGIC_COOKIE_1 if present else b"",
                    present or b"",
                    timeout=self.connect_timeout,
                )
                if reply.status is SetupStatus.SUCCESS:
                    hidden = learn_extensions(sock, timeout=self.connect_timeout).hidden()
                    return sock, hidden
        except X11SetupError as e:
            sock.close()
            raise DisplayError(f"the X display at {endpoint}: {e}") from e
        except BaseException:
            sock.close()
            raise
        sock.close()
        if reply is None:
            raise DisplayOwnerError(problem or "")
        raise DisplayError(
            f"the X server at {endpoint} refused the cookie it accepted at start: "
            f"{reply.reason.strip() or 'no reason given'}"
        )

    def _untrusted_cookie(
        self, connection: DisplayConnection, real: bytes | None, cleanup: Cleanup
    ) -> tuple[UntrustedCookie, CookieKeeper, Hidden]:
        where = str(connection.endpoint)
        try:
            display = open_display(
                connection.socket,
                MIT_MAGIC_COOKIE_1 if real else b"",
                real or b"",
                number=connection.name.number,
                timeout=self.connect_timeout,
                what=f"the connection to the X display at {where}",
            )
        except SetupRefusedError as e:
            raise self._refused(connection, real, e.reason) from None
        except X11SetupError as e:
            raise SecurityExtensionError(str(e)) from None
        client = SecurityClient(display, timeout=self.connect_timeout, where=where)
        cleanup.add("closing the SECURITY connection", client.close)
        trusted_names = [name.encode() for name in display.list_extensions()]
        cookie = client.generate(timeout=self.untrusted_timeout)

        def revoke() -> None:
            client.revoke(cookie)

        cleanup.add("revoking the untrusted cookie", revoke)
        keeper, found = self._keep(connection.endpoint, cookie.data)
        cleanup.add("closing the connection that holds the untrusted cookie", keeper.close)
        refused = {
            name: "the X server refuses it to untrusted clients (--auth untrusted; a client "
            "that needs it wants --auth substitute)"
            for name in trusted_names
            if name not in found.majors and name not in HIDDEN_EXTENSIONS
        }
        return cookie, keeper, found.hidden(refused)

    def _keep(self, endpoint: Endpoint, cookie: bytes) -> tuple[CookieKeeper, ServerExtensions]:
        """
        Open the connection that keeps the untrusted cookie alive while we run.

        It also learns the extensions the server offers untrusted clients.
        """
        try:
            sock = endpoint.connect(self.connect_timeout)
        except OSError as e:
            raise SecurityExtensionError(
                f"the X display at {endpoint} stopped answering: {e}"
            ) from e
        try:
            self._present_untrusted(sock, endpoint, cookie)
            found = learn_extensions(sock, timeout=self.connect_timeout)
        except X11SetupError as e:
            sock.close()
            raise SecurityExtensionError(f"the X display at {endpoint}: {e}") from e
        except BaseException:
            sock.close()
            raise
        return CookieKeeper(sock), found

    def _present_untrusted(self, sock: socket.socket, endpoint: Endpoint, cookie: bytes) -> None:
        """Check the keeper's endpoint and make its setup with the untrusted cookie."""
        problem = ownership_problem(sock, endpoint, self.trusted_owners)
        if problem is not None:
            raise DisplayOwnerError(problem)
        try:
            reply = handshake(sock, MIT_MAGIC_COOKIE_1, cookie, timeout=self.connect_timeout)
        except X11SetupError as e:
            raise SecurityExtensionError(f"the X display at {endpoint}: {e}") from e
        if reply.status is not SetupStatus.SUCCESS:
            raise SecurityExtensionError(
                f"the X server at {endpoint} refused the untrusted cookie it had just "
                f"issued: {reply.reason.strip() or 'no reason given'}"
            )


class ExtensionWatch:
    """
    The extensions of the X server generation the relay's connections reach.

    Extension major opcodes are numbered when the server starts: a server restarted on the same
    display with other extensions numbers them differently, and a relay that kept the old
    numbers would let a client use a hidden extension under a major it believes is another
    (issue 17). The connection that learned them stays open: the server closes it when it
    exits or resets. :meth:`current` tells, in one system call, whether the numbers still hold;
    when they do not, :meth:`relearn` (blocking, so the relay runs it off its event loop)
    connects again and learns the new server's, and every client waits for that. The relay
    calls :meth:`current` after its own connection for the client is up: a new server accepts
    connections only after the old one closed all of its, so a relayed connection to a new
    server always finds the watch ended.
    """

    def __init__(
        self, host: HostSide, *, endpoint: Endpoint, present: bytes | None, sock: socket.socket
    ) -> None:
        self._host = host
        self._endpoint = endpoint
        self._present = present
        self._sock: socket.socket | None = sock
        self._lock = threading.Lock()
        self._closed = False
        #: What the relay keeps from clients of the server the watch is connected to.
        self.learned: Hidden | None = None
        #: How many times the extensions were learned again after the server went away.
        self.relearned = 0

    def current(self) -> Hidden | None:
        """Return the extensions of the server the relay reaches, or None if it went away."""
        sock = self._sock
        learned = self.learned
        if sock is None or learned is None:
            return None
        try:
            return learned if still_open(sock) else None
        except OSError:
            return None

    def relearn(self) -> Hidden | str:
        """Learn the extensions of the server now at the endpoint; return why not if it fails."""
        with self._lock:
            learned = self.current()
            if learned is not None:
                return learned
            if self._closed:
                return "the relay is closing"
            old, self._sock, self.learned = self._sock, None, None
            if old is not None:
                old.close()
            try:
                sock, learned = self._host.learn(self._endpoint, self._present)
            except DisplayError as e:
                logger.warning("cannot learn the extensions of the restarted X display: %s", e)
                return (
                    "the X display restarted and x11passthrough could not learn its "
                    f"extensions: {e}"
                )
            if self._closed:
                sock.close()
                return "the relay is closing"
            self._sock, self.learned = sock, learned
            self.relearned += 1
            logger.info(
                "the X display at %s went away and came back: extensions learned again",
                self._endpoint,
            )
            return learned

    def close(self) -> None:
        """Close the watching connection."""
        with self._lock:
            self._closed = True
            if self._sock is not None:
                self._sock.close()
                self._sock = None
