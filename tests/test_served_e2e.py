"""
Served displays with the real pieces (issue 21): Compose ``up -d`` with containers started
before ``serve``, restarted while it serves, and served again by a later ``serve``; the
devcontainers CLI (``@devcontainers/cli`` from the npm registry) bringing up a dev container
whose ``devcontainer.json`` comes from ``x11passthrough args --format devcontainer``, and an
X client in it drawing on the Xvfb; per-container cookies minted and revoked while containers
run, the others undisturbed.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import textwrap

from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from docker.models.containers import Container

from x11passthrough.served import ServedArgs, ServedDisplay, served_args

from infra.ci import require
from infra.cli import cli
from infra.docker import CONTAINER_OWNER_LABEL
from infra.engines import run_podman
from infra.processes import wait_until
from infra.served import TEST_RANGE, serving
from infra.xvfb import XServer


pytestmark = pytest.mark.e2e

#: Draws a green square on a red window at the top left of the screen, says so, and keeps the
#: window until its stdin closes (python-xlib: it finds its cookie under the host name).
DRAW = textwrap.dedent(
    """
    import sys
    from Xlib import X, display
    d = display.Display()
    s = d.screen()
    w = s.root.create_window(0, 0, 64, 64, 0, s.root_depth, background_pixel=0xFF0000,
                             override_redirect=True)
    w.map()
    d.sync()
    gc = w.create_gc(foreground=0x00FF00)
    w.fill_rectangle(gc, 16, 16, 32, 32)
    d.sync()
    print("drawn", flush=True)
    sys.stdin.read()
    """
)
#: Keeps one connection and makes a round trip every 50 ms until the connection is cut.
HOLD = textwrap.dedent(
    """
    import time
    from Xlib import display
    d = display.Display()
    print("connected", flush=True)
    try:
        while True:
            d.get_input_focus()
            time.sleep(0.05)
    except Exception as e:
        print("cut:", type(e).__name__, flush=True)
        raise SystemExit(3)
    """
)


def _compose_command() -> list[str]:
    if (
        shutil.which("docker")
        and (
            subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
        ).returncode
        == 0
    ):
        return ["docker", "compose"]
    require(
        "Docker Compose", shutil.which("docker-compose") is not None, "apt install docker-compose"
    )
    return ["docker-compose"]


def _pixel(server: XServer, x: int, y: int) -> bytes:
    """Return the (blue, green, red) of the Xvfb's pixel at x, y, read with a host client."""
    code = (
        "import sys; from Xlib import X, display; d = display.Display(); "
        f"i = d.screen().root.get_image({x}, {y}, 1, 1, X.ZPixmap, 0xFFFFFFFF); "
        "sys.stdout.write(i.data[:3].hex())"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=server.env(), capture_output=True, text=True, check=True
    )
    return bytes.fromhex(done.stdout)


@pytest.fixture(name="host_dir")
def _host_dir(tmp_path: Path) -> Path:
    return tmp_path / "served"


@pytest.fixture(name="project")
def _project(tmp_path: Path) -> Iterator[tuple[list[str], Path]]:
    """A Compose project of its own; taken down after the test."""
    compose = _compose_command()
    directory = tmp_path / "project"
    directory.mkdir()
    command = [
        *compose,
        "--project-name",
        f"x11pt{os.getpid()}",
        "--project-directory",
        str(directory),
    ]
    yield command, directory
    subprocess.run(
        [*command, "-f", str(directory / "compose.yaml"), "down", "--timeout", "1"],
        capture_output=True,
        check=False,
        timeout=120,
    )


def test_compose_up_d_with_a_served_display(
    xvfb: XServer, x11_image: str, host_dir: Path, project: tuple[list[str], Path]
) -> None:
    command, directory = project
    served_args("devbox", host_dir=host_dir, display_range=TEST_RANGE)
    # Written once, before anything serves: the override comes from `args --name`.
    override = cli("args", "--name", "devbox", "--host-dir", str(host_dir), "--format", "compose")
    assert override.returncode == 0, override.stderr
    (directory / "x11.override.yml").write_text(override.stdout)
    (directory / "compose.yaml").write_text(
        textwrap.dedent(
            f"""
            services:
              app:
                image: {x11_image}
                command: ["sleep", "100000"]
                labels:
                  {CONTAINER_OWNER_LABEL}: "{os.getpid()}"
            """
        )
    )
    files = ["-f", str(directory / "compose.yaml"), "-f", str(directory / "x11.override.yml")]

    def compose(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*command, *files, *args], capture_output=True, text=True, check=False, timeout=180
        )

    def xdpyinfo() -> subprocess.CompletedProcess[str]:
        return compose("exec", "-T", "app", "xdpyinfo")

    up = compose("up", "-d")
    assert up.returncode == 0, up.stderr
    not_yet = xdpyinfo()
    assert not_yet.returncode != 0
    assert 'unable to open display ":' in not_yet.stderr
    with serving("devbox", host_dir, xvfb) as served:
        served.wait_ready()
        first = xdpyinfo()
        assert first.returncode == 0, first.stderr
        assert "vendor string:    The X.Org Foundation" in first.stdout
        # A container cannot replace the socket the others connect to, nor plant files.
        planted = compose("exec", "-T", "app", "sh", "-c", "rm -f /tmp/.X11-unix/X*")
        assert "Read-only file system" in planted.stderr
        assert compose("exec", "-T", "app", "touch", "/tmp/.x11passthrough/x").returncode != 0
        assert compose("restart", "-t", "1", "app").returncode == 0
        assert xdpyinfo().returncode == 0
        assert compose("stop", "-t", "1", "app").returncode == 0
        assert compose("start", "app").returncode == 0
        assert xdpyinfo().returncode == 0
    withdrawn = xdpyinfo()
    assert withdrawn.returncode != 0
    # The same container, untouched, reaches the next serve of the name.
    with serving("devbox", host_dir, xvfb) as again:
        again.wait_ready()
        served_again = xdpyinfo()
        assert served_again.returncode == 0, served_again.stderr


def test_devcontainers_cli_with_a_served_display(
    xvfb: XServer,
    x11_image: str,
    host_dir: Path,
    tmp_path: Path,
    docker_client: docker.DockerClient,
) -> None:
    require(
        "the devcontainers CLI",
        shutil.which("devcontainer") is not None,
        "npm install -g @devcontainers/cli",
    )
    served_args("dc", host_dir=host_dir, display_range=TEST_RANGE)
    printed = cli(
        "args",
        "--name",
        "dc",
        "--host-dir",
        str(host_dir),
        "--hostname",
        "devbox",
        "--format",
        "devcontainer",
    )
    assert printed.returncode == 0, printed.stderr
    config = json.loads(printed.stdout)
    assert config["runArgs"] == ["--hostname=devbox"]
    config["image"] = x11_image
    # On a fresh machine the mounted directories are made by this, before the container.
    config["initializeCommand"] = shlex.join(
        [
            sys.executable,
            "-m",
            "x11passthrough",
            "args",
            "--name",
            "dc",
            "--host-dir",
            str(host_dir),
        ]
    )
    config["runArgs"] += ["--label", f"{CONTAINER_OWNER_LABEL}={os.getpid()}"]
    workspace = tmp_path / "workspace"
    (workspace / ".devcontainer").mkdir(parents=True)
    (workspace / ".devcontainer" / "devcontainer.json").write_text(json.dumps(config, indent=2))
    # A fresh machine: the directories do not exist until initializeCommand makes them, and
    # the container starts before anything serves the name.
    shutil.rmtree(host_dir / "dc" / "X11-unix")
    shutil.rmtree(host_dir / "dc" / "auth")
    up = subprocess.run(
        ["devcontainer", "up", "--workspace-folder", str(workspace)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert up.returncode == 0, up.stderr
    outcome = json.loads(up.stdout.strip().splitlines()[-1])
    assert outcome["outcome"] == "success", up.stdout
    container = docker_client.containers.get(outcome["containerId"])
    try:
        with serving("dc", host_dir, xvfb, "--hostname", "devbox") as served:
            served.wait_ready()
            draw = subprocess.Popen(
                [
                    "devcontainer",
                    "exec",
                    "--workspace-folder",
                    str(workspace),
                    "python3",
                    "-c",
                    DRAW,
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            try:
                assert draw.stdout is not None
                line = draw.stdout.readline()
                assert line == "drawn\n", draw.communicate(timeout=60)
                assert _pixel(xvfb, 32, 32) == bytes([0x00, 0xFF, 0x00])  # green
                assert _pixel(xvfb, 4, 4) == bytes([0x00, 0x00, 0xFF])  # red
            finally:
                draw.communicate(input="", timeout=60)
    finally:
        container.remove(force=True)


def test_a_revoked_cookie_cuts_off_one_container_only(
    xvfb: XServer, x11_image: str, host_dir: Path, docker_client: docker.DockerClient
) -> None:
    label = {CONTAINER_OWNER_LABEL: str(os.getpid())}
    display = ServedDisplay(
        "seats",
        xvfb.display,
        xvfb.xauthority,
        host_dir=host_dir,
        container_hostname="seat",
        display_range=TEST_RANGE,
    )

    def run(argv: list[str], seat: ServedArgs) -> Container:
        return docker_client.containers.run(
            x11_image, argv, detach=True, labels=label, **seat.docker_py()
        )

    with display:
        seat_a, seat_b = display.mint("a"), display.mint("b")
        holders = {
            "a": run(["python3", "-c", HOLD], seat_a),
            "b": run(["python3", "-c", HOLD], seat_b),
        }
        try:
            for container in holders.values():
                wait_until(
                    lambda c=container: b"connected" in c.logs(),  # type: ignore[misc]
                    "the client to connect",
                    timeout=60,
                    interval=0.1,
                )
            display.revoke("a")
            assert holders["a"].wait(timeout=60)["StatusCode"] == 3
            assert b"cut: ConnectionClosedError" in holders["a"].logs()
            assert _status(holders["b"]) == "running"
            for seat, status in ((seat_a, 1), (seat_b, 0), (display.args, 0)):
                probe = run(["xdpyinfo"], seat)
                try:
                    assert probe.wait(timeout=60)["StatusCode"] == status, probe.logs()
                finally:
                    probe.remove(force=True)
            assert _status(holders["b"]) == "running"
        finally:
            for container in holders.values():
                container.remove(force=True)


def _status(container: object) -> str:
    container.reload()  # type: ignore[attr-defined]
    return str(container.status)  # type: ignore[attr-defined]


@pytest.mark.parametrize("user", [(), ("--user", "1000:1000")], ids=str)
def test_rootful_podman_with_a_served_display(
    xvfb: XServer, podman_image: str, host_dir: Path, user: tuple[str, ...]
) -> None:
    """Podman mounts the directories read-only too; both client libraries find the cookie."""
    with ServedDisplay(
        "pod",
        xvfb.display,
        xvfb.xauthority,
        host_dir=host_dir,
        container_hostname="pod",
        display_range=TEST_RANGE,
    ) as args:
        for client, expected in (("xdpyinfo", "X.Org"), ("xlib-probe", "screen 1024x768")):
            result = run_podman(["run", "--rm", *user, *args, podman_image, client], check=False)
            assert result.returncode == 0, result.stderr[-2000:]
            assert expected in result.stdout
