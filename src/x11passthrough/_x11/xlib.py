"""
python-xlib as our X client, on a socket and cookie of our choosing, with deadlines.

python-xlib is the library's X client wherever it acts as one beyond the connection setup:
the SECURITY extension, the display queries of ``doctor``, screenshots. Two measured limits
of python-xlib 0.33 shape this module:

* ``Xlib.display.Display`` finds its own socket (``/tmp/.X11-unix/XN``, else TCP) and its own
  cookie (``$XAUTHORITY``, FamilyLocal by host name only: no FamilyWild, no IPv6). We must
  talk to the endpoint whose owner we verified, with the cookie libXau's rules pick. Its
  protocol ``Display.__init__`` looks both up through ``Xlib.support.connect.get_socket`` and
  ``get_auth`` at call time, so :func:`open_display` installs (once) wrappers of those two
  that hand over our socket and cookie to the calling thread only, and defer to python-xlib
  everywhere else. Other users of python-xlib in the process see no change.
* python-xlib keeps its extension tables (``extension_major_opcodes``, ``event_classes``,
  ``error_classes``) on the ``Display`` class, shared by every display in the process: a
  second server with other extension opcodes corrupts them (``TypeError: 'type' object
  does not support item assignment``, seen with two Xvfb servers, one without SECURITY).
  Displays opened here get tables of their own.
* python-xlib's RANDR module registers its errors at codes 0 to 2 on servers whose RANDR
  reports no error base (Xvfb 21.1.7), shadowing core BadRequest and BadValue: such an error
  then raises ``AttributeError`` inside python-xlib. Displays opened here get the core error
  classes back after the extensions are set up.
* python-xlib has no timeouts: a server that accepts and never answers blocks it forever.
  :func:`deadline` bounds a call by shutting the socket down from a timer, which makes the
  blocked read return and python-xlib raise.
"""

from __future__ import annotations

import contextlib
import socket
import threading

from collections.abc import Iterator
from typing import Any

import Xlib.display
import Xlib.error
import Xlib.protocol.display
import Xlib.protocol.event
import Xlib.support.connect

from ..exceptions import X11SetupError


class SetupRefusedError(X11SetupError):
    """The server answered the connection setup with Failed; `reason` is its text."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


_override = threading.local()
_install_lock = threading.Lock()
_installed = False


def _install() -> None:
    global _installed  # noqa: PLW0603 - installed once per process, on first use
    with _install_lock:
        if _installed:
            return
        connect: Any = Xlib.support.connect
        original_socket = connect.get_socket
        original_auth = connect.get_auth

        def get_socket(dname: str, protocol: str | None, host: str, dno: int) -> object:
            given = getattr(_override, "value", None)
            if given is None:
                return original_socket(dname, protocol, host, dno)
            return given[0]

        def get_auth(
            sock: object, dname: str, protocol: str | None, host: str, dno: int
        ) -> tuple[bytes, bytes]:
            given = getattr(_override, "value", None)
            if given is None:
                result: tuple[bytes, bytes] = original_auth(sock, dname, protocol, host, dno)
                return result
            return given[1], given[2]

        protocol: Any = Xlib.protocol.display.Display
        original_init = protocol.__init__

        def init(self: Any, *args: object, **kwargs: object) -> None:
            if getattr(_override, "value", None) is not None:
                self.extension_major_opcodes = {}
                self.error_classes = Xlib.error.xerror_class.copy()
                self.event_classes = Xlib.protocol.event.event_class.copy()
            original_init(self, *args, **kwargs)

        connect.get_socket = get_socket
        connect.get_auth = get_auth
        protocol.__init__ = init
        _installed = True


@contextlib.contextmanager
def deadline(sock: socket.socket, seconds: float, what: str) -> Iterator[None]:
    """
    Bound the python-xlib calls inside the block to `seconds` on `sock`.

    When the time runs out the socket is shut down, the blocked call fails, and the block
    raises :class:`X11SetupError` naming `what`.
    """
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
    try:
        yield
    except (Xlib.error.ConnectionClosedError, OSError) as e:
        if expired.is_set():
            raise X11SetupError(f"{what}: the X server did not answer within {seconds:g} s") from e
        raise
    finally:
        timer.cancel()


def open_display(
    sock: socket.socket,
    auth_name: bytes,
    auth_data: bytes,
    *,
    number: int,
    timeout: float,
    what: str,
) -> Xlib.display.Display:
    """
    Make python-xlib's connection setup on `sock`, presenting `auth_name`/`auth_data`.

    Args:
        sock: A connected socket on which no X11 byte was sent yet; the display owns it
            (on failure it is closed).
        auth_name: The authorization protocol name, empty for none.
        auth_data: The cookie, empty for none.
        number: The display number (python-xlib only shows it in its display name).
        timeout: Seconds the setup may take.
        what: Which connection this is, for messages.

    Returns:
        The open display.

    Raises:
        SetupRefusedError: The server refused the connection (the message quotes its reason).
        X11SetupError: The server closed the connection or did not answer within `timeout`.
    """
    _install()
    sock.settimeout(None)
    _override.value = (sock, auth_name, auth_data)
    try:
        with deadline(sock, timeout, what):
            display = Xlib.display.Display(f":{number}")
    except Xlib.error.DisplayConnectionError as e:
        sock.close()
        reason = (e.msg.decode("latin-1") if isinstance(e.msg, bytes) else str(e.msg)).strip()
        raise SetupRefusedError(
            f"{what}: the X server refused the connection: {reason or 'no reason given'}",
            reason,
        ) from None
    except (Xlib.error.ConnectionClosedError, OSError) as e:
        sock.close()
        raise X11SetupError(f"{what}: the X server closed the connection ({e})") from e
    except BaseException:
        sock.close()
        raise
    finally:
        _override.value = None
    display.display.error_classes.update(Xlib.error.xerror_class)
    return display
