"""
Reservations: claim a free display number M by binding TCP port 6000+M.

:meth:`x11passthrough.display.DisplayLocator.reserve` is the public door.
"""

from __future__ import annotations

import errno
import logging
import os
import pwd
import socket

from collections.abc import Sequence
from types import TracebackType

import attrs

from .._reasons import why
from .._validate import MAX_DISPLAY_NUMBER, IPAddress
from ..exceptions import BindError, Mention, NoFreeDisplayError
from ._name import X_TCP_PORT


logger = logging.getLogger("x11passthrough")

#: The display numbers :meth:`DisplayLocator.reserve` tries by default, in order: first the
#: range Briefcase uses (50-299), above the low numbers local X servers take (0 upwards;
#: Xwayland under GDM uses 1024; SSH X11 forwarding counts up from 10, but it only listens on
#: TCP, which the bind check sees), then on up to 9999. Any local user may hold abstract names
#: (they have no permissions): holding @/tmp/.X11-unix/X50 to X299 once made every start fail,
#: and the wider range makes a squatter hold thousands of sockets instead.
DEFAULT_DISPLAY_RANGE = range(50, 10000)
#: Where Linux lists the UNIX sockets of this network namespace, abstract ones with a "@".
PROC_NET_UNIX = "/proc/net/unix"


@attrs.frozen(kw_only=True)
class ServerPlaces:
    """
    Where X servers announce a display number.

    Attributes:
        socket_dir: Directory of the UNIX sockets ``X<N>`` (and name prefix of the abstract ones).
        lock_dir: Directory of the lock files ``.X<N>-lock``.
        timeout: Seconds a probe of an abstract socket may take.
        abstract: Whether to probe abstract sockets (Linux only).
    """

    socket_dir: str
    lock_dir: str
    timeout: float
    abstract: bool

    def socket_path(self, number: int) -> str:
        """Return ``socket_dir/X<number>``."""
        return os.path.join(self.socket_dir, f"X{number}")

    def lock_path(self, number: int) -> str:
        """Return ``lock_dir/.X<number>-lock``."""
        return os.path.join(self.lock_dir, f".X{number}-lock")


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


class _PortInUseError(Exception):
    """Port 6000+M is taken (internal signal)."""


#: Linux's IP_FREEBIND and IPV6_FREEBIND (the socket module does not name them).
_FREEBIND = {socket.AF_INET: (socket.IPPROTO_IP, 15), socket.AF_INET6: (socket.IPPROTO_IPV6, 78)}


def _listen(
    address: str, family: socket.AddressFamily, port: int, *, freebind: bool = False
) -> socket.socket:
    """Bind and listen on ``address:port``; raise _PortInUseError or BindError."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # SO_REUSEADDR, as X servers set it: lets us bind over TIME_WAIT leftovers, while
        # Linux still refuses to bind over (or to listen next to) any listening socket.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if freebind:
            # An engine's bridge address that appears only with its first container.
            sock.setsockopt(*_FREEBIND[family], 1)
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


def reserve(
    numbers: Sequence[int],
    bind: Sequence[IPAddress],
    places: ServerPlaces,
    *,
    abstract: bool = False,
    freebind: bool = False,
    option: str = "range",
) -> Reservation:
    """
    Claim the first free number of `numbers` and listen on port 6000+M of each `bind` address.

    With `abstract`, the claim is (also) a listener on the abstract socket
    ``@socket_dir/XM``: a client of ``:M`` in this network namespace (an ``--network host``
    container) tries that name first, so it must be ours, not a squatter's. Without `bind`,
    TCP port 6000+M is then neither checked nor used. With `freebind`, the `bind` addresses
    need not exist yet (Linux ``IP_FREEBIND``): connections arrive once an interface has one.
    `option` is the caller's name for `numbers`, which the error suggests widening.

    The arguments are already valid (see :mod:`x11passthrough._validate`); the public
    :meth:`~x11passthrough.display.DisplayLocator.reserve` documents the rules.

    Raises:
        NoFreeDisplayError: Every number is taken.
        BindError: Binding failed for another reason than "in use".
    """
    plan = [(str(ip), socket.AF_INET6 if ip.version == 6 else socket.AF_INET) for ip in bind]
    held = busy = 0
    examples: list[str] = []
    listed = abstract_names() if places.abstract else None
    squatted: list[str] = []
    for number in numbers:
        reason = held_by_server(number, places, listed=listed)
        if reason is None:
            reservation = _try_claim(
                number, plan, places.socket_path(number) if abstract else None, freebind
            )
            if reservation is not None:
                where = ", ".join(f"{a}:{p}" for a, p in reservation.addresses) or (
                    f"@{places.socket_path(number)}" if abstract else "no address"
                )
                logger.debug("reserved display number %d (%s)", number, where)
                return reservation
            busy += 1
            reason = (
                f"TCP port {X_TCP_PORT + number} is in use"
                if plan
                else f"abstract socket @{places.socket_path(number)} is in use"
            )
            if not plan:
                squatted.append(places.socket_path(number))
        else:
            held += 1
            if reason.startswith("abstract socket @"):
                squatted.append(places.socket_path(number))
        logger.debug("display number %d is taken: %s", number, reason)
        if len(examples) < 3:
            examples.append(f"{number}: {reason}")
    low, high = _bounds(numbers)
    wider = range(low, min(high + 501, MAX_DISPLAY_NUMBER + 1))
    more = ", ..." if held + busy > len(examples) else ""
    raise NoFreeDisplayError(
        f"no free display number in {_range_text(numbers)}: {held} held by X servers or "
        f"other processes (socket, lock file or abstract socket), {busy} with TCP port "
        f"6000+N in use ({'; '.join(examples)}{more}){_holders_text(squatted)}",
        option=option,
        value=wider,
        hint=("pass a wider range, e.g. ", Mention(option, wider)),
    )


def abstract_names(path: str = PROC_NET_UNIX) -> dict[str, list[int]] | None:
    """
    Return the abstract socket names of this network namespace and their inodes.

    Reading the list once is instant and never touches a listener; probing each name by
    connecting may wake a lazily started server, and blocks while a squatter's backlog is
    full. None when the list cannot be read (the caller then probes).
    """
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()[1:]
    except OSError:
        return None
    names: dict[str, list[int]] = {}
    for line in lines:
        # Num RefCount Protocol Flags Type St Inode Path
        fields = line.split(None, 7)
        if len(fields) < 8 or not fields[7].startswith("@"):
            continue
        try:
            inode = int(fields[6])
        except ValueError:
            continue
        names.setdefault(fields[7][1:], []).append(inode)
    return names


def socket_holders(inodes: set[int]) -> dict[int, tuple[int, int]]:
    """
    Map socket inodes to the ``(pid, uid)`` of a process holding them, where /proc shows it.

    Root sees every process's descriptors; another user only their own.
    """
    found: dict[int, tuple[int, int]] = {}
    try:
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return found
    for pid in pids:
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
            uid = os.stat(f"/proc/{pid}").st_uid
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"{fd_dir}/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inode = int(target[8:-1])
                if inode in inodes and inode not in found:
                    found[inode] = (pid, uid)
    return found


def _holders_text(squatted: list[str]) -> str:
    """Say who holds the abstract names in `squatted` (uid and user name), where known."""
    names = abstract_names()
    if not squatted or names is None:
        return ""
    inodes = {inode for path in squatted for inode in names.get(path, ())}
    holders = socket_holders(inodes)
    counts: dict[str, int] = {}
    for path in squatted:
        owners = {holders[i] for i in names.get(path, ()) if i in holders}
        who = ", ".join(sorted({_user_text(uid, pid) for pid, uid in owners}))
        who = who or "another process (its owner is not visible to this user)"
        counts[who] = counts.get(who, 0) + 1
    shown = "; ".join(f"{count} by {who}" for who, count in counts.items())
    return f"; abstract socket names held: {shown}"


def _user_text(uid: int, pid: int) -> str:
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid} (pid {pid})"
    return f"uid {uid} ({name}, pid {pid})"


def held_by_server(
    number: int, places: ServerPlaces, *, listed: dict[str, list[int]] | None = None
) -> str | None:
    """
    Return why an X server holds `number` (socket file, lock, abstract), or None.

    `listed` (from :func:`abstract_names`) answers for abstract sockets without a probe.
    """
    path = places.socket_path(number)
    try:
        os.lstat(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        return f"cannot check {path}: {e.strerror}"
    else:
        return f"{path} exists"
    reason = _lock_holder(number, places)
    if reason is not None:
        return reason
    if places.abstract:
        if listed is not None:
            return f"abstract socket @{path} is held" if path in listed else None
        return _abstract_in_use(path, places.timeout)
    return None


def _lock_holder(number: int, places: ServerPlaces) -> str | None:
    lock = places.lock_path(number)
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


def _abstract_in_use(path: str, timeout: float) -> str | None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect("\0" + path)
        except OSError as e:
            if e.errno in {errno.ECONNREFUSED, errno.ENOENT}:
                return None
            return f"abstract socket @{path}: {why(e, timeout)}"
    return f"abstract socket @{path} answers"


def _claim_abstract(path: str) -> socket.socket | None:
    """Listen on the abstract socket named `path`; return None when someone holds it."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind("\0" + path)
        sock.listen()
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            return None
        raise BindError(e.errno, f"cannot listen on abstract socket @{path}: {e.strerror}") from e
    return sock


def _try_claim(
    number: int,
    plan: list[tuple[str, socket.AddressFamily]],
    abstract: str | None,
    freebind: bool,
) -> Reservation | None:
    port = X_TCP_PORT + number
    check = None
    if plan:
        in_use, check = _wildcard_check(port)
        if in_use:
            return None
    sockets: list[socket.socket] = []
    try:
        if abstract is not None:
            claim = _claim_abstract(abstract)
            if claim is None:
                return None
            sockets.append(claim)
        for address, family in plan:
            sockets.append(_listen(address, family, port, freebind=freebind))
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
    addresses = tuple(
        (str(s.getsockname()[0]), int(s.getsockname()[1]))
        for s in sockets
        if s.family != socket.AF_UNIX
    )
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


def _range_text(numbers: Sequence[int]) -> str:
    if isinstance(numbers, range):
        return repr(numbers)
    if len(numbers) <= 8:
        return f"display numbers {list(numbers)}"
    low, high = _bounds(numbers)
    return f"{len(numbers)} display numbers from {low} to {high}"
