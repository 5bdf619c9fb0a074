"""
A copying direction that carries file descriptors, with the bytes they came with.

Used on connections granted shared memory (:mod:`.shm`): MIT-SHM's ``ShmAttachFd`` passes a
descriptor with its request, ``ShmCreateSegment``'s reply one with its bytes.
"""

from __future__ import annotations

import array
import contextlib
import os
import socket

from .flows import CopyFlow, DescriptorLimitError


#: Most descriptors one message may carry (libxcb sends at most 16 with a request).
MAX_FDS_PER_MESSAGE = 16
#: Most descriptors a direction holds that its receiver has not been sent yet.
MAX_FDS_HELD = 64
_FD = array.array("i")


class FdCopyFlow(CopyFlow):
    """
    A copying direction that also carries file descriptors (``SCM_RIGHTS``), on UNIX sockets.

    The X server and libxcb read descriptors with the bytes they came with and queue them in
    order; a request or reply that needs one takes the next. So a descriptor keeps its
    meaning if it arrives no later than its bytes: each one received goes with the first send
    after it (with its bytes, or with bytes that came before them). Bounded: at most
    :data:`MAX_FDS_PER_MESSAGE` per message (libxcb sends at most 16 with a request; more,
    or a message the kernel had to cut short, ends the connection), at most
    :data:`MAX_FDS_HELD` held for one direction at once, and never past the relay's
    descriptor budget, so no client can take the host process's descriptors.
    """

    __slots__ = ("_ancillary", "_fds")

    def start(self) -> None:
        self._fds: list[int] = []
        self._ancillary = socket.CMSG_SPACE(MAX_FDS_PER_MESSAGE * _FD.itemsize)
        super().start()

    def _receive(self, scratch: memoryview, size: int) -> int:
        n, ancillary, flags, _ = self._src.recvmsg_into([scratch[:size]], self._ancillary)
        if not ancillary and not flags & socket.MSG_CTRUNC:
            return n
        received = array.array("i")
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                received.frombytes(data[: len(data) - len(data) % received.itemsize])
        descriptors = self._shared.descriptors
        self._fds.extend(received)
        descriptors.passed_in(len(received))
        if flags & socket.MSG_CTRUNC:
            raise DescriptorLimitError(
                f"the {self.src_role} sent more than {MAX_FDS_PER_MESSAGE} descriptors in one "
                "message; connection closed"
            )
        if len(self._fds) > MAX_FDS_HELD:
            raise DescriptorLimitError(
                f"the {self.src_role} sent more than {MAX_FDS_HELD} descriptors that the "
                f"{self.dst_role} has not taken yet; connection closed"
            )
        if descriptors.over_budget:
            raise DescriptorLimitError(
                "the relay is at its descriptor budget and cannot hold the descriptors the "
                f"{self.src_role} sent; connection closed"
            )
        return n

    def _send(self, data: bytearray | memoryview) -> int:
        fds = self._fds
        if not fds:
            return self._dst.send(data)
        sent = self._dst.sendmsg(
            [data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
        )
        self._drop_fds()
        return sent

    def _drop_fds(self) -> None:
        """Close the descriptors held (sent on, or the connection is closing)."""
        fds = self._fds
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._shared.descriptors.passed_on(len(fds))
        fds.clear()

    def detach(self) -> None:
        super().detach()
        self._drop_fds()
