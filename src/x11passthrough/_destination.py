"""
Where an engine on another host is, as an SSH destination; and the engine a command names.

Read from :mod:`._engine`'s addresses (``DOCKER_HOST``, the Docker context, Podman's
``CONTAINER_HOST`` and connections): an ``ssh://[user@]host[:port]`` engine becomes an
:class:`SshDestination` for :mod:`._remote`; a ``tcp://`` engine on another host is refused,
naming ``ssh://``. :func:`command_environ` reads the engine options of a wrapped command
(``docker -H``, ``podman --remote``) as the environment variables they stand for.
"""

from __future__ import annotations

import os
import re

from collections.abc import Mapping, Sequence
from urllib.parse import unquote, urlsplit

import attrs

from . import _engine
from .exceptions import ConfigurationError, Mention, RemoteEngineError


_HOST = re.compile(r"[A-Za-z0-9_.:%-]+")
_USER = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.@-]*")


@attrs.frozen(kw_only=True)
class SshDestination:
    """
    An SSH destination from an engine's ``ssh://[user@]host[:port]`` URL.

    Attributes:
        host: The host name or address (an alias of the user's ssh config works).
        user: The login user, or None for ssh's own choice (the config's, else ours).
        port: The port, or None for ssh's own choice.
        identity: A key file to offer (a Podman connection's), or None.
        url: The engine's URL, for messages.
        source: Who named the engine (``DOCKER_HOST``, a context, ...), for messages.
    """

    host: str
    user: str | None = None
    port: int | None = None
    identity: str | None = None
    url: str
    source: str

    @classmethod
    def parse(cls, address: _engine.EngineAddress) -> SshDestination:
        """
        Read an ``ssh://`` engine address.

        Raises:
            ConfigurationError: The URL is not ``ssh://[user@]host[:port][/path]``.
        """
        url = address.url
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            parts, port = None, None
        host = parts.hostname if parts is not None else None
        if parts is None or parts.scheme.lower() != "ssh" or not host:
            raise ConfigurationError(
                f"{address.source}={url!r} is not an SSH engine URL: use ssh://[user@]host[:port]"
            )
        if parts.password is not None:
            raise ConfigurationError(
                f"{address.source} holds a password in its ssh:// URL; passwords are not "
                "supported there (as the docker CLI says): use a key or ssh-agent"
            )
        user = unquote(parts.username) if parts.username else None
        if not _HOST.fullmatch(host) or host.startswith("-"):
            raise ConfigurationError(f"{address.source}={url!r}: {host!r} is not a host name")
        if user is not None and not _USER.fullmatch(user):
            raise ConfigurationError(f"{address.source}={url!r}: {user!r} is not a user name")
        return cls(
            host=host,
            user=user,
            port=port,
            identity=address.identity,
            url=url,
            source=address.source,
        )

    @property
    def shown(self) -> str:
        """``[user@]host[:port]``, for messages."""
        who = f"{self.user}@" if self.user else ""
        where = f"[{self.host}]" if ":" in self.host else self.host
        return f"{who}{where}" + (f":{self.port}" if self.port else "")

    def ssh_options(self) -> list[str]:
        """Return the ``ssh`` options that select this destination (before ``--``)."""
        argv: list[str] = []
        if self.port is not None:
            argv += ["-p", str(self.port)]
        if self.user is not None:
            argv += ["-l", self.user]
        if self.identity:
            argv += ["-i", self.identity]
        return argv


_DOCKER_VALUES = {"-H": "host", "--host": "host", "-c": "context", "--context": "context"}
_PODMAN_VALUES = {
    "--url": "url",
    "-c": "connection",
    "--connection": "connection",
    "--identity": "identity",
}
_PODMAN_REMOTE = frozenset({"-r", "--remote"})


def command_environ(
    prefix: Sequence[str], environ: Mapping[str, str] | None = None
) -> dict[str, str | None]:
    """
    Return what the engine's global options in a wrapped command mean for its environment.

    ``docker -H URL`` is ``DOCKER_HOST=URL``; ``docker --context NAME`` is
    ``DOCKER_CONTEXT=NAME`` (which the option makes win over ``DOCKER_HOST``); ``podman --url
    URL`` is ``CONTAINER_HOST``, ``--connection NAME`` ``CONTAINER_CONNECTION``, ``--identity
    KEY`` ``CONTAINER_SSHKEY``, and ``--remote`` the default connection. None removes a variable.

    Args:
        prefix: The words that run the engine, up to its subcommand (``docker -H URL``).
        environ: The environment the command runs in.
    """
    env = os.environ if environ is None else environ
    at = next(
        (i for i, w in enumerate(prefix) if os.path.basename(w) in ("docker", "podman")), None
    )
    if at is None:
        return {}
    podman = os.path.basename(prefix[at]) == "podman"
    known = _PODMAN_VALUES if podman else _DOCKER_VALUES
    found: dict[str, str] = {}
    remote = False
    words = list(prefix[at + 1 :])
    while words:
        word = words.pop(0)
        name, eq, value = word.partition("=")
        if podman and word in _PODMAN_REMOTE:
            remote = True
        elif name in known:
            if not eq:
                value = words.pop(0) if words else ""
            found[known[name]] = value
    changes: dict[str, str | None] = {}
    if found.get("host"):
        changes["DOCKER_HOST"] = found["host"]
    if found.get("context"):
        changes.update(DOCKER_CONTEXT=found["context"], DOCKER_HOST=None)
    if found.get("identity"):
        changes["CONTAINER_SSHKEY"] = found["identity"]
    if found.get("url"):
        changes.update(CONTAINER_HOST=found["url"], CONTAINER_CONNECTION=None)
    elif found.get("connection"):
        changes.update(CONTAINER_CONNECTION=found["connection"], CONTAINER_HOST=None)
    elif remote and not env.get("CONTAINER_HOST") and not env.get("CONTAINER_CONNECTION"):
        default, _connections = _engine.podman_connections(env)
        if default:
            changes["CONTAINER_CONNECTION"] = default
    return changes


def destination(
    engine: str, transport: str, *, environ: dict[str, str] | None = None
) -> SshDestination | None:
    """
    Return the SSH destination when the containers' engine is on another host; else None.

    Args:
        engine: The passthrough's ``engine`` option (``podman`` reads Podman's settings).
        transport: The passthrough's ``transport`` option.
        environ: The environment to read.

    Raises:
        RemoteEngineError: The engine is on another host and reached over TCP.
        ConfigurationError: The engine is on another host and ``transport="tcp"`` was asked
            for, or its URL is malformed.
    """
    if engine == "desktop":
        return None
    hint: _engine.EngineKind | None = "podman" if engine == "podman" else None
    address = _engine.engine_address(hint, environ=environ)
    if address is None:
        return None
    if address.reach == "tcp":
        host = _engine._url_host(address.url)
        raise RemoteEngineError(
            f"{address.source}={address.url} is an engine on another host reached over TCP: "
            "its containers run on another kernel and x11passthrough does not open your "
            f"display to the network. Reach the engine through OpenSSH instead "
            f"({'CONTAINER_HOST' if hint == 'podman' else 'DOCKER_HOST'}=ssh://USER@{host}), "
            "and the display goes through the same SSH connection"
        )
    if address.reach != "ssh":
        return None
    found = SshDestination.parse(address)
    if transport == "tcp":
        raise ConfigurationError(
            Mention("transport", "tcp"),
            f" with an engine on another host ({address.source}={address.url}): its "
            "containers reach the display through the SSH connection's forwarded socket",
            option="transport",
            value="tcp",
            hint=("leave ", Mention("transport", "auto")),
        )
    return found
