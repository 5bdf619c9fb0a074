"""
Who may connect to the relay, by facts: the engine's networks (also those made after the start,
whatever their bridge is called), this host's own addresses, IPv6; refusals say why.
"""

from __future__ import annotations

import logging
import secrets
import subprocess

from collections.abc import Callable, Iterator

import docker
import pytest

from x11passthrough import DockerRunArgs, X11Passthrough

from infra.ci import require_executables
from infra.network import NetNamespace
from infra.xvfb import XServer


pytestmark = pytest.mark.e2e
RANGE = range(1700, 1800)


def docker_run(image: str, args: DockerRunArgs, *extra: str) -> subprocess.CompletedProcess[str]:
    require_executables("docker")
    *options, command = extra
    return subprocess.run(
        ["docker", "run", "--rm", *options, *args, image, command],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


@pytest.fixture(name="network_factory")
def _network_factory(docker_client: docker.DockerClient) -> Iterator[Callable[..., str]]:
    made: list[str] = []

    def create(**options: str) -> str:
        name = f"x11pt-{secrets.token_hex(4)}"
        docker_client.networks.create(name, driver="bridge", options=options)
        made.append(name)
        return name

    yield create
    for name in made:
        docker_client.networks.get(name).remove()


def test_a_network_created_after_the_start_is_admitted(
    xvfb: XServer, x11_image: str, network_factory: Callable[..., str]
) -> None:
    """The relay asks the engine again when an unknown client connects."""
    with X11Passthrough(xvfb.display, xvfb.xauthority, display_range=RANGE) as args:
        late = network_factory()
        result = docker_run(x11_image, args, "--network", late, "xdpyinfo")
        assert result.returncode == 0, result.stderr


def test_a_custom_named_bridge_is_admitted(
    xvfb: XServer, x11_image: str, network_factory: Callable[..., str]
) -> None:
    """Facts, not names: a bridge called anything is a container network if the engine says."""
    custom = network_factory(**{"com.docker.network.bridge.name": f"x11c{secrets.token_hex(3)}"})
    with X11Passthrough(xvfb.display, xvfb.xauthority, display_range=RANGE) as args:
        result = docker_run(x11_image, args, "--network", custom, "xdpyinfo")
        assert result.returncode == 0, result.stderr


def test_a_host_network_container_is_admitted(xvfb: XServer, x11_image: str) -> None:
    """--network host containers connect from this host's own address; they are admitted."""
    with X11Passthrough(xvfb.display, xvfb.xauthority, display_range=RANGE) as args:
        result = docker_run(x11_image, args, "--network", "host", "xdpyinfo")
        assert result.returncode == 0, result.stderr


def test_the_bound_ipv6_network_is_admitted(
    xvfb: XServer, netns: Callable[[], NetNamespace]
) -> None:
    """A relay bound to an IPv6 address admits that address's network."""
    ns = netns()
    prefix = f"fd{secrets.token_hex(1)}:{secrets.token_hex(2)}:{secrets.token_hex(2)}::"
    host, inside = f"{prefix}1", f"{prefix}2"
    subprocess.run(
        ["ip", "-6", "addr", "add", f"{host}/64", "dev", ns.host_interface, "nodad"], check=True
    )
    subprocess.run(
        [
            "ip",
            "-n",
            ns.name,
            "-6",
            "addr",
            "add",
            f"{inside}/64",
            "dev",
            ns.ns_interface,
            "nodad",
        ],
        check=True,
    )
    with X11Passthrough(
        xvfb.display, xvfb.xauthority, bind=[host], display_range=RANGE, container_hostname=None
    ) as args:
        number = args.display.rsplit(":", 1)[1]
        env = {"DISPLAY": f"[{host}]:{number}", "XAUTHORITY": str(args.xauthority)}
        result = ns.run(["xdpyinfo"], env=env)
        assert result.returncode == 0, result.stderr


def test_an_outsider_is_refused_with_a_reason_and_a_warning(
    xvfb: XServer, netns: Callable[[], NetNamespace], caplog: pytest.LogCaptureFixture
) -> None:
    """A client outside every allowed network reads why; the log names it and the option."""
    require_executables("xdpyinfo")
    ns = netns()
    caplog.set_level(logging.WARNING, logger="x11passthrough")
    with X11Passthrough(
        xvfb.display,
        xvfb.xauthority,
        bind=[ns.host_address],
        allow=["192.0.2.0/24"],
        display_range=RANGE,
    ) as args:
        number = args.display.rsplit(":", 1)[1]
        env = {"DISPLAY": f"{ns.host_address}:{number}", "XAUTHORITY": str(args.xauthority)}
        result = ns.run(["xdpyinfo"], env=env)
    assert result.returncode != 0
    assert f"x11passthrough: clients from {ns.ns_address} are not admitted" in result.stderr
    assert f"relay refused {ns.ns_address}:" in caplog.text
    assert "allow=" in caplog.text
