"""The private Xvfb: a real server with its own cookie, gone after close, even after SIGKILL."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap

from pathlib import Path

import pytest

from x11passthrough import X11Passthrough, Xvfb
from x11passthrough.exceptions import ConfigurationError, XvfbError

from infra.ci import require_executables
from infra.processes import wait_until


def test_a_private_server_with_its_own_cookie() -> None:
    require_executables("Xvfb", "xdpyinfo")
    with Xvfb(width=640, height=480, depth=24) as xvfb:
        shown = subprocess.run(
            ["xdpyinfo"], env=xvfb.environ(), capture_output=True, text=True, check=False
        )
        assert shown.returncode == 0, shown.stderr
        assert "640x480 pixels" in shown.stdout
        no_cookie = {**xvfb.environ(), "XAUTHORITY": "/nonexistent"}
        refused = subprocess.run(["xdpyinfo"], env=no_cookie, capture_output=True, check=False)
        assert refused.returncode != 0
        assert xvfb.xauthority.stat().st_mode & 0o777 == 0o600
        assert xvfb.xauthority.parent.stat().st_mode & 0o777 == 0o700
        pid, files = xvfb.pid, xvfb.xauthority.parent
        assert "640x480x24" in repr(xvfb)
    assert pid is not None
    assert not Path(f"/proc/{pid}").exists()
    assert not files.exists()
    assert "not running" in repr(xvfb)
    with pytest.raises(RuntimeError, match="not running"):
        xvfb.display  # noqa: B018


def test_it_can_be_lent() -> None:
    with Xvfb() as xvfb, X11Passthrough(xvfb.display, xvfb.xauthority) as args:
        assert args.socket is not None
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(args.socket))


def test_a_missing_server_names_the_package() -> None:
    with pytest.raises(XvfbError, match=r"not on PATH.*apt-get install xvfb"):
        Xvfb(executable="Xvfb-not-installed").start()


def test_a_server_that_exits_says_why() -> None:
    with pytest.raises(XvfbError, match="exited"):
        Xvfb(extra_args=("-no-such-option",)).start()


@pytest.mark.parametrize(
    "options",
    [{"width": 0}, {"height": "big"}, {"depth": 12}, {"start_timeout": 0}, {"extra_args": "-ac"}],
)
def test_bad_options(options: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError, match=next(iter(options))):
        Xvfb(**options)  # type: ignore[arg-type]


def test_a_killed_owners_server_is_stopped_by_the_next_start(tmp_path: Path) -> None:
    """SIGKILL leaves the server running; the next session start stops it and its files."""
    owner = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                """
                import sys, time
                from x11passthrough import Xvfb
                x = Xvfb().start()
                print(x.pid, x.xauthority.parent, flush=True)
                time.sleep(3600)
                """
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert owner.stdout is not None
    pid_text, directory = owner.stdout.readline().split()
    owner.stdout.close()
    pid = int(pid_text)
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    assert Path(f"/proc/{pid}").exists()
    with Xvfb():
        wait_until(lambda: not _alive(pid), "the orphaned Xvfb to stop", timeout=20)
    assert not Path(directory).exists()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_the_private_socket_works_in_a_deep_directory(tmp_path: Path) -> None:
    """The relay's socket path can exceed what a UNIX address holds (108 bytes)."""
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True, mode=0o700)
    with Xvfb() as xvfb, X11Passthrough(xvfb.display, xvfb.xauthority, host_dir=deep) as args:
        assert args.socket is not None
        assert len(str(args.socket)) > 108
        fd = os.open(args.socket.parent, os.O_PATH)
        try:
            with socket.socket(socket.AF_UNIX) as client:
                client.connect(f"/proc/self/fd/{fd}/{args.socket.name}")
        finally:
            os.close(fd)
