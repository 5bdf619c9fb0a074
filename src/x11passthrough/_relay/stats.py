"""
The relay's counters, the snapshot users see, and the state all its connections share.

Import :class:`RelayStats` from :mod:`x11passthrough`.
"""

from __future__ import annotations

import enum

import attrs

from .options import RelayOptions


@attrs.frozen(kw_only=True)
class RelayStats:
    """
    A snapshot of a passthrough's relay counters: :attr:`X11Passthrough.stats`.

    Attributes:
        connections_open: Client connections currently open (in setup or relaying).
        connections_total: Client connections accepted since the relay started.
        bytes_up: Bytes forwarded from clients to the X display.
        bytes_down: Bytes forwarded from the X display to clients.
        errors: Connections that ended abnormally: the display was unreachable, a socket
            failed or was reset, or the setup filter raised; plus failed ``accept`` calls.
        rejected: Connections refused before anything was forwarded: the client's address is
            not in ``allow``, the setup filter rejected them, or the client did not finish its
            setup within ``setup_timeout``.
        stalled: Connections dropped because the client stopped reading while the X server
            had replies for it (see ``stall_timeout``).
        bytes_buffered: Bytes read from one side and not yet written to the other, now.
        bytes_buffered_peak: The highest ``bytes_buffered`` seen.

    .. versionadded:: 0.1.0
    """

    connections_open: int = 0
    connections_total: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    errors: int = 0
    rejected: int = 0
    stalled: int = 0
    bytes_buffered: int = 0
    bytes_buffered_peak: int = 0


class Activity:
    """What the last burst of events did; read by the busy-poll selector."""

    __slots__ = ("bulk",)

    def __init__(self) -> None:
        self.bulk = False


class Outcome(enum.Enum):
    """How a client connection ended, as :class:`RelayStats` counts it."""

    #: Normally: a side closed, or the relay stopped (counted in no outcome field).
    CLOSED = "closed"
    #: Refused before anything was forwarded, or evicted in its setup (``RelayStats.rejected``).
    REJECTED = "rejected"
    #: Abnormally: the display unreachable, a socket failed (``RelayStats.errors``).
    ERROR = "errors"
    #: Dropped for not reading its replies (``RelayStats.stalled``).
    STALLED = "stalled"


class Counters:
    """
    The mutable counters behind :class:`RelayStats` (updated on the event loop only).

    The ledger of connections: :meth:`opened` when a client is handed to a connection and
    :meth:`closed` when that closes; :meth:`count` once for how each ended (a connection
    counts its own, once, in ``Connection._ended``; the server counts a client it drops
    before it opens, and a failed ``accept``). Nothing else changes ``open``, ``total``,
    ``errors``, ``rejected`` or ``stalled``.
    """

    __slots__ = (
        "buffered",
        "buffered_peak",
        "bytes_down",
        "bytes_up",
        "errors",
        "open",
        "rejected",
        "stalled",
        "total",
    )

    def __init__(self) -> None:
        self.open = self.total = self.errors = self.rejected = self.stalled = 0
        self.bytes_up = self.bytes_down = self.buffered = self.buffered_peak = 0

    def opened(self) -> int:
        """Count a client connection that is now open; return its number."""
        self.open += 1
        self.total += 1
        return self.total

    def closed(self) -> None:
        """Count an open connection that closed."""
        self.open -= 1

    def count(self, outcome: Outcome) -> None:
        """Count an ending by its outcome (a normal one counts nowhere)."""
        if outcome is Outcome.REJECTED:
            self.rejected += 1
        elif outcome is Outcome.ERROR:
            self.errors += 1
        elif outcome is Outcome.STALLED:
            self.stalled += 1

    def snapshot(self) -> RelayStats:
        return RelayStats(
            connections_open=self.open,
            connections_total=self.total,
            bytes_up=self.bytes_up,
            bytes_down=self.bytes_down,
            errors=self.errors,
            rejected=self.rejected,
            stalled=self.stalled,
            bytes_buffered=self.buffered,
            bytes_buffered_peak=self.buffered_peak,
        )


class Descriptors:
    """
    The relay's descriptors, counted in one place: client and display sockets, splice pipes.

    The server checks them against its budget (:mod:`.admission`) before it accepts; the
    connections and flows that open and close them tell this ledger, and nothing else counts.
    """

    __slots__ = ("budget", "passed", "pipes", "sockets")

    #: What a new client may need: its socket, the display's, and a pipe (two descriptors).
    PER_CLIENT = 4

    def __init__(self) -> None:
        self.sockets = 0
        self.pipes = 0
        #: Descriptors clients or the X server passed (SCM_RIGHTS), held until sent on.
        self.passed = 0
        #: Most descriptors the relay may hold (the server sets it from its admission).
        self.budget = 1 << 20

    def socket_opened(self) -> None:
        """Count a client or display socket the relay opened (or accepted)."""
        self.sockets += 1

    def socket_closed(self) -> None:
        """Give a socket's descriptor back."""
        self.sockets -= 1

    def pipe_opened(self) -> None:
        """Count a splice pipe (two descriptors)."""
        self.pipes += 1

    def pipe_closed(self) -> None:
        """Give a pipe's two descriptors back."""
        self.pipes -= 1

    def passed_in(self, count: int) -> None:
        """Count `count` descriptors received with a peer's bytes."""
        self.passed += count

    def passed_on(self, count: int) -> None:
        """Give back `count` passed descriptors, sent on (or closed)."""
        self.passed -= count

    @property
    def in_use(self) -> int:
        """The descriptors held now."""
        return self.sockets + 2 * self.pipes + self.passed

    @property
    def over_budget(self) -> bool:
        """Tell whether the relay holds more descriptors than its budget."""
        return self.in_use > self.budget

    def room_for_a_client(self, budget: int) -> bool:
        """Tell whether a new client (and all it may need) fits in `budget` descriptors."""
        return self.in_use + self.PER_CLIENT <= budget


class Shared:
    """
    What every connection of one relay shares: options, counters, the read buffer, pipes.

    Flows and connections get this instead of the relay itself, so nothing below the server
    reaches up into it. Used on the relay's event loop only.
    """

    __slots__ = ("activity", "counters", "descriptors", "options", "scratch", "told")

    def __init__(self, options: RelayOptions) -> None:
        self.options = options
        self.counters = Counters()
        self.activity = Activity()
        self.descriptors = Descriptors()
        self.scratch = memoryview(b"")
        #: Extensions a client was told are absent, already named in the log.
        self.told: set[bytes] = set()
