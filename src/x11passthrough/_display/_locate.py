"""
Locating: the endpoints a display may listen on, and a connection to the first that answers.

:meth:`x11passthrough.display.DisplayLocator.locate` and
:meth:`~x11passthrough.display.DisplayLocator.connect` are the public doors.
"""

from __future__ import annotations

import logging
import os
import socket

from collections.abc import Collection
from types import TracebackType

import attrs

from .._reasons import why
from ..exceptions import DisplayNotFoundError, DisplayOwnerError, Mention
from ._endpoint import Endpoint
from ._name import _TRAILING_SCREEN_RE, DisplayName
from ._owner import ownership_problem
from ._reserve import ServerPlaces


logger = logging.getLogger("x11passthrough")


@attrs.define(kw_only=True, eq=False)
class DisplayConnection:
    """
    An open connection to a live X server, before any X11 byte was sent.

    What :meth:`~x11passthrough.display.DisplayLocator.connect` returns: the caller can look up
    the cookie for this very connection (:meth:`x11passthrough.xauth.Xauthority.for_connection`)
    and then speak X11 on it, so one connection serves both. Use it as a context manager, or
    call :meth:`close`.

    Attributes:
        name: The display that was located.
        endpoint: Where the server answered.
        socket: The connected, blocking socket; :meth:`close` closes it.
    """

    name: DisplayName
    endpoint: Endpoint
    socket: socket.socket

    def close(self) -> None:
        """Close the socket. Calling it again does nothing."""
        self.socket.close()

    def __enter__(self) -> DisplayConnection:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def candidates(name: DisplayName, places: ServerPlaces) -> tuple[Endpoint, ...]:
    """Return the endpoints to try for `name`, in order (see ``DisplayLocator.candidates``)."""
    if name.path is not None:
        full = str(name)
        stripped = _TRAILING_SCREEN_RE.fullmatch(full)
        if stripped is not None and not os.path.lexists(full):
            return (Endpoint.unix(stripped["path"]),)
        return (Endpoint.unix(full),)
    if name.host is not None and not name.is_local:
        return (Endpoint.tcp(name.host, name.tcp_port),)
    path = places.socket_path(name.number)
    found = [Endpoint.unix(path)]
    if places.abstract:
        found.append(Endpoint.abstract(path))
    if name.protocol is None and name.host is None:
        # As libxcb: TCP only as the last resort, because anyone may listen there first.
        found.append(Endpoint.tcp("localhost", name.tcp_port))
    return tuple(found)


def connect(
    name: DisplayName, places: ServerPlaces, trusted: Collection[int] | None = None
) -> DisplayConnection:
    """
    Connect to the first candidate of `name` that accepts and belongs to a `trusted` uid.

    Raises:
        DisplayOwnerError: Only endpoints owned by other users answer.
        DisplayNotFoundError: Nothing answers; the message lists every endpoint tried.
    """
    failures: list[str] = []
    foreign: list[str] = []
    for endpoint in candidates(name, places):
        try:
            sock = endpoint.connect(places.timeout)
        except OSError as e:
            reason = why(e, places.timeout)
            logger.debug("display %s: %s: %s", name, endpoint, reason)
            failures.append(f"{endpoint}: {reason}")
            continue
        problem = ownership_problem(sock, endpoint, trusted)
        if problem is not None:
            sock.close()
            logger.warning("display %s: %s", name, problem)
            foreign.append(problem)
            failures.append(f"{endpoint}: refused, {problem}")
            continue
        logger.debug("display %s answers on %s", name, endpoint)
        return DisplayConnection(name=name, endpoint=endpoint, socket=sock)
    if foreign:
        tried = "".join(f"\n  {f}" for f in failures)
        raise DisplayOwnerError(
            f"no X server of yours answers for display {str(name)!r}; tried:{tried}\n"
            "If that user's X server is meant to be shared with you, pass ",
            Mention("trusted_owners"),
            option="trusted_owners",
        )
    hint = "is the X server running, and is DISPLAY right?"
    if not name.is_local:
        hint += (
            " A TCP display needs a server that listens on TCP (X.Org >= 1.17 only does so"
            " with -listen tcp) or an SSH connection with X11 forwarding (ssh -X)."
        )
    tried = "".join(f"\n  {f}" for f in failures)
    raise DisplayNotFoundError(
        f"no X server answers for display {str(name)!r}; tried:{tried}\n{hint}"
    )
