"""
The plan of a passthrough: which engine, which transport, which addresses. Decided, not done.

:func:`plan` turns the options and the engine into a :class:`Plan`, reading facts (the engine's
answers, this host's bridge address) and changing nothing: no directory, socket or file is
made while planning; :mod:`._lending` does that.

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

from pathlib import Path
from typing import Literal

import attrs

from . import _engine, _netinfo
from ._options import EngineChoice, Options
from ._validate import IPAddress, IPNetwork
from .exceptions import ConfigurationError, Mention


logger = logging.getLogger("x11passthrough")

#: Where Docker Desktop's session directories go: it shares only paths under ``$HOME``.
DESKTOP_HOST_DIR = Path(".cache") / "x11passthrough"


@attrs.frozen(kw_only=True)
class Plan:
    """
    How this passthrough reaches its containers.

    Attributes:
        transport: ``"unix"`` or ``"tcp"``.
        engine: The engine as detected or told, or None (not asked, or none answered).
        bind: On TCP, the addresses to listen on.
        host_alias: On TCP, the name containers use for this host.
        gateway: On TCP, the ``--add-host`` value for `host_alias`, or None.
        host_dir: Where the session directory goes (None: the default place).
        make_host_dir: `host_dir` is a default that may not exist yet (Docker Desktop's).
        freebind: The bind address may not exist yet (Podman's bridge appears with its first
            container).
        networks: Container networks known from the engine's configuration (its API may not
            be running).
    """

    transport: Literal["unix", "tcp"]
    engine: _engine.Engine | None
    bind: tuple[IPAddress, ...] = ()
    host_alias: str | None = None
    gateway: str | None = None
    host_dir: Path | None = None
    make_host_dir: bool = False
    freebind: bool = False
    networks: tuple[IPNetwork, ...] = ()


def needs_engine(options: Options) -> bool:
    """Return whether the plan depends on the engine (else it is not asked)."""
    transport = "tcp" if options.bind is not None else options.transport
    return transport == "auto" or (
        transport == "tcp" and None in (options.bind, options.host_alias)
    )


def engine_as_told(choice: EngineChoice) -> _engine.Engine | None:
    """
    Return the engine the passthrough follows: the one that answers, else the one it was told.

    With ``"auto"``: whichever answers on its API socket, or None. With a kind: that engine if
    it answers, else one of that kind described as told (the passthrough follows what it was
    told, not what answered).
    """
    found = _engine.detect(None if choice == "auto" else choice)
    if choice != "auto" and (found is None or found.kind != choice):
        found = _engine.Engine(choice, os.geteuid() != 0, None, f"{choice} (as told)")
    return found


def plan(options: Options, engine: _engine.Engine | None = None) -> Plan:
    """
    Decide the transport and its addresses.

    Args:
        options: The passthrough's options.
        engine: The engine, if the caller asked already (:func:`engine_as_told`); else it is
            asked here when the plan depends on it.

    Raises:
        ConfigurationError: TCP was asked for, and no address where containers reach this
            host is known (pass ``bind=``).
    """
    transport = "tcp" if options.bind is not None else options.transport
    found = None
    if needs_engine(options):
        found = engine if engine is not None else engine_as_told(options.engine)
    if transport == "auto":
        transport = "unix" if found is None or found.same_kernel else "tcp"
        logger.debug(
            "engine %s: transport %s", found.description if found else "unknown", transport
        )
    if transport == "unix":
        return Plan(transport="unix", engine=found, host_dir=options.host_dir)
    kind = found.kind if found is not None else _kind(options.engine)
    tcp = Plan(
        transport="tcp",
        engine=found,
        host_alias=options.host_alias
        or ("host.containers.internal" if kind == "podman" else "host.docker.internal"),
        # Docker Engine adds the name only when told.
        gateway=options.gateway or ("host-gateway" if kind == "docker" else None),
        host_dir=options.host_dir,
    )
    if options.host_dir is None and kind == "desktop":
        # Docker Desktop shares only paths under $HOME with its VM.
        tcp = attrs.evolve(tcp, host_dir=Path.home() / DESKTOP_HOST_DIR, make_host_dir=True)
    if options.bind:
        return attrs.evolve(tcp, bind=options.bind)
    if kind == "podman":
        return _podman_plan(tcp)
    if kind == "docker" and found is not None and found.rootless and found.socket is not None:
        # Only an engine that said so: a user told `engine="docker"` is usually in the docker
        # group of a rootful engine, whatever their uid.
        raise _no_address(
            " with rootless Docker: its containers live in rootlesskit's network namespace and "
            "cannot reach this host's docker0"
        )
    return attrs.evolve(tcp, bind=_default_bind(kind))


def _kind(choice: EngineChoice) -> str:
    return "docker" if choice == "auto" else choice


def _no_address(problem: str) -> ConfigurationError:
    return ConfigurationError(
        Mention("transport", "tcp"),
        problem,
        option="transport",
        value="tcp",
        hint=(
            "use ",
            Mention("transport", "unix"),
            " (the default), or pass ",
            Mention("bind"),
            " to choose an address yourself",
        ),
    )


def _default_bind(kind: str) -> tuple[IPAddress, ...]:
    if kind == "desktop":
        # The VM's host.docker.internal is forwarded to the host's loopback (vpnkit, gvproxy).
        return (ipaddress.IPv4Address("127.0.0.1"),)
    gateway = _netinfo.docker_gateway()
    if gateway is None:
        raise ConfigurationError(
            Mention("transport", "tcp"),
            " with Docker Engine: this host has no docker0 address where containers reach it",
            option="bind",
            value=None,
            hint=(
                "pass ",
                Mention("bind"),
                " (an address of this host the containers can reach), or use ",
                Mention("transport", "unix"),
            ),
        )
    return (ipaddress.ip_address(gateway),)


def _podman_plan(tcp: Plan) -> Plan:
    """
    TCP for rootful Podman: its ``host.containers.internal`` is the default network's gateway.

    That address exists only while a container uses the network, so the relay binds it with
    ``IP_FREEBIND``. Rootless Podman's containers reach the host through slirp4netns, which
    has no address of this host to bind short of the LAN's: it must use the UNIX transport.
    """
    found = tcp.engine
    rootless = found.rootless if found is not None else os.geteuid() != 0
    if rootless:
        raise _no_address(
            " with rootless Podman: its containers reach this host only through slirp4netns, "
            "i.e. on this host's network addresses"
        )
    answered = found.socket if found is not None and found.kind == "podman" else None
    gateway = _engine_gateway(answered) if answered else None
    tcp = attrs.evolve(tcp, gateway=None)
    if gateway is not None:
        return attrs.evolve(tcp, bind=(ipaddress.ip_address(gateway),))
    network = _engine.podman_default_network()
    first = ipaddress.ip_address(next(network.hosts()).exploded)
    logger.debug("rootful Podman without an API service: its default network %s", network)
    return attrs.evolve(tcp, bind=(first,), freebind=True, networks=(network,))


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
