"""
The command line with real containers: run (also detached, also signalled), the user's own
options read from the command, --xvfb on a host without a display, doctor with a probe image.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess

from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.cli import cli, cli_process
from infra.xvfb import XServer


pytestmark = pytest.mark.e2e


@pytest.mark.parametrize(
    "prefix",
    [["docker", "run"], ["docker", "container", "run"], ["env", "LANG=C", "docker", "run"]],
    ids=" ".join,
)
def test_run_splices_into_the_engine_command(
    xvfb: XServer, x11_image: str, prefix: list[str]
) -> None:
    result = cli("run", "--", *prefix, "--rm", x11_image, "xdpyinfo", env=xvfb.env())
    assert result.returncode == 0, result.stderr
    assert "vendor string:    The X.Org Foundation" in result.stdout


def test_run_passes_the_containers_status_back(xvfb: XServer, x11_image: str) -> None:
    result = cli(
        "run", "--", "docker", "run", "--rm", x11_image, "sh", "-c", "exit 7", env=xvfb.env()
    )
    assert result.returncode == 7


@pytest.mark.parametrize(
    "options",
    [
        ["--network", "none"],
        ["--network", "host"],
        ["--user", "1000:1000"],
        ["--hostname", "my-box"],
    ],
    ids=" ".join,
)
def test_the_users_own_options_are_respected(
    xvfb: XServer, x11_image: str, options: list[str]
) -> None:
    for client in ("xdpyinfo", "xlib-probe"):
        result = cli(
            "run", "--", "docker", "run", "--rm", *options, x11_image, client, env=xvfb.env()
        )
        assert result.returncode == 0, (client, result.stderr)


def test_a_detached_container_keeps_the_display_until_it_exits(
    xvfb: XServer, x11_image: str, tmp_path: Path
) -> None:
    """-d returns at once; the display stays lent while the container runs; its status."""
    script = "xdpyinfo >/dev/null || exit 1; sleep 1; xdpyinfo >/dev/null || exit 2; exit 5"
    result = cli(
        "--host-dir",
        str(tmp_path),
        "run",
        "--",
        "docker",
        "run",
        "-d",
        "--rm",
        x11_image,
        "sh",
        "-c",
        script,
        env=xvfb.env(),
    )
    assert result.returncode == 5, result.stderr
    assert len(result.stdout.strip()) == 64  # the container id docker printed
    assert "holding the display until container" in result.stderr
    assert list(tmp_path.iterdir()) == []


@contextlib.contextmanager
def holding_detached(
    xvfb: XServer, host_dir: Path, name: str, *container: str, options: tuple[str, ...] = ()
) -> Iterator[subprocess.Popen[str]]:
    """
    ``run`` (with `options`) holding `xvfb` for ``docker run -d --name NAME`` of `container`.

    The block starts once it holds the display; the container is removed at its end.
    """
    with cli_process(
        *("--host-dir", str(host_dir), "run", *options, "--"),
        *("docker", "run", "-d", "--rm", "--name", name, *container),
        env=xvfb.env(),
    ) as process:
        try:
            assert process.stderr is not None
            assert "holding the display" in process.stderr.readline()
            yield process
        finally:
            subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False)


def test_sigterm_reaches_a_detached_container(
    xvfb: XServer, x11_image: str, tmp_path: Path
) -> None:
    script = 'trap "exit 143" TERM; xdpyinfo >/dev/null; echo ready; while :; do sleep 0.1; done'
    name = f"x11pt-cli-{os.getpid()}"
    with holding_detached(xvfb, tmp_path, name, x11_image, "sh", "-c", script) as process:
        logs = subprocess.Popen(["docker", "logs", "-f", name], stdout=subprocess.PIPE, text=True)
        assert logs.stdout is not None
        assert logs.stdout.readline().strip() == "ready"
        logs.kill()
        logs.wait()
        logs.stdout.close()
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 143
    gone = subprocess.run(["docker", "inspect", name], capture_output=True, check=False)
    assert gone.returncode != 0
    assert list(tmp_path.iterdir()) == []


def test_xvfb_without_any_display(x11_image: str, tmp_path: Path) -> None:
    """The headless case: no DISPLAY, a private Xvfb lent to a real container."""
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    result = cli(
        "-v",
        "run",
        "--xvfb",
        "--xvfb-screen",
        "640x480x24",
        "--",
        "docker",
        "run",
        "--rm",
        x11_image,
        "xdpyinfo",
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert "640x480 pixels" in result.stdout
    started = re.search(r"started Xvfb on :\d+ \(pid (\d+)\)", result.stderr)
    assert started is not None, result.stderr
    assert not Path(f"/proc/{started[1]}").exists()


def test_doctor_runs_a_probe_container(xvfb: XServer, x11_image: str) -> None:
    result = cli("doctor", "--image", x11_image, env=xvfb.env())
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok    container  " in result.stdout
    said = " ".join(result.stdout.split())
    assert "probe: The X.Org Foundation, screen 1024x768, MIT-SHM hidden" in said


def test_doctor_says_whether_the_container_gets_shared_memory(
    xvfb: XServer, x11_image: str
) -> None:
    """--shm yes runs the probe with --ipc host: the container itself finds MIT-SHM."""
    result = cli("doctor", "--shm", "yes", "--image", x11_image, env=xvfb.env())
    assert result.returncode == 0, result.stdout + result.stderr
    said = " ".join(result.stdout.split())
    assert "probe: The X.Org Foundation, screen 1024x768, MIT-SHM granted" in said


def test_doctor_without_an_engine(xvfb: XServer, x11_image: str) -> None:
    env = {**xvfb.env(), "DOCKER_HOST": "unix:///nonexistent/docker.sock"}
    result = cli("doctor", "--image", x11_image, env=env)
    assert result.returncode == 1
    assert "FAIL  engine     no container engine answered" in result.stdout
    assert "would not get a working display" in result.stdout


def test_doctor_passes_engine_options_to_the_probe(xvfb: XServer, x11_image: str) -> None:
    """Options after `--` go to the probe's `docker run`, as they would to the user's own."""
    bad = cli("doctor", "--image", x11_image, "--", "--runtime", "x11pt-no-such", env=xvfb.env())
    assert bad.returncode == 1, bad.stdout
    assert "FAIL  container" in bad.stdout
    assert "x11pt-no-such" in bad.stdout
    good = cli("doctor", "--image", x11_image, "--", "--ulimit", "nofile=512:512", env=xvfb.env())
    assert good.returncode == 0, good.stdout + good.stderr
    assert "ok    container" in good.stdout


def sockets_dir_files() -> set[str]:
    """The entries of the host's /tmp/.X11-unix that are not sockets (an engine's leftovers)."""
    import stat

    found = set()
    for entry in Path("/tmp/.X11-unix").iterdir():
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISSOCK(entry.lstat().st_mode):
                found.add(entry.name)
    return found


@pytest.mark.parametrize(
    "recipe",
    [
        ["-e", "DISPLAY", "-v", "/tmp/.X11-unix:/tmp/.X11-unix"],
        ["--env=DISPLAY=:0", "--volume", "/tmp/.X11-unix:/tmp/.X11-unix:ro"],
        [
            "-e",
            "XAUTHORITY=/nowhere",
            "--mount",
            "type=bind,src=/tmp/.X11-unix,dst=/tmp/.X11-unix",
        ],
    ],
    ids=" ".join,
)
def test_the_usual_recipe_left_in_the_command_is_dropped(
    xvfb: XServer, x11_image: str, recipe: list[str]
) -> None:
    """`-e DISPLAY=... -v /tmp/.X11-unix:...` would beat the lent display and litter the host."""
    before = sockets_dir_files()
    for _ in range(2):
        result = cli(
            "run", "--", "docker", "run", "--rm", *recipe, x11_image, "xdpyinfo", env=xvfb.env()
        )
        assert result.returncode == 0, result.stderr
        assert "vendor string:    The X.Org Foundation" in result.stdout
        assert "left out of the command" in result.stderr
    assert sockets_dir_files() - before == set()


def test_sigterm_stops_a_container_that_ignores_it_after_the_grace_period(
    xvfb: XServer, x11_image: str, tmp_path: Path
) -> None:
    """One SIGTERM means `docker stop`: passed on, then, after --stop-timeout, the kill; 143."""
    name = f"x11pt-stop-{os.getpid()}"
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    with cli_process(
        *("--host-dir", str(tmp_path / "host"), "run", "--stop-timeout", "2", "--"),
        *("docker", "run", "--rm", "--name", name, x11_image),
        *("sh", "-c", "xdpyinfo >/dev/null && echo ready && exec sleep 1000"),
        env={**xvfb.env(), "TMPDIR": str(scratch)},
    ) as process:
        (tmp_path / "host").mkdir()
        try:
            assert process.stdout is not None
            assert process.stderr is not None
            assert process.stdout.readline().strip() == "ready"
            assert list(scratch.glob("x11passthrough-cid-*")) != []
            process.send_signal(signal.SIGTERM)  # sleep as process 1 ignores it
            assert process.wait(120) == 128 + signal.SIGTERM
            assert "stopping it for good" in process.stderr.read()
        finally:
            subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False)
    running = subprocess.run(
        ["docker", "ps", "-q", "--filter", f"name=^{name}$"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert running.stdout.strip() == ""
    assert list(scratch.iterdir()) == []
    assert list((tmp_path / "host").iterdir()) == []


def test_sigterm_stops_a_detached_container_after_the_grace_period(
    xvfb: XServer, x11_image: str, tmp_path: Path
) -> None:
    name = f"x11pt-stopd-{os.getpid()}"
    with holding_detached(
        xvfb, tmp_path, name, x11_image, "sleep", "1000", options=("--stop-timeout", "1")
    ) as process:
        process.send_signal(signal.SIGTERM)
        assert process.wait(120) == 128 + signal.SIGTERM
    gone = subprocess.run(["docker", "inspect", name], capture_output=True, check=False)
    assert gone.returncode != 0
    assert list(tmp_path.iterdir()) == []


def test_a_container_that_ignores_signals_is_killed_at_the_second(
    xvfb: XServer, x11_image: str
) -> None:
    """Process 1 of a container has no default signal actions: a second signal kills it."""
    with cli_process(
        "run",
        "--",
        *("docker", "run", "--rm", x11_image, "sh", "-c", "echo ready; exec sleep 1000"),
        env=xvfb.env(),
    ) as process:
        assert process.stdout is not None
        assert process.stderr is not None
        assert process.stdout.readline().strip() == "ready"
        process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(1)  # the first is passed on, and ignored
        assert process.poll() is None, "sleep as process 1 ignores SIGTERM"
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) != 0
        assert "killing it" in process.stderr.read()


def test_doctor_on_an_image_without_a_probe_tool(xvfb: XServer, tmp_path: Path) -> None:
    """An image without python3 or xdpyinfo: a warning, and the host-side verdict stands."""
    busybox = subprocess.run(
        ["docker", "image", "inspect", "x11pt-busybox:latest"], capture_output=True, check=False
    )
    if busybox.returncode != 0:
        root = tmp_path / "root"
        (root / "bin").mkdir(parents=True)
        shutil.copy("/bin/busybox", root / "bin" / "busybox")
        (root / "bin" / "sh").symlink_to("busybox")
        subprocess.run(
            ["docker", "import", "-", "x11pt-busybox:latest"],
            input=subprocess.run(
                ["tar", "-C", str(root), "-c", "."], capture_output=True, check=True
            ).stdout,
            capture_output=True,
            check=True,
        )
    result = cli("doctor", "--image", "x11pt-busybox:latest", env=xvfb.env())
    assert result.returncode == 0, result.stdout
    assert (
        "warn  container  x11pt-busybox:latest has neither python3 nor xdpyinfo" in result.stdout
    )
