"""
Admission control: bounded unauthenticated connections, and descriptors kept for the host.

Strictly private.

A client that opens connections and never finishes its setup costs a descriptor each. Left
alone, a container without the cookie could exhaust the embedding process's descriptors (its
own ``open()`` and ``subprocess.run`` then fail with EMFILE) and delay every real client. So:

* Connections still in their setup phase are capped per source address and in total. At a
  cap, the oldest pending connection is evicted, if it has had at least
  :data:`MIN_PENDING_AGE` to send its setup (a real client sends it at once); otherwise the
  newcomer is refused. An idle flood thus rotates through its own connections, while a real
  client that connects in the middle of it is served.
* The relay keeps to a descriptor budget: the soft ``RLIMIT_NOFILE`` minus what the process
  had open at start minus a reserve for the host process. At the budget it evicts pending
  connections first, and otherwise stops accepting until a connection closes.
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

#: How long a pending connection is safe from eviction: a real client sends its setup message
#: right after connecting, far within this.
MIN_PENDING_AGE = 0.1
#: Seconds between two warnings about the same source's flood.
WARN_EVERY = 60.0


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


class Admission:
    """Which connections are pending, by source, and what the descriptor budget allows."""

    def __init__(self, options: RelayOptions) -> None:
        self._options = options
        self.budget = descriptor_budget(options)
        self._pending: dict[Connection, float] = {}
        self._by_source: dict[str, collections.OrderedDict[Connection, float]] = {}
        self._warned: dict[str, float] = {}

    @property
    def pending(self) -> int:
        """Connections in their setup phase now."""
        return len(self._pending)

    def add(self, connection: Connection, source: str) -> None:
        """Count `connection` as pending for `source`."""
        now = time.monotonic()
        self._pending[connection] = now
        self._by_source.setdefault(source, collections.OrderedDict())[connection] = now

    def done(self, connection: Connection, source: str) -> None:
        """Stop counting `connection`: it finished its setup, or closed."""
        self._pending.pop(connection, None)
        queue = self._by_source.get(source)
        if queue is not None:
            queue.pop(connection, None)
            if not queue:
                del self._by_source[source]

    def room_for(self, source: str) -> tuple[bool, Connection | None]:
        """
        Decide on a new connection from `source`.

        Returns:
            ``(admit, evict)``: whether to take it, and a pending connection to evict first.
        """
        now = time.monotonic()
        queue = self._by_source.get(source)
        if queue is not None and len(queue) >= self._options.max_pending_per_source:
            return self._oldest(queue, now, source)
        if len(self._pending) >= self._options.max_pending:
            return self._oldest(self._pending, now, source)
        return True, None

    def oldest_pending(self) -> Connection | None:
        """Return the pending connection to evict when descriptors run short, if old enough."""
        now = time.monotonic()
        for connection, since in self._pending.items():
            return connection if now - since >= MIN_PENDING_AGE else None
        return None

    def _oldest(
        self, queue: dict[Connection, float], now: float, source: str
    ) -> tuple[bool, Connection | None]:
        connection, since = next(iter(queue.items()))
        self._warn(source)
        if now - since >= MIN_PENDING_AGE:
            return True, connection
        return False, None

    def _warn(self, source: str) -> None:
        now = time.monotonic()
        if now - self._warned.get(source, -WARN_EVERY) >= WARN_EVERY:
            self._warned[source] = now
            logger.warning(
                "relay: %s keeps connections open without finishing their X11 setup; the "
                "oldest are dropped (at most %d pending per source, %d in all)",
                source,
                self._options.max_pending_per_source,
                self._options.max_pending,
            )
