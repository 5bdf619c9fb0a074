"""
The host side of a passthrough: the display, the cookie the relay presents, the upstream check.

Strictly private. One connection to the X server serves locating it, verifying its owner,
picking the cookie libxcb would send on it, and the one real X11 setup that proves the cookie
(or, in ``untrusted`` mode, python-xlib's trusted connection that asks for the untrusted cookie).
"""

from __future__ import annotations

import logging
import socket

from collections.abc import Collection

import attrs

from ._cleanup import Cleanup
from ._display._endpoint import Endpoint
from ._display._locate import DisplayConnection
from ._display._owner import ownership_problem
from ._x11.handshake import CookieKeeper, handshake, query_extensions
from ._x11.requests import BIG_REQUESTS, HIDDEN_EXTENSIONS, Hidden
from ._x11.security import SecurityClient, UntrustedCookie
from ._x11.wire import MIT_MAGIC_COOKIE_1, SetupStatus
from ._x11.xlib import SetupRefusedError, open_display
from ._xauth.authority import Xauthority
from .exceptions import (
    DisplayAuthorizationError,
    DisplayError,
    DisplayOwnerError,
    SecurityExtensionError,
    X11SetupError,
)


logger = logging.getLogger("x11passthrough")


@attrs.frozen(kw_only=True)
class Upstream:
    """
    The display the relay serves, and what it presents there. Strictly private.

    Attributes:
        endpoint: Where the X server listens (its owner checked).
        real: The user's cookie for the display, or None where the server needs none.
        present: What the relay presents to the server: `real`, or the untrusted cookie.
        keeper: In ``untrusted`` mode, the connection that holds the untrusted cookie.
        untrusted: In ``untrusted`` mode, the cookie (its id names it to the server).
        trusted_owners: Who may own the endpoint (None: root and the current user).
        hidden: The extensions the relay keeps from its clients, numbered by this server
            (None in ``untrusted`` mode: the server keeps them from untrusted clients).
    """

    endpoint: Endpoint
    real: bytes | None
    present: bytes | None
    keeper: CookieKeeper | None = None
    untrusted: UntrustedCookie | None = None
    trusted_owners: Collection[int] | None = None
    hidden: Hidden | None = None

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
    How to reach the display: the authority file and the timeouts. Strictly private.

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
            with connection:
                real = self._real_cookie(connection)
                hidden = self._check(connection, real)
            return Upstream(
                endpoint=connection.endpoint,
                real=real,
                present=real,
                trusted_owners=self.trusted_owners,
                hidden=hidden,
            )
        try:
            real = self._real_cookie(connection)
        except BaseException:
            connection.close()
            raise
        cookie, keeper = self._untrusted_cookie(connection, real, cleanup)
        return Upstream(
            endpoint=connection.endpoint,
            real=real,
            present=cookie.data,
            keeper=keeper,
            untrusted=cookie,
            trusted_owners=self.trusted_owners,
        )

    def _real_cookie(self, connection: DisplayConnection) -> bytes | None:
        """Return the MIT cookie a client would send on `connection`, or None."""
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
        return entry.data

    def _refused(
        self, connection: DisplayConnection, real: bytes | None, reason: str
    ) -> DisplayAuthorizationError:
        where = self.authority or "no authority file (XAUTHORITY is empty)"
        if real is None:
            what = (
                "a connection without a cookie (there is no entry for display "
                f"{connection.name} in {where})"
            )
            hint = "add one (xauth add), or point XAUTHORITY / xauthority=... at the right file"
        else:
            what = f"the cookie for display {connection.name} from {where}"
            hint = (
                "the file holds a stale cookie: log in again, or point xauthority=... at the "
                "file your X server uses"
            )
        return DisplayAuthorizationError(
            f"the X server at {connection.endpoint} refused {what}: "
            f"{reason.strip() or 'no reason given'}; {hint}"
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
                found = query_extensions(
                    connection.socket,
                    [*HIDDEN_EXTENSIONS, BIG_REQUESTS],
                    timeout=self.connect_timeout,
                )
        except X11SetupError as e:
            raise DisplayError(f"the X display at {connection.endpoint}: {e}") from e
        if reply.status is not SetupStatus.SUCCESS:
            raise self._refused(connection, real, reply.reason)
        if real is None:
            logger.info("the X display %s admits clients without a cookie", connection.name)
        majors = frozenset(m for n, m in found.items() if n in HIDDEN_EXTENSIONS and m is not None)
        return Hidden(
            names=frozenset(HIDDEN_EXTENSIONS),
            majors=majors,
            big_requests=found[BIG_REQUESTS],
        )

    def _untrusted_cookie(
        self, connection: DisplayConnection, real: bytes | None, cleanup: Cleanup
    ) -> tuple[UntrustedCookie, CookieKeeper]:
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
        cookie = client.generate(timeout=self.untrusted_timeout)

        def revoke() -> None:
            client.revoke(cookie)

        cleanup.add("revoking the untrusted cookie", revoke)
        keeper = self._keep(connection.endpoint, cookie.data)
        cleanup.add("closing the connection that holds the untrusted cookie", keeper.close)
        return cookie, keeper

    def _keep(self, endpoint: Endpoint, cookie: bytes) -> CookieKeeper:
        """Open the connection that keeps the untrusted cookie alive while we run."""
        try:
            sock = endpoint.connect(self.connect_timeout)
        except OSError as e:
            raise SecurityExtensionError(
                f"the X display at {endpoint} stopped answering: {e}"
            ) from e
        try:
            self._present_untrusted(sock, endpoint, cookie)
        except BaseException:
            sock.close()
            raise
        return CookieKeeper(sock)

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
