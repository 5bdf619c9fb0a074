"""
The container-side half of a passthrough: docker-run arguments and their other spellings.

Strictly private: import :class:`DockerRunArgs` from :mod:`x11passthrough`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Any

import attrs


#: Where the authority file is mounted in the container, unless told otherwise.
DEFAULT_CONTAINER_XAUTHORITY = PurePosixPath("/tmp/.x11passthrough.xauth")


def _frozen_mapping(value: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(value))


@attrs.frozen(kw_only=True)
class DockerRunArgs:
    """
    What a container needs to reach the passthrough's display.

    Iterating gives ``docker run`` command-line arguments, so ``[*args]`` splices into an argv::

        --add-host host.docker.internal:host-gateway
        --hostname x11passthrough
        --env DISPLAY=host.docker.internal:M
        --env XAUTHORITY=/tmp/.x11passthrough.xauth
        --volume /tmp/x11passthrough-abc/Xauthority:/tmp/.x11passthrough.xauth:ro

    The other methods give the same content for the Docker SDK for Python
    (:meth:`docker_py`) and for a Compose service (:meth:`compose`).

    Attributes:
        display: The display name the container uses (``host.docker.internal:M``).
        xauthority: The authority file on the host, or ``None`` when the display needs no
            cookie.
        container_xauthority: Where that file is mounted in the container.
        extra_hosts: Host names to add to the container's ``/etc/hosts``, with their values
            (``{"host.docker.internal": "host-gateway"}``).
        hostname: The container's host name, or ``None`` to leave Docker's default. python-xlib
            clients look their cookie up by the host name, so the authority file holds an entry
            for this name.
    """

    display: str
    xauthority: Path | None
    container_xauthority: PurePosixPath = DEFAULT_CONTAINER_XAUTHORITY
    extra_hosts: Mapping[str, str] = attrs.field(
        factory=dict, converter=_frozen_mapping, hash=False
    )
    hostname: str | None = None

    @property
    def environment(self) -> Mapping[str, str]:
        """The environment variables to set in the container (``DISPLAY``, ``XAUTHORITY``)."""
        env = {"DISPLAY": self.display}
        if self.xauthority is not None:
            env["XAUTHORITY"] = str(self.container_xauthority)
        return MappingProxyType(env)

    @property
    def volumes(self) -> Mapping[str, str]:
        """The read-only bind mounts, host path to container path."""
        if self.xauthority is None:
            return MappingProxyType({})
        return MappingProxyType({str(self.xauthority): str(self.container_xauthority)})

    def __iter__(self) -> Iterator[str]:
        for name, value in self.extra_hosts.items():
            yield from ("--add-host", f"{name}:{value}")
        if self.hostname is not None:
            yield from ("--hostname", self.hostname)
        for name, value in self.environment.items():
            yield from ("--env", f"{name}={value}")
        for host, container in self.volumes.items():
            yield from ("--volume", f"{host}:{container}:ro")

    def docker_py(self) -> dict[str, Any]:
        """
        Return keyword arguments for the Docker SDK's ``client.containers.run(...)``.

        Merge them with your own, e.g. ``client.containers.run(image, cmd, **args.docker_py())``.
        """
        kwargs: dict[str, Any] = {
            "environment": dict(self.environment),
            "extra_hosts": dict(self.extra_hosts),
            "volumes": {h: {"bind": c, "mode": "ro"} for h, c in self.volumes.items()},
        }
        if self.hostname is not None:
            kwargs["hostname"] = self.hostname
        return kwargs

    def compose(self) -> dict[str, Any]:
        """Return the keys of a Compose service definition (``environment``, ``volumes``, ...)."""
        service: dict[str, Any] = {
            "environment": dict(self.environment),
            "extra_hosts": [f"{n}:{v}" for n, v in self.extra_hosts.items()],
            "volumes": [
                {"type": "bind", "source": h, "target": c, "read_only": True}
                for h, c in self.volumes.items()
            ],
        }
        if self.hostname is not None:
            service["hostname"] = self.hostname
        return service
