"""
Display names, endpoints and display-number reservations.

Strictly private: import the public names from :mod:`x11passthrough`.

Three jobs live here:

* :class:`DisplayName` parses a ``DISPLAY`` value (``:0``, ``localhost:10.0``, ``[::1]:0``,
  ``/private/tmp/com.apple.launchd.AbC/org.xquartz:0`` ...) into a frozen value.
* :class:`DisplayLocator.locate` finds the socket a live X server answers on:
  an :class:`Endpoint`.
* :class:`DisplayLocator.reserve` claims a free display number M for the relay by binding
  TCP port 6000+M, and hands back the listening sockets in a :class:`Reservation`.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import math
import os
import re
import socket
import sys

from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType
from typing import ClassVar, Literal

import attrs

from .exceptions import (
    BindError,
    DisplayError,
    DisplayNameError,
    DisplayNotFoundError,
    NoFreeDisplayError,
)


__all__ = [
    "DEFAULT_DISPLAY_RANGE",
    "MAX_DISPLAY_NUMBER",
    "X_TCP_PORT",
    "DisplayLocator",
    "DisplayName",
    "Endpoint",
    "EndpointKind",
    "Reservation",
]

logger = logging.getLogger("x11passthrough")

EndpointKind = Literal["unix", "abstract", "tcp"]

#: Display N listens on TCP port ``X_TCP_PORT + N`` (X protocol spec).
X_TCP_PORT = 6000
#: The highest display number whose TCP port (6000+N) still fits in 16 bits.
MAX_DISPLAY_NUMBER = 65535 - X_TCP_PORT
#: The highest screen number :meth:`DisplayName.parse` accepts.
MAX_SCREEN_NUMBER = 65535
#: Longest ``DISPLAY`` value :meth:`DisplayName.parse` accepts, in characters.
MAX_DISPLAY_NAME_LENGTH = 1024
#: The display numbers :meth:`DisplayLocator.reserve` tries by default: the range Briefcase
#: uses (50-299), above the low numbers local X servers take (0 upwards; Xwayland under GDM
#: uses 1024). SSH X11 forwarding counts up from 10, but it only listens on TCP, which the
#: bind check sees.
DEFAULT_DISPLAY_RANGE = range(50, 300)

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


def _shown(text: str) -> str:
    """Return ``repr(text)``, cut short for absurdly long values."""
    if len(text) <= 80:
        return repr(text)
    return f"{text[:60]!r}... ({len(text)} characters)"


def _name_error(text: str, why: str) -> DisplayNameError:
    return DisplayNameError(f"invalid display name {_shown(text)}: {why}; {_VALID_FORMS}")


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
        number: The display number, 0 to :data:`MAX_DISPLAY_NUMBER`.
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
                f"DISPLAY is {state}, so there is no X display to use: run inside an X "
                "session (or ssh -X), or name the display explicitly, e.g. ':0'"
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


@attrs.frozen(kw_only=True)
class Endpoint:
    """
    A place an X server listens on.

    Attributes:
        kind: ``"unix"`` (a filesystem socket), ``"abstract"`` (a Linux abstract socket) or
            ``"tcp"``.
        path: For ``unix`` and ``abstract``: the socket path (for ``abstract`` without the
            leading NUL byte, e.g. ``/tmp/.X11-unix/X0``).
        host: For ``tcp``: the host name or address.
        port: For ``tcp``: the port.

    Raises:
        DisplayError: When the fields do not fit the kind (a ``tcp`` endpoint without a port,
            a ``unix`` one without a path ...).
    """

    kind: EndpointKind
    path: str | None = None
    host: str | None = None
    port: int | None = None

    def __attrs_post_init__(self) -> None:
        if self.kind == "tcp":
            ok = (
                isinstance(self.host, str)
                and bool(self.host)
                and isinstance(self.port, int)
                and 0 < self.port <= 65535
                and self.path is None
            )
            need = "a host and a port from 1 to 65535, and no path"
        elif self.kind in {"unix", "abstract"}:
            ok = (
                isinstance(self.path, str)
                and bool(self.path)
                and "\0" not in self.path
                and self.host is None
                and self.port is None
            )
            need = "a path (without NUL bytes) and no host or port"
        else:
            ok, need = False, "a kind of 'unix', 'abstract' or 'tcp'"
        if not ok:
            raise DisplayError(f"invalid endpoint {self!r}: it needs {need}")

    @classmethod
    def unix(cls, path: str) -> Endpoint:
        """
        Return the endpoint of a filesystem UNIX socket.

        Args:
            path: The socket's path.

        Returns:
            The endpoint.
        """
        return cls(kind="unix", path=path)

    @classmethod
    def abstract(cls, path: str) -> Endpoint:
        r"""
        Return the endpoint of a Linux abstract socket named ``"\0" + path``.

        Args:
            path: The name without its leading NUL byte, e.g. ``/tmp/.X11-unix/X0``.

        Returns:
            The endpoint.
        """
        return cls(kind="abstract", path=path)

    @classmethod
    def tcp(cls, host: str, port: int) -> Endpoint:
        """
        Return a TCP endpoint.

        Args:
            host: The host name or address (IPv6 without brackets).
            port: The port.

        Returns:
            The endpoint.
        """
        return cls(kind="tcp", host=host, port=port)

    @property
    def address(self) -> str | tuple[str, int]:
        r"""
        The address to pass to :meth:`socket.socket.connect` or asyncio.

        A ``(host, port)`` tuple for TCP, the path for ``unix``, and ``"\0" + path`` for
        ``abstract``.
        """
        if self.kind == "tcp":
            return (str(self.host), int(self.port or 0))
        path = str(self.path)
        return "\0" + path if self.kind == "abstract" else path

    def __str__(self) -> str:
        if self.kind == "tcp":
            host = f"[{self.host}]" if self.host and ":" in self.host else self.host
            return f"tcp:{host}:{self.port}"
        if self.kind == "abstract":
            return f"abstract:@{self.path}"
        return f"unix:{self.path}"

    def connect(self, timeout: float = 5.0) -> socket.socket:
        """
        Open a connected, blocking socket to this endpoint within `timeout` seconds.

        TCP sockets get ``TCP_NODELAY``. The socket is not inheritable (Python's default).

        Args:
            timeout: Seconds to wait for the connection (name resolution is not included).

        Returns:
            The connected socket, in blocking mode; the caller closes it.

        Raises:
            OSError: When the endpoint does not answer: ``ConnectionRefusedError``,
                ``FileNotFoundError``, ``PermissionError``, ``TimeoutError`` and so on.
        """
        address = self.address
        if isinstance(address, tuple):
            sock = socket.create_connection(address, timeout=timeout)
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except BaseException:
                sock.close()
                raise
        else:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(timeout)
                sock.connect(address)
            except BaseException:
                sock.close()
                raise
        sock.settimeout(None)
        return sock


def _why_failed(exc: BaseException, timeout: float) -> str:
    """Return a short human reason for a failed connect."""
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host name ({exc.strerror or exc})"
    if isinstance(exc, TimeoutError):
        return f"timeout: no answer within {timeout:g} s"
    if isinstance(exc, OSError):
        reasons = {
            errno.ECONNREFUSED: "connection refused (nothing listens there)",
            errno.ENOENT: "no such file",
            errno.EACCES: "permission denied",
            errno.EPERM: "permission denied",
            errno.EAGAIN: "the server's listen queue is full (server busy or hung)",
            errno.ENOTSOCK: "not a socket",
            errno.ENETUNREACH: "network unreachable",
            errno.EHOSTUNREACH: "host unreachable",
        }
        if exc.errno in reasons:
            return reasons[exc.errno]
        return exc.strerror or str(exc)
    return str(exc)  # pragma: no cover - connect raises OSError only


def _to_str_path(value: str | os.PathLike[str]) -> str:
    return os.fspath(value)


def _positive_finite(_instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if (
        not isinstance(value, (int, float))
        or isinstance(value, bool)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise DisplayError(f"{attribute.name}={value!r} must be a positive number of seconds")


def _absolute(_instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not os.path.isabs(value) or "\0" in value:
        raise DisplayError(f"{attribute.name}={value!r} must be an absolute directory path")


@attrs.define(kw_only=True, eq=False)
class Reservation:
    """
    A claimed display number: the bound, listening TCP sockets on port 6000+M.

    The bound sockets *are* the claim: as long as they are open, no other reservation (and no
    X server started with TCP) can take the number. Use it as a context manager, or call
    :meth:`close`. The sockets are in the operating system's default (blocking) mode; whoever
    serves them (the relay) sets the mode it needs, for example by handing them to asyncio.

    Attributes:
        number: The display number M.
        sockets: The listening sockets, one per bound address.
        addresses: The ``(host, port)`` each socket is bound to, in the same order.
    """

    number: int
    sockets: tuple[socket.socket, ...]
    addresses: tuple[tuple[str, int], ...]
    _closed: bool = attrs.field(default=False, init=False, repr=False)

    @property
    def port(self) -> int:
        """The TCP port, ``6000 + number``."""
        return X_TCP_PORT + self.number

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has run."""
        return self._closed

    def close(self) -> None:
        """Close the sockets, releasing the number. Calling it again does nothing."""
        if self._closed:
            return
        self._closed = True
        for sock in self.sockets:
            sock.close()
        logger.debug("released display number %d", self.number)

    def __enter__(self) -> Reservation:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _bind_plan(bind: Sequence[str] | str) -> list[tuple[str, socket.AddressFamily]]:
    """Validate the bind addresses; return them with their family, duplicates removed."""
    addresses = [bind] if isinstance(bind, str) else list(bind)
    if not addresses:
        raise BindError("bind=() names no address; pass e.g. bind=('127.0.0.1',)")
    plan: list[tuple[str, socket.AddressFamily]] = []
    seen: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for address in addresses:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            raise BindError(
                f"bind address {address!r} is not an IP address; pass addresses of this host's "
                "interfaces, e.g. '127.0.0.1' or the docker0 address '172.17.0.1'"
            ) from None
        if ip in seen:
            continue
        seen.append(ip)
        family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        plan.append((str(address), family))
    for family, wildcard in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        same = [a for a, f in plan if f == family]
        if len(same) > 1 and ipaddress.ip_address(wildcard) in seen:
            raise BindError(
                f"bind addresses {same!r} overlap: {wildcard} already covers the others; "
                "pass either the wildcard or the specific addresses"
            )
    return plan


class _PortInUseError(Exception):
    """Port 6000+M is taken (internal signal)."""


def _listen(address: str, family: socket.AddressFamily, port: int) -> socket.socket:
    """Bind and listen on ``address:port``; raise _PortInUseError or BindError."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # SO_REUSEADDR, as X servers set it: lets us bind over TIME_WAIT leftovers, while
        # Linux still refuses to bind over (or to listen next to) any listening socket.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((address, port))
        sock.listen()
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise _PortInUseError from None
        shown = f"[{address}]:{port}" if family == socket.AF_INET6 else f"{address}:{port}"
        hint = {
            errno.EADDRNOTAVAIL: "this host has no interface with that address; pass an "
            "address that `ip addr` lists, e.g. 127.0.0.1 or the docker0 address",
            errno.EACCES: "binding it is not permitted here",
        }.get(e.errno or 0, "check the address and the host's network setup")
        raise BindError(e.errno, f"cannot listen on {shown}: {e.strerror or e}; {hint}") from e
    except BaseException:
        sock.close()
        raise
    return sock


def _wildcard_check(port: int) -> tuple[bool, socket.socket | None]:
    """
    Bind a (non-listening) socket on the wildcard address to `port`.

    A dual-stack ``[::]`` bind overlaps every IPv4 and IPv6 address, so it fails with
    EADDRINUSE when anything listens on the port on any address, e.g. a server bound only
    to 127.0.0.2 or to the docker0 address, which binding our own addresses would not notice.
    With SO_REUSEADDR on both sides, holding it does not stop our own listeners from binding.

    Returns:
        ``(in_use, sock)``: whether the port is in use, and the check socket to close after
        our listeners are bound (None when no wildcard socket could be bound at all, e.g.
        without IPv6 and IPv4; then the listeners' own binds are the only check).
    """
    for family, address in ((socket.AF_INET6, "::"), (socket.AF_INET, "0.0.0.0")):
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError:
            continue  # no IPv6 on this host: fall back to the IPv4 wildcard
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind((address, port))
        except OSError as e:
            sock.close()
            if e.errno == errno.EADDRINUSE:
                return True, None
            continue
        return False, sock
    return False, None  # pragma: no cover - needs a host without any IP wildcard


@attrs.frozen(kw_only=True)
class DisplayLocator:
    r"""
    Finds live X displays and reserves free display numbers.

    Attributes:
        socket_dir: Where X servers put their UNIX sockets ``X<N>``; the abstract socket of
            display N is ``"\0" + socket_dir + "/X<N>"``.
        lock_dir: Where X servers put their lock files ``.X<N>-lock``.
        connect_timeout: Seconds each connect attempt may take. Refused connects and missing
            sockets fail at once; this only bounds hosts that do not answer.
        abstract_sockets: Whether :meth:`locate` tries Linux abstract sockets (ignored on
            other systems). libxcb dropped them in 2025 as a security risk, but X.Org and
            Xwayland still listen on them, and they are the only way in when the socket file
            is gone. :meth:`reserve` always checks them on Linux.

    Raises:
        DisplayError: When an option is invalid (a relative directory, a timeout that is not a
            positive number).
    """

    _IS_LINUX: ClassVar[bool] = sys.platform.startswith("linux")

    socket_dir: str = attrs.field(
        default="/tmp/.X11-unix", converter=_to_str_path, validator=_absolute
    )
    lock_dir: str = attrs.field(default="/tmp", converter=_to_str_path, validator=_absolute)
    connect_timeout: float = attrs.field(default=2.0, validator=_positive_finite)
    abstract_sockets: bool = True

    def socket_path(self, number: int) -> str:
        """
        Return the UNIX socket path of display `number`.

        Args:
            number: The display number.

        Returns:
            ``socket_dir/X<number>``.
        """
        return os.path.join(self.socket_dir, f"X{number}")

    def lock_path(self, number: int) -> str:
        """
        Return the lock file path of display `number`.

        Args:
            number: The display number.

        Returns:
            ``lock_dir/.X<number>-lock``.
        """
        return os.path.join(self.lock_dir, f".X{number}-lock")

    def _coerce(self, display: DisplayName | str | None) -> DisplayName:
        if display is None:
            return DisplayName.from_environ()
        if isinstance(display, DisplayName):
            return display
        return DisplayName.parse(display)

    def candidates(self, display: DisplayName | str | None = None) -> tuple[Endpoint, ...]:
        """
        Return the endpoints :meth:`locate` tries for `display`, in order.

        * A socket-path display: that path. As in libxcb, when the full value (path plus
          ``.screen``) does not exist and ends in ``.N``, the path without it.
        * A remote display (any host but ``unix``, including ``localhost`` and
          ``127.0.0.1``): TCP to that host, port 6000+N, only.
        * ``:N``: TCP ``localhost:6000+N`` first (an SSH-forwarded or TCP-only server wins),
          then the UNIX socket ``socket_dir/XN``, then the abstract socket.
        * ``unix:N``, ``unix/:N``, ``HOST/unix:N``: the UNIX socket, then the abstract socket.

        Args:
            display: A display name, its text, or None for ``$DISPLAY``.

        Returns:
            The endpoints to try.

        Raises:
            DisplayError: When `display` is None and ``DISPLAY`` is unset or empty.
            DisplayNameError: When the text is not a display name.
        """
        name = self._coerce(display)
        if name.path is not None:
            full = str(name)
            stripped = _TRAILING_SCREEN_RE.fullmatch(full)
            if stripped is not None and not os.path.lexists(full):
                return (Endpoint.unix(stripped["path"]),)
            return (Endpoint.unix(full),)
        if name.host is not None and not name.is_local:
            return (Endpoint.tcp(name.host, name.tcp_port),)
        found: list[Endpoint] = []
        if name.protocol is None and name.host is None:
            found.append(Endpoint.tcp("localhost", name.tcp_port))
        path = self.socket_path(name.number)
        found.append(Endpoint.unix(path))
        if self.abstract_sockets and self._IS_LINUX:
            found.append(Endpoint.abstract(path))
        return tuple(found)

    def locate(self, display: DisplayName | str | None = None) -> Endpoint:
        """
        Find the endpoint a live X server answers on for `display`.

        Tries :meth:`candidates` in order and returns the first that accepts a connection
        (the test connection is closed again). No X protocol is spoken.

        Args:
            display: A display name, its text, or None for ``$DISPLAY``.

        Returns:
            The first endpoint that accepted a connection.

        Raises:
            DisplayError: When `display` is None and ``DISPLAY`` is unset or empty.
            DisplayNameError: When the text is not a display name.
            DisplayNotFoundError: When nothing answers; the message lists every endpoint
                tried and why each failed.
        """
        name = self._coerce(display)
        failures: list[str] = []
        for endpoint in self.candidates(name):
            try:
                sock = endpoint.connect(self.connect_timeout)
            except OSError as e:
                reason = _why_failed(e, self.connect_timeout)
                logger.debug("display %s: %s: %s", name, endpoint, reason)
                failures.append(f"{endpoint}: {reason}")
                continue
            sock.close()
            logger.debug("display %s answers on %s", name, endpoint)
            return endpoint
        hint = "is the X server running, and is DISPLAY right?"
        if not name.is_local:
            hint += (
                " A TCP display needs a server that listens on TCP (X.Org >= 1.17 only does so"
                " with -listen tcp) or an SSH session with X11 forwarding."
            )
        tried = "".join(f"\n  {f}" for f in failures)
        raise DisplayNotFoundError(
            f"no X server answers for display {str(name)!r}; tried:{tried}\n{hint}"
        )

    def _held_by_server(self, number: int) -> str | None:
        """Return why an X server holds `number` (socket file, lock, abstract), or None."""
        path = self.socket_path(number)
        try:
            os.lstat(path)
        except FileNotFoundError:
            pass
        except OSError as e:
            return f"cannot check {path}: {e.strerror}"
        else:
            return f"{path} exists"
        reason = self._lock_holder(number)
        if reason is not None:
            return reason
        if self._IS_LINUX:
            return self._abstract_in_use(path)
        return None

    def _lock_holder(self, number: int) -> str | None:
        lock = self.lock_path(number)
        pid = _read_lock_pid(lock)
        if pid is None or isinstance(pid, str):
            return pid
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            logger.debug("%s is stale (pid %d is gone); treating %d as free", lock, pid, number)
            return None
        except PermissionError:
            return f"{lock} belongs to live pid {pid} (another user's)"
        except OSError as e:  # pragma: no cover - kill(pid, 0) fails with ESRCH or EPERM
            return f"cannot check pid {pid} of {lock}: {e.strerror}"
        return f"{lock} belongs to live pid {pid}"

    def _abstract_in_use(self, path: str) -> str | None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(self.connect_timeout)
            try:
                sock.connect("\0" + path)
            except OSError as e:
                if e.errno in {errno.ECONNREFUSED, errno.ENOENT}:
                    return None
                return f"abstract socket @{path}: {_why_failed(e, self.connect_timeout)}"
        return f"abstract socket @{path} answers"

    def reserve(
        self,
        *,
        range: Iterable[int] = DEFAULT_DISPLAY_RANGE,
        bind: Sequence[str] = ("127.0.0.1",),
    ) -> Reservation:
        """
        Claim a free display number M and listen on TCP port 6000+M.

        Numbers are tried in the order of `range`; the first free one wins. A number is free
        when there is no socket ``socket_dir/XM``, no lock file ``lock_dir/.XM-lock`` of a live
        process (a lock whose pid is gone is stale and does not count; it is left in place),
        no abstract socket ``@socket_dir/XM`` (Linux), and nothing listens on port 6000+M on
        any address (checked by binding a wildcard socket). The checks happen in that order,
        so an Xwayland that starts lazily is never woken by the abstract probe when its
        socket file or lock exists.

        Binding the listeners is the claim itself: two processes reserving at once get
        different numbers, because Linux lets only one of them listen on an address. (Two
        reservations on *non-overlapping* addresses that race for the same number in the same
        instant can both succeed; each then owns its own address.)

        Args:
            range: Display numbers to try, each 0 to :data:`MAX_DISPLAY_NUMBER`; by default
                :data:`DEFAULT_DISPLAY_RANGE` (50 to 299, as Briefcase).
            bind: IP addresses to listen on (not host names). IPv6 addresses get an
                ``AF_INET6`` socket with ``IPV6_V6ONLY``. ``0.0.0.0`` listens on every
                interface, reachable from the network; prefer specific addresses.

        Returns:
            The reservation, holding one listening socket per address.

        Raises:
            NoFreeDisplayError: When every number in `range` is taken, or `range` is empty or
                holds an impossible number.
            BindError: When an address is not an IP address, or binding fails for another
                reason than "in use" (for example ``EADDRNOTAVAIL``: no interface has that
                address).
        """
        numbers = self._numbers(range)
        plan = _bind_plan(bind)
        held = busy = 0
        examples: list[str] = []
        for number in numbers:
            reason = self._held_by_server(number)
            if reason is None:
                reservation = self._try_bind(number, plan)
                if reservation is not None:
                    logger.debug("reserved display number %d on %s", number, reservation.addresses)
                    return reservation
                busy += 1
                reason = f"TCP port {X_TCP_PORT + number} is in use"
            else:
                held += 1
            logger.debug("display number %d is taken: %s", number, reason)
            if len(examples) < 3:
                examples.append(f"{number}: {reason}")
        low, high = _bounds(numbers)
        wider = f"range({low}, {min(high + 501, MAX_DISPLAY_NUMBER + 1)})"
        more = ", ..." if held + busy > len(examples) else ""
        raise NoFreeDisplayError(
            f"no free display number in {_range_text(range, numbers)}: {held} held by X "
            f"servers (socket, lock file or abstract socket), {busy} with TCP port 6000+N in "
            f"use ({'; '.join(examples)}{more}); pass a wider range, e.g. "
            f"reserve(range={wider})"
        )

    def _numbers(self, numbers: Iterable[int]) -> Sequence[int]:
        values: Sequence[int]
        if isinstance(numbers, range):
            values = numbers
        elif isinstance(numbers, Iterable) and not isinstance(numbers, (str, bytes)):
            values = tuple(numbers)
        else:
            raise NoFreeDisplayError(
                f"range={numbers!r} is not a range of display numbers; pass e.g. range(50, 300)"
            )
        if not values:
            raise NoFreeDisplayError(
                f"range={numbers!r} is empty; pass a non-empty one, e.g. range(50, 300)"
            )
        ends = (values[0], values[-1]) if isinstance(values, range) else values
        for value in ends:
            if _number_problem("display number", value, MAX_DISPLAY_NUMBER):
                raise NoFreeDisplayError(
                    f"range={numbers!r} holds {value!r}, not a display number from 0 to "
                    f"{MAX_DISPLAY_NUMBER} (port 6000+N must fit in 65535); pass e.g. "
                    "range(50, 300)"
                )
        return values

    def _try_bind(
        self, number: int, plan: list[tuple[str, socket.AddressFamily]]
    ) -> Reservation | None:
        port = X_TCP_PORT + number
        in_use, check = _wildcard_check(port)
        if in_use:
            return None
        sockets: list[socket.socket] = []
        try:
            for address, family in plan:
                sockets.append(_listen(address, family, port))
        except _PortInUseError:
            for sock in sockets:
                sock.close()
            return None
        except BaseException:
            for sock in sockets:
                sock.close()
            raise
        finally:
            if check is not None:
                check.close()
        addresses = tuple((str(s.getsockname()[0]), int(s.getsockname()[1])) for s in sockets)
        return Reservation(number=number, sockets=tuple(sockets), addresses=addresses)


def _read_lock_pid(lock: str) -> int | str | None:
    """
    Read the pid in an X server lock file.

    X.Org and Mutter write the pid right-aligned in 10 characters and a newline; wlroots
    ends it with a NUL byte instead of the newline.

    Returns:
        The pid; None when there is no lock file; or the reason the number must be treated
        as held (unreadable file, no pid in it).
    """
    try:
        with open(lock, "rb") as f:
            data = f.read(64)
    except FileNotFoundError:
        return None
    except OSError as e:
        return f"cannot read {lock}: {e.strerror}"
    try:
        pid = int(data.strip(b" \n\0"))
    except ValueError:
        return f"{lock} exists and holds no pid"
    if pid <= 0:
        return f"{lock} holds pid {pid}"
    return pid


def _bounds(numbers: Sequence[int]) -> tuple[int, int]:
    if isinstance(numbers, range):
        return min(numbers[0], numbers[-1]), max(numbers[0], numbers[-1])
    return min(numbers), max(numbers)


def _range_text(given: Iterable[int], numbers: Sequence[int]) -> str:
    if isinstance(given, range):
        return repr(given)
    if len(numbers) <= 8:
        return f"display numbers {list(numbers)}"
    low, high = _bounds(numbers)
    return f"{len(numbers)} display numbers from {low} to {high}"
