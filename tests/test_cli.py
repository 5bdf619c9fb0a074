"""The command line, run as a user would run it."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

from pathlib import Path

import pytest

from x11passthrough import DockerRunArgs
from x11passthrough._cli import splice
from x11passthrough.exceptions import X11PassthroughError

from infra.ci import require_executables
from infra.xvfb import XServer


ARGS = DockerRunArgs(display="host.docker.internal:5", xauthority=None)

# Runs xdpyinfo against the relay on loopback, using what the CLI spliced into its argv.
CLIENT = textwrap.dedent(
    """
    import os, subprocess, sys
    argv = sys.argv[1:]
    env = dict(os.environ)
    for i, word in enumerate(argv):
        if word == "--env":
            name, value = argv[i + 1].split("=", 1)
            env[name] = value
        if word == "--volume":
            env["XAUTHORITY"] = argv[i + 1].split(":")[0]
    env["DISPLAY"] = "localhost:" + env["DISPLAY"].rsplit(":", 1)[1]
    sys.exit(subprocess.call(["xdpyinfo"], env=env, stdout=subprocess.DEVNULL))
    """
)


def test_splice_places_the_arguments() -> None:
    """After `run`/`create` of a container engine, or at the {x11} placeholder."""
    extra = [*ARGS]
    assert splice(["docker", "run", "--rm", "img"], ARGS) == [
        "docker",
        "run",
        *extra,
        "--rm",
        "img",
    ]
    podman = splice(["podman", "--log-level", "info", "create", "img"], ARGS)
    assert podman == ["podman", "--log-level", "info", "create", *extra, "img"]
    assert splice(["nerdctl", "run", "img"], ARGS)[2:4] == extra[:2]
    assert splice(["sh", "-c", "x", "{x11}", "y"], ARGS) == ["sh", "-c", "x", *extra, "y"]
    with pytest.raises(X11PassthroughError, match="cannot tell where"):
        splice(["sh", "-c", "true"], ARGS)


def test_cli_run_lends_the_display(xvfb: XServer) -> None:
    """`x11passthrough run -- CMD {x11}` gives CMD arguments that reach the display."""
    require_executables("xdpyinfo")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "x11passthrough",
            "--display",
            xvfb.display,
            "--xauthority",
            str(xvfb.xauthority),
            "--bind",
            "127.0.0.1",
            "run",
            "--",
            sys.executable,
            "-c",
            CLIENT,
            "{x11}",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_cli_errors_are_short_and_actionable(tmp_path: Path) -> None:
    """Without a display: exit status 2 and one line naming the problem, no traceback."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "x11passthrough", "run", "--", "docker", "run", "img"],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("x11passthrough: error: DISPLAY is not set")
    assert "Traceback" not in result.stderr


# The wrapped command: reports its session file, then waits; on a signal it says which.
WAITER = textwrap.dedent(
    """
    import signal, sys, time
    argv = sys.argv[1:]
    volume = argv[argv.index("--volume") + 1].split(":")[0]
    def on_signal(signum, frame):
        print("got", signum, flush=True)
        sys.exit(128 + signum)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    print(volume, flush=True)
    while True:
        time.sleep(60)
    """
)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_cli_run_passes_signals_on_and_cleans_up(
    xvfb: XServer, tmp_path: Path, sig: signal.Signals
) -> None:
    """A signal to `run` reaches the command; the session directory is gone; 128+N."""
    cli = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "x11passthrough",
            "--display",
            xvfb.display,
            "--xauthority",
            str(xvfb.xauthority),
            "--bind",
            "127.0.0.1",
            "--host-dir",
            str(tmp_path),
            "run",
            "--",
            sys.executable,
            "-c",
            WAITER,
            "{x11}",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert cli.stdout is not None
    session = Path(cli.stdout.readline().strip())
    assert session.exists()
    cli.send_signal(sig)
    assert cli.stdout.readline().strip() == f"got {int(sig)}"
    assert cli.wait(30) == 128 + sig
    cli.stdout.close()
    assert not session.parent.exists()
    assert list(tmp_path.iterdir()) == []
