"""
Container engines, asked over their API sockets: which networks they made.

Strictly private. Docker Engine and Podman (its Docker-compatible service) answer the same
``GET /networks`` with each network's IPAM subnets. The engine is found where its clients look:
``DOCKER_HOST`` (``unix://`` only), ``/var/run/docker.sock``, and Podman's rootful and rootless
service sockets. Nothing here starts an engine or a service; an engine that does not answer
within the timeout is skipped.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import logging
import os
import socket

from collections.abc import Mapping
from typing import Any

from ._validate import IPNetwork


logger = logging.getLogger("x11passthrough")

DEFAULT_TIMEOUT = 1.0


class _UnixConnection(http.client.HTTPConnection):
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


def api_sockets(environ: Mapping[str, str] | None = None) -> list[str]:
    """Return the engine API sockets to ask, in order, without duplicates."""
    env = os.environ if environ is None else environ
    found: list[str] = []
    host = env.get("DOCKER_HOST", "")
    if host.startswith("unix://"):
        found.append(host.removeprefix("unix://"))
    found.append("/var/run/docker.sock")
    runtime = env.get("XDG_RUNTIME_DIR")
    if runtime:
        found.append(os.path.join(runtime, "podman", "podman.sock"))
        found.append(os.path.join(runtime, "docker.sock"))
    found.append("/run/podman/podman.sock")
    return list(dict.fromkeys(found))


def get(path: str, endpoint: str, *, timeout: float = DEFAULT_TIMEOUT) -> Any:
    """
    ``GET`` `endpoint` of the engine API on the UNIX socket `path` and decode its JSON.

    Raises:
        OSError: The socket does not answer, or the answer is not a 200 with JSON.
    """
    connection = _UnixConnection(path, timeout)
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
