"""
Who is on the other end of a UNIX connection, and which local users a listener admits.

A UNIX socket tells the relay its peer's uid and pid (``SO_PEERCRED``, taken at connect time and
translated into the relay's namespaces). Two uses:

* Admission budgets count UNIX clients per peer (uid, then pid), as TCP clients are counted
  per address: one local user, or one container, flooding a socket then only ever competes
  with itself (see :mod:`.admission`).
* A listener that cannot authenticate its clients (``auth="forward"`` with a display that
  needs no cookie) and that other local users can reach (the abstract socket: abstract names
  have no permissions) admits only the user's own uids: the user, root, and the user's
  subordinate uids from ``/etc/subuid`` (a rootless container's users appear as those). Every
  other peer gets an X11 "Failed" reply.

Why refuse per listener, and not the whole configuration at start: with ``auth="forward"`` on a
display that admits the user without a cookie (xhost, ``SI:localuser``: common on desktops),
uid 65534 got a trusted connection through the unguarded abstract socket. Refusing that
configuration outright would also refuse the users it serves well: the mounted socket is
reachable only by the containers it is mounted into, whatever their uid (root, ``--user 1000``,
rootless Podman's subuids), and the abstract socket is reached by ``--network host``
containers, which run as root or the user in the common case. The peer's uid is known on UNIX
sockets, so the abstract socket can refuse exactly the peers that are not the user's. TCP
carries no credential (any local user can connect from a loopback address the allowlist
admits), so there the passthrough refuses the configuration at start instead.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import socket
import struct

import attrs


#: What ``SO_PEERCRED`` fills in: pid, uid, gid (three C ints).
_UCRED = struct.Struct("3i")
#: Where the subordinate uid ranges of users are listed (shadow-utils' format).
SUBUID_FILE = "/etc/subuid"


@attrs.frozen
class Peer:
    """A UNIX client as the kernel reports it (pid 0: not visible in our pid namespace)."""

    pid: int
    uid: int

    @property
    def key(self) -> tuple[str, str]:
        """The admission key: the uid groups a user's connections, the pid splits them."""
        return f"local uid {self.uid}", f"pid {self.pid}"

    def __str__(self) -> str:
        return f"uid {self.uid} (pid {self.pid})" if self.pid else f"uid {self.uid}"


def peer_credentials(sock: socket.socket) -> tuple[int, int, int] | None:
    """
    Return pid, uid and gid of a connected UNIX socket's peer (``SO_PEERCRED``).

    None where the kernel does not say (not a UNIX socket, a system without it). Taken when
    the peer connected, and translated into the relay's namespaces (pid 0, uid or gid
    65534 for what is not visible there).
    """
    if sock.family != socket.AF_UNIX or not hasattr(socket, "SO_PEERCRED"):
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    except OSError:
        return None
    pid, uid, gid = _UCRED.unpack(raw)
    return pid, uid, gid


def peer_of(sock: socket.socket) -> Peer | None:
    """Return the peer of a connected UNIX socket, or None where the kernel does not say."""
    found = peer_credentials(sock)
    return None if found is None else Peer(pid=found[0], uid=found[1])


@attrs.frozen(kw_only=True)
class OwnUids:
    """
    The uids that act for this process's user: the user, root, and the user's subuids.

    Attributes:
        uid: The user's uid.
        subuids: The user's subordinate uid ranges (a rootless engine maps a container's
            users to them: its root is the user's uid, its uid N is subuid start + N - 1).
    """

    uid: int
    subuids: tuple[range, ...] = ()

    def admits(self, uid: int) -> bool:
        """Tell whether a peer of `uid` acts for the user."""
        return uid in (0, self.uid) or any(uid in r for r in self.subuids)

    def describe(self) -> str:
        """Say which uids are admitted, for a refusal's reason."""
        ranges = "".join(f", {r.start}-{r.stop - 1}" for r in self.subuids)
        return f"uid {self.uid}, root{ranges}"


def own_uids(subuid_file: str = SUBUID_FILE) -> OwnUids:
    """Return the uids acting for the effective user, reading `subuid_file` if it exists."""
    uid = os.geteuid()
    names = {str(uid)}
    with contextlib.suppress(KeyError):
        names.add(pwd.getpwuid(uid).pw_name)
    ranges: list[range] = []
    try:
        with open(subuid_file, encoding="utf-8", errors="replace") as f:
            lines = f.read(1 << 20).splitlines()
    except OSError:
        lines = []
    for line in lines:
        fields = line.strip().split(":")
        if len(fields) != 3 or fields[0] not in names:
            continue
        try:
            start, count = int(fields[1]), int(fields[2])
        except ValueError:
            continue
        if start >= 0 and count > 0:
            ranges.append(range(start, start + count))
    return OwnUids(uid=uid, subuids=tuple(ranges))
