"""
The DisplayLocator: where X servers live on this machine, and the two jobs done there.

Import :class:`DisplayLocator` from :mod:`x11passthrough.display`.
"""

from __future__ import annotations

import os
import sys

from collections.abc import Iterable, Sequence
from typing import ClassVar

import attrs

from .. import _validate
from ..exceptions import ConfigurationError
from . import _locate, _reserve
from ._endpoint import Endpoint
from ._locate import DisplayConnection
from ._name import DisplayName
from ._reserve import DEFAULT_DISPLAY_RANGE, Reservation, ServerPlaces


def _directory(name: str, value: object) -> str:
    text = os.fspath(value) if isinstance(value, (str, os.PathLike)) else value
    if not isinstance(text, str) or not os.path.isabs(text) or "\0" in text:
        raise ConfigurationError(f"{name}={value!r} must be an absolute directory path")
    return text


def _socket_dir(value: object) -> str:
    return _directory("socket_dir", value)


def _lock_dir(value: object) -> str:
    return _directory("lock_dir", value)


def _owners(value: object) -> frozenset[int] | None:
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ConfigurationError(f"trusted_owners={value!r} must be a set of uids, or None")
    uids = frozenset(value)
    if not uids or not all(
        isinstance(u, int) and not isinstance(u, bool) and u >= 0 for u in uids
    ):
        raise ConfigurationError(f"trusted_owners={value!r} must be a non-empty set of uids")
    return uids


def _timeout(value: float) -> float:
    return _validate.seconds(value, name="connect_timeout")


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
        trusted_owners: The uids an endpoint may belong to; None means root and the current
            user. An endpoint owned by anyone else (a squatter) is never sent a cookie.

    Raises:
        ConfigurationError: When an option is invalid (a relative directory, a timeout that
            is not a positive number).

    .. versionadded:: 0.1.0
    """

    _IS_LINUX: ClassVar[bool] = sys.platform.startswith("linux")

    socket_dir: str = attrs.field(default="/tmp/.X11-unix", converter=_socket_dir)
    lock_dir: str = attrs.field(default="/tmp", converter=_lock_dir)
    connect_timeout: float = attrs.field(default=2.0, converter=_timeout)
    abstract_sockets: bool = True
    trusted_owners: frozenset[int] | None = attrs.field(default=None, converter=_owners)

    def _places(self, *, abstract: bool) -> ServerPlaces:
        return ServerPlaces(
            socket_dir=self.socket_dir,
            lock_dir=self.lock_dir,
            timeout=self.connect_timeout,
            abstract=abstract and self._IS_LINUX,
        )

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

    @staticmethod
    def _coerce(display: DisplayName | str | None) -> DisplayName:
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
        * ``:N``: the UNIX socket ``socket_dir/XN``, then the abstract socket, and TCP
          ``localhost:6000+N`` only as the last resort, as libxcb does.
        * ``unix:N``, ``unix/:N``, ``HOST/unix:N``: the UNIX socket, then the abstract socket.

        Args:
            display: A display name, its text, or None for ``$DISPLAY``.

        Returns:
            The endpoints to try.

        Raises:
            DisplayError: When `display` is None and ``DISPLAY`` is unset or empty.
            DisplayNameError: When the text is not a display name.
        """
        return _locate.candidates(
            self._coerce(display), self._places(abstract=self.abstract_sockets)
        )

    def connect(self, display: DisplayName | str | None = None) -> DisplayConnection:
        """
        Connect to the first of :meth:`candidates` that accepts and belongs to a trusted owner.

        The owner is checked before anything is sent: ``SO_PEERCRED`` on UNIX and abstract
        sockets, the listening socket's uid in ``/proc/net/tcp{,6}`` on loopback TCP (a remote
        host cannot be checked). An endpoint of another user is skipped, with a warning. No X
        protocol is spoken: the connection is handed over as it is, so the caller can pick
        the cookie for it and make the X11 setup itself.

        Args:
            display: A display name, its text, or None for ``$DISPLAY``.

        Returns:
            The open connection; close it (it is a context manager).

        Raises:
            DisplayError: When `display` is None and ``DISPLAY`` is unset or empty.
            DisplayNameError: When the text is not a display name.
            DisplayOwnerError: When only endpoints of other users answer.
            DisplayNotFoundError: When nothing answers; the message lists every endpoint
                tried and why each failed.
        """
        return _locate.connect(
            self._coerce(display),
            self._places(abstract=self.abstract_sockets),
            self.trusted_owners,
        )

    def locate(self, display: DisplayName | str | None = None) -> Endpoint:
        """
        Find the endpoint a live X server answers on for `display`.

        Like :meth:`connect`, but the test connection is closed again.

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
        with self.connect(display) as connection:
            return connection.endpoint

    def reserve(
        self,
        *,
        range: Iterable[int] = DEFAULT_DISPLAY_RANGE,
        bind: str | Sequence[str] = ("127.0.0.1",),
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
            range: Display numbers to try, each 0 to 59535; by default
                :data:`~x11passthrough.display.DEFAULT_DISPLAY_RANGE` (50 to 9999, in
                order: Briefcase's 50 to 299 first, then higher numbers, so that another
                user holding abstract names cannot stop a reservation).
            bind: IP addresses to listen on (not host names). IPv6 addresses get an
                ``AF_INET6`` socket with ``IPV6_V6ONLY``. ``0.0.0.0`` listens on every
                interface, reachable from the network; prefer specific addresses.

        Returns:
            The reservation, holding one listening socket per address.

        Raises:
            ConfigurationError: When `range` is empty or holds an impossible number, or an
                address is not an IP address.
            NoFreeDisplayError: When every number in `range` is taken.
            BindError: When binding fails for another reason than "in use" (for example
                ``EADDRNOTAVAIL``: no interface has that address).
        """
        numbers = _validate.display_numbers(range, name="range")
        addresses = _validate.bind_addresses(bind)
        return _reserve.reserve(numbers, addresses, self._places(abstract=True))
