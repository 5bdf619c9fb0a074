"""
The container side of a passthrough: which transport reaches the containers, and what they get.

Strictly private.

* ``unix`` (the default for engines on this host's kernel: Docker Engine rootful and
  rootless, Podman rootful and rootless, nerdctl): the relay listens on a socket in the
  session's private directory, which is bind-mounted into the container as
  ``/tmp/.X11-unix/XM``; ``DISPLAY=:M``. No network at all: it works with ``--network none``,
  custom networks, firewalls, and rootless engines that cannot reach the host. The abstract
  socket ``@/tmp/.X11-unix/XM`` is held too, because a ``--network host`` container's client
  tries it first and a squatter must not have it.
* ``tcp`` (the default for engines in a VM: Docker Desktop and the like, which cannot share
  sockets): the relay listens on TCP 6000+M of an address the containers reach: the host's
  loopback for VM engines (their ``host.docker.internal`` is forwarded there), the bridge
  gateway (docker0) for Docker Engine; never a wildcard address by default.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket

from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Literal

import attrs

from . import _engine, _netinfo, _session
from ._args import DockerRunArgs
from ._cleanup import Cleanup
from ._display._reserve import ServerPlaces, reserve
from ._relay.options import Listener, SetupFilter
from ._relay.peers import own_uids
from ._validate import IPAddress, IPNetwork
from ._x11.wire import MIT_MAGIC_COOKIE_1
from ._xauth.format import Family, XauthEntry, dump
from .exceptions import ConfigurationError, X11PassthroughError


logger = logging.getLogger("x11passthrough")

#: How containers reach the relay: ``"unix"`` (a bind-mounted socket), ``"tcp"``, or
#: ``"auto"`` (chosen by the engine: UNIX where it shares this host's kernel).
Transport = Literal["auto", "unix", "tcp"]
#: Which engine runs the containers: ``"docker"`` (Docker Engine), ``"podman"``,
#: ``"desktop"`` (an engine in a VM: Docker Desktop, podman machine, Colima, Lima, OrbStack),
#: or ``"auto"`` (asked over its API socket).
EngineChoice = Literal["auto", "docker", "podman", "desktop"]

#: Where the relay's socket appears in the container: where X clients look for display M.
CONTAINER_SOCKET_DIR = PurePosixPath("/tmp/.X11-unix")


@attrs.frozen(kw_only=True)
class Plan:
    """How this passthrough reaches its containers. Strictly private."""

    transport: Literal["unix", "tcp"]
    engine: _engine.Engine | None
    bind: tuple[IPAddress, ...] = ()
    host_alias: str | None = None
    gateway: str | None = None
    host_dir: Path | None = None
    #: The bind address may not exist yet (Podman's bridge appears with its first container).
    freebind: bool = False
    #: Container networks known from the engine's configuration (its API may not be running).
    networks: tuple[IPNetwork, ...] = ()


def plan(
    *,
    transport: Transport,
    engine: EngineChoice,
    bind: tuple[IPAddress, ...] | None,
    host_alias: str | None,
    gateway: str | None,
    host_dir: Path | None,
) -> Plan:
    """
    Decide the transport and its addresses, asking the engine only when that matters.

    Raises:
        ConfigurationError: TCP was asked for, and no address where containers reach this
            host is known (pass ``bind=``).
    """
    if bind is not None:
        if transport == "unix":
            raise ConfigurationError(
                f"bind={[str(a) for a in bind]!r} is for transport='tcp'; the UNIX transport "
                "listens on no address. Pass transport='tcp' (or leave it 'auto')"
            )
        transport = "tcp"
    found: _engine.Engine | None = None
    if transport == "auto" or (transport == "tcp" and None in (bind, host_alias)):
        found = _engine.detect(None if engine == "auto" else engine)
        if engine != "auto" and (found is None or found.kind != engine):
            found = _engine.Engine(engine, os.geteuid() != 0, None, f"{engine} (as told)")
    if transport == "auto":
        transport = "unix" if found is None or found.same_kernel else "tcp"
        logger.debug(
            "engine %s: transport %s", found.description if found else "unknown", transport
        )
    if transport == "unix":
        return Plan(transport="unix", engine=found, host_dir=host_dir)
    kind = found.kind if found is not None else ("docker" if engine == "auto" else engine)
    alias = host_alias or (
        "host.containers.internal" if kind == "podman" else "host.docker.internal"
    )
    if gateway is None and kind == "docker":
        gateway = "host-gateway"  # Docker Engine adds the name only when told
    if host_dir is None and kind == "desktop":
        # Docker Desktop shares only paths under $HOME with its VM.
        host_dir = Path.home() / ".cache" / "x11passthrough"
        host_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if bind:
        return Plan(
            transport="tcp",
            engine=found,
            bind=bind,
            host_alias=alias,
            gateway=gateway,
            host_dir=host_dir,
        )
    if kind == "podman":
        return _podman_plan(found, alias, host_dir)
    if kind == "docker" and found is not None and found.rootless and found.socket is not None:
        # Only an engine that said so: a user told `engine="docker"` is usually in the docker
        # group of a rootful engine, whatever their uid.
        raise ConfigurationError(
            "transport='tcp' with rootless Docker: its containers live in rootlesskit's "
            "network namespace and cannot reach this host's docker0; use transport='unix' "
            "(the default), or pass bind=... to choose an address yourself"
        )
    return Plan(
        transport="tcp",
        engine=found,
        bind=_default_bind(kind),
        host_alias=alias,
        gateway=gateway,
        host_dir=host_dir,
    )


def _default_bind(kind: str) -> tuple[IPAddress, ...]:
    if kind == "desktop":
        # The VM's host.docker.internal is forwarded to the host's loopback (vpnkit, gvproxy).
        return (ipaddress.IPv4Address("127.0.0.1"),)
    gateway = _netinfo.docker_gateway()
    if gateway is None:
        raise ConfigurationError(
            "transport='tcp' with Docker Engine: this host has no docker0 address where "
            "containers reach it; pass bind=... (an address of this host the containers can "
            "reach), or use transport='unix'"
        )
    return (ipaddress.ip_address(gateway),)


def _podman_plan(found: _engine.Engine | None, alias: str, host_dir: Path | None) -> Plan:
    """
    TCP for rootful Podman: its ``host.containers.internal`` is the default network's gateway.

    That address exists only while a container uses the network, so the relay binds it with
    ``IP_FREEBIND``. Rootless Podman's containers reach the host through slirp4netns, which
    has no address of this host to bind short of the LAN's: it must use the UNIX transport.
    """
    rootless = found.rootless if found is not None else os.geteuid() != 0
    if rootless:
        raise ConfigurationError(
            "transport='tcp' with rootless Podman: its containers reach this host only "
            "through slirp4netns, i.e. on this host's network addresses; use "
            "transport='unix' (the default), or pass bind=... to choose an address yourself"
        )
    answered = found.socket if found is not None and found.kind == "podman" else None
    gateway = _engine_gateway(answered) if answered else None
    if gateway is not None:
        return Plan(
            transport="tcp",
            engine=found,
            bind=(ipaddress.ip_address(gateway),),
            host_alias=alias,
            host_dir=host_dir,
        )
    network = _engine.podman_default_network()
    first = ipaddress.ip_address(next(network.hosts()).exploded)
    logger.debug("rootful Podman without an API service: its default network %s", network)
    return Plan(
        transport="tcp",
        engine=found,
        bind=(first,),
        host_alias=alias,
        host_dir=host_dir,
        freebind=True,
        networks=(network,),
    )


def _engine_gateway(path: str) -> str | None:
    """Return the gateway of the first network (with one) of the engine API at `path`."""
    try:
        answer = _engine.get(path, "/networks")
    except OSError:
        return None
    for network in answer if isinstance(answer, list) else []:
        for config in (network.get("IPAM") or {}).get("Config") or []:
            if isinstance(config, dict) and config.get("Gateway"):
                return str(config["Gateway"])
    return None


@attrs.frozen(kw_only=True)
class Lent:
    """What the relay serves and the containers get. Strictly private."""

    number: int
    listeners: tuple[Listener, ...]
    args: DockerRunArgs
    where: str


def lend(
    chosen: Plan,
    *,
    numbers: Sequence[int],
    places: ServerPlaces,
    cookie: bytes | None,
    strict: SetupFilter | None,
    private: SetupFilter | None,
    container_xauthority: PurePosixPath,
    container_hostname: str | None,
    private_file: bool,
    cleanup: Cleanup,
) -> Lent:
    """
    Reserve a display number, open the relay's listeners and write the container's files.

    Args:
        chosen: The plan.
        numbers: The display numbers to choose from.
        places: Where X servers announce their numbers.
        cookie: The cookie containers present (None: the display needs none).
        strict: The setup filter of listeners others can reach (TCP, the abstract socket);
            None (a display lent without a cookie) confines the abstract socket to the user's
            own uids, by the peer's credentials. TCP then has no check at all: the caller
            must refuse that plan.
        private: The setup filter of the private socket (only the containers reach it).
        container_xauthority: Where the authority file is mounted in the container.
        container_hostname: A host name to add a FamilyLocal entry for, or None.
        private_file: Keep the authority file 0600 (it holds the real cookie).
        cleanup: Where the undo steps go.

    Raises:
        NoFreeDisplayError: No number is free.
        BindError: A listener cannot be bound.
        X11PassthroughError: The session files cannot be written.
    """
    unix = chosen.transport == "unix"
    reservation = reserve(numbers, chosen.bind, places, abstract=unix, freebind=chosen.freebind)
    cleanup.add("releasing the display number", reservation.close)
    number = reservation.number
    if strict is None and not unix:
        raise ConfigurationError(  # pragma: no cover - the passthrough refuses this plan first
            "a TCP listener without a cookie to check would admit anyone who reaches it"
        )
    # Anyone on this host may connect to the abstract socket (abstract names have no
    # permissions): without a cookie to check there, only the user's own processes may.
    peers = own_uids() if strict is None else None
    listeners = [Listener(sock, strict, peers=peers) for sock in reservation.sockets]
    # Held by descriptor from here on: no path below is looked up again (see _session).
    session = _session.create_directory(chosen.host_dir)
    cleanup.add(f"removing {session.path}", session.remove)
    socket_path = None
    if unix:
        sockets = session.mkdir("X11-unix", 0o755)
        socket_path = sockets.path / f"X{number}"
        listeners.append(Listener(_open_listener(sockets, socket_path.name, cleanup), private))
    xauthority = None
    if cookie:
        entries = _entries(number, cookie, chosen, container_hostname)
        mode = 0o600 if private_file else 0o644
        xauthority = session.write_file("Xauthority", dump(entries), mode=mode)
    if unix:
        args = DockerRunArgs(
            display=f":{number}",
            xauthority=xauthority,
            container_xauthority=container_xauthority,
            socket=socket_path,
            container_socket=CONTAINER_SOCKET_DIR / f"X{number}",
            hostname=container_hostname,
        )
        where = f"{socket_path} and @{places.socket_path(number)}"
    else:
        alias = chosen.host_alias or "host.docker.internal"
        extra_hosts = {alias: chosen.gateway} if chosen.gateway else {}
        args = DockerRunArgs(
            display=f"tcp/{alias}:{number}",
            xauthority=xauthority,
            container_xauthority=container_xauthority,
            extra_hosts=extra_hosts,
            hostname=container_hostname,
        )
        where = ", ".join(f"{a}:{6000 + number}" for a in chosen.bind)
    return Lent(number=number, listeners=tuple(listeners), args=args, where=where)


def _open_listener(directory: _session.Directory, name: str, cleanup: Cleanup) -> socket.socket:
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
