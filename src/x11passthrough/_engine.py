"""
Container engines, asked over their API sockets: which engine, and which networks it made.

The engine is found where its clients look: ``DOCKER_HOST`` (``unix://``),
the current Docker context, ``/var/run/docker.sock``, and Podman's rootful and rootless
service sockets. Nothing here starts an engine or a service; an engine that does not answer
within the timeout is skipped.

What tells engines apart (from their recorded answers in ``tests/data/engines``):

* Podman marks every answer, ``GET /_ping`` included, with ``Server: Libpod/...``; that one
  sub-millisecond request also finds Podman behind ``/var/run/docker.sock`` (podman-docker).
  Podman's own ``/info`` takes about 250 ms, so its rootlessness is read from the socket's
  owner instead.
* Docker's ``GET /info`` (about 8 ms) says Docker Desktop in ``OperatingSystem`` (an engine
  in a VM: no shared kernel, so no shared sockets) and rootless in ``SecurityOptions``
  (``name=rootless``).

A detection is cached per process, keyed by the socket's identity, so a warm process asks once.
"""

from __future__ import annotations

import hashlib
import http.client
import ipaddress
import json
import logging
import os
import re
import socket

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import attrs

from ._validate import IPNetwork


logger = logging.getLogger("x11passthrough")

DEFAULT_TIMEOUT = 1.0


class UnixHTTPConnection(http.client.HTTPConnection):
    """An HTTP/1.1 connection over a UNIX socket."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def context_host(environ: Mapping[str, str] | None = None) -> str | None:
    """Return the ``Host`` of the current Docker context (``DOCKER_CONTEXT``, else config)."""
    env = os.environ if environ is None else environ
    config_dir = Path(env.get("DOCKER_CONFIG") or Path(env.get("HOME", "/")) / ".docker")
    name = env.get("DOCKER_CONTEXT")
    try:
        if name is None:
            name = json.loads((config_dir / "config.json").read_text()).get("currentContext")
        if not name or name == "default":
            return None
        digest = hashlib.sha256(name.encode()).hexdigest()
        meta = json.loads((config_dir / "contexts" / "meta" / digest / "meta.json").read_text())
        host = meta["Endpoints"]["docker"]["Host"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return host if isinstance(host, str) else None


def api_sockets(environ: Mapping[str, str] | None = None) -> list[str]:
    """Return the engine API sockets to ask, in order, without duplicates."""
    env = os.environ if environ is None else environ
    found: list[str] = []
    host = env.get("DOCKER_HOST") or context_host(env) or ""
    if host.startswith("unix://"):
        # Docker's client then asks that socket only; Podman's (below) ignores it.
        found.append(host.removeprefix("unix://"))
    else:
        found.append("/var/run/docker.sock")
    runtime = env.get("XDG_RUNTIME_DIR")
    if runtime:
        found.append(os.path.join(runtime, "podman", "podman.sock"))
        found.append(os.path.join(runtime, "docker.sock"))
    found.append("/run/podman/podman.sock")
    return list(dict.fromkeys(found))


def _request(path: str, endpoint: str, timeout: float) -> tuple[dict[str, str], bytes]:
    """``GET`` `endpoint`; return the headers (names in lower case) and body of a 200 answer."""
    connection = UnixHTTPConnection(path, timeout)
    try:
        connection.request("GET", endpoint, headers={"Accept": "application/json"})
        response = connection.getresponse()
        body = response.read()
    except (http.client.HTTPException, ValueError) as e:
        raise OSError(f"{path}: not an engine API ({e})") from e
    finally:
        connection.close()
    if response.status != 200:
        raise OSError(f"{path}: GET {endpoint} answered {response.status}")
    return {k.lower(): v for k, v in response.getheaders()}, body


def get(path: str, endpoint: str, *, timeout: float = DEFAULT_TIMEOUT) -> Any:
    """
    ``GET`` `endpoint` of the engine API on the UNIX socket `path` and decode its JSON.

    Raises:
        OSError: The socket does not answer, or the answer is not a 200 with JSON.
    """
    _headers, body = _request(path, endpoint, timeout)
    try:
        return json.loads(body)
    except ValueError as e:
        raise OSError(f"{path}: GET {endpoint} sent no JSON") from e


def subnets(answer: Any) -> list[IPNetwork]:
    """Return the IPAM subnets of a ``GET /networks`` answer (Docker's and Podman's shape)."""
    found: list[IPNetwork] = []
    for network in answer if isinstance(answer, list) else []:
        ipam = network.get("IPAM") if isinstance(network, dict) else None
        for config in (ipam or {}).get("Config") or []:
            subnet = config.get("Subnet") if isinstance(config, dict) else None
            if not isinstance(subnet, str):
                continue
            try:
                found.append(ipaddress.ip_network(subnet, strict=False))
            except (TypeError, ValueError):
                continue
    return list(dict.fromkeys(found))


def networks(*, timeout: float = DEFAULT_TIMEOUT) -> list[IPNetwork]:
    """Return the subnets of every network of every engine that answers."""
    found: list[IPNetwork] = []
    for path in api_sockets():
        if not os.path.exists(path):
            continue
        try:
            found += subnets(get(path, "/networks", timeout=timeout))
        except OSError as e:
            logger.debug("engine at %s: %s", path, e)
    return list(dict.fromkeys(found))


#: Podman's built-in default network (``[network] default_subnet`` of containers.conf).
PODMAN_DEFAULT_SUBNET = ipaddress.IPv4Network("10.88.0.0/16")
_CONTAINERS_CONF_FILES = (
    "/usr/share/containers/containers.conf",
    "/etc/containers/containers.conf",
)
_DEFAULT_SUBNET = re.compile(r'^\s*default_subnet\s*=\s*"([^"]+)"', re.MULTILINE)
_SECTION = re.compile(r"^\s*\[([^\]]+)\]", re.MULTILINE)


def podman_default_network(environ: Mapping[str, str] | None = None) -> IPNetwork:
    """
    Return the subnet of rootful Podman's default network, from Podman's own configuration.

    The network has no file and no interface until a container uses it, so it is read where
    Podman reads it: ``default_subnet`` in the ``[network]`` table of containers.conf (the
    file ``CONTAINERS_CONF`` names, which Podman reads instead of the system files; else the
    system files and ``/etc/containers/containers.conf.d``, the last one that sets it wins),
    else Podman's built-in 10.88.0.0/16.
    """
    env = os.environ if environ is None else environ
    named = env.get("CONTAINERS_CONF")
    paths = [named] if named else list(_CONTAINERS_CONF_FILES)
    if not named:
        try:
            extra = sorted(Path("/etc/containers/containers.conf.d").glob("*.conf"))
        except OSError:
            extra = []
        paths += [str(p) for p in extra]
    found: IPNetwork = PODMAN_DEFAULT_SUBNET
    for path in paths:
        try:
            text = Path(path).read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        value = _network_table_value(text)
        if value is None:
            continue
        try:
            found = ipaddress.ip_network(value, strict=False)
        except ValueError:
            logger.debug("%s: default_subnet %r is not a network", path, value)
    return found


def _network_table_value(text: str) -> str | None:
    """Return ``default_subnet`` of the ``[network]`` table of a containers.conf text."""
    sections = [(m.start(), m.group(1).strip()) for m in _SECTION.finditer(text)]
    for match in _DEFAULT_SUBNET.finditer(text):
        table = ""
        for start, name in sections:
            if start < match.start():
                table = name
        if table == "network":
            return match.group(1)
    return None


EngineKind = Literal["docker", "podman", "desktop"]


@attrs.frozen
class Engine:
    """
    What a container engine said about itself.

    Attributes:
        kind: ``"docker"`` (Docker Engine), ``"podman"``, or ``"desktop"`` (an engine in a VM:
            Docker Desktop and the like, whose containers share no kernel with this host).
        rootless: The engine runs as an unprivileged user.
        socket: The API socket that answered, or None when nothing answered.
        description: What it is, for messages (``Docker Engine 28.2.2``).
    """

    kind: EngineKind
    rootless: bool
    socket: str | None
    description: str

    @property
    def same_kernel(self) -> bool:
        """Whether containers run on this host's kernel, so a bind-mounted socket reaches them."""
        return self.kind != "desktop"


def classify(
    path: str, ping_headers: Mapping[str, str], info: Mapping[str, Any] | None, uid: int
) -> Engine:
    """
    Tell the engine from its answers: the ``/_ping`` headers and (Docker only) ``/info``.

    Args:
        path: The API socket.
        ping_headers: The headers of ``GET /_ping``, names in lower case.
        info: ``GET /info``, or None when it was not asked (Podman).
        uid: The owner of the socket (a rootless engine's socket belongs to its user).
    """
    server = ping_headers.get("server", "")
    if server.startswith("Libpod"):
        version = server.partition("/")[2]
        return Engine("podman", uid != 0, path, f"Podman {version}".strip())
    info = info or {}
    version = str(info.get("ServerVersion", "")) or server.partition("/")[2].split(" ")[0]
    options = info.get("SecurityOptions") or []
    rootless = any(isinstance(o, str) and "name=rootless" in o for o in options)
    if info.get("OperatingSystem") == "Docker Desktop":
        return Engine("desktop", False, path, f"Docker Desktop (engine {version})")
    return Engine("docker", rootless, path, f"Docker Engine {version}".strip())


_cache: dict[tuple[str, int, int], Engine] = {}


def detect(
    hint: EngineKind | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> Engine | None:
    """
    Find the engine that containers will run on; None when no engine answers.

    Args:
        hint: The engine the caller names (``podman`` asks Podman's sockets only).
        environ: The environment to read (``DOCKER_HOST``, ``XDG_RUNTIME_DIR``).
        timeout: Seconds each socket may take to answer.
    """
    env = os.environ if environ is None else environ
    host = env.get("DOCKER_HOST", "")
    if host and not host.startswith("unix://") and hint != "podman":
        return Engine("desktop", False, None, f"a remote engine (DOCKER_HOST={host})")
    for path in api_sockets(env):
        if hint == "podman" and "podman" not in path:
            continue
        try:
            status = os.stat(path)
        except OSError:
            continue
        key = (path, status.st_ino, status.st_mtime_ns)
        if key in _cache:
            return _cache[key]
        try:
            headers, _body = _request(path, "/_ping", timeout)
            info = None
            if not headers.get("server", "").startswith("Libpod"):
                info = get(path, "/info", timeout=timeout)
        except OSError as e:
            logger.debug("engine at %s: %s", path, e)
            continue
        engine = classify(path, headers, info if isinstance(info, dict) else None, status.st_uid)
        _cache[key] = engine
        logger.debug("engine at %s: %s", path, engine.description)
        return engine
    return None


# -- where the engine is: this host, a VM, or another host ------------------------------------
#
# Read the way the engines' own clients read it. Docker: ``DOCKER_HOST`` overrides the context;
# the context is ``DOCKER_CONTEXT``, else ``currentContext`` of ``$DOCKER_CONFIG/config.json``
# (default ``~/.docker``), its endpoint ``Endpoints.docker.Host`` of
# ``contexts/meta/<sha256 of the name>/meta.json``. Podman is local unless told otherwise:
# ``CONTAINER_HOST`` (a URL), ``CONTAINER_CONNECTION`` or ``--connection`` (a named
# connection), ``--remote`` (the default connection); connections live in
# ``podman-connections.json`` (Podman 5) or ``[engine.service_destinations.NAME]`` of
# containers.conf (Podman 4, whose ``[engine] active_service`` names the default).

#: How an engine is reached: ``"local"`` (a UNIX socket of this host: Docker Engine, Podman,
#: or a VM's socket forwarded here), ``"ssh"`` (``ssh://``: another host, through OpenSSH),
#: ``"tcp"`` (``tcp://`` to another host, TLS or not), ``"tcp-local"`` (``tcp://`` to this host).
EngineReach = Literal["local", "ssh", "tcp", "tcp-local"]


@attrs.frozen(kw_only=True)
class EngineAddress:
    """
    Where the containers' engine is, as its client was told.

    Attributes:
        url: The engine's URL (``ssh://user@host:port``, ``tcp://host:2376``, ``unix:///...``).
        source: Who said so, for messages (``DOCKER_HOST``, ``the Docker context 'ci'``).
        identity: The key file a Podman connection names, or None.
    """

    url: str
    source: str
    identity: str | None = None

    @property
    def scheme(self) -> str:
        """The URL's scheme, in lower case (``ssh``, ``tcp``, ``unix``)."""
        return self.url.partition("://")[0].lower() if "://" in self.url else ""

    @property
    def reach(self) -> EngineReach:
        """How the engine is reached (see :data:`EngineReach`)."""
        if self.scheme == "ssh":
            return "ssh"
        if self.scheme in ("tcp", "http", "https"):
            return "tcp-local" if _is_this_host(_url_host(self.url)) else "tcp"
        return "local"


def _url_host(url: str) -> str:
    """Return the host part of ``scheme://[user@]host[:port][/path]`` (IPv6 unbracketed)."""
    rest = url.partition("://")[2].partition("/")[0].rpartition("@")[2]
    if rest.startswith("["):
        return rest[1:].partition("]")[0]
    return rest.rpartition(":")[0] if rest.count(":") == 1 else rest


def _is_this_host(host: str) -> bool:
    """Whether `host` names this host: loopback, ``localhost``, or one of its addresses."""
    if host in ("", "localhost") or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host == socket.gethostname()
    if address.is_loopback or address.is_unspecified:
        return True
    try:
        with socket.socket(address_family(address), socket.SOCK_DGRAM) as probe:
            probe.bind((str(address), 0))
    except OSError:
        return False
    return True


def address_family(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> socket.AddressFamily:
    """Return the socket family of `address`."""
    return socket.AF_INET6 if address.version == 6 else socket.AF_INET


def current_context(environ: Mapping[str, str] | None = None) -> tuple[str, str] | None:
    """Return the name and ``Host`` of the current Docker context; None for ``default``."""
    env = os.environ if environ is None else environ
    host = context_host(env)
    if host is None:
        return None
    name = env.get("DOCKER_CONTEXT")
    if name is None:
        config_dir = Path(env.get("DOCKER_CONFIG") or Path(env.get("HOME", "/")) / ".docker")
        try:
            name = json.loads((config_dir / "config.json").read_text()).get("currentContext")
        except (OSError, ValueError, AttributeError):
            name = None
    return str(name), host


def docker_address(environ: Mapping[str, str] | None = None) -> EngineAddress | None:
    """Return where Docker's client sends its requests; None for its default local socket."""
    env = os.environ if environ is None else environ
    host = env.get("DOCKER_HOST")
    if host:
        return EngineAddress(url=host, source="DOCKER_HOST")
    found = current_context(env)
    if found is None:
        return None
    name, host = found
    return EngineAddress(url=host, source=f"the Docker context {name!r}")


def podman_address(
    environ: Mapping[str, str] | None = None,
    *,
    remote: bool = False,
    connection: str | None = None,
    url: str | None = None,
) -> EngineAddress | None:
    """
    Return where Podman's client sends its requests; None when it runs containers here.

    Args:
        environ: The environment (``CONTAINER_HOST``, ``CONTAINER_CONNECTION``,
            ``XDG_CONFIG_HOME``, ``HOME``, ``CONTAINERS_CONF``).
        remote: ``podman --remote`` (the default connection unless one is named).
        connection: ``podman --connection NAME``.
        url: ``podman --url URL``.
    """
    env = os.environ if environ is None else environ
    if url:
        return EngineAddress(url=url, source="podman --url")
    if connection is None and env.get("CONTAINER_HOST"):
        return EngineAddress(
            url=env["CONTAINER_HOST"],
            source="CONTAINER_HOST",
            identity=env.get("CONTAINER_SSHKEY") or None,
        )
    name = connection or env.get("CONTAINER_CONNECTION")
    if name is None and not remote:
        return None
    default, connections = podman_connections(env)
    name = name or default
    if name is None or name not in connections:
        return None
    uri, identity = connections[name]
    return EngineAddress(
        url=uri, source=f"the Podman connection {name!r}", identity=identity or None
    )


_TOML_STRING = re.compile(r'^\s*([A-Za-z_]+)\s*=\s*"([^"]*)"', re.MULTILINE)


def podman_connections(
    environ: Mapping[str, str] | None = None,
) -> tuple[str | None, dict[str, tuple[str, str]]]:
    """
    Return Podman's default connection and every connection's ``(uri, identity)``.

    Read from ``podman-connections.json`` (Podman 5), and containers.conf files (Podman 4: the
    system files, the user's, and the file ``CONTAINERS_CONF`` names); the JSON file wins.
    """
    env = os.environ if environ is None else environ
    config = Path(env.get("XDG_CONFIG_HOME") or Path(env.get("HOME", "/")) / ".config")
    files = [*_CONTAINERS_CONF_FILES, str(config / "containers" / "containers.conf")]
    if env.get("CONTAINERS_CONF"):
        files.append(env["CONTAINERS_CONF"])
    default, found = None, {}
    for path in files:
        conf_default, conf_found = _conf_connections(path)
        default = conf_default or default
        found.update(conf_found)
    json_default, json_found = _json_connections(config / "containers" / "podman-connections.json")
    found.update(json_found)
    return json_default or default, {n: v for n, v in found.items() if v[0]}


def _json_connections(path: Path) -> tuple[str | None, dict[str, tuple[str, str]]]:
    """Read Podman 5's ``podman-connections.json``."""
    found: dict[str, tuple[str, str]] = {}
    try:
        section = json.loads(path.read_text()).get("Connection") or {}
        for name, value in (section.get("Connections") or {}).items():
            if isinstance(value, dict) and isinstance(value.get("URI"), str):
                found[str(name)] = (value["URI"], str(value.get("Identity") or ""))
        default = section.get("Default")
    except (OSError, ValueError, AttributeError):
        return None, found
    return (default if isinstance(default, str) and default else None), found


def _conf_connections(path: str) -> tuple[str | None, dict[str, tuple[str, str]]]:
    """Read ``active_service`` and ``[engine.service_destinations.NAME]`` of a containers.conf."""
    found: dict[str, tuple[str, str]] = {}
    default: str | None = None
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return default, found
    sections = [(m.start(), m.group(1).strip()) for m in _SECTION.finditer(text)]
    prefix = "engine.service_destinations."
    for match in _TOML_STRING.finditer(text):
        table = ""
        for start, table_name in sections:
            if start < match.start():
                table = table_name
        key, value = match.group(1), match.group(2)
        if table == "engine" and key == "active_service":
            default = value
        elif table.startswith(prefix) and key in ("uri", "identity"):
            name = table.removeprefix(prefix).strip('"')
            uri, identity = found.get(name, ("", ""))
            found[name] = (value, identity) if key == "uri" else (uri, value)
    return default, found


def engine_address(
    hint: EngineKind | None = None, *, environ: Mapping[str, str] | None = None
) -> EngineAddress | None:
    """
    Return where the containers' engine is, for the engine `hint` names; None when local.

    ``podman`` reads Podman's settings (``CONTAINER_HOST``, ``CONTAINER_CONNECTION``),
    anything else Docker's (``DOCKER_HOST``, the current context).
    """
    if hint == "podman":
        return podman_address(environ)
    return docker_address(environ)
