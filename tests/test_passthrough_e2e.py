"""
X11Passthrough end to end on Docker Engine: real containers through both transports, every
kind of container user and network, the Docker SDK, refusals, and real SSH X11 forwarding.
"""

from __future__ import annotations

import secrets
import socket
import stat
import subprocess

from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import pytest

from x11passthrough import DockerRunArgs, Transport, X11Passthrough
from x11passthrough.xauth import Xauthority

from infra.ci import require_executables
from infra.docker import run_container
from infra.images import user_image
from infra.network import NetNamespace
from infra.sshd import ForwardedDisplay, Sshd
from infra.xvfb import XServer


pytestmark = pytest.mark.e2e
RANGE = range(700, 800)
TRANSPORTS: list[Transport] = ["unix", "tcp"]


def number(args: DockerRunArgs) -> int:
    return int(args.display.rsplit(":", 1)[1])


def lend(server: XServer, transport: str = "unix", **options: object) -> X11Passthrough:
    """A passthrough of `server` for containers of this host's Docker Engine."""
    options.setdefault("display_range", RANGE)
    return X11Passthrough(server.display, server.xauthority, transport=transport, **options)  # type: ignore[arg-type]


def docker_run(
    image: str, args: DockerRunArgs | list[str], *command: str, options: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    require_executables("docker")
    return subprocess.run(
        ["docker", "run", "--rm", *options, *args, image, *command],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def port_open(address: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex((address, port)) == 0


@pytest.fixture(name="late_network")
def _late_network(docker_client: docker.DockerClient) -> Iterator[Callable[[], str]]:
    made: list[str] = []

    def create() -> str:
        name = f"x11pt-{secrets.token_hex(4)}"
        docker_client.networks.create(name, driver="bridge")
        made.append(name)
        return name

    yield create
    for name in made:
        docker_client.networks.get(name).remove()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_libxcb_and_python_xlib_clients_reach_the_display(
    xvfb: XServer, x11_image: str, transport: str
) -> None:
    """xdpyinfo (libxcb) and python-xlib, with the engine's random host name, both connect."""
    with lend(xvfb, transport) as args:
        assert args.hostname is None
        libxcb = docker_run(x11_image, args, "xdpyinfo")
        assert libxcb.returncode == 0, libxcb.stderr
        assert "X.Org" in libxcb.stdout
        xlib = docker_run(x11_image, args, "xlib-probe")
        assert xlib.returncode == 0, xlib.stderr
        assert xlib.stdout.startswith("screen 1024x768")
        session = args.xauthority
        assert session is not None
    assert not session.exists()


def test_the_unix_transport_opens_no_port(
    xvfb: XServer, x11_image: str, docker_gateway: str
) -> None:
    """By default the relay listens on no TCP port at all, wildcard or not."""
    with lend(xvfb, "auto") as args:
        assert args.display == f":{number(args)}"
        assert not port_open(docker_gateway, 6000 + number(args))
        assert not port_open("127.0.0.1", 6000 + number(args))
        assert docker_run(x11_image, args, "xdpyinfo").returncode == 0


def test_the_tcp_transport_listens_on_the_bridge_only(xvfb: XServer, docker_gateway: str) -> None:
    """transport='tcp' on Docker Engine: the docker0 address, not loopback, not a wildcard."""
    with lend(xvfb, "tcp") as args:
        assert port_open(docker_gateway, 6000 + number(args))
        assert not port_open("127.0.0.1", 6000 + number(args))
    assert not port_open(docker_gateway, 6000 + number(args))


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("user", ["1000:1000", "65534:65534"])
def test_any_container_user_can_read_the_session_file(
    xvfb: XServer, x11_image: str, transport: str, user: str
) -> None:
    """The session cookie only opens the relay, so the file is 0644 (in a 0700 directory)."""
    with lend(xvfb, transport) as args:
        assert args.xauthority is not None
        assert stat.S_IMODE(args.xauthority.stat().st_mode) == 0o644
        assert stat.S_IMODE(args.xauthority.parent.stat().st_mode) == 0o700
        result = docker_run(x11_image, args, "xdpyinfo", options=("--user", user))
        assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_an_image_with_a_user_line(
    xvfb: XServer, x11_image: str, docker_client: docker.DockerClient, transport: str
) -> None:
    """An image whose USER is not root (what CPython's tkinter tests hit) gets the display."""
    image = user_image(x11_image)
    with lend(xvfb, transport) as args:
        seen = docker_run(image, args, "id", "-u")
        assert seen.stdout.strip() == "1000"
        assert docker_run(image, args, "xdpyinfo").returncode == 0
        assert docker_run(image, args, "xlib-probe").returncode == 0


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_forward_mode_keeps_the_real_cookie_private(
    xvfb: XServer, x11_image: str, transport: str
) -> None:
    """
    auth='forward' puts the real cookie in the file: 0600, so only root or you read it.

    Another container user cannot read it. On the UNIX transport it still gets the display
    (the private socket admits clients without a cookie); on TCP it is refused, saying why.
    """
    with lend(xvfb, transport, auth="forward") as args:
        assert args.xauthority is not None
        assert stat.S_IMODE(args.xauthority.stat().st_mode) == 0o600
        assert docker_run(x11_image, args, "xdpyinfo").returncode == 0
        other = ("--user", "1000:1000")
        assert (
            docker_run(x11_image, args, "sh", "-c", 'cat "$XAUTHORITY"', options=other).returncode
            != 0
        )
        display = docker_run(x11_image, args, "xdpyinfo", options=other)
        if transport == "unix":
            assert display.returncode == 0, display.stderr
        else:
            assert display.returncode != 0
            assert "x11passthrough: no authorization" in display.stderr


@pytest.mark.parametrize("network", ["none", "host"])
def test_network_modes_on_the_unix_transport(xvfb: XServer, x11_image: str, network: str) -> None:
    """No network at all, or the host's: the mounted socket serves both."""
    with lend(xvfb) as args:
        for client in ("xdpyinfo", "xlib-probe"):
            result = docker_run(x11_image, args, client, options=("--network", network))
            assert result.returncode == 0, (client, result.stderr)


def test_host_network_on_the_tcp_transport(xvfb: XServer, x11_image: str) -> None:
    """--network host reaches the bridge address from the host's own address."""
    with lend(xvfb, "tcp") as args:
        result = docker_run(x11_image, args, "xdpyinfo", options=("--network", "host"))
        assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_network_created_after_the_start(
    xvfb: XServer, x11_image: str, late_network: Callable[[], str], transport: str
) -> None:
    """A user-defined network made while the passthrough runs."""
    with lend(xvfb, transport) as args:
        network = late_network()
        result = docker_run(x11_image, args, "xdpyinfo", options=("--network", network))
        assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_the_users_own_hostname(xvfb: XServer, x11_image: str, transport: str) -> None:
    """--hostname of the user's choosing: python-xlib still finds its cookie."""
    with lend(xvfb, transport) as args:
        result = docker_run(x11_image, args, "xlib-probe", options=("--hostname", "my-app-box"))
        assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_docker_sdk(
    xvfb: XServer, x11_image: str, docker_client: docker.DockerClient, transport: str
) -> None:
    """The same through the Docker SDK with docker_py()."""
    with lend(xvfb, transport) as args:
        kwargs = args.docker_py()
        assert "hostname" not in kwargs
        result = run_container(
            docker_client,
            x11_image,
            ["xdpyinfo"],
            environment=kwargs["environment"],
            mounts={h: v["bind"] for h, v in kwargs["volumes"].items()},
            extra_hosts=kwargs["extra_hosts"],
        )
        assert result.exit_code == 0, str(result)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_containers_without_the_session_cookie_are_refused(
    xvfb: XServer, x11_image: str, tmp_path: Path, transport: str
) -> None:
    """A wrong cookie is refused with the relay's reason, on either transport."""
    with lend(xvfb, transport) as args:
        wrong = tmp_path / "wrong"
        entry = f"ffff 0000  {len(str(number(args))):04x} {str(number(args)).encode().hex()} "
        entry += f"0012 {b'MIT-MAGIC-COOKIE-1'.hex()} 0010 {'ab' * 16}\n"
        subprocess.run(
            ["xauth", "-f", str(wrong), "nmerge", "-"], input=entry, text=True, check=True
        )
        wrong.chmod(0o644)
        swapped = [
            str(wrong) + a[len(str(args.xauthority)) :]
            if a.startswith(str(args.xauthority))
            else a
            for a in args
        ]
        assert f"{wrong}:{args.container_xauthority}:ro" in swapped
        result = docker_run(x11_image, swapped, "xdpyinfo")
        assert result.returncode != 0
        assert "wrong authorization cookie" in result.stderr


def test_tcp_clients_without_any_cookie_are_refused(xvfb: XServer, x11_image: str) -> None:
    """On TCP (reachable by others) no authorization means no display."""
    with lend(xvfb, "tcp") as args:
        bare = [f"--env=DISPLAY={args.display}"]
        bare += [f"--add-host={name}:{value}" for name, value in args.extra_hosts.items()]
        result = docker_run(x11_image, bare, "xdpyinfo")
        assert result.returncode != 0
        assert "x11passthrough: no authorization" in result.stderr


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_the_real_cookie_is_nowhere_in_the_container(
    xvfb: XServer, x11_image: str, transport: str
) -> None:
    """Neither the mounted file nor the environment holds the real cookie's bytes."""
    with lend(xvfb, transport) as args:
        seen = subprocess.run(
            ["docker", "run", "--rm", *args, x11_image, "sh", "-c", 'env; cat "$XAUTHORITY"'],
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
    with lend(xvfb, "tcp", bind=[ns.host_address]) as args:
        env = {"DISPLAY": f"{ns.host_address}:{number(args)}", "XAUTHORITY": str(args.xauthority)}
        ok = ns.run(["xdpyinfo"], env=env)
        assert ok.returncode == 0, ok.stderr
        refused = ns.run(["xdpyinfo"], env={**env, "XAUTHORITY": "/nonexistent"})
        assert refused.returncode != 0
        assert not port_open("127.0.0.1", 6000 + number(args))


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_ssh_forwarded_display(
    xvfb: XServer, sshd_x11: Sshd, x11_image: str, transport: Transport
) -> None:
    """An SSH-forwarded display (TCP localhost:10) is found over TCP and lent to a container."""
    with sshd_x11.ssh_session(xvfb) as forwarded:
        assert isinstance(forwarded, ForwardedDisplay)
        with X11Passthrough(
            forwarded.display, forwarded.xauthority, display_range=RANGE, transport=transport
        ) as args:
            result = docker_run(x11_image, args, "xdpyinfo")
            assert result.returncode == 0, result.stderr
            assert args.xauthority is not None
            lent = args.xauthority.read_bytes()
            assert all(e.data not in lent for e in Xauthority.load(forwarded.xauthority))
