"""
Exceptions raised by x11passthrough.

Every error the library raises on purpose derives from :class:`X11PassthroughError`, so
``except X11PassthroughError`` catches them all. Each class also derives from the builtin that
fits it best, so code that already catches ``ValueError`` or ``OSError`` keeps working.
"""

from __future__ import annotations


__all__ = [
    "BindError",
    "ConfigurationError",
    "DisplayAuthorizationError",
    "DisplayError",
    "DisplayNameError",
    "DisplayNotFoundError",
    "DisplayOwnerError",
    "NoFreeDisplayError",
    "RelayError",
    "SecurityExtensionError",
    "X11PassthroughError",
    "X11SetupError",
    "XauthorityError",
    "XauthorityLockError",
    "XvfbError",
]


class X11PassthroughError(Exception):
    """Base class of every error raised by x11passthrough."""


class ConfigurationError(X11PassthroughError, ValueError):
    """An option passed to x11passthrough is invalid; the message names it and a valid form."""


class XauthorityError(X11PassthroughError, ValueError):
    """An Xauthority file is malformed, unreadable or cannot be written."""


class XauthorityLockError(XauthorityError, TimeoutError):
    """The lock on an Xauthority file could not be taken in time (libXau lock protocol)."""


class DisplayError(X11PassthroughError, ValueError):
    """A display name is invalid, or the display cannot be used."""


class DisplayNameError(DisplayError):
    """A ``DISPLAY`` value cannot be parsed."""


class DisplayNotFoundError(DisplayError, LookupError):
    """No live X server answers for a display; the message lists every place tried."""


class DisplayOwnerError(DisplayError, PermissionError):
    """
    The display's endpoint belongs to another user, so no cookie is sent there.

    Raised when every place the display could listen on is missing or owned by a uid other
    than root and the current user (a squatter on ``127.0.0.1:6000+N`` or on the abstract
    socket). The message names the endpoint and its owner.
    """


class DisplayAuthorizationError(DisplayError, PermissionError):
    """
    The X server refused the connection the relay would make: wrong or missing cookie.

    Raised at start, before any container runs; the message quotes the server's reason and
    names the authority file that was read.
    """


class NoFreeDisplayError(DisplayError):
    """No display number in the requested range could be reserved."""


class BindError(X11PassthroughError, OSError):
    """The relay's listening socket cannot be bound on the requested address."""

    def __str__(self) -> str:
        """Return the message without OSError's ``[Errno N]`` prefix (``errno`` keeps it)."""
        return str(self.strerror) if self.strerror is not None else super().__str__()


class RelayError(X11PassthroughError, RuntimeError):
    """The relay cannot start, or failed while running."""


class X11SetupError(X11PassthroughError, ValueError):
    """An X11 connection-setup message is malformed or not acceptable."""


class SecurityExtensionError(X11PassthroughError, RuntimeError):
    """The X server cannot issue an untrusted cookie (no SECURITY extension, or it refused)."""


class XvfbError(X11PassthroughError, RuntimeError):
    """A private Xvfb cannot start: the program is missing, exited, or did not answer."""
