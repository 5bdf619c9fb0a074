"""X11Passthrough on the host: real Xvfb, real clients through the relay on 127.0.0.1."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import stat
import subprocess
import sys
import textwrap
import threading

from collections.abc import Callable
from pathlib import Path

import pytest

from x11passthrough import DockerRunArgs, X11Passthrough
from x11passthrough.display import DisplayLocator
from x11passthrough.exceptions import (
    BindError,
    ConfigurationError,
    DisplayAuthorizationError,
    DisplayError,
    DisplayNameError,
    DisplayNotFoundError,
    NoFreeDisplayError,
    SecurityExtensionError,
    XauthorityError,
)
from x11passthrough.xauth import Xauthority

from infra.ci import require_executables
from infra.xvfb import CountingForwarder, XServer
from infra.xvfb import client_env as support_env


HOSTNAME = socket.gethostname()
RANGE = range(600, 700)


def passthrough(server: XServer, **options: object) -> X11Passthrough:
    """A passthrough of `server` whose relay listens on loopback, for clients on this host."""
    options.setdefault("bind", ["127.0.0.1"])
    options.setdefault("display_range", RANGE)
    # python-xlib on this host looks its cookie up by this host's name.
    options.setdefault("container_hostname", HOSTNAME)
    return X11Passthrough(server.display, server.xauthority, **options)  # type: ignore[arg-type]


def number(args: DockerRunArgs) -> int:
    return int(args.display.rsplit(":", 1)[1])


def client_env(args: DockerRunArgs, **extra: str) -> dict[str, str]:
    return support_env(f"localhost:{number(args)}", args.xauthority, **extra)


def xdpyinfo(env: dict[str, str], *extra: str) -> subprocess.CompletedProcess[str]:
    require_executables("xdpyinfo")
    return subprocess.run(
        ["xdpyinfo", *extra], env=env, capture_output=True, text=True, check=False, timeout=30
    )


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def relay_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if "x11passthrough" in t.name]


def test_clients_reach_the_display_through_the_relay(xvfb: XServer) -> None:
    """xdpyinfo and a python-xlib client connect with the session's authority file."""
    with passthrough(xvfb) as args:
        result = xdpyinfo(client_env(args))
        assert result.returncode == 0, result.stderr
        assert "X.Org" in result.stdout
        probe = subprocess.run(
            [
                sys.executable,
                "-c",
                "from Xlib import display; d = display.Display(); "
                "print(d.screen().width_in_pixels); d.close()",
            ],
            env=client_env(args),
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
        assert probe.returncode == 0, probe.stderr + probe.stdout
        assert probe.stdout.split()[-1] == "1024"


def test_session_file_is_private_and_holds_no_real_cookie(xvfb: XServer) -> None:
    """
    The file holds a fresh cookie for display M only, in a 0700 directory.

    It is 0644, so any container user can read it: the session cookie opens only the relay.
    With the real cookie (forward mode) it is 0600.
    """
    with passthrough(xvfb, auth="forward") as args:
        assert args.xauthority is not None
        assert stat.S_IMODE(args.xauthority.stat().st_mode) == 0o600
    with passthrough(xvfb) as args:
        assert args.xauthority is not None
        mode = stat.S_IMODE(args.xauthority.stat().st_mode)
        dir_mode = stat.S_IMODE(args.xauthority.parent.stat().st_mode)
        assert (mode, dir_mode) == (0o644, 0o700)
        raw = args.xauthority.read_bytes()
        assert xvfb.cookie not in raw
        entries = Xauthority.loads(raw)
        assert {e.number for e in entries} == {str(number(args)).encode()}
        assert len({e.data for e in entries}) == 1
        assert xvfb.cookie.hex() not in repr(entries)


def test_clients_without_the_session_cookie_are_refused(xvfb: XServer, tmp_path: Path) -> None:
    """No cookie, a wrong cookie, and the real cookie itself are refused with a reason."""
    with passthrough(xvfb) as args:
        no_cookie = xdpyinfo(client_env(args, XAUTHORITY=str(tmp_path / "none")))
        assert no_cookie.returncode != 0
        assert "x11passthrough" in no_cookie.stderr
        wrong = tmp_path / "wrong"
        subprocess.run(
            ["xauth", "-f", str(wrong), "add", f":{number(args)}", ".", "00" * 16],
            check=True,
            capture_output=True,
        )
        assert xdpyinfo(client_env(args, XAUTHORITY=str(wrong))).returncode != 0
        real = tmp_path / "real"
        subprocess.run(
            ["xauth", "-f", str(real), "add", f":{number(args)}", ".", xvfb.cookie.hex()],
            check=True,
            capture_output=True,
        )
        refused = xdpyinfo(client_env(args, XAUTHORITY=str(real)))
        assert refused.returncode != 0
        assert "wrong authorization cookie" in refused.stderr


def test_exit_frees_everything(xvfb: XServer) -> None:
    """After exit the port is closed, the files are gone and the relay thread has ended."""
    before = relay_threads()
    p = passthrough(xvfb)
    with p as args:
        port = 6000 + number(args)
        assert args.xauthority is not None
        assert port_open(port)
        assert len(relay_threads()) == len(before) + 1
    assert not port_open(port)
    assert not args.xauthority.exists()
    assert not args.xauthority.parent.exists()
    assert relay_threads() == before
    p.close()  # idempotent
    # The port can be bound again at once.
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_cleanup_when_the_body_raises(xvfb: XServer, error: type[BaseException]) -> None:
    """An exception or Ctrl-C in the body still frees the port and removes the files."""
    before = relay_threads()
    seen: list[DockerRunArgs] = []

    def body() -> None:
        with passthrough(xvfb) as args:
            seen.append(args)
            raise error

    with pytest.raises(error):
        body()
    assert seen[0].xauthority is not None
    assert not seen[0].xauthority.parent.exists()
    assert not port_open(6000 + number(seen[0]))
    assert relay_threads() == before


def test_failure_half_way_leaves_nothing(xvfb_factory: Callable[..., XServer]) -> None:
    """A failure after the port was reserved (no SECURITY extension) cleans up what was made."""
    server = xvfb_factory(extra_args=("-extension", "SECURITY"))
    before = relay_threads()
    p = passthrough(server, auth="untrusted", display_range=range(650, 651))
    with pytest.raises(SecurityExtensionError, match="SECURITY"):
        p.start()
    assert not port_open(6650)
    assert relay_threads() == before
    # The number is free again: a second passthrough can take it.
    with passthrough(server, display_range=range(650, 651)) as args:
        assert number(args) == 650


def test_several_passthroughs_get_distinct_numbers(xvfb: XServer) -> None:
    """Passthroughs open at once in one process hold different display numbers."""
    with passthrough(xvfb) as a, passthrough(xvfb) as b, passthrough(xvfb) as c:
        assert len({number(a), number(b), number(c)}) == 3
        for args in (a, b, c):
            assert xdpyinfo(client_env(args)).returncode == 0


def test_parallel_processes_get_distinct_numbers(xvfb: XServer) -> None:
    """Passthroughs in parallel processes hold different display numbers."""
    code = (
        "import sys; from x11passthrough import X11Passthrough;"
        f"p = X11Passthrough({xvfb.display!r}, {str(xvfb.xauthority)!r}, bind=['127.0.0.1'],"
        f" display_range=range({RANGE.start}, {RANGE.stop}));"
        "a = p.start(); print(a.display, flush=True); sys.stdin.read(); p.close()"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        for _ in range(6)
    ]
    displays = []
    for proc in procs:
        assert proc.stdout is not None
        displays.append(proc.stdout.readline().strip())
    for proc in procs:
        proc.communicate("")
    assert all(proc.returncode == 0 for proc in procs)
    assert len(set(displays)) == 6, displays


def test_environment_is_never_changed(xvfb: XServer) -> None:
    """os.environ is the same before, during and after."""
    before = dict(os.environ)
    with passthrough(xvfb):
        assert dict(os.environ) == before
    assert dict(os.environ) == before


def test_dropped_without_close_warns_and_is_closed_at_exit(xvfb: XServer) -> None:
    """
    Garbage-collecting an open passthrough only warns (ResourceWarning): the finalizer neither
    joins the relay's thread nor talks to the X server. Its display stays lent until the
    interpreter exits, which then frees the port and removes the files.
    """
    script = textwrap.dedent(
        f"""
        import gc, os, socket, warnings
        from x11passthrough import X11Passthrough
        warnings.simplefilter("always")
        with warnings.catch_warnings(record=True) as caught:
            p = X11Passthrough({xvfb.display!r}, {str(xvfb.xauthority)!r}, bind=["127.0.0.1"],
                               display_range=range(600, 700))
            args = p.start()
            del p
            gc.collect()
        port = 6000 + int(args.display.rsplit(":", 1)[1])
        print([str(w.message) for w in caught if w.category is ResourceWarning])
        print(port, args.xauthority, args.xauthority.exists())
        with socket.create_connection(("127.0.0.1", port), timeout=10):
            print("still lent")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    warned, lent, still = done.stdout.splitlines()
    assert "was not closed; its display stays lent until the interpreter exits" in warned
    _, xauthority, exists = lent.split()
    assert exists == "True"
    assert still == "still lent"
    # The exit closed it: the files are gone (the port went with the process).
    assert not Path(xauthority).exists()
    assert not Path(xauthority).parent.exists()


def test_async_with(xvfb: XServer) -> None:
    """`async with` runs the relay on its own thread, as `with` does; clients get through."""

    async def main() -> tuple[int, DockerRunArgs]:
        before = relay_threads()
        async with passthrough(xvfb) as args:
            assert len(relay_threads()) == len(before) + 1
            proc = await asyncio.create_subprocess_exec(
                "xdpyinfo",
                env=client_env(args),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            return await proc.wait(), args

    require_executables("xdpyinfo")
    code, args = asyncio.run(main())
    assert code == 0
    assert not port_open(6000 + number(args))
    assert relay_threads() == []


def test_a_cancelled_async_start_is_undone(xvfb: XServer) -> None:
    """Cancelling `astart()` while it works leaves no relay, port or file behind."""

    async def main() -> None:
        p = passthrough(xvfb)
        task = asyncio.create_task(p.astart())
        await asyncio.sleep(0)  # let it begin: the start now runs in a worker thread
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        deadline = asyncio.get_running_loop().time() + 10
        while relay_threads() and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)

    asyncio.run(main())
    assert relay_threads() == []


def test_forward_mode_hands_out_the_real_cookie(xvfb: XServer) -> None:
    """auth='forward' (Briefcase's way) puts the real cookie in a FamilyWild entry."""
    with passthrough(xvfb, auth="forward") as args:
        assert args.xauthority is not None
        assert {e.data for e in Xauthority.load(args.xauthority)} == {xvfb.cookie}
        assert xdpyinfo(client_env(args)).returncode == 0


def test_untrusted_mode(xvfb: XServer) -> None:
    """auth='untrusted': the client is untrusted in the server's eyes; the cookie is revoked."""
    with passthrough(xvfb) as trusted_args:
        trusted = xdpyinfo(client_env(trusted_args), "-queryExtensions")
    with passthrough(xvfb, auth="untrusted") as args:
        untrusted = xdpyinfo(client_env(args), "-queryExtensions")
    assert trusted.returncode == 0, trusted.stderr
    assert untrusted.returncode == 0, untrusted.stderr
    assert untrusted.stdout.count("opcode:") < trusted.stdout.count("opcode:")


@pytest.mark.parametrize(
    ("auth", "connections"), [("substitute", 1), ("untrusted", 2), ("forward", 1)]
)
def test_start_connects_to_the_display_once(
    xvfb: XServer, tmp_path: Path, auth: str, connections: int
) -> None:
    """
    Locating, the cookie lookup, the host check and the SECURITY client share one connection.

    Untrusted mode adds the one that holds the untrusted cookie while the passthrough runs.
    """
    with CountingForwarder(xvfb, tmp_path) as forwarder:
        locator = DisplayLocator(socket_dir=tmp_path, lock_dir=tmp_path, abstract_sockets=False)
        with passthrough(xvfb, auth=auth, locator=locator) as args:
            assert forwarder.accepted == connections
            assert xdpyinfo(client_env(args)).returncode == 0
            assert forwarder.accepted == connections + 1


def test_display_without_cookie_works_and_is_logged(
    xvfb: XServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A server that trusts SI:localuser needs no cookie; only session clients get through."""
    require_executables("xhost")
    xvfb.xhost("+SI:localuser:root")
    empty = tmp_path / "empty.xauth"
    empty.write_bytes(b"")
    caplog.set_level(logging.INFO, logger="x11passthrough")
    with X11Passthrough(
        xvfb.display,
        empty,
        bind=["127.0.0.1"],
        display_range=RANGE,
        container_hostname=HOSTNAME,
    ) as args:
        assert xdpyinfo(client_env(args)).returncode == 0
        refused = xdpyinfo(client_env(args, XAUTHORITY=str(tmp_path / "none")))
        assert refused.returncode != 0
    assert "no MIT-MAGIC-COOKIE-1" in caplog.text


def test_allowlist_refuses_other_networks(xvfb: XServer) -> None:
    """A client outside the allowed networks is refused before anything is forwarded."""
    with passthrough(xvfb, allow=["10.99.0.0/16"]) as args:
        assert xdpyinfo(client_env(args)).returncode != 0


def test_errors_are_ours_and_actionable(
    xvfb: XServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each failure comes as our exception, naming the value and what to do."""
    monkeypatch.delenv("DISPLAY", raising=False)
    with pytest.raises(DisplayError, match="DISPLAY is not set"):
        X11Passthrough().start()
    with pytest.raises(DisplayNameError, match="'nope'"):
        X11Passthrough("nope")
    with pytest.raises(DisplayNotFoundError):
        X11Passthrough(":599", bind=["127.0.0.1"]).start()
    corrupt = tmp_path / "corrupt"
    corrupt.write_bytes(b"\x01\x00\x00")
    # libXau reads no entry from it; the server then refuses, and the message names the file.
    with pytest.raises(DisplayAuthorizationError, match=f"no entry for display .* in {corrupt}"):
        X11Passthrough(xvfb.display, corrupt, bind=["127.0.0.1"]).start()
    with pytest.raises(XauthorityError):
        X11Passthrough(xvfb.display, tmp_path, bind=["127.0.0.1"]).start()
    with pytest.raises(BindError, match=r"192\.0\.2\.1"):
        passthrough(xvfb, bind=["192.0.2.1"]).start()
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 6000 + 690))
        blocker.listen()
        with pytest.raises(NoFreeDisplayError) as full:
            passthrough(xvfb, display_range=range(690, 691)).start()
    # It names the option the caller passed, not DisplayLocator.reserve's.
    assert (full.value.option, full.value.value) == ("display_range", range(690, 1191))
    assert "pass a wider range, e.g. display_range=range(690, 1191)" in str(full.value)
    assert "reserve(" not in str(full.value)
    for bad in [
        {"auth": "trusting"},
        {"bind": ["docker0"]},
        {"allow": ["not-a-net"]},
        {"display_range": range(0)},
        {"container_xauthority": "relative/path"},
        {"untrusted_timeout": -1},
    ]:
        with pytest.raises(ConfigurationError):
            X11Passthrough(xvfb.display, **bad)  # type: ignore[arg-type]
    assert relay_threads() == []


@pytest.mark.parametrize(
    ("options", "option"),
    [
        ({"transport": "unix", "bind": "127.0.0.1"}, "bind"),
        ({"transport": "unix", "allow": ["10.0.0.0/8"]}, "allow"),
    ],
)
def test_options_that_contradict_each_other_fail_at_construction(
    options: dict[str, object], option: str
) -> None:
    """Raised by the constructor itself, carrying the option: nothing is started to find out."""
    with pytest.raises(ConfigurationError) as refused:
        X11Passthrough(":599", **options)  # type: ignore[arg-type]
    assert refused.value.option == option
    assert "transport" in str(refused.value)
