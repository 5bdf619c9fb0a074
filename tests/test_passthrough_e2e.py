"""X11Passthrough end to end: real containers, a network namespace, real SSH X11 forwarding."""

from __future__ import annotations

import socket
import subprocess

from collections.abc import Callable
from pathlib import Path

import docker
import pytest

from x11passthrough import DockerRunArgs, X11Passthrough
from x11passthrough.xauth import Xauthority

from infra.ci import require_executables
from infra.docker import run_container
from infra.network import NetNamespace
from infra.sshd import ForwardedDisplay, Sshd
from infra.xvfb import XServer


pytestmark = pytest.mark.e2e
RANGE = range(700, 800)


def number(args: DockerRunArgs) -> int:
    return int(args.display.rsplit(":", 1)[1])


def docker_run(
    image: str, args: DockerRunArgs | list[str], *command: str
) -> subprocess.CompletedProcess[str]:
    require_executables("docker")
    return subprocess.run(
        ["docker", "run", "--rm", *args, image, *command],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def port_open(address: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex((address, port)) == 0


def test_docker_run_with_the_yielded_arguments(
    xvfb: XServer, x11_image: str, docker_gateway: str
) -> None:
    """xdpyinfo (libxcb) and a python-xlib client in a container reach the display."""
    with X11Passthrough(xvfb.display, xvfb.xauthority, display_range=RANGE) as args:
        assert port_open(docker_gateway, 6000 + number(args))
        libxcb = docker_run(x11_image, args, "xdpyinfo")
        assert libxcb.returncode == 0, libxcb.stderr
        assert "X.Org" in libxcb.stdout
        xlib = docker_run(x11_image, args, "xlib-probe")
        assert xlib.returncode == 0, xlib.stderr
        assert xlib.stdout.startswith("screen 1024x768")
        file = args.xauthority
        assert file is not None
    assert not port_open(docker_gateway, 6000 + number(args))
    assert not file.exists()


def test_docker_sdk(xvfb: XServer, x11_image: str, docker_client: docker.DockerClient) -> None:
    """The same through the Docker SDK with docker_py()."""
    with X11Passthrough(xvfb.display, xvfb.xauthority, display_range=RANGE) as args:
        kwargs = args.docker_py()
        result = run_container(
            docker_client,
            x11_image,
            ["xdpyinfo"],
            environment=kwargs["environment"],
            mounts={h: v["bind"] for h, v in kwargs["volumes"].items()},
            hostname=kwargs["hostname"],
            extra_hosts=kwargs["extra_hosts"],
        )
        assert result.exit_code == 0, str(result)


def test_containers_without_the_session_cookie_are_refused(
    xvfb: XServer, x11_image: str, tmp_path: Path
) -> None:
    """A container without the arguments, and one with a wrong cookie, are refused."""
    with X11Passthrough(xvfb.display, xvfb.xauthority, display_range=RANGE) as args:
        bare = docker_run(x11_image, [], "xdpyinfo")
        assert bare.returncode != 0
        no_auth = docker_run(
            x11_image,
            [
                "--add-host",
                "host.docker.internal:host-gateway",
                "--env",
                f"DISPLAY={args.display}",
            ],
            "xdpyinfo",
        )
        assert no_auth.returncode != 0
        assert "x11passthrough" in no_auth.stderr
        wrong = tmp_path / "wrong"
        entry = f"ffff 0000  {len(str(number(args))):04x} {str(number(args)).encode().hex()} "
        entry += f"0012 {b'MIT-MAGIC-COOKIE-1'.hex()} 0010 {'ab' * 16}\n"
        subprocess.run(
            ["xauth", "-f", str(wrong), "nmerge", "-"], input=entry, text=True, check=True
        )
        wrong_args = [
            str(wrong) + a[len(str(args.xauthority)) :]
            if a.startswith(str(args.xauthority))
            else a
            for a in args
        ]
        assert f"{wrong}:{args.container_xauthority}:ro" in wrong_args
        wrong_cookie = docker_run(x11_image, wrong_args, "xdpyinfo")
        assert wrong_cookie.returncode != 0
        assert "wrong authorization cookie" in wrong_cookie.stderr


def test_the_real_cookie_is_nowhere_in_the_container(xvfb: XServer, x11_image: str) -> None:
    """Neither the mounted file nor the environment holds the real cookie's bytes."""
    with X11Passthrough(xvfb.display, xvfb.xauthority, display_range=RANGE) as args:
        seen = subprocess.run(
            [
                "docker",
                "run",
                "--rm",
                *args,
                x11_image,
                "sh",
                "-c",
                'env; cat "$XAUTHORITY"; cat /etc/hosts',
            ],
            capture_output=True,
            check=True,
            timeout=120,
        ).stdout
        assert b"XAUTHORITY=" in seen
        assert xvfb.cookie not in seen
        assert xvfb.cookie.hex().encode() not in seen


def test_network_namespace_stands_in_for_a_container(
    xvfb: XServer, netns: Callable[[], NetNamespace]
) -> None:
    """A client in a network namespace reaches the display through a relay on its veth."""
    require_executables("xdpyinfo")
    ns = netns()
    with X11Passthrough(
        xvfb.display,
        xvfb.xauthority,
        bind=[ns.host_address],
        display_range=RANGE,
        container_hostname=None,
    ) as args:
        env = {"DISPLAY": f"{ns.host_address}:{number(args)}", "XAUTHORITY": str(args.xauthority)}
        ok = ns.run(["xdpyinfo"], env=env)
        assert ok.returncode == 0, ok.stderr
        refused = ns.run(["xdpyinfo"], env={**env, "XAUTHORITY": "/nonexistent"})
        assert refused.returncode != 0
        # The relay does not listen on loopback or the docker0 address.
        assert not port_open("127.0.0.1", 6000 + number(args))


def test_netns_outside_the_allowlist_is_refused(
    xvfb: XServer, netns: Callable[[], NetNamespace]
) -> None:
    """A namespace whose network is not allowed is refused before a byte is forwarded."""
    ns = netns()
    with X11Passthrough(
        xvfb.display,
        xvfb.xauthority,
        bind=[ns.host_address],
        allow=["192.0.2.0/24"],
        display_range=RANGE,
    ) as args:
        env = {"DISPLAY": f"{ns.host_address}:{number(args)}", "XAUTHORITY": str(args.xauthority)}
        assert ns.run(["xdpyinfo"], env=env).returncode != 0


def test_ssh_forwarded_display(xvfb: XServer, sshd_x11: Sshd, x11_image: str) -> None:
    """An SSH-forwarded display (TCP localhost:10) is found over TCP and lent to a container."""
    with sshd_x11.ssh_session(xvfb) as forwarded:
        assert isinstance(forwarded, ForwardedDisplay)
        with X11Passthrough(forwarded.display, forwarded.xauthority, display_range=RANGE) as args:
            result = docker_run(x11_image, args, "xdpyinfo")
            assert result.returncode == 0, result.stderr
            # sshd's fake cookie stays on the host too.
            assert args.xauthority is not None
            lent = args.xauthority.read_bytes()
            assert all(e.data not in lent for e in Xauthority.load(forwarded.xauthority))
