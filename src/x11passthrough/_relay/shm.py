"""
Shared memory for relayed clients, granted exactly as the X server grants it to a local one.

The X server resolves a System V ``ShmAttach`` id in *its* IPC namespace
and checks the segment's permissions against the credentials of the peer of its socket
(xserver ``Xext/shm.c``, ``shm_access``). Behind the relay that peer is the relay, so the
server checks the relay's credentials (the user's, or root's), never the container's. The
relay therefore:

* offers MIT-SHM to a client only when it has established that the client shares the X
  server's IPC namespace: the client's pid from ``SO_PEERCRED`` on the relay's UNIX socket
  (a container's host pid, as the relay runs in the host's pid namespace), its
  ``/proc/PID/ns/ipc`` against the server's (the server's pid from ``SO_PEERCRED`` on its
  connection to the display) and the relay's own (where it reads the segments' permissions).
  Anything it cannot read or compare (TCP, a pid it cannot see, a ``/proc`` link it may not read)
  keeps MIT-SHM hidden: fail closed;
* checks every ``ShmAttach`` against the segment's owner, creator and mode
  (``/proc/sysvipc/shm``, which lists every segment of the relay's IPC namespace whatever
  its mode, with ids in the reader's user namespace) and the client's ``SO_PEERCRED`` uid
  and gid, as seen from the host: a root user inside a user namespace is the uid it maps
  to, not root. :func:`may_attach` is the server's ``shm_access``, rule for rule (uid 0 may
  attach anything; the owner or creator uid by the owner bits; else the gid or creator gid
  by the group bits; else the other bits; supplementary groups count for nothing, as in the
  server). A refused attach has its id rewritten to one no segment has (-1), so the server
  itself answers BadAccess, the error a client connected directly would get, with the
  request's sequence number.

Descriptors (``ShmAttachFd``, ``ShmCreateSegment``) carry their own permission: the client
opened the memory it passes, and the server hands out memory it made; the relay forwards them
with the bytes they came with (see :mod:`.flows`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import stat

from collections.abc import Callable

import attrs

from .._x11.requests import Hidden
from .peers import peer_credentials


logger = logging.getLogger("x11passthrough")

#: ``SO_PEERPIDFD`` (Linux 6.5; Python 3.11's socket module does not name it).
_SO_PEERPIDFD = getattr(socket, "SO_PEERPIDFD", 77)
#: Where the segments of the reader's IPC namespace are listed.
SYSVIPC_SHM = "/proc/sysvipc/shm"

#: A check of one ``ShmAttach``: (shmid, read_only) -> may the client attach it.
AttachCheck = Callable[[int, bool], bool]


@attrs.frozen
class Credentials:
    """A peer of a UNIX socket as the relay sees it: host pid, uid and gid."""

    pid: int
    uid: int
    gid: int


@attrs.frozen
class Segment:
    """A System V segment's permissions, from ``/proc/sysvipc/shm``."""

    mode: int
    uid: int
    gid: int
    cuid: int
    cgid: int


def credentials_of(sock: socket.socket) -> Credentials | None:
    """Return the credentials of `sock`'s peer (a UNIX socket), or None where none are known."""
    found = peer_credentials(sock)
    if found is None:
        return None
    pid, uid, gid = found
    if pid <= 0 or uid < 0 or gid < 0:
        return None  # not visible from the relay's namespaces
    return Credentials(pid=pid, uid=uid, gid=gid)


def _peer_pidfd(sock: socket.socket, pid: int) -> int | None:
    """Return a pidfd of `sock`'s peer as it connected (``SO_PEERPIDFD``), else of `pid`."""
    with contextlib.suppress(OSError):
        return int.from_bytes(sock.getsockopt(socket.SOL_SOCKET, _SO_PEERPIDFD, 4), "little")
    with contextlib.suppress(OSError):
        return os.pidfd_open(pid)
    return None


def _alive(pidfd: int) -> bool:
    """Tell whether the process of `pidfd` still runs (a pid read meanwhile was its own)."""
    try:
        signal.pidfd_send_signal(pidfd, 0)
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def peer_ipc_namespace(sock: socket.socket, pid: int) -> tuple[int, int] | None:
    """
    Return the IPC namespace of `sock`'s peer, process `pid`, or None if it cannot be read.

    The pid is checked to still be the peer's after the namespace was read: a peer that
    exited, its pid reused by another process, gets None (``SO_PEERPIDFD``, Linux 6.5, pins
    the process that connected; older kernels narrow the window with a pidfd opened first).
    """
    pidfd = _peer_pidfd(sock, pid)
    try:
        found = ipc_namespace(pid)
        if pidfd is not None and not _alive(pidfd):
            return None
    finally:
        if pidfd is not None:
            os.close(pidfd)
    return found


def ipc_namespace(pid: int | str) -> tuple[int, int] | None:
    """Return the IPC namespace of process `pid` ("self" for the relay), or None if unreadable."""
    try:
        found = os.stat(f"/proc/{pid}/ns/ipc")
    except OSError:
        return None
    return (found.st_dev, found.st_ino)


def segment(shmid: int, table: str = SYSVIPC_SHM) -> Segment | None:
    """Return the permissions of segment `shmid` in the relay's IPC namespace, or None."""
    try:
        with open(table, encoding="ascii") as lines:
            next(lines, None)  # the header
            for line in lines:
                fields = line.split()
                if len(fields) < 11 or fields[1] != str(shmid):
                    continue
                return Segment(
                    mode=int(fields[2], 8),
                    uid=int(fields[7]),
                    gid=int(fields[8]),
                    cuid=int(fields[9]),
                    cgid=int(fields[10]),
                )
    except (OSError, ValueError):
        return None
    return None


def may_attach(who: Credentials, seg: Segment, *, read_only: bool) -> bool:
    """Tell whether the X server would let `who`, connected directly, attach `seg`."""
    if who.uid == 0:
        return True
    if who.uid in (seg.uid, seg.cuid):
        mask = stat.S_IRUSR | (0 if read_only else stat.S_IWUSR)
        return seg.mode & mask == mask
    if who.gid in (seg.gid, seg.cgid):
        mask = stat.S_IRGRP | (0 if read_only else stat.S_IWGRP)
        return seg.mode & mask == mask
    mask = stat.S_IROTH | (0 if read_only else stat.S_IWOTH)
    return seg.mode & mask == mask


@attrs.frozen
class Grant:
    """MIT-SHM granted to one client: its credentials, for the check of each attach."""

    client: Credentials

    def check(self, shmid: int, read_only: bool) -> bool:
        """Tell whether the client may attach `shmid` (an absent segment: no)."""
        found = segment(shmid)
        return found is not None and may_attach(self.client, found, read_only=read_only)


def grant(  # noqa: PLR0911 - one reason per fact that cannot be established
    client: socket.socket, display: socket.socket
) -> Grant | str:
    """
    Decide whether `client` may use MIT-SHM through the relay's connection to the `display`.

    Returns:
        The grant, or why not (for the log).
    """
    if client.family != socket.AF_UNIX or display.family != socket.AF_UNIX:
        return "shared memory and descriptors need UNIX sockets on both sides of the relay"
    who = credentials_of(client)
    if who is None:
        return "the relay cannot see the client's process (SO_PEERCRED)"
    server = credentials_of(display)
    if server is None:
        return "the relay cannot see the X server's process (SO_PEERCRED)"
    mine = ipc_namespace("self")
    theirs = peer_ipc_namespace(client, who.pid)
    if theirs is None:
        return f"the relay may not read the client's IPC namespace (/proc/{who.pid}/ns/ipc)"
    servers = peer_ipc_namespace(display, server.pid)
    if mine is None or servers is None:
        return "the relay may not read the X server's IPC namespace"
    if theirs != servers:
        return (
            "the client does not share the X server's IPC namespace, which a container gets "
            "with --ipc host (X11Passthrough(shm=True) or x11passthrough --shm yes adds it)"
        )
    if mine != servers:
        return "the relay does not share the X server's IPC namespace"
    return Grant(who)


def decide(
    client: socket.socket, display: socket.socket, hidden: Hidden, number: int
) -> tuple[Hidden, AttachCheck | None]:
    """
    Return what connection `number` keeps from its client, and its attach check if granted.

    Granted: MIT-SHM offered, each ``ShmAttach`` checked. Not granted: hidden, with why.
    """
    granted = grant(client, display)
    if isinstance(granted, str):
        return hidden.refusing_shm(granted), None
    logger.debug(
        "relay connection #%d: MIT-SHM granted to pid %d (uid %d, gid %d)",
        number,
        granted.client.pid,
        granted.client.uid,
        granted.client.gid,
    )
    return hidden.granting_shm(), granted.check
