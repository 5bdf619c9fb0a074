"""
Flows: each one direction of a relayed connection, copied or spliced.

A flow moves bytes from `src` to `dst` with backpressure; it reports to its
owner (the connection) through :class:`FlowOwner` and shares the relay's :class:`Shared`,
so it never reaches up into the relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import socket

from typing import TYPE_CHECKING, Protocol

from .._reasons import why
from .stats import Shared


if TYPE_CHECKING:
    from .._x11.requests import RequestFilter


#: A read at least this large is bulk transfer: the relay's loop then sleeps at once instead
#: of busy-polling, leaving the CPU to the programs that produce and consume the data.
BULK_READ = 64 * 1024
#: Size of a splice pipe (the kernel rounds it up to a power of two pages).
PIPE_SIZE = 256 * 1024
#: Most connections with a splice pipe at once: each pipe counts towards the per-user limit
#: of pipe memory (``/proc/sys/fs/pipe-user-pages-soft``), which other programs share.
MAX_SPLICE_PIPES = 64
#: Body bytes still to come of a filtered request at which they are spliced rather than copied.
BODY_SPLICE = 64 * 1024

HAVE_SPLICE = hasattr(os, "splice") and hasattr(fcntl, "F_SETPIPE_SZ")
_SPLICE_FLAGS = (os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK) if HAVE_SPLICE else 0
_RETRY = (BlockingIOError, InterruptedError)

logger = logging.getLogger("x11passthrough")


class FlowOwner(Protocol):
    """What a flow needs from the connection it belongs to."""

    def flow_finished(self, flow: Flow) -> None:
        """Both sides of `flow` are done: it passed the end of stream on."""

    def sent_eof(self, sock: socket.socket) -> bool:
        """Tell whether `sock` sent EOF."""

    def close(self, reason: str) -> None:
        """Close the connection normally."""

    def fail(self, reason: str) -> None:
        """Close the connection as failed."""

    def stalled(self, flow: Flow, timeout: float) -> None:
        """`flow`'s receiver took nothing of its full backlog for `timeout` seconds."""


class Flow:
    """
    One direction of a relayed connection: bytes from `src` to `dst`.

    A splicing flow gets its `pipe` (read end, write end), counted in the relay's ledger for
    as long as the flow holds it; the others get none.
    """

    __slots__ = (
        "_accounted",
        "_activity",
        "_capacity",
        "_conn",
        "_counters",
        "_dfd",
        "_dst",
        "_eof",
        "_filter",
        "_high",
        "_loop",
        "_low",
        "_pipe_r",
        "_pipe_w",
        "_read_size",
        "_reading",
        "_sfd",
        "_shared",
        "_src",
        "_stall_mark",
        "_stall_timeout",
        "_stall_timer",
        "_writing",
        "finished",
        "pending",
        "sent",
        "up",
    )

    def __init__(
        self,
        owner: FlowOwner,
        shared: Shared,
        loop: asyncio.AbstractEventLoop,
        src: socket.socket,
        dst: socket.socket,
        *,
        up: bool,
        request_filter: RequestFilter | None = None,
        pipe: tuple[int, int] | None = None,
    ) -> None:
        options = shared.options
        #: What the client's requests pass through (CopyFlow only; None for none).
        self._filter = request_filter
        self._conn = owner
        self._shared = shared
        self._loop = loop
        self._counters = shared.counters
        self._activity = shared.activity
        self._src = src
        self._dst = dst
        self._sfd = src.fileno()
        self._dfd = dst.fileno()
        self.up = up
        self._high = options.high_water
        self._low = options.low_water
        self._read_size = options.read_size
        self._stall_timeout = 0.0 if up else options.stall_timeout
        self._stall_timer: asyncio.TimerHandle | None = None
        self._stall_mark = 0
        self._reading = False
        self._writing = False
        self._eof = False
        self._accounted = 0
        self.finished = False
        self.pending = 0
        self.sent = 0
        self._pipe_r, self._pipe_w = (-1, -1) if pipe is None else pipe
        #: Bytes the pipe may hold for this flow.
        self._capacity = 0 if pipe is None else _adopt_pipe(shared, pipe, self._high)

    @property
    def src_role(self) -> str:
        return "client" if self.up else "X display"

    @property
    def dst_role(self) -> str:
        return "X display" if self.up else "client"

    def start(self) -> None:
        self._reading = True
        self._loop.add_reader(self._sfd, self._on_readable)

    def detach(self) -> None:
        """Unregister from the loop and forget the backlog (the connection is closing)."""
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        if self._reading:
            self._reading = False
            self._loop.remove_reader(self._sfd)
        if self._writing:
            self._writing = False
            self._loop.remove_writer(self._dfd)
        self.pending = 0
        self._account()
        if self._pipe_r >= 0:
            _release_pipe(self._shared, (self._pipe_r, self._pipe_w))
            self._pipe_r = self._pipe_w = -1

    def _count(self, sent: int) -> None:
        self.sent += sent
        if self.up:
            self._counters.bytes_up += sent
        else:
            self._counters.bytes_down += sent

    def _account(self) -> None:
        delta = self.pending - self._accounted
        if delta:
            self._accounted = self.pending
            counters = self._counters
            counters.buffered += delta
            counters.buffered_peak = max(counters.buffered_peak, counters.buffered)

    def _pause(self) -> None:
        if self._reading:
            self._reading = False
            self._loop.remove_reader(self._sfd)
        if self._stall_timeout and self._stall_timer is None and not self._eof:
            self._stall_mark = self.sent
            self._stall_timer = self._loop.call_later(self._stall_timeout, self._check_stall)

    def _check_stall(self) -> None:
        """Drop the client if it took nothing of a full backlog for `stall_timeout`."""
        self._stall_timer = None
        if self._reading or self._eof or self.finished:
            return
        if self.sent == self._stall_mark:
            self._conn.stalled(self, self._stall_timeout)
            return
        self._stall_mark = self.sent
        self._stall_timer = self._loop.call_later(self._stall_timeout, self._check_stall)

    def _resume(self) -> None:
        if not self._reading and not self._eof:
            self._reading = True
            self._loop.add_reader(self._sfd, self._on_readable)

    def _want_write(self) -> None:
        if not self._writing:
            self._writing = True
            self._loop.add_writer(self._dfd, self._on_writable)

    def _drained(self) -> None:
        """Call when the backlog became empty."""
        if self._writing:
            self._writing = False
            self._loop.remove_writer(self._dfd)
        if self._eof:
            self._finish()
        else:
            self._resume()

    def _on_eof(self) -> None:
        self._eof = True
        self._pause()
        if not self.pending:
            self._finish()

    def _finish(self) -> None:
        """Pass the end of stream on: half-close `dst`, keep the other direction going."""
        if self.finished:
            return
        self.finished = True
        with contextlib.suppress(OSError):
            self._dst.shutdown(socket.SHUT_WR)
        self._conn.flow_finished(self)

    def _failed(self, exc: OSError, role: str) -> None:
        conn = self._conn
        if isinstance(exc, DescriptorLimitError):
            logger.warning("relay: %s", exc)
            conn.fail(f"x11passthrough: {exc}")
            return
        reason = f"{role} connection failed: {why(exc)}"
        if role == self.dst_role and conn.sent_eof(self._dst):
            # A peer that sent EOF and then closed (not just half-closed) refuses what is
            # still on its way: it ended the connection, that is no error.
            conn.close(f"the {role} closed the connection ({reason})")
        else:
            conn.fail(reason)

    @property
    def eof(self) -> bool:
        """True once `src` sent EOF."""
        return self._eof

    @property
    def src(self) -> socket.socket:
        return self._src

    def _on_readable(self) -> None:
        raise NotImplementedError

    def _on_writable(self) -> None:
        raise NotImplementedError

    def _splice_in(self, pipe_w: int, room: int, held: int) -> int:
        """
        Move at most `room` bytes from `src` into a splice pipe (holding `held` already).

        The read of both splicing flows. Returns how many bytes moved; 0 when none did and
        the flow was dealt with: paused (the pipe has no free slot while it holds bytes: wait
        for `dst`), failed, or at its end of stream.
        """
        try:
            n = os.splice(self._sfd, pipe_w, room, flags=_SPLICE_FLAGS)
        except _RETRY:
            if held:
                # The pipe ran out of slots (it counts buffers, not bytes): wait for `dst`.
                self._pause()
            return 0
        except OSError as exc:
            self._failed(exc, self.src_role)
            return 0
        if not n:
            self._on_eof()
        elif n >= BULK_READ:
            self._activity.bulk = True
        return n


class CopyFlow(Flow):
    """
    A direction that moves bytes through user space, copying only what `dst` refuses.

    With a :class:`~x11passthrough._x11.requests.RequestFilter` (the client's direction), every
    byte passes the filter first, which may rewrite it or hold it back for the next read.
    """

    __slots__ = ("_backlog", "_offset")

    def start(self) -> None:
        """Start with an empty backlog (the request filter came with the constructor)."""
        self._backlog = bytearray()
        self._offset = 0
        super().start()

    def _on_readable(self) -> None:
        pending = self.pending
        size = min(self._read_size, self._high - pending) if pending else self._read_size
        scratch = self._shared.scratch
        try:
            n = self._receive(scratch, size)
        except _RETRY:
            return
        except OSError as exc:
            self._failed(exc, self.src_role)
            return
        if not n:
            self._on_eof()
            return
        if n >= BULK_READ:
            self._activity.bulk = True
        data: bytearray | memoryview = scratch[:n]
        if self._filter is not None:
            data = self._filtered(self._filter, data)
            n = len(data)
            if not n:
                return
        if pending:
            self._backlog += data
            self.pending = pending + n
        else:
            try:
                sent = self._send(data)
            except _RETRY:
                sent = 0
            except OSError as exc:
                self._failed(exc, self.dst_role)
                return
            self._count(sent)
            if sent == n:
                return
            self._backlog += data[sent:]
            self.pending = n - sent
            self._want_write()
        self._account()
        if self.pending >= self._high:
            self._pause()

    def _receive(self, scratch: memoryview, size: int) -> int:
        """Read at most `size` bytes into `scratch`; return how many."""
        return self._src.recv_into(scratch, size)

    def _send(self, data: bytearray | memoryview) -> int:
        """Send what `dst` takes of `data`; return how many bytes."""
        return self._dst.send(data)

    def _filtered(
        self, request_filter: RequestFilter, data: bytearray | memoryview
    ) -> bytearray | memoryview:
        """Pass `data` through the request filter; empty if it holds all back or failed."""
        passed = request_filter.feed(data)
        problem = request_filter.problem
        if problem is not None:
            logger.warning("relay: %s", problem)
            self._conn.fail(f"x11passthrough: {problem}")
            return passed[:0]
        return passed

    def _on_writable(self) -> None:
        backlog = self._backlog
        offset = self._offset
        try:
            with memoryview(backlog) as view:
                sent = self._send(view[offset:])
        except _RETRY:
            return
        except OSError as exc:
            self._failed(exc, self.dst_role)
            return
        self._count(sent)
        self.pending -= sent
        if not self.pending:
            backlog.clear()
            self._offset = 0
            self._account()
            self._drained()
            return
        offset += sent
        if offset >= 65536 and offset * 2 >= len(backlog):
            del backlog[:offset]
            offset = 0
        self._offset = offset
        self._account()
        if self.pending <= self._low:
            self._resume()

    def detach(self) -> None:
        super().detach()
        self._backlog = bytearray()


class DescriptorLimitError(OSError):
    """A peer sent more descriptors than the relay holds for one connection."""


class BodySpliceFlow(CopyFlow):
    """
    The client's direction through the request filter, with large request bodies spliced.

    Once the filter has read a request's header and at least :data:`BODY_SPLICE` bytes of
    its body are still to come (a PutImage's pixels), those bytes move from `src` through a
    pipe to `dst` with ``os.splice``, never entering user space: the filter has nothing to
    judge in a body it has framed. The filter counts them as passed, and the flow copies
    (and filters) again from the next request on. It starts splicing only with an empty
    backlog, and reads nothing more to copy until the pipe is empty, so bytes stay in order.
    """

    __slots__ = ("_body", "_in_pipe")

    def __init__(
        self,
        owner: FlowOwner,
        shared: Shared,
        loop: asyncio.AbstractEventLoop,
        src: socket.socket,
        dst: socket.socket,
        *,
        pipe: tuple[int, int],
        up: bool,
        request_filter: RequestFilter | None = None,
    ) -> None:
        super().__init__(
            owner, shared, loop, src, dst, up=up, request_filter=request_filter, pipe=pipe
        )
        #: Bytes of the current request's body still to splice from `src`.
        self._body = 0
        #: Bytes in the pipe, not yet taken by `dst`.
        self._in_pipe = 0

    def _on_readable(self) -> None:
        if self._body:
            self._splice_body()
            return
        if self._in_pipe:  # the body's end is still in the pipe: copy nothing before it
            self._pause()
            return
        super()._on_readable()
        request_filter = self._filter
        if request_filter is None or self.pending or self.finished or self._eof:
            return
        left = request_filter.body_left
        if left >= BODY_SPLICE:
            request_filter.pass_body(left)
            self._body = left

    def _splice_body(self) -> None:
        room = min(self._body, self._read_size, self._capacity - self._in_pipe)
        if room <= 0:
            self._pause()
            return
        n = self._splice_in(self._pipe_w, room, self._in_pipe)
        if not n:
            return
        self._body -= n
        self._in_pipe += n
        self.pending += n
        if not self._writing:
            if not self._splice_out():
                return
            if self._in_pipe:
                self._want_write()
        self._account()
        if self._in_pipe >= self._capacity or (not self._body and self._in_pipe):
            self._pause()

    def _splice_out(self) -> bool:
        """Move what `dst` takes from the pipe; False if the connection failed."""
        try:
            sent = os.splice(self._pipe_r, self._dfd, self._in_pipe, flags=_SPLICE_FLAGS)
        except _RETRY:
            return True
        except OSError as exc:
            self._failed(exc, self.dst_role)
            return False
        self._count(sent)
        self._in_pipe -= sent
        self.pending -= sent
        return True

    def _on_writable(self) -> None:
        if not self._in_pipe:
            super()._on_writable()
            return
        if not self._splice_out():
            return
        self._account()
        if not self.pending:
            self._drained()
        elif self._body and self.pending <= self._low:
            self._resume()

    def detach(self) -> None:
        super().detach()
        self._in_pipe = self._body = 0


class SpliceFlow(Flow):
    """A direction that moves bytes with ``os.splice`` through its pipe, never into user space."""

    __slots__ = ()

    def _on_readable(self) -> None:
        pending = self.pending
        n = self._splice_in(self._pipe_w, min(self._read_size, self._capacity - pending), pending)
        if not n:
            return
        pending += n
        if not self._writing:
            try:
                sent = os.splice(self._pipe_r, self._dfd, pending, flags=_SPLICE_FLAGS)
            except _RETRY:
                sent = 0
            except OSError as exc:
                self._failed(exc, self.dst_role)
                return
            self._count(sent)
            pending -= sent
            self.pending = pending
            if not pending:
                if self._accounted:
                    self._account()
                return
            self._want_write()
        self.pending = pending
        self._account()
        if pending >= self._capacity:
            self._pause()

    def _on_writable(self) -> None:
        try:
            sent = os.splice(self._pipe_r, self._dfd, self.pending, flags=_SPLICE_FLAGS)
        except _RETRY:
            return
        except OSError as exc:
            self._failed(exc, self.dst_role)
            return
        self._count(sent)
        self.pending -= sent
        self._account()
        if not self.pending:
            self._drained()
        elif self.pending <= self._low:
            self._resume()


def _adopt_pipe(shared: Shared, pipe: tuple[int, int], high: int) -> int:
    """Count a flow's splice `pipe` in the relay's ledger; return how much the flow may fill."""
    shared.descriptors.pipe_opened()
    return min(fcntl.fcntl(pipe[1], fcntl.F_GETPIPE_SZ), high)


def _release_pipe(shared: Shared, pipe: tuple[int, int]) -> None:
    """Close a flow's splice `pipe` and take it off the relay's ledger."""
    for fd in pipe:
        os.close(fd)
    shared.descriptors.pipe_closed()
