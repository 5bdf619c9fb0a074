"""
Display names: parse every ``DISPLAY`` form into a frozen :class:`DisplayName`.

Import :class:`DisplayName` from :mod:`x11passthrough.display`.
"""

from __future__ import annotations

import ipaddress
import os
import re

from collections.abc import Mapping

import attrs

from .._validate import MAX_DISPLAY_NUMBER, shown
from ..exceptions import DisplayError, DisplayNameError


#: Display N listens on TCP port ``X_TCP_PORT + N`` (X protocol spec).
X_TCP_PORT = 6000
#: The highest screen number :meth:`DisplayName.parse` accepts.
MAX_SCREEN_NUMBER = 65535
#: Longest ``DISPLAY`` value :meth:`DisplayName.parse` accepts, in characters.
MAX_DISPLAY_NAME_LENGTH = 1024

_TCP_PROTOCOLS = frozenset({"tcp", "inet", "inet6"})
_LOCAL_PROTOCOLS = frozenset({"unix", "local"})
_PROTOCOLS = _TCP_PROTOCOLS | _LOCAL_PROTOCOLS
_VALID_FORMS = (
    "a valid DISPLAY looks like ':0', ':0.1', 'localhost:10.0', 'myhost.example:3', "
    "'tcp/myhost:0', 'unix/:0', '[::1]:0', or a socket path such as "
    "'/private/tmp/com.apple.launchd.AbC/org.xquartz:0'"
)
_HOSTNAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_SCOPE_RE = re.compile(r"[A-Za-z0-9_.-]+")
_TAIL_RE = re.compile(r"(?P<number>[0-9]+)(?:\.(?P<screen>[0-9]+))?")
_BRACKET_RE = re.compile(r"\[(?P<host>[^\]]*)\]:(?P<tail>.*)", re.DOTALL)
_PATH_RE = re.compile(r"(?P<path>.*:(?P<number>[0-9]+))(?:\.(?P<screen>[0-9]+))?", re.DOTALL)
_PATH_NUMBER_RE = re.compile(r".*:(?P<number>[0-9]+)", re.DOTALL)
_TRAILING_SCREEN_RE = re.compile(r"(?P<path>.*)\.[0-9]+", re.DOTALL)


def _name_error(text: str, why: str) -> DisplayNameError:
    return DisplayNameError(f"invalid display name {shown(text)}: {why}; {_VALID_FORMS}")


def _is_ipv6(host: str) -> bool:
    address, _, scope = host.partition("%")
    if "%" in host and not _SCOPE_RE.fullmatch(scope):
        return False
    try:
        ipaddress.IPv6Address(address)
    except ValueError:
        return False
    return True


def _host_problem(host: str) -> str | None:
    """Return why `host` is not a host name or IP address, or None when it is one."""
    if ":" in host or "%" in host:
        if _is_ipv6(host):
            return None
        if host.endswith(":"):
            return "DECnet display names (host::N) are not supported"
        return f"host {host!r} is not a valid IPv6 address"
    if not _HOSTNAME_RE.fullmatch(host):
        return f"host {host!r} is not a host name or IP address"
    return None


def _path_problem(path: str) -> str | None:
    if not path.startswith("/"):
        return f"socket path {path!r} is not absolute"
    if not path.isprintable():
        return "it contains control characters"
    return None


def _number_problem(what: str, value: object, maximum: int) -> str | None:
    if not isinstance(value, int) or isinstance(value, bool):
        return f"the {what} must be an int, not {type(value).__name__}"
    if not 0 <= value <= maximum:
        return f"the {what} must be between 0 and {maximum}, not {value}"
    return None


def _numbers_or_error(text: str, number_text: str, screen_text: str | None) -> tuple[int, int]:
    number, screen = int(number_text), int(screen_text or 0)
    problem = _number_problem("display number", number, MAX_DISPLAY_NUMBER)
    problem = problem or _number_problem("screen number", screen, MAX_SCREEN_NUMBER)
    if problem:
        raise _name_error(text, problem)
    return number, screen


def _protocol_and_host(
    text: str, prefix: str | None, host: str | None, *, bracketed: bool
) -> tuple[str | None, str | None]:
    """Return the protocol and host of ``[prefix/]host:N``, or raise DisplayNameError."""
    protocol = None
    if prefix is not None:
        if prefix in _PROTOCOLS:
            protocol = prefix
        elif host == "unix" and prefix and not bracketed:
            protocol, host = "unix", prefix  # xauth's HOST/unix:N
        else:
            known = ", ".join(sorted(_PROTOCOLS))
            raise _name_error(text, f"unknown protocol {prefix!r} (known: {known})")
    if host is not None and host != "unix":
        problem = _host_problem(host)
        if problem:
            raise _name_error(text, problem)
    if protocol in _TCP_PROTOCOLS and host in {None, "unix"}:
        raise _name_error(text, f"protocol {protocol!r} needs a host name")
    return protocol, host


@attrs.frozen(kw_only=True)
class DisplayName:
    """
    A parsed ``DISPLAY`` value.

    Build one with :meth:`parse`; ``str()`` gives the canonical text, which parses back to an
    equal value (``str(DisplayName.parse(":0.0")) == ":0"``).

    What the forms mean here:

    * ``:N`` (no host): the local display N. :meth:`DisplayLocator.locate` tries TCP
      ``localhost:6000+N``, then the UNIX socket, then the Linux abstract socket.
    * ``unix:N``, ``unix/:N``, ``local/:N`` and xauth's ``HOST/unix:N``: the local display N
      over a UNIX socket only. This is the meaning Xlib, xauth and python-xlib give
      ``unix:N``; note that libxcb >= 1.16 instead reads a value starting with ``unix:`` as a
      socket *path* (``unix:0`` is the file ``0`` in the current directory), so prefer
      ``:N`` or ``unix/:N`` in values you hand to clients. ``HOST/unix:N`` is stored as
      ``protocol="unix", host=HOST`` and printed as ``unix/HOST:N``.
    * ``HOST:N``, ``tcp/HOST:N``, ``inet/HOST:N``, ``inet6/HOST:N``: TCP to HOST, port 6000+N.
      This includes ``localhost:N`` and ``127.0.0.1:N``: a TCP display on this machine, which
      is what SSH X11 forwarding creates. ``inet`` and ``inet6`` are kept as given but do not
      restrict the address family.
    * IPv6 hosts are written ``[::1]:0`` (canonical) or ``::1:0`` (the host is everything
      before the last colon, as in libxcb).
    * A value starting with ``/`` (or ``unix:/``) is a socket path, as XQuartz sets it:
      ``/private/tmp/com.apple.launchd.AbC/org.xquartz:0``. The number after the last colon
      is the display number (0 without one); a ``.S`` after it is the screen and is not part
      of :attr:`path`.

    Attributes:
        protocol: ``None``, ``"tcp"``, ``"inet"``, ``"inet6"``, ``"unix"`` or ``"local"``.
            Socket-path displays have ``"unix"``.
        host: The host name or address without brackets, ``"unix"`` for ``unix:N``, or
            ``None`` when the value has no host (``:N``, ``unix/:N``, socket paths).
        number: The display number, 0 to :data:`~x11passthrough.display.MAX_DISPLAY_NUMBER`.
        screen: The screen number (0 when not given).
        path: For socket-path displays: the socket path without the ``.screen`` suffix;
            otherwise ``None``.

    Raises:
        DisplayNameError: When constructed directly with fields that no ``DISPLAY`` value
            could produce (for example a TCP protocol without a host).
    """

    protocol: str | None = None
    host: str | None = None
    number: int
    screen: int = 0
    path: str | None = None

    def __attrs_post_init__(self) -> None:
        problem = self._problem()
        if problem is not None:
            raise DisplayNameError(f"invalid display name fields {self!r}: {problem}")

    def _problem(self) -> str | None:  # noqa: PLR0911 - one return per rule
        problem = _number_problem("display number", self.number, MAX_DISPLAY_NUMBER)
        problem = problem or _number_problem("screen number", self.screen, MAX_SCREEN_NUMBER)
        if problem:
            return problem
        if self.protocol is not None and self.protocol not in _PROTOCOLS:
            return f"protocol {self.protocol!r} is not one of {', '.join(sorted(_PROTOCOLS))}"
        if self.path is not None:
            if self.protocol != "unix" or self.host is not None:
                return "a socket-path display has protocol 'unix' and no host"
            problem = _path_problem(self.path)
            if problem:
                return problem
            match = _PATH_NUMBER_RE.fullmatch(self.path)
            if self.number != (int(match["number"]) if match else 0):
                return "the display number must be the number after the path's last colon"
            if self.screen and not match:
                return "a screen needs a socket path ending in ':N'"
            full = _PATH_RE.fullmatch(self.path)
            if full is not None and full["screen"] is not None:
                return "the path must not end in ':N.S' (the .S is the screen)"
            return None
        if self.host is not None:
            problem = _host_problem(self.host) if self.host != "unix" else None
            if problem:
                return problem
        if self.protocol in _TCP_PROTOCOLS and self.host in {None, "unix"}:
            return f"protocol {self.protocol!r} needs a host, e.g. {self.protocol}/localhost:0"
        return None

    @classmethod
    def parse(cls, text: str) -> DisplayName:
        """
        Parse a ``DISPLAY`` value.

        Args:
            text: The value, e.g. ``":0"``, ``"localhost:10.0"`` or ``"[::1]:0"``.

        Returns:
            The parsed display name.

        Raises:
            DisplayNameError: When `text` is not a display name. The message names the value
                and shows what a valid one looks like.
        """
        if not isinstance(text, str):
            raise DisplayNameError(
                f"invalid display name {text!r}: expected a str, not {type(text).__name__}; "
                f"{_VALID_FORMS}"
            )
        if not text:
            raise _name_error(text, "it is empty")
        if len(text) > MAX_DISPLAY_NAME_LENGTH:
            raise _name_error(text, f"it is longer than {MAX_DISPLAY_NAME_LENGTH} characters")
        if not text.isprintable():
            raise _name_error(text, "it contains control characters")
        if text.startswith("unix:/"):
            text = text[len("unix:") :]
        if text.startswith("/"):
            return cls._parse_path(text)
        return cls._parse_network(text)

    @classmethod
    def _parse_path(cls, text: str) -> DisplayName:
        match = _PATH_RE.fullmatch(text)
        if match is None:
            return cls(protocol="unix", number=0, path=text)
        number, screen = _numbers_or_error(text, match["number"], match["screen"])
        return cls(protocol="unix", number=number, screen=screen, path=match["path"])

    @classmethod
    def _parse_network(cls, text: str) -> DisplayName:
        prefix, slash, rest = text.rpartition("/")
        if ":" not in rest:
            raise _name_error(text, "it has no ':' before the display number")
        bracketed = _BRACKET_RE.fullmatch(rest)
        if bracketed is None and rest.startswith("["):
            raise _name_error(
                text,
                "an IPv6 address in brackets needs its closing ']' and then ':N', e.g. '[::1]:0'",
            )
        if bracketed is not None:
            hostpart, tail = bracketed["host"], bracketed["tail"]
            if not _is_ipv6(hostpart):
                raise _name_error(text, f"[{hostpart}] is not an IPv6 address")
        else:
            hostpart, _, tail = rest.rpartition(":")
        tail_match = _TAIL_RE.fullmatch(tail)
        if tail_match is None:
            why = "the display number is missing" if not tail else f"{tail!r} is not N or N.S"
            raise _name_error(text, why)
        number, screen = _numbers_or_error(text, tail_match["number"], tail_match["screen"])
        protocol, host = _protocol_and_host(
            text, prefix if slash else None, hostpart or None, bracketed=bracketed is not None
        )
        return cls(protocol=protocol, host=host, number=number, screen=screen)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> DisplayName:
        """
        Parse the ``DISPLAY`` environment variable.

        Args:
            environ: The environment to read; :data:`os.environ` when None.

        Returns:
            The parsed display name.

        Raises:
            DisplayError: When ``DISPLAY`` is unset or empty.
            DisplayNameError: When it is set to something that is not a display name.
        """
        value = (os.environ if environ is None else environ).get("DISPLAY")
        if not value:
            state = "not set" if value is None else "set but empty"
            raise DisplayError(
                f"DISPLAY is {state}, so there is no X display to use: run it from a desktop "
                "or over ssh -X, or name the display explicitly, e.g. ':0'"
            )
        return cls.parse(value)

    @property
    def is_local(self) -> bool:
        """
        True for a display reached through a socket on this machine, not through TCP.

        That is: no host (``:N``), host ``unix`` (``unix:N``), protocol ``unix``/``local``
        (``unix/:N``, ``HOST/unix:N``) or a socket path. ``localhost:N`` is *not* local in this
        sense: it is a TCP display on this machine (for example an SSH-forwarded one).
        """
        return self.host in {None, "unix"} or self.protocol in _LOCAL_PROTOCOLS

    @property
    def is_path(self) -> bool:
        """True for a socket-path display (``/private/tmp/.../org.xquartz:0``)."""
        return self.path is not None

    @property
    def tcp_port(self) -> int:
        """The TCP port of this display number, ``6000 + number``."""
        return X_TCP_PORT + self.number

    def __str__(self) -> str:
        screen = f".{self.screen}" if self.screen else ""
        if self.path is not None:
            return f"{self.path}{screen}"
        protocol = f"{self.protocol}/" if self.protocol else ""
        host = self.host or ""
        if ":" in host:
            host = f"[{host}]"
        return f"{protocol}{host}:{self.number}{screen}"
