"""
The tests' pytest fixtures: private Xvfb servers, a Docker engine and its test image, network
namespaces, and an sshd with X11 forwarding.

Each fixture calls :func:`infra.ci.require` for what a developer's machine may lack (skipped
there, a failure in CI). Loaded as a plugin by conftest.py.

Fixtures:

- ``xvfb_factory``, ``xvfb``, ``xvfb_tcp``: private Xvfb servers with cookie auth.
- ``open_xvfb``: ``xvfb`` also admitting root's connections without a cookie (SI:localuser).
- ``docker_client`` (session): a ``docker.DockerClient``; starts dockerd with
  ``scripts/start-dockerd`` when running as root and no engine answers, and stops it at the end
  of the session only if it started it.
- ``x11_image`` (session): the tag of the X client test image (built once, then cached).
- ``podman_image`` (module): that image in rootful Podman's store (copied from Docker).
- ``distro_image`` (session): the Debian image of the app matrix (:mod:`infra.distro`).
- ``docker_gateway`` (session): the host's IPv4 address on Docker's default bridge.
- ``netns`` (function): a factory of network namespaces joined to the host by veth pairs.
- ``sshd_x11`` (session): a private sshd with X11 forwarding (:class:`infra.sshd.Sshd`).
- ``remote_host`` (session): a second host in namespaces with its own Docker engine, reached
  over SSH (:class:`infra.remote.RemoteHost`), holding the X client test image.
"""

from __future__ import annotations

import os

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pytest

from .ci import E2ESetupError, require, require_executables
from .distro import build_distro_image
from .docker import (
    START_DOCKERD,
    docker_engine_answers,
    docker_gateway_address,
    remove_stale_containers,
    start_dockerd,
    stop_dockerd,
)
from .engines import CONTAINERS_CONF, copy_docker_image, podman_name
from .images import build_x11_image, missing_image_tools
from .network import NetNamespace, create_netns, reap_stale_netns
from .remote import RemoteHost, remote_host
from .sshd import SSHD, Sshd, start_sshd
from .xvfb import XServer, start_xvfb


if TYPE_CHECKING:
    import docker


def _is_root() -> bool:
    return os.geteuid() == 0


@pytest.fixture(scope="session", name="docker_client")
def _docker_client() -> Iterator[docker.DockerClient]:
    """A client of a running Docker engine (started here if needed and possible)."""
    try:
        import docker
    except ImportError:  # pragma: no cover - the tests dependency group has it
        require("the Docker SDK for Python", False, "pip install docker")
        raise
    started: int | None = None
    problem = ""
    if not docker_engine_answers() and _is_root() and START_DOCKERD.exists():
        try:
            started = start_dockerd()
        except E2ESetupError as error:
            problem = str(error)
    ok = docker_engine_answers()
    hint = problem or "start one with `sudo bash scripts/start-dockerd`, or set DOCKER_HOST"
    require("a Docker engine", ok, hint)
    client = docker.from_env(timeout=120)
    remove_stale_containers(client)
    try:
        yield client
    finally:
        client.close()
        if started is not None:
            stop_dockerd(started)


@pytest.fixture(scope="session", name="x11_image")
def _x11_image(docker_client: docker.DockerClient) -> str:
    """The tag of the X client test image (xdpyinfo, xauth, python3 + python-xlib, busybox)."""
    require_executables("docker")
    missing = missing_image_tools()
    require(
        "the programs copied into the test image",
        not missing,
        f"missing {', '.join(missing)}; install x11-utils x11-apps xauth python3 busybox-static",
    )
    return build_x11_image()


@pytest.fixture(scope="module", name="podman_image")
def _podman_image(x11_image: str) -> str:
    """The X client test image, copied into rootful Podman's store; its name there."""
    require_executables("podman")
    require("the test containers.conf", CONTAINERS_CONF.is_file(), "run scripts/setup-engines")
    copy_docker_image(x11_image, rootless=False)
    return podman_name(x11_image)


@pytest.fixture(scope="session", name="distro_image")
def _distro_image(docker_client: docker.DockerClient) -> str:
    """
    The tag of the app-matrix image: Debian bookworm with Tk, GTK 3, Qt 5, Mesa, x11-apps.

    Built once with debootstrap and apt through this machine's mirror (about 95 s), then
    cached by its inputs.
    """
    require("root (debootstrap, chroot)", _is_root(), "run the e2e tests as root")
    require_executables("docker", "debootstrap")
    return build_distro_image()


@pytest.fixture(scope="session", name="docker_gateway")
def _docker_gateway(docker_client: docker.DockerClient) -> str:
    """The host's IPv4 address on Docker's default bridge (what ``host-gateway`` means)."""
    return docker_gateway_address(docker_client)


@pytest.fixture(name="netns")
def _netns() -> Iterator[Callable[[], NetNamespace]]:
    """Create network namespaces joined to the host by veth pairs; all deleted after the test."""
    require("root (to create network namespaces)", _is_root(), "run the e2e tests as root")
    require_executables("ip")
    reap_stale_netns()
    made: list[NetNamespace] = []

    def create() -> NetNamespace:
        ns = create_netns()
        made.append(ns)
        return ns

    yield create
    for ns in made:
        ns.delete()


@pytest.fixture(scope="session", name="sshd_x11")
def _sshd_x11(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    """A private sshd on a loopback port with X11 forwarding (``ssh -X``/``-Y`` sessions)."""
    require("root (sshd switches to the login user)", _is_root(), "run the e2e tests as root")
    require("sshd", SSHD.exists(), "install openssh-server")
    require_executables("ssh", "ssh-keygen", "xauth")
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(name="xvfb_factory")
def _xvfb_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., XServer]]:
    """Start any number of private Xvfb servers; all are stopped after the test."""
    servers: list[XServer] = []

    def start(
        *,
        tcp: bool = False,
        extra_args: tuple[str, ...] = (),
        number: int | None = None,
        cookie: bytes | None = None,
    ) -> XServer:
        server = start_xvfb(
            tmp_path_factory.mktemp("xvfb"),
            tcp=tcp,
            extra_args=extra_args,
            number=number,
            cookie=cookie,
        )
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(name="xvfb")
def _xvfb(xvfb_factory: Callable[..., XServer]) -> XServer:
    """A private Xvfb with cookie auth, listening on its UNIX socket only."""
    return xvfb_factory()


@pytest.fixture(name="open_xvfb")
def _open_xvfb(xvfb: XServer) -> XServer:
    """The test Xvfb, also admitting root's connections without a cookie (SI:localuser)."""
    require_executables("xhost")
    xvfb.xhost("+SI:localuser:root")
    return xvfb


@pytest.fixture(name="xvfb_tcp")
def _xvfb_tcp(xvfb_factory: Callable[..., XServer]) -> XServer:
    """A private Xvfb with cookie auth that also listens on TCP 6000+N."""
    return xvfb_factory(tcp=True)


@pytest.fixture(scope="session", name="remote_host")
def _remote_host(tmp_path_factory: pytest.TempPathFactory, x11_image: str) -> Iterator[RemoteHost]:
    """
    A second host: its own Docker engine and sshd in network and mount namespaces of their own.

    Reached only over SSH (``remote_host.env()`` gives ``DOCKER_HOST=ssh://root@ADDRESS`` and
    an ``ssh`` that knows the host); its engine holds the X client test image.
    """
    require("root (namespaces, dockerd, sshd)", _is_root(), "run the e2e tests as root")
    require("sshd", SSHD.exists(), "install openssh-server")
    require_executables("ssh", "ssh-keygen", "nsenter", "unshare", "dockerd", "ip")
    reap_stale_netns()
    with remote_host(tmp_path_factory.mktemp("remote-client"), image=x11_image) as host:
        yield host
