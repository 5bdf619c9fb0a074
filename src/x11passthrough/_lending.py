"""
Lending: reserve display M, open the relay's listeners, write the session files.

It does what :mod:`._plan` decided with the gates :mod:`._policy` chose, and registers every
undo step on the caller's :class:`~._cleanup.Cleanup`. Where the relay listens is kept as
:class:`~._display._endpoint.Endpoint` values, which ``doctor`` connects to as a container
would.
"""

from __future__ import annotations

import logging
import socket

from pathlib import PurePosixPath

import attrs

from . import _session
from ._args import DockerRunArgs
from ._cleanup import Cleanup
from ._display._endpoint import Endpoint
from ._display._name import X_TCP_PORT
from ._display._reserve import ServerPlaces, reserve
from ._options import Options
from ._plan import Plan
from ._policy import Policy
from ._relay.options import Listener
from ._relay.peers import own_uids
from ._session_base import Directory
from ._x11.wire import MIT_MAGIC_COOKIE_1
from ._xauth.format import Family, XauthEntry, dump
from .exceptions import ConfigurationError, X11PassthroughError


logger = logging.getLogger("x11passthrough")

#: Where the relay's socket appears in the container: where X clients look for display M.
CONTAINER_SOCKET_DIR = PurePosixPath("/tmp/.X11-unix")


@attrs.frozen(kw_only=True)
class Lent:
    """
    What the relay serves and the containers get.

    Attributes:
        number: The display number M.
        listeners: The relay's listening sockets, each with its gate.
        endpoints: Where those listen, in the same order.
        args: What a container needs.
    """

    number: int
    listeners: tuple[Listener, ...]
    endpoints: tuple[Endpoint, ...]
    args: DockerRunArgs


def lend(
    chosen: Plan, gates: Policy, options: Options, places: ServerPlaces, cleanup: Cleanup
) -> Lent:
    """
    Reserve a display number, open the relay's listeners and write the container's files.

    Args:
        chosen: The plan.
        gates: The gates and the session cookie.
        options: The passthrough's options (display range, container paths and names).
        places: Where X servers announce their numbers.
        cleanup: Where the undo steps go.

    Raises:
        NoFreeDisplayError: No number is free.
        BindError: A listener cannot be bound.
        X11PassthroughError: The session files cannot be written.
    """
    unix = chosen.transport == "unix"
    reservation = reserve(
        options.display_range,
        chosen.bind,
        places,
        abstract=unix,
        freebind=chosen.freebind,
        option="display_range",
    )
    cleanup.add("releasing the display number", reservation.close)
    number = reservation.number
    if gates.shared_gate is None and not unix:
        raise ConfigurationError(  # pragma: no cover - the policy refuses this plan first
            "a TCP listener without a cookie to check would admit anyone who reaches it"
        )
    # Anyone on this host may connect to the abstract socket (abstract names have no
    # permissions): without a cookie to check there, only the user's own processes may.
    peers = own_uids() if gates.shared_gate is None else None
    listeners = [Listener(sock, gates.shared_gate, peers=peers) for sock in reservation.sockets]
    if unix:
        endpoints = [Endpoint.abstract(places.socket_path(number))]
    else:
        endpoints = [Endpoint.tcp(str(a), X_TCP_PORT + number) for a in chosen.bind]
    if chosen.make_host_dir and chosen.host_dir is not None:
        chosen.host_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Held by descriptor from here on: no path below is looked up again (see _session).
    session = _session.create_directory(chosen.host_dir)
    cleanup.add(f"removing {session.path}", session.remove)
    socket_path = None
    if unix:
        sockets = session.mkdir("X11-unix", 0o755)
        socket_path = sockets.path / f"X{number}"
        private = _open_listener(sockets, socket_path.name, cleanup)
        listeners.append(Listener(private, gates.private_gate))
        endpoints.append(Endpoint.unix(str(socket_path)))
    xauthority = None
    if gates.cookie:
        entries = _entries(number, gates.cookie, chosen, options.container_hostname)
        mode = 0o600 if gates.private_file else 0o644
        xauthority = session.write_file("Xauthority", dump(entries), mode=mode)
    args = DockerRunArgs(
        display=f":{number}" if unix else f"tcp/{chosen.host_alias}:{number}",
        xauthority=xauthority,
        container_xauthority=options.container_xauthority,
        socket=socket_path,
        container_socket=CONTAINER_SOCKET_DIR / f"X{number}" if unix else None,
        extra_hosts={chosen.host_alias: chosen.gateway}
        if chosen.host_alias and chosen.gateway
        else {},
        hostname=options.container_hostname,
    )
    return Lent(number=number, listeners=tuple(listeners), endpoints=tuple(endpoints), args=args)


def _open_listener(directory: Directory, name: str, cleanup: Cleanup) -> socket.socket:
    """Listen on `name` in `directory`, connectable by any container user (mode 0666)."""
    path = directory.path / name
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(directory.address(name))
        # Any container user may connect: the socket is reachable only through the mount, in
        # a 0700 directory; the session cookie (or this socket's privacy) guards the rest.
        directory.chmod(name, 0o666)
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise X11PassthroughError(f"cannot listen on {path}: {e.strerror or e}") from e
    except BaseException:
        sock.close()
        raise
    cleanup.add(f"closing {path}", sock.close)
    return sock


def _entries(
    number: int, cookie: bytes, chosen: Plan, container_hostname: str | None
) -> list[XauthEntry]:
    """
    Return the container's authority entries: FamilyWild for libxcb, and python-xlib's.

    python-xlib ignores FamilyWild: over TCP (``DISPLAY=tcp/HOST:M``) it looks up
    FamilyInternet with the address it connected to, which is the relay's; on the private
    socket it finds nothing (FamilyLocal by a host name nobody can know) and sends no
    authorization, which that socket admits.
    """
    entries = [XauthEntry(Family.WILD, b"", number, MIT_MAGIC_COOKIE_1, cookie)]
    for address in chosen.bind:
        family = Family.INTERNET if address.version == 4 else Family.INTERNET6
        if not address.is_unspecified:
            entries.append(XauthEntry(family, address.packed, number, MIT_MAGIC_COOKIE_1, cookie))
    if container_hostname:
        name = container_hostname.encode()
        entries.append(XauthEntry(Family.LOCAL, name, number, MIT_MAGIC_COOKIE_1, cookie))
    return entries
