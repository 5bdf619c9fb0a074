"""
Admission control: bounded unauthenticated connections, and descriptors kept for the host.

A client that opens connections and never finishes its setup costs a descriptor each. Left
alone, a container without the cookie could exhaust the embedding process's descriptors (its
own ``open()`` and ``subprocess.run`` then fail with EMFILE) and delay every real client. So:

* Connections still in their setup phase are counted per source: a TCP client's address, or a
  UNIX peer's uid and pid (``SO_PEERCRED``; every UNIX client once shared one budget, so a
  flood of idle connections by any local user on the abstract socket made 171 of 178
  container setups on the mounted socket fail). A source at its cap rotates through its own
  connections: its oldest pending one is evicted once it has waited :data:`ROTATE_AGE`
  (a real client sends its setup at once), otherwise the newcomer is refused.
* At the cap of all pending connections, the source holding the most (by uid first for UNIX
  peers, then by pid) gives one up: a newcomer from a smaller source evicts that source's
  oldest at once, whatever its age; a newcomer of the largest source is treated as at its own
  cap. A flood, even from many processes or addresses, thus never refuses the few connections
  of another source.
* The relay keeps to a descriptor budget: the soft ``RLIMIT_NOFILE`` minus what the process
  had open at start minus a reserve for the host process. At the budget it evicts pending
  connections first, and otherwise stops accepting until a connection closes.
* Warnings about floods and refusals are rate-limited (:class:`WarnLimiter`): 2,000 loopback
  source addresses once made 1,744 warning lines, and the table of warned sources grew
  without bound.
"""

from __future__ import annotations

import collections
import logging
import os
import resource
import time

from typing import TYPE_CHECKING

from .options import RelayOptions


if TYPE_CHECKING:
    from .connection import Connection


logger = logging.getLogger("x11passthrough")

#: A source of connections: ``(group, member)``, ``(address, "")`` on TCP and
#: ``("uid U", "pid P")`` for a UNIX peer.
Key = tuple[str, str]

#: How long a pending connection is safe from eviction: a real client sends its setup message
#: right after connecting, far within this.
MIN_PENDING_AGE = 0.1
#: How long the oldest pending connection of a source at its own cap must wait before a newcomer
#: of that source replaces it. Each replacement costs the relay a task and a cancellation, and
#: a flood reconnects at once: at 0.1 s, four processes of one user flooding the abstract
#: socket cost ten times as many replacements, and containers' setups on the mounted socket
#: took p90 0.4 to 0.6 s instead of 0.2 s.
ROTATE_AGE = 1.0
#: Seconds over which warnings of one kind are limited.
WARN_EVERY = 60.0
#: Warning lines of one kind per :data:`WARN_EVERY` seconds, whatever the number of sources.
WARN_BURST = 3


def descriptor_budget(options: RelayOptions) -> int:
    """Return how many descriptors the relay may hold, from RLIMIT_NOFILE and the reserve."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    try:
        in_use = len(os.listdir("/proc/self/fd"))
    except OSError:
        in_use = 64
    reserve = options.fd_reserve if options.fd_reserve is not None else max(64, soft // 4)
    return max(8, soft - in_use - reserve)


class WarnLimiter:
    """
    Decide which warnings of one kind to log: one per source and at most a few in all.

    Within :data:`WARN_EVERY` seconds at most `burst` lines are logged, each for a source not
    warned about in that time; the rest are counted, and the next line says how many were left
    out. Only warned sources are remembered, and only for that time, so the table is bounded
    by `burst`, whatever the number of sources.
    """

    def __init__(self, *, every: float = WARN_EVERY, burst: int = WARN_BURST) -> None:
        self._every = every
        self._burst = burst
        self._warned: collections.OrderedDict[object, float] = collections.OrderedDict()
        self._suppressed = 0

    @property
    def remembered(self) -> int:
        """How many sources the limiter remembers now (bounded by its burst)."""
        self._prune(time.monotonic())
        return len(self._warned)

    def allow(self, key: object) -> int | None:
        """
        Tell whether to warn about `key` now.

        Returns:
            None to stay silent; otherwise how many warnings were left out since the last one.
        """
        now = time.monotonic()
        self._prune(now)
        if key in self._warned or len(self._warned) >= self._burst:
            self._suppressed += 1
            return None
        self._warned[key] = now
        left_out, self._suppressed = self._suppressed, 0
        return left_out

    def _prune(self, now: float) -> None:
        warned = self._warned
        while warned:
            oldest = next(iter(warned.values()))
            if now - oldest < self._every:
                break
            warned.popitem(last=False)


def left_out_text(count: int) -> str:
    """Say how many warnings were left out, for the end of the next one ('' for none)."""
    return f" ({count} similar warnings left out)" if count else ""


class Admission:
    """Which connections are pending, by source, and what the descriptor budget allows."""

    def __init__(self, options: RelayOptions) -> None:
        self._options = options
        self.budget = descriptor_budget(options)
        self._pending: dict[Connection, float] = {}
        self._keys: dict[Connection, Key] = {}
        # group -> member -> the member's pending connections, oldest first.
        self._groups: dict[str, dict[str, collections.OrderedDict[Connection, float]]] = {}
        self._sizes: collections.Counter[str] = collections.Counter()
        self.warnings = WarnLimiter()

    @property
    def pending(self) -> int:
        """Connections in their setup phase now."""
        return len(self._pending)

    def add(self, connection: Connection, key: Key) -> None:
        """Count `connection` as pending for the source `key`."""
        now = time.monotonic()
        group, member = key
        self._pending[connection] = now
        self._keys[connection] = key
        self._groups.setdefault(group, {}).setdefault(member, collections.OrderedDict())[
            connection
        ] = now
        self._sizes[group] += 1

    def done(self, connection: Connection) -> None:
        """Stop counting `connection`: it finished its setup, or closed."""
        if self._pending.pop(connection, None) is None:
            return
        group, member = self._keys.pop(connection)
        members = self._groups[group]
        queue = members[member]
        del queue[connection]
        if not queue:
            del members[member]
            if not members:
                del self._groups[group]
        self._sizes[group] -= 1
        if self._sizes[group] <= 0:
            del self._sizes[group]

    def room_for(self, key: Key) -> tuple[bool, Connection | None]:
        """
        Decide on a new connection from the source `key`.

        Returns:
            ``(admit, evict)``: whether to take it, and a pending connection to evict first.
        """
        now = time.monotonic()
        group, member = key
        queue = self._groups.get(group, {}).get(member)
        if queue is not None and len(queue) >= self._options.max_pending_per_source:
            return self._rotate(queue, now, ROTATE_AGE)
        if len(self._pending) < self._options.max_pending:
            return True, None
        largest, count = self._sizes.most_common(1)[0]
        if self._sizes[group] < count:
            # A smaller source takes the place of one of the largest's connections.
            return self._take_from(self._largest_member(largest), now)
        # The newcomer's uid (or address) holds the most: its members compete among
        # themselves the same way (a container's processes share its uid).
        queue = self._largest_member(group)
        mine = self._groups[group].get(member)
        if mine is None or len(mine) < len(queue):
            return self._take_from(queue, now)
        return self._rotate(queue, now, ROTATE_AGE)

    def _largest_member(self, group: str) -> collections.OrderedDict[Connection, float]:
        return max(self._groups[group].values(), key=len)

    def oldest_pending(self) -> Connection | None:
        """Return the pending connection to evict when descriptors run short, if old enough."""
        if not self._sizes:
            return None
        now = time.monotonic()
        largest, _count = self._sizes.most_common(1)[0]
        connection, since = next(iter(self._largest_member(largest).items()))
        return connection if now - since >= MIN_PENDING_AGE else None

    def _take_from(
        self, queue: collections.OrderedDict[Connection, float], now: float
    ) -> tuple[bool, Connection | None]:
        """Evict the oldest of a larger source: at once if it floods, else once it is old."""
        if len(queue) < 2:  # one pending connection may be a real client in its setup
            return self._rotate(queue, now, MIN_PENDING_AGE)
        connection = next(iter(queue))
        self._warn(self._keys[connection])
        return True, connection

    def _rotate(
        self, queue: collections.OrderedDict[Connection, float], now: float, age: float
    ) -> tuple[bool, Connection | None]:
        connection, since = next(iter(queue.items()))
        self._warn(self._keys[connection])
        if now - since >= age:
            return True, connection
        return False, None

    def _warn(self, key: Key) -> None:
        group, member = key
        left_out = self.warnings.allow(group)
        if left_out is None:
            return
        logger.warning(
            "relay: too many connections without a finished X11 setup; dropping the oldest of "
            "%s, which holds the most (at most %d pending per source, %d in all)%s",
            f"{group} ({member})" if member else group,
            self._options.max_pending_per_source,
            self._options.max_pending,
            left_out_text(left_out),
        )
