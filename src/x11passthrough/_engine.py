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
