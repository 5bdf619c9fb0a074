"""
The container-side half of a passthrough: docker-run arguments and every other rendering.

Import :class:`DockerRunArgs` from :mod:`x11passthrough`. Its renderings all live here: the
argv (iterating), the Docker SDK's keyword arguments, a Compose service (a dict, and a whole
override file), shell variables, and the plain pieces packagers merge.
"""

from __future__ import annotations

import json
import shlex

from collections.abc import Iterator, Mapping, MutableMapping
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Any, Protocol, TypeVar

import attrs


#: Where the authority file is mounted in the container, unless told otherwise.
DEFAULT_CONTAINER_XAUTHORITY = PurePosixPath("/tmp/.x11passthrough.xauth")

_Kwargs = TypeVar("_Kwargs", bound=MutableMapping[str, Any])


class _ContainerMethods(Protocol):
    """What :meth:`DockerRunArgs.apply_to` uses of a testcontainers ``DockerContainer``."""

    def with_env(self, key: str, value: str, /) -> Any: ...

    def with_volume_mapping(self, host: str, container: str, mode: str, /) -> Any: ...

    def with_kwargs(self, **kwargs: Any) -> Any: ...


_Container = TypeVar("_Container", bound=_ContainerMethods)


def _frozen_mapping(value: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(value))


@attrs.frozen(kw_only=True)
class DockerRunArgs:
    """
    What a container needs to reach the passthrough's display.

    Iterating gives ``docker run`` (and ``podman run``) command-line arguments, so ``[*args]``
    splices into an argv. On the default UNIX transport that is::

        --env DISPLAY=:M
        --env XAUTHORITY=/tmp/.x11passthrough.xauth
        --volume /run/user/1000/x11passthrough-.../X11-unix/XM:/tmp/.X11-unix/XM
        --volume /run/user/1000/x11passthrough-.../Xauthority:/tmp/.x11passthrough.xauth:ro

    and on TCP (``transport="tcp"``, for engines in a VM) ``--env
    DISPLAY=tcp/host.docker.internal:M`` with, where the engine needs it, ``--add-host
    host.docker.internal:host-gateway``.

    The same content comes as Docker SDK keyword arguments (:meth:`docker_py`), a Compose
    service (:meth:`compose`), settings of a testcontainers container (:meth:`apply_to`), and
    plain pieces for packagers (:attr:`environment`, :attr:`mounts`, :attr:`extra_hosts`,
    :meth:`add_to`).

    Attributes:
        display: The display name the container uses (``:M``, or ``tcp/HOST:M``).
        xauthority: The authority file on the host, or ``None`` when the display needs no
            cookie.
        container_xauthority: Where that file is mounted in the container.
        socket: The relay's UNIX socket on the host (UNIX transport), or ``None``.
        container_socket: Where the socket is mounted in the container.
        extra_hosts: Host names to add to the container's ``/etc/hosts``, with their values
            (``{"host.docker.internal": "host-gateway"}``).
        hostname: The container's host name, or ``None`` (the default) to leave the engine's.
        ipc: The container's IPC namespace (``"host"`` with ``X11Passthrough(shm=True)``:
            ``--ipc host``), or ``None`` to leave the engine's.

    .. versionadded:: 0.1.0
    """

    display: str
    xauthority: Path | None
    container_xauthority: PurePosixPath = DEFAULT_CONTAINER_XAUTHORITY
    socket: Path | None = None
    container_socket: PurePosixPath | None = None
    extra_hosts: Mapping[str, str] = attrs.field(
        factory=dict, converter=_frozen_mapping, hash=False
    )
    hostname: str | None = None
    ipc: str | None = None

    @property
    def environment(self) -> Mapping[str, str]:
        """The environment variables to set in the container (``DISPLAY``, ``XAUTHORITY``)."""
        env = {"DISPLAY": self.display}
        if self.xauthority is not None:
            env["XAUTHORITY"] = str(self.container_xauthority)
        return MappingProxyType(env)

    @property
    def mounts(self) -> tuple[tuple[str, str, bool], ...]:
        """The bind mounts, as ``(host path, container path, read_only)``."""
        found: list[tuple[str, str, bool]] = []
        if self.socket is not None and self.container_socket is not None:
            found.append((str(self.socket), str(self.container_socket), False))
        if self.xauthority is not None:
            found.append((str(self.xauthority), str(self.container_xauthority), True))
        return tuple(found)

    def __iter__(self) -> Iterator[str]:
        for name, value in self.extra_hosts.items():
            yield from ("--add-host", f"{name}:{value}")
        if self.hostname is not None:
            yield from ("--hostname", self.hostname)
        if self.ipc is not None:
            yield from ("--ipc", self.ipc)
        for name, value in self.environment.items():
            yield from ("--env", f"{name}={value}")
        for host, inside, read_only in self.mounts:
            yield from ("--volume", f"{host}:{inside}:ro" if read_only else f"{host}:{inside}")

    def add_to(self, kwargs: _Kwargs) -> _Kwargs:
        """
        Merge these arguments into a packager's keyword arguments, and return them.

        The shape is BeeWare Briefcase's (``env`` dict, ``mounts`` list of ``(host,
        container)`` pairs, ``add_hosts`` list of ``(name, address)`` pairs), which a
        ``dockerize_args``-style function turns into ``docker run`` options. Existing entries
        are kept; these are added::

            with X11Passthrough() as args:
                run(image, **args.add_to(kwargs))
        """
        kwargs.setdefault("env", {}).update(self.environment)
        kwargs.setdefault("mounts", []).extend((host, inside) for host, inside, _ in self.mounts)
        kwargs.setdefault("add_hosts", []).extend(self.extra_hosts.items())
        return kwargs

    def docker_py(self) -> dict[str, Any]:
        """
        Return keyword arguments for the Docker SDK's ``client.containers.run(...)``.

        Merge them with your own, e.g. ``client.containers.run(image, cmd, **args.docker_py())``.
        """
        kwargs: dict[str, Any] = {
            "environment": dict(self.environment),
            "extra_hosts": dict(self.extra_hosts),
            "volumes": {
                host: {"bind": inside, "mode": "ro" if read_only else "rw"}
                for host, inside, read_only in self.mounts
            },
        }
        if self.hostname is not None:
            kwargs["hostname"] = self.hostname
        if self.ipc is not None:
            kwargs["ipc_mode"] = self.ipc
        return kwargs

    def apply_to(self, container: _Container) -> _Container:
        """
        Set these arguments on a testcontainers ``DockerContainer``, and return it.

        ``container.with_kwargs(**args.docker_py())`` fails: ``DockerContainer`` passes its own
        ``environment=`` and ``volumes=`` to the Docker SDK. This goes through its own
        methods instead: ``with_env`` for each variable, ``with_volume_mapping`` for each
        mount, and, where there are any, ``extra_hosts``, ``hostname`` and ``ipc_mode``
        merged into the container's keyword arguments (``with_kwargs`` replaces them all, so
        the ones set before are kept; call ``with_kwargs`` yourself before this, not after)::

            with X11Passthrough() as args:
                with args.apply_to(DockerContainer(image).with_command("xdpyinfo")) as c:
                    ...

        Nothing of testcontainers is imported: any object with those three methods works.

        .. versionadded:: 0.1.0
        """
        for name, value in self.environment.items():
            container.with_env(name, value)
        for host, inside, read_only in self.mounts:
            container.with_volume_mapping(host, inside, "ro" if read_only else "rw")
        if not self.extra_hosts and self.hostname is None and self.ipc is None:
            return container
        # DockerContainer keeps what with_kwargs was given in `_kwargs` (testcontainers 4).
        kwargs = dict(getattr(container, "_kwargs", None) or {})
        if self.extra_hosts:
            kwargs["extra_hosts"] = {**(kwargs.get("extra_hosts") or {}), **self.extra_hosts}
        if self.hostname is not None:
            kwargs["hostname"] = self.hostname
        if self.ipc is not None:
            kwargs["ipc_mode"] = self.ipc
        container.with_kwargs(**kwargs)
        return container

    def compose(self) -> dict[str, Any]:
        """Return the keys of a Compose service definition (``environment``, ``volumes``, ...)."""
        service: dict[str, Any] = {
            "environment": dict(self.environment),
            "volumes": [
                {"type": "bind", "source": host, "target": inside, "read_only": read_only}
                for host, inside, read_only in self.mounts
            ],
        }
        if self.extra_hosts:
            service["extra_hosts"] = [f"{n}:{v}" for n, v in self.extra_hosts.items()]
        if self.hostname is not None:
            service["hostname"] = self.hostname
        if self.ipc is not None:
            service["ipc"] = self.ipc
        return service


def compose_file(args: DockerRunArgs, service: str) -> str:
    """Return a complete Compose override file (YAML) giving `service` the display."""
    q = json.dumps  # JSON strings are YAML double-quoted scalars
    fragment = args.compose()
    lines = ["services:", f"  {q(service)}:"]
    lines.append("    environment:")
    lines += [f"      {q(k)}: {q(v)}" for k, v in fragment["environment"].items()]
    if fragment["volumes"]:
        lines.append("    volumes:")
        for volume in fragment["volumes"]:
            lines.append(f"      - type: {q(volume['type'])}")
            lines.append(f"        source: {q(volume['source'])}")
            lines.append(f"        target: {q(volume['target'])}")
            lines.append(f"        read_only: {'true' if volume['read_only'] else 'false'}")
    if fragment.get("extra_hosts"):
        lines.append("    extra_hosts:")
        lines += [f"      - {q(h)}" for h in fragment["extra_hosts"]]
    if fragment.get("hostname"):
        lines.append(f"    hostname: {q(fragment['hostname'])}")
    return "\n".join(lines)


def env_lines(args: DockerRunArgs) -> str:
    """Return shell assignments: the pieces, and all docker-run options in one variable."""
    values = {
        "X11PASSTHROUGH_DISPLAY": args.display,
        "X11PASSTHROUGH_XAUTHORITY": str(args.xauthority or ""),
        "X11PASSTHROUGH_CONTAINER_XAUTHORITY": str(args.container_xauthority),
        "X11PASSTHROUGH_SOCKET": str(args.socket or ""),
        "X11PASSTHROUGH_CONTAINER_SOCKET": str(args.container_socket or ""),
        "X11PASSTHROUGH_ARGS": shlex.join(args),
    }
    return "\n".join(f"export {k}={shlex.quote(v)}" for k, v in values.items())
