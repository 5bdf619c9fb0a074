"""The X SECURITY extension through python-xlib: issue and revoke untrusted cookies."""

from __future__ import annotations

import logging
import socket

from collections.abc import Callable
from typing import Any, TypeVar

import attrs
import Xlib.display
import Xlib.error
import Xlib.ext.security

from ..exceptions import Mention, SecurityExtensionError, X11SetupError
from .wire import MIT_MAGIC_COOKIE_1, secret_repr
from .xlib import deadline


logger = logging.getLogger("x11passthrough")

_T = TypeVar("_T")


@attrs.frozen
class UntrustedCookie:
    """An MIT-MAGIC-COOKIE-1 the X server issued for untrusted clients."""

    authid: int
    data: bytes = attrs.field(repr=secret_repr)


class SecurityClient:
    """
    A trusted connection to the X server that issues untrusted cookies and revokes them.

    Keep it open for as long as the cookies it issued are in use; closing it
    does not revoke them, :meth:`revoke` does.

    Args:
        display: An open python-xlib display (see :func:`.xlib.open_display`); the client owns
            it from now on.
        timeout: Seconds each exchange with the server may take.
        where: The endpoint, for messages.

    Raises:
        SecurityExtensionError: The server lacks the SECURITY extension (the display is
            closed).
    """

    def __init__(self, display: Xlib.display.Display, *, timeout: float, where: str) -> None:
        self._where = where
        self._timeout = timeout
        self._display = display
        self._sock: socket.socket = display.display.socket
        self._errors: list[Any] = []
        # python-xlib prints errors of requests without a reply; keep them for _call.
        display.set_error_handler(lambda error, request: self._errors.append(error))
        if "SECURITY" not in display.extensions:
            self.close()
            raise SecurityExtensionError(
                f"the X server at {where} lacks the SECURITY extension, so it cannot "
                "issue untrusted cookies",
                option="auth",
                value="untrusted",
                hint=("use ", Mention("auth", "substitute"), " instead"),
            )

    def close(self) -> None:
        """Close the connection (idempotent)."""
        try:
            self._display.close()
        except (Xlib.error.ConnectionClosedError, OSError):
            self._sock.close()

    def generate(self, *, timeout: int) -> UntrustedCookie:
        """
        Ask the server for a new untrusted MIT-MAGIC-COOKIE-1.

        Args:
            timeout: Seconds the server keeps the cookie after its last client disconnected
                (0: until revoked).

        Raises:
            SecurityExtensionError: The server refused or did not answer.
        """
        reply: Any = self._call(
            lambda: self._display.security_generate_authorization(
                MIT_MAGIC_COOKIE_1,
                timeout=timeout,
                trust_level=Xlib.ext.security.SecurityClientUntrusted,
            ),
            "SecurityGenerateAuthorization",
        )
        data = bytes(reply.auth_data_return)
        if not data:
            raise SecurityExtensionError(
                f"the X server at {self._where} sent an empty untrusted cookie"
            )
        return UntrustedCookie(int(reply.authid), data)

    def revoke(self, cookie: UntrustedCookie) -> None:
        """
        Revoke a cookie: clients using it are disconnected and no new one can use it.

        Raises:
            SecurityExtensionError: The server reported an error or did not answer.
        """

        def revoke() -> None:
            self._display.security_revoke_authorization(cookie.authid)
            # A round trip makes sure the server processed it (and reports an error if any).
            self._display.sync()

        self._call(revoke, "SecurityRevokeAuthorization")

    def _call(self, request: Callable[[], _T], name: str) -> _T:
        self._errors.clear()
        try:
            with deadline(self._sock, self._timeout, f"{name} to {self._where}"):
                result = request()
            if self._errors:
                raise self._errors[0]
        except Xlib.error.XError as e:
            raise SecurityExtensionError(
                f"the X server at {self._where} answered {name} with an X error: {e}"
            ) from None
        except (Xlib.error.ConnectionClosedError, OSError, X11SetupError) as e:
            raise SecurityExtensionError(
                f"lost the connection to the X server at {self._where} during {name}: {e}"
            ) from None
        return result
