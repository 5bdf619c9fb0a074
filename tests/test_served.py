"""
Served displays (issue 21) against a real Xvfb and real X clients on the host: a stable name,
number and paths; one server per name; a killed server's name taken over; the X server
restarting with a new cookie under a served display; stopping withdraws it; the Python API;
the systemd user unit's command line (run, with a notify socket, as systemd would).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shlex
import signal
import socket
import subprocess
import sys

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from x11passthrough.exceptions import ConfigurationError, ServeError
from x11passthrough.served import ServedArgs, ServedDisplay, served_args

from infra.cli import cli
from infra.processes import wait_until
from infra.served import TEST_RANGE, Served, serving
from infra.users import free_display
from infra.xvfb import XServer, client_env, start_xvfb


ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "examples" / "systemd" / "x11passthrough-serve@.service"


def _xdpyinfo(display: str, xauthority: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["xdpyinfo"],
        env=client_env(display, xauthority),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _works(display: str, xauthority: Path) -> bool:
    return _xdpyinfo(display, xauthority).returncode == 0


@pytest.fixture(name="host_dir")
def _host_dir(tmp_path: Path) -> Path:
    return tmp_path / "served"


def _number(name: str, host_dir: Path) -> int:
    """Choose the test's display number before serve does (away from other tests' range)."""
    return int(served_args(name, host_dir=host_dir, display_range=TEST_RANGE).display[1:])


@contextlib.contextmanager
def _serving_works(
    name: str, host_dir: Path, server: XServer
) -> Iterator[tuple[ServedArgs, Path, Served]]:
    """
    Serve `server` as `name` (its number chosen first) until the block ends.

    The block starts once a client works with the served display's arguments and authority
    file; it gets those and the ``serve`` process.
    """
    _number(name, host_dir)
    args = served_args(name, host_dir=host_dir)
    assert args.xauthority is not None
    with serving(name, host_dir, server) as served:
        served.wait_ready()
        assert _works(args.display, args.xauthority)
        yield args, args.xauthority, served


def test_a_served_display_keeps_its_name_number_and_paths(xvfb: XServer, host_dir: Path) -> None:
    _number("devbox", host_dir)
    before = served_args("devbox", host_dir=host_dir)
    assert before.socket_dir == host_dir / "devbox" / "X11-unix"
    assert [*before][-4:] == [
        "--volume",
        f"{host_dir}/devbox/X11-unix:/tmp/.X11-unix:ro",
        "--volume",
        f"{host_dir}/devbox/auth:/tmp/.x11passthrough:ro",
    ]
    for _ in range(2):  # serve, stop, serve again: the same display, paths and environment
        with serving("devbox", host_dir, xvfb) as served:
            served.wait_ready()
            assert f"as {before.display} under the name 'devbox'" in served.output()
            assert served_args("devbox", host_dir=host_dir) == before
            assert before.xauthority is not None
            result = _xdpyinfo(before.display, before.xauthority)
            assert result.returncode == 0, result.stderr
        assert served.process.returncode == 0, served.output()
    assert stat_mode(host_dir / "devbox") == 0o700
    assert stat_mode(before.socket_dir) == 0o755


def stat_mode(path: Path) -> int:
    return os.stat(path).st_mode & 0o7777


def test_a_second_serve_of_a_name_refuses_and_a_killed_ones_is_taken_over(
    xvfb: XServer, host_dir: Path
) -> None:
    _number("box", host_dir)
    with serving("box", host_dir, xvfb) as first:
        first.wait_ready()
        second = cli(
            "serve", "--name", "box", "--host-dir", str(host_dir), "--display", xvfb.display
        )
        assert second.returncode == 125
        assert (
            f"the served display 'box' is already being served (process {first.process.pid})"
            in second.stderr
        )
        assert first.stop(signal.SIGKILL) == -signal.SIGKILL
    args = served_args("box", host_dir=host_dir)
    assert args.xauthority is not None
    with serving("box", host_dir, xvfb) as third:
        third.wait_ready()
        assert _works(args.display, args.xauthority)


def test_the_x_server_may_restart_with_a_new_cookie(
    xvfb_factory: Callable[..., XServer], host_dir: Path, tmp_path: Path
) -> None:
    # A number of its own, far from the ones other X servers on the machine pick for
    # themselves: the restart below must find it still free.
    server = xvfb_factory(number=free_display(950))
    with _serving_works("restarts", host_dir, server) as (args, xauthority, served):
        container_cookie = xauthority.read_bytes()
        server.stop()
        gone = _xdpyinfo(args.display, xauthority)
        assert gone.returncode != 0
        assert "x11passthrough: the X display" in gone.stderr
        assert "is gone (its X server exited or is restarting)" in gone.stderr
        # A display manager starts the server again with a new cookie and writes it where the
        # user's clients (and the served display) read it.
        cookie = secrets.token_bytes(16)
        again = start_xvfb(tmp_path / "again", number=server.number, cookie=cookie)
        try:
            server.authority_file(server.xauthority, cookie)
            try:
                wait_until(
                    lambda: _works(args.display, xauthority),
                    "the served display to serve the restarted X server",
                    timeout=60,
                    interval=0.1,
                )
            except AssertionError as e:
                last = _xdpyinfo(args.display, xauthority).stderr
                raise AssertionError(f"{e}\nclient: {last}\nserve: {served.output()}") from e
            assert xauthority.read_bytes() == container_cookie
            assert "is back; its cookie was proven again" in served.output()
        finally:
            again.stop()


def test_a_restarted_x_server_with_a_cookie_not_written_yet_is_refused_clearly(
    xvfb_factory: Callable[..., XServer], host_dir: Path, tmp_path: Path
) -> None:
    xvfb = xvfb_factory(number=free_display(1000))
    with ServedDisplay(
        "stale", xvfb.display, xvfb.xauthority, host_dir=host_dir, display_range=TEST_RANGE
    ) as args:
        assert args.xauthority is not None
        number = xvfb.number
        xvfb.stop()
        wait_until(lambda: not _works(args.display, args.xauthority), "the display gone")  # type: ignore[arg-type]
        again = start_xvfb(tmp_path / "again", number=number, cookie=secrets.token_bytes(16))
        try:
            # The authority file still holds the old cookie: the display is back but not
            # served; clients hear why, and nothing of the new server reaches them.
            result = _xdpyinfo(args.display, args.xauthority)
            assert result.returncode != 0
            assert "x11passthrough:" in result.stderr
            served = ServedDisplay("stale", xvfb.display, host_dir=host_dir)
            with pytest.raises(ServeError, match="already being served"):
                served.start()
        finally:
            again.stop()


def test_stop_withdraws_the_display_from_every_container(xvfb: XServer, host_dir: Path) -> None:
    with _serving_works("withdrawn", host_dir, xvfb) as (args, xauthority, served):
        stopped = cli("serve", "--name", "withdrawn", "--host-dir", str(host_dir), "--stop")
        assert stopped.returncode == 0, stopped.stderr
        assert served.process.wait(30) == 0
    assert not xauthority.exists()
    assert not Path(str(args.socket)).exists()
    assert args.socket_dir.is_dir()  # kept: containers mount it, and the next serve fills it
    assert not _works(args.display, xauthority)
    again = cli("serve", "--name", "withdrawn", "--host-dir", str(host_dir), "--stop")
    assert again.returncode == 125
    assert "the served display 'withdrawn' is not running" in again.stderr


def test_mint_list_and_revoke_from_the_command_line(xvfb: XServer, host_dir: Path) -> None:
    _number("seats", host_dir)
    with serving("seats", host_dir, xvfb) as served:
        served.wait_ready()
        base = ("--name", "seats", "--host-dir", str(host_dir))
        minted = cli("serve", *base, "--mint", "web")
        assert minted.returncode == 0, minted.stderr
        seat = host_dir / "seats" / "clients" / "web"
        assert f"{seat}/X11-unix:/tmp/.X11-unix:ro" in minted.stdout
        assert (seat / "auth" / "Xauthority").stat().st_mode & 0o777 == 0o644
        assert (seat / "X11-unix").is_dir()
        assert cli("serve", *base, "--list").stdout.split() == ["web"]
        assert cli("args", *base, "--client", "web").stdout == minted.stdout
        assert cli("serve", *base, "--revoke", "web").returncode == 0
        assert cli("serve", *base, "--list").stdout.split() == []
        assert not (seat / "auth" / "Xauthority").exists()
        unknown = cli("serve", *base, "--revoke", "web")
        assert unknown.returncode == 125
        assert "has no cookie for 'web'; minted: none" in unknown.stderr


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["serve", "--name", "two words"], "the name 'two words' is not valid"),
        (["args", "--name", "-x"], "expected one argument"),
        (["args", "--format", "devcontainer"], "--format devcontainer is for a served display"),
    ],
)
def test_bad_names_are_refused_clearly(argv: list[str], message: str, host_dir: Path) -> None:
    result = cli(*argv, "--host-dir", str(host_dir))
    assert result.returncode == 125
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_the_python_api_refuses_bad_values() -> None:
    with pytest.raises(ConfigurationError, match=r"the name '\.\./etc' is not valid"):
        ServedDisplay("../etc")
    with pytest.raises(ServeError, match="is not running"):
        ServedDisplay("idle").mint("web")


def test_the_systemd_user_units_command_line(xvfb: XServer, host_dir: Path) -> None:
    """Run the unit's ExecStart as systemd would: %i expanded, a notify socket, SIGTERM."""
    text = UNIT.read_text()
    exec_start = re.search(r"^ExecStart=(.+)$", text, re.MULTILINE)
    assert exec_start is not None
    assert re.search(r"^Type=notify$", text, re.MULTILINE)
    argv = shlex.split(exec_start.group(1).replace("%i", "unit"))
    assert argv[0] == "x11passthrough"
    _number("unit", host_dir)
    bin_dir = Path(sys.executable).parent
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(host_dir.parent / "notify"))
    notify.settimeout(60)
    env = {
        **xvfb.env(),
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "NOTIFY_SOCKET": str(host_dir.parent / "notify"),
    }
    with (
        notify,
        serving(
            "unit", host_dir, xvfb, argv=[*argv, "--host-dir", str(host_dir)], env=env
        ) as served,
    ):
        assert notify.recv(100) == b"READY=1"
        served.wait_ready()
        args = served_args("unit", host_dir=host_dir)
        assert args.xauthority is not None
        assert _works(args.display, args.xauthority)
        assert served.stop(signal.SIGTERM) == 0


def test_a_taken_display_number_is_named_with_the_way_out(xvfb: XServer, host_dir: Path) -> None:
    number = _number("taken", host_dir)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as squatter:
        squatter.bind(f"\0/tmp/.X11-unix/X{number}")
        squatter.listen(1)
        served = ServedDisplay("taken", xvfb.display, xvfb.xauthority, host_dir=host_dir)
        with pytest.raises(ServeError) as caught:
            served.start()
    message = str(caught.value)
    assert f"display :{number}, the number of the served display 'taken', is taken" in message
    assert f"remove {host_dir / 'taken' / 'state.json'} to choose another number" in message
    # Nothing is left held: the name serves once the number is free.
    with ServedDisplay("taken", xvfb.display, xvfb.xauthority, host_dir=host_dir) as args:
        assert args.display == f":{number}"


def test_a_minted_seat_stays_across_restarts_of_serve_with_a_new_cookie(
    xvfb: XServer, host_dir: Path
) -> None:
    _number("kept", host_dir)
    with ServedDisplay("kept", xvfb.display, xvfb.xauthority, host_dir=host_dir) as shared:
        served = ServedDisplay("kept", host_dir=host_dir)
        with pytest.raises(ServeError, match="is not running"):
            served.mint("web")
    display = ServedDisplay("kept", xvfb.display, xvfb.xauthority, host_dir=host_dir)
    with display:
        web = display.mint("web")
        assert web.xauthority is not None
        cookie = web.xauthority.read_bytes()
        assert display.mint("web") == web  # minting again gives the same seat
    assert not web.xauthority.exists()
    with display:
        assert display.clients == ("web",)
        assert web.xauthority.read_bytes() != cookie
        assert display.args == shared
        display.revoke("web")
    with display:
        assert not display.clients


def test_a_served_display_admits_no_client_without_its_cookie(
    xvfb: XServer, host_dir: Path, tmp_path: Path
) -> None:
    empty = tmp_path / "empty.xauth"
    empty.touch()
    with ServedDisplay(
        "strict", xvfb.display, xvfb.xauthority, host_dir=host_dir, display_range=TEST_RANGE
    ) as args:
        anonymous = _xdpyinfo(args.display, empty)
        assert anonymous.returncode != 0
        assert "x11passthrough: no authorization" in anonymous.stderr
        other = tmp_path / "other.xauth"
        subprocess.run(
            ["xauth", "-f", str(other), "add", args.display, ".", secrets.token_hex(16)],
            check=True,
            capture_output=True,
        )
        wrong = _xdpyinfo(args.display, other)
        assert "x11passthrough: wrong authorization cookie" in wrong.stderr


def test_an_unusable_host_dir_is_named_with_the_option(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.touch()
    result = cli("args", "--name", "x", "--host-dir", str(blocker / "below"))
    assert result.returncode == 125
    assert result.stderr == (
        f"x11passthrough: error: cannot create {blocker / 'below'}: Not a directory; pass "
        "--host-dir ... pointing to a writable directory\n"
    )
    with pytest.raises(ServeError, match=r"pass host_dir=\.\.\. pointing to a writable"):
        served_args("x", host_dir=blocker / "below")
