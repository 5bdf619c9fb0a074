"""
Why a socket operation failed, in a few lower-case words: one wording for every message.

The display locator (finding an endpoint), the reservation of display numbers and the relay
(reaching the display, a client's or the display's connection failing, ``accept``) all say
why with :func:`why`, so the same errno reads the same in a log line, an exception and an
X11 "Failed" reply. A module of its own at the package's top, importing nothing of the
package: ``_display`` and ``_relay`` both sit at the bottom of the layering and neither
imports the other at run time, so the helper could live in neither.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket


#: The errnos a connect or a socket operation commonly fails with, said for a user.
_REASONS = {
    errno.ECONNREFUSED: "connection refused (nothing listens there)",
    errno.ENOENT: "no such file or directory",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EAGAIN: "the server's listen queue is full (server busy or hung)",
    errno.ENOTSOCK: "not a socket",
    errno.ENETUNREACH: "network unreachable",
    errno.EHOSTUNREACH: "host unreachable",
}


def why(exc: BaseException, timeout: float = 0.0) -> str:
    """
    Return a short, lower-case reason for a failed connect or socket operation.

    Args:
        exc: What the operation raised (an ``OSError``, or asyncio's timeout).
        timeout: The seconds the operation was given, named when it timed out.

    Returns:
        The reason, e.g. ``"connection refused (nothing listens there)"`` or
        ``"no answer within 5 s"``.
    """
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host name ({exc.strerror or exc})"
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return f"no answer within {timeout:g} s"
    text = str(exc) or type(exc).__name__
    if isinstance(exc, OSError) and exc.errno:
        if exc.errno in _REASONS:
            return _REASONS[exc.errno]
        # asyncio replaces strerror with its own words ("Connect call failed ..."): the
        # errno's own are shorter and the same everywhere.
        text = os.strerror(exc.errno)
    return text[:1].lower() + text[1:]
