"""The test fixtures themselves: a private Xvfb that enforces its cookie, and stale cleanup."""

from __future__ import annotations

import signal
import subprocess
import sys

from pathlib import Path

from infra.ci import require_executables
from infra.processes import pid_alive, wait_until
from infra.xvfb import STATE_DIR, XServer, reap_stale_servers


def test_xvfb_answers_with_cookie_and_refuses_without(xvfb: XServer) -> None:
    """A client with the fixture's cookie connects; one without it is refused."""
    require_executables("xdpyinfo")
    ok = subprocess.run(["xdpyinfo"], env=xvfb.env(), capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stderr
    assert f"name of display:    {xvfb.display}" in ok.stdout
    refused = subprocess.run(
        ["xdpyinfo"], env=xvfb.env(XAUTHORITY="/nonexistent"), capture_output=True, check=False
    )
    assert refused.returncode != 0


def test_tcp_variant_listens_on_its_port(xvfb_tcp: XServer) -> None:
    """The TCP variant answers on 6000+N; the default one does not listen there."""
    require_executables("xdpyinfo")
    env = xvfb_tcp.env(DISPLAY=f"localhost:{xvfb_tcp.number}")
    # xauth writes FamilyLocal entries, which libxcb also uses for 127.0.0.1 peers.
    result = subprocess.run(["xdpyinfo"], env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_killed_run_leaves_no_server_behind(tmp_path: Path) -> None:
    """An Xvfb whose test process was SIGKILLed is gone, and its record is reaped."""
    require_executables("Xvfb", "xauth")
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; sys.path.insert(0, 'tests'); from pathlib import Path;"
            "from infra.xvfb import start_xvfb;"
            f"s = start_xvfb(Path({str(tmp_path)!r})); print(s.process.pid, flush=True);"
            "time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    server_pid = int(child.stdout.readline())
    assert (STATE_DIR / f"{server_pid}.owner").exists()
    child.send_signal(signal.SIGKILL)
    child.wait()
    child.stdout.close()
    # PR_SET_PDEATHSIG ends the server with its parent; reaping is the backstop.
    wait_until(lambda: not pid_alive(server_pid), "the orphaned Xvfb to end", timeout=5)
    reap_stale_servers()
    assert not pid_alive(server_pid)
    assert not (STATE_DIR / f"{server_pid}.owner").exists()
