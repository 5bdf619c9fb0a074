"""The relay's options: one frozen value, validated once, shared by Relay and RelayThread."""

from __future__ import annotations

import socket

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import attrs

from .. import _validate
from ..exceptions import ConfigurationError


if TYPE_CHECKING:
    from .._x11.gate import Accept, Reject
    from .._x11.requests import Hidden
    from .peers import OwnUids


#: A setup filter: called with every byte a client sent so far, returns ``None`` for "need
#: more bytes", :class:`~x11passthrough._x11.gate.Accept` or ``Reject``.
SetupFilter = Callable[[bytes], "Accept | Reject | None"]
#: An upstream check: called with each new connection to the display before a byte is sent
#: on it; returns why it must not be used (the client is refused with that reason), or None.
UpstreamCheck = Callable[[socket.socket], "str | None"]


class HiddenSource(Protocol):
    """Where a relay learns what to keep from clients of the server generation they reach."""

    def current(self) -> Hidden | None:
        """Return it at once, or None if it must be learned again (the server went away)."""

    def relearn(self) -> Hidden | str:
        """Learn it again (blocking: run off the event loop); return why not if that fails."""


DEFAULT_READ_SIZE = 1024 * 1024
DEFAULT_HIGH_WATER = 1024 * 1024
DEFAULT_LOW_WATER = 256 * 1024
DEFAULT_BUSY_POLL = 0.0
DEFAULT_STALL_TIMEOUT = 0.5


@attrs.frozen
class Listener:
    """
    Where a relay's clients connect: a listening socket, its setup filter, the peers it admits.

    Attributes:
        socket: The bound, listening stream socket.
        setup_filter: Called with all bytes a client sent so far until it returns non-None:
            ``None`` asks for more bytes, ``Accept`` forwards its ``forward`` instead of them
            and relays unchanged from then on, ``Reject`` sends its ``reply`` to the client
            and closes. With a filter, nothing is forwarded and the display is not contacted
            before Accept. None relays every client unchanged.
        peers: For a UNIX listener that others can reach and that cannot authenticate its
            clients: the uids it admits (by ``SO_PEERCRED``); any other peer is refused with
            an X11 "Failed" reply. None admits every peer.
    """

    socket: socket.socket
    setup_filter: SetupFilter | None = attrs.field(eq=False)
    peers: OwnUids | None = attrs.field(default=None, eq=False)


def _setup_timeout(value: object) -> float:
    return _validate.seconds(value, name="setup_timeout")


def _connect_timeout(value: object) -> float:
    return _validate.seconds(value, name="connect_timeout")


def _high_water(value: object) -> int:
    return _validate.count(value, name="high_water")


def _read_size(value: object) -> int:
    return _validate.count(value, name="read_size")


def _allow(value: object) -> tuple[_validate.IPNetwork, ...] | None:
    return None if value is None else _validate.networks(value)


def _max_pending(value: object) -> int:
    return _validate.count(value, name="max_pending")


def _max_pending_per_source(value: object) -> int:
    return _validate.count(value, name="max_pending_per_source")


def _fd_reserve(value: object) -> int | None:
    return None if value is None else _validate.count(value, name="fd_reserve", minimum=0)


def _stall_timeout(value: object) -> float:
    return _validate.seconds(value, name="stall_timeout", allow_zero=True)


def _busy_poll(value: object) -> float:
    return _validate.seconds(value, name="busy_poll", allow_zero=True)


@attrs.frozen(kw_only=True)
class RelayOptions:
    """
    How a relay treats its connections.

    Attributes:
        setup_timeout: Seconds a client has to satisfy the setup filter before it is dropped.
        connect_timeout: Seconds to wait for the display to accept a connection.
        high_water: Backlog in bytes (per connection and direction) at which the relay stops
            reading from the sender; the backlog never exceeds it.
        low_water: Backlog in bytes at which it reads again.
        read_size: Largest read, in bytes (one buffer of this size is shared by all
            connections). Large reads let one read drain the X server's socket while the
            server refills it.
        splice: On Linux, move the bytes that arrive on TCP sockets with ``os.splice``
            through a pipe, so they never enter user space. False always copies.
        allow: Client networks to accept TCP connections from; anyone else is refused with an
            X11 "Failed" reply, before a byte is forwarded or the display contacted. None
            accepts every client.
        refresh_allow: Returns the current client networks (for example the engine's, which
            grow when a network is created); called, at most once a second and off the event
            loop, when a client from an unknown address connects, before it is refused.
        check_upstream: Called with every new connection to the display before anything is
            sent on it (e.g. to verify who owns the endpoint); a non-None result refuses the
            client with that reason, and the connection is closed unused.
        max_pending: Most connections in their setup phase at once; at the limit one of the
            source with the most is dropped (see :mod:`.admission`).
        max_pending_per_source: The same, per source: a TCP client address, or a UNIX
            peer's uid and pid.
        fd_reserve: Descriptors left to the host process below its soft ``RLIMIT_NOFILE``;
            None keeps a quarter of the limit, at least 64.
        stall_timeout: Seconds a client may take nothing from a full backlog of replies
            before it is dropped; 0 never drops. Requests already queued keep the X server
            producing replies while the relay holds back, and Xvfb 21.1.7 was seen to buffer
            about 800 MB/s for such a client and to crash near 2 GB, so this is short.
        hidden: Extensions no client may use and the ones the server offers (see
            :mod:`x11passthrough._x11.requests`): each client's requests are framed as the
            server frames them and rewritten so the server hides them. A
            :class:`HiddenSource` is asked for every connection, after it reached the
            display (the numbers change when the server restarts). None passes requests
            unchanged.
        shm: Offer MIT-SHM to a client that shares the X server's IPC namespace (checked per
            connection; see :mod:`.shm`), each ``ShmAttach`` checked against the client's
            credentials, and carry file descriptors both ways on its connection. False hides
            MIT-SHM from every client (with `hidden`).
        busy_poll: Seconds a relay that owns its event loop keeps polling after small
            exchanges before it sleeps; 0 (the default) never polls. Polling trades CPU while
            clients are busy for less round-trip latency where a CPU is idle; on a loaded
            small machine it takes the CPU from the client and the X server (see the
            package's design note).

    Raises:
        ConfigurationError: An option is out of range.
    """

    check_upstream: UpstreamCheck | None = attrs.field(default=None, eq=False)
    setup_timeout: float = attrs.field(default=10.0, converter=_setup_timeout)
    connect_timeout: float = attrs.field(default=5.0, converter=_connect_timeout)
    high_water: int = attrs.field(default=DEFAULT_HIGH_WATER, converter=_high_water)
    low_water: int = attrs.field(default=DEFAULT_LOW_WATER)
    read_size: int = attrs.field(default=DEFAULT_READ_SIZE, converter=_read_size)
    splice: bool = True
    allow: tuple[_validate.IPNetwork, ...] | None = attrs.field(default=None, converter=_allow)
    refresh_allow: Callable[[], tuple[_validate.IPNetwork, ...]] | None = attrs.field(
        default=None, eq=False
    )
    max_pending: int = attrs.field(default=256, converter=_max_pending)
    max_pending_per_source: int = attrs.field(default=64, converter=_max_pending_per_source)
    fd_reserve: int | None = attrs.field(default=None, converter=_fd_reserve)
    stall_timeout: float = attrs.field(default=DEFAULT_STALL_TIMEOUT, converter=_stall_timeout)
    busy_poll: float = attrs.field(default=DEFAULT_BUSY_POLL, converter=_busy_poll)
    hidden: Hidden | HiddenSource | None = attrs.field(default=None, eq=False)
    shm: bool = False

    @low_water.validator
    def _check_low_water(self, _attribute: object, value: object) -> None:
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or not 0 <= value < self.high_water
        ):
            raise ConfigurationError(
                f"low_water={value!r} must be a whole number of at least 0 and below "
                f"high_water ({self.high_water!r})"
            )
