"""
A Docker engine for the tests: start and stop it, run throw-away containers, and authority
files for clients that reach an X server from another host.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shlex
import shutil
import signal
import subprocess
import time

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .ci import E2ESetupError, run_checked
from .network import interface_ipv4
from .processes import pid_alive, process_gone


if TYPE_CHECKING:
    import docker


ROOT = Path(__file__).resolve().parents[2]
START_DOCKERD = ROOT / "scripts" / "start-dockerd"
MIT_MAGIC_COOKIE = b"MIT-MAGIC-COOKIE-1"
#: Containers started by :func:`run_container` carry the pid of the test process here.
CONTAINER_OWNER_LABEL = "org.x11passthrough.test-owner"


def docker_engine_answers() -> bool:
    """Return True when a Docker engine answers ``docker info`` (``DOCKER_HOST`` or default)."""
    if shutil.which("docker") is None:
        return False
    try:
        done = subprocess.run(["docker", "info"], capture_output=True, timeout=15, check=False)
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


def start_dockerd(
    *, script: Path = START_DOCKERD, env: Mapping[str, str] | None = None
) -> int | None:
    """
    Start a Docker engine with ``scripts/start-dockerd`` unless one answers already.

    Args:
        script: The start script (prints the pid it started, or nothing).
        env: The script's environment (this process's when None); ``DOCKER_HOST``,
            ``DOCKERD_ARGS`` and ``DOCKERD_LOG`` select a private engine.

    Returns:
        The pid of the dockerd this call started, or None when an engine was already answering.

    Raises:
        E2ESetupError: The script failed (its stderr says why, e.g. dockerd exited).
    """
    done = run_checked(["bash", str(script)], what="starting dockerd", timeout=60, env=env)
    out = done.stdout.strip()
    if not out:
        return None
    try:
        return int(out.splitlines()[-1])
    except ValueError:
        msg = f"{script} printed {out!r}, expected the pid of the dockerd it started"
        raise E2ESetupError(msg) from None


def stop_dockerd(pid: int, *, timeout: float = 30) -> None:
    """
    Stop the dockerd with this pid (one that :func:`start_dockerd` started) and wait for it.

    Does nothing when the process is gone or is no longer a dockerd (its pid was reused).

    Args:
        pid: The pid :func:`start_dockerd` returned.
        timeout: Seconds to wait after SIGTERM before SIGKILL.
    """
    try:
        name = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return
    if name != "dockerd":
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while not process_gone(pid):
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            break
        time.sleep(0.05)


def docker_gateway_address(client: docker.DockerClient) -> str:
    """
    Return the IPv4 address of the host on Docker's default bridge (``host-gateway``).

    Reads the gateway from ``docker network inspect bridge``; engines that leave it out there get
    it from the address of the bridge interface (``docker0``).

    Args:
        client: A client of the engine.

    Returns:
        The address as a dotted quad, e.g. ``172.17.0.1``.

    Raises:
        E2ESetupError: Neither source names an IPv4 address.
    """
    attrs = client.networks.get("bridge").attrs
    for config in (attrs.get("IPAM") or {}).get("Config") or []:
        gateway = config.get("Gateway", "")
        with contextlib.suppress(ValueError):
            if gateway and ipaddress.ip_address(gateway).version == 4:
                return str(gateway)
    interface = (attrs.get("Options") or {}).get("com.docker.network.bridge.name", "docker0")
    return interface_ipv4(interface)


def remove_stale_containers(client: docker.DockerClient) -> list[str]:
    """
    Remove containers that :func:`run_container` left behind in killed test runs.

    Args:
        client: A client of the engine.

    Returns:
        The ids of the removed containers.
    """
    removed = []
    for container in client.containers.list(all=True, filters={"label": CONTAINER_OWNER_LABEL}):
        owner = str(container.labels.get(CONTAINER_OWNER_LABEL, ""))
        if owner.isdigit() and pid_alive(int(owner)):
            continue
        with contextlib.suppress(Exception):
            container.remove(force=True)
            removed.append(str(container.id))
    return removed


@dataclass(frozen=True)
class ContainerResult:
    """What a command in a container did."""

    exit_code: int
    stdout: str
    stderr: str

    def __str__(self) -> str:
        return f"exit {self.exit_code}\n--- stdout\n{self.stdout}--- stderr\n{self.stderr}"


def run_container(
    client: docker.DockerClient,
    image: str,
    argv: Sequence[str],
    *,
    environment: Mapping[str, str] | None = None,
    mounts: Mapping[str | Path, str] | None = None,
    hostname: str | None = None,
    user: str | None = None,
    extra_hosts: Mapping[str, str] | None = None,
    network_mode: str | None = None,
    timeout: float = 60,
) -> ContainerResult:
    """
    Run a command in a new container, wait for it and remove the container.

    Args:
        client: A client of the engine.
        image: The image tag or id.
        argv: The command.
        environment: Environment variables of the command.
        mounts: Host path -> container path, each mounted read-only.
        hostname: The container's host name (what ``gethostname()`` returns inside).
        user: ``uid`` or ``uid:gid`` to run as.
        extra_hosts: Host name -> address lines for the container's /etc/hosts
            (the address may be ``host-gateway``).
        network_mode: A Docker network mode; the default bridge when None.
        timeout: Seconds to wait for the command before killing it.

    Returns:
        The exit code and the output streams (never raises for a non-zero exit).

    Raises:
        E2ESetupError: The command did not finish within `timeout`.
    """
    volumes = {
        str(host): {"bind": inside, "mode": "ro"} for host, inside in (mounts or {}).items()
    }
    container = client.containers.create(
        image,
        list(argv),
        environment=dict(environment or {}),
        volumes=volumes,
        hostname=hostname,
        user=user,
        extra_hosts=dict(extra_hosts or {}),
        network_mode=network_mode,
        labels={CONTAINER_OWNER_LABEL: str(os.getpid())},
        detach=True,
    )
    try:
        container.start()
        try:
            status = container.wait(timeout=timeout)
        except Exception as error:  # requests' ReadTimeout and friends
            container.kill()
            msg = f"`{shlex.join(argv)}` in {image} did not finish within {timeout} s"
            raise E2ESetupError(msg) from error
        stdout = container.logs(stdout=True, stderr=False).decode(errors="replace")
        stderr = container.logs(stdout=False, stderr=True).decode(errors="replace")
        return ContainerResult(int(status["StatusCode"]), stdout, stderr)
    finally:
        container.remove(force=True)


# ----------------------------------------------------------------------------------------------
# Authority files


def write_client_xauthority(
    path: Path,
    *,
    number: int,
    cookie: bytes,
    wild: bool = True,
    local_hostnames: Iterable[str] = (),
    uid: int | None = None,
) -> Path:
    """
    Write an authority file for clients of display `number` that run elsewhere, with real xauth.

    libxcb (xdpyinfo, xauth, Xlib programs) looks up a TCP peer other than 127.0.0.1 as
    FamilyInternet and accepts a FamilyWild entry for it. python-xlib looks up every ``host:N``
    display as FamilyLocal with its own ``gethostname()`` and never matches FamilyWild, so a
    container that runs python-xlib needs a FamilyLocal entry for the container's host name.

    Args:
        path: The file to write (merged into when it exists); created with mode 0600.
        number: The display number the entries are for.
        cookie: The MIT-MAGIC-COOKIE-1 data.
        wild: Add a FamilyWild entry (any address).
        local_hostnames: Add a FamilyLocal entry for each of these host names.
        uid: Give the file to this user (for a container user other than root).

    Returns:
        `path`.

    Raises:
        E2ESetupError: xauth failed.
    """
    name = MIT_MAGIC_COOKIE.hex()
    num = str(number).encode().hex()
    rest = f"{len(str(number)):04x} {num} {len(MIT_MAGIC_COOKIE):04x} {name} "
    rest += f"{len(cookie):04x} {cookie.hex()}"
    lines = []
    if wild:
        lines.append(f"ffff 0000  {rest}")
    for host in local_hostnames:
        encoded = host.encode()
        lines.append(f"0100 {len(encoded):04x} {encoded.hex()} {rest}")
    if not lines:
        msg = "write_client_xauthority needs wild=True or at least one local host name"
        raise ValueError(msg)
    old_umask = os.umask(0o077)
    try:
        run_checked(
            ["xauth", "-f", str(path), "nmerge", "-"],
            what="writing an authority file",
            stdin_text="\n".join(lines) + "\n",
        )
    finally:
        os.umask(old_umask)
    path.chmod(0o600)
    if uid is not None:
        os.chown(path, uid, -1)
    return path
