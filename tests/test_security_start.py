"""
Starting and leaving: the host side is checked at start, bad input gets library errors, and
leaving never raises, even after the X server died; leftovers of killed processes are removed.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import threading

from collections.abc import Iterator
from pathlib import Path

import pytest

from x11passthrough import X11Passthrough
from x11passthrough.exceptions import (
    ConfigurationError,
    DisplayAuthorizationError,
    X11PassthroughError,
    XauthorityError,
)
from x11passthrough.xauth import Xauthority

from infra.ci import require, require_executables
from infra.processes import pid_alive, wait_until
from infra.xvfb import XServer


RANGE = range(1400, 1500)
MIT = b"MIT-MAGIC-COOKIE-1"


def passthrough(server: XServer, xauthority: object = None, **options: object) -> X11Passthrough:
    options.setdefault("bind", ["127.0.0.1"])
    options.setdefault("display_range", RANGE)
    file = server.xauthority if xauthority is None else xauthority
    return X11Passthrough(server.display, file, **options)  # type: ignore[arg-type]


def relay_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if "x11passthrough" in t.name]


def relay_setup(args_display: str, cookie: bytes | None) -> tuple[int, bytes]:
    """Connect to the relay with `cookie` (None: no auth); return (status, reason or b"")."""
    port = 6000 + int(args_display.rsplit(":", 1)[1])
    name, data = (MIT, cookie) if cookie is not None else (b"", b"")
    message = struct.pack("<BxHHHH2x", 0x6C, 11, 0, len(name), len(data))
    message += name + bytes(-len(name) % 4) + data + bytes(-len(data) % 4)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(message)
        head = s.recv(8, socket.MSG_WAITALL)
        reason = s.recv(head[1], socket.MSG_WAITALL) if head[0] == 0 else b""
    return head[0], reason


# -- the host side is checked at start --------------------------------------------------------


def test_a_missing_authority_file_fails_start_quoting_the_server(
    xvfb: XServer, tmp_path: Path
) -> None:
    """No file: the server's own reason and the file's name, before any container runs."""
    missing = tmp_path / "missing.xauth"
    with pytest.raises(DisplayAuthorizationError) as info:
        passthrough(xvfb, missing).start()
    message = str(info.value)
    assert "Authorization required" in message
    assert str(missing) in message
    assert relay_threads() == []


def test_a_wrong_cookie_fails_start(xvfb: XServer, tmp_path: Path) -> None:
    """A stale cookie is reported with the server's words, not found inside a container."""
    require_executables("xauth")
    stale = xvfb.authority_file(tmp_path / "stale.xauth", b"\xab" * 16)
    with pytest.raises(DisplayAuthorizationError, match="Invalid MIT-MAGIC-COOKIE-1 key") as info:
        passthrough(xvfb, stale).start()
    assert f"the cookie for display :{xvfb.number} from {stale}" in str(info.value)


def test_no_entry_for_the_display_fails_start(xvfb: XServer, tmp_path: Path) -> None:
    """A file with cookies for other displays only: the message says there is no entry."""
    require_executables("xauth")
    other = tmp_path / "other.xauth"
    subprocess.run(
        ["xauth", "-f", str(other), "add", f":{xvfb.number + 1}", ".", xvfb.cookie.hex()],
        check=True,
        capture_output=True,
    )
    with pytest.raises(DisplayAuthorizationError, match=f"no entry for display :{xvfb.number}"):
        passthrough(xvfb, other).start()


def test_empty_xauthority_means_no_file(xvfb: XServer) -> None:
    """xauthority='' is libXau's XAUTHORITY='': no authority file, not the current directory."""
    with pytest.raises(DisplayAuthorizationError, match="XAUTHORITY is empty"):
        passthrough(xvfb, "").start()


def test_forward_mode_demands_the_real_cookie(open_xvfb: XServer) -> None:
    """The server would admit anyone of root's; the relay admits only the real cookie."""
    with passthrough(open_xvfb, auth="forward") as args:
        assert relay_setup(args.display, open_xvfb.cookie)[0] == 1
        status, reason = relay_setup(args.display, None)
        assert status == 0
        assert reason.startswith(b"x11passthrough: no authorization")


def test_forward_mode_without_a_cookie_warns_loudly(
    open_xvfb: XServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A server that needs no cookie, in forward mode: every relay client is trusted. Said."""
    empty = tmp_path / "empty.xauth"
    empty.write_bytes(b"")
    caplog.set_level(logging.INFO, logger="x11passthrough")
    with passthrough(open_xvfb, empty, auth="forward", bind=None, transport="unix") as args:
        assert args.xauthority is None
        assert args.socket is not None
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(str(args.socket))
            s.sendall(struct.pack("<BxHHHH2x", 0x6C, 11, 0, 0, 0))
            assert s.recv(8, socket.MSG_WAITALL)[0] == 1
    assert "every container given the relay's socket becomes a trusted client" in caplog.text
    assert "the abstract socket admits only your own uids" in caplog.text
    caplog.clear()
    with passthrough(open_xvfb, empty) as args:
        assert relay_setup(args.display, None)[0] == 0  # substitute still guards the relay
    assert "becomes a trusted client" not in caplog.text
    assert "admits clients without a cookie" in caplog.text


def test_a_file_with_a_damaged_tail_is_used_like_libxau(
    xvfb: XServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The intact records before the damage are used; a warning says the rest was ignored."""
    damaged = tmp_path / "damaged.xauth"
    damaged.write_bytes(xvfb.xauthority.read_bytes() + b"\x01\x00\x00\x05ab")
    caplog.set_level(logging.WARNING, logger="x11passthrough")
    with passthrough(xvfb, damaged) as args:
        assert relay_setup(args.display, Xauthority.load(args.xauthority)[0].data)[0] == 1
    assert "record 1 is cut short" in caplog.text


# -- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"bind": 6000}, "bind=6000 is a int, not an IP address"),
        ({"allow": 123}, "allow=123 is a int, not a network"),
        ({"bind": "224.0.0.1"}, "is a multicast address"),
        ({"bind": "255.255.255.255"}, "is a broadcast address"),
        ({"bind": ["ff02::1"]}, "is a multicast address"),
        ({"allow": []}, r"allow=\[\] admits no client"),
        ({"host_dir": "/tmp/a:b"}, "contains ':'"),
        ({"container_xauthority": "/tmp/x:y"}, "contains ':'"),
        ({"container_xauthority": "/tmp/x,y"}, "contains ','"),
        ({"untrusted_timeout": 0}, "untrusted_timeout=0 must be a whole number >= 1"),
        ({"display_range": range(5)}, "must not hold display 0"),
        ({"transport": "unix", "bind": "127.0.0.1"}, r"bind=\['127.0.0.1'\] is for the TCP"),
        ({"transport": "unix", "allow": "10.0.0.0/8"}, "filters the relay's TCP clients"),
    ],
)
def test_bad_options_are_configuration_errors(options: dict[str, object], message: str) -> None:
    """Each names the value and what to do; no raw TypeError or ValueError from below."""
    with pytest.raises(ConfigurationError, match=message) as info:
        X11Passthrough(":0", **options)  # type: ignore[arg-type]
    assert info.value.option in options


def test_a_fifo_as_authority_file_is_refused_at_once(xvfb: XServer, tmp_path: Path) -> None:
    """Opening a FIFO would block until someone writes; it is refused without waiting."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                from x11passthrough import X11Passthrough
                from x11passthrough.exceptions import XauthorityError
                try:
                    X11Passthrough({xvfb.display!r}, {str(fifo)!r}, bind="127.0.0.1").start()
                except XauthorityError as e:
                    print(e)
                """
            ),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert f"{fifo}: it is a FIFO" in done.stdout


def test_a_device_as_authority_file_is_refused(xvfb: XServer) -> None:
    """/dev/zero would be read without end; it is refused by its kind."""
    with pytest.raises(XauthorityError, match="it is a character device"):
        passthrough(xvfb, "/dev/zero").start()


def test_a_file_as_host_dir_is_a_clear_error(xvfb: XServer, tmp_path: Path) -> None:
    """host_dir must be a directory; a file there is named, and nothing is left behind."""
    planted = tmp_path / "planted"
    planted.write_text("")
    with pytest.raises(
        X11PassthroughError, match=f"cannot create a private directory in {planted}"
    ):
        passthrough(xvfb, host_dir=planted).start()
    assert relay_threads() == []


@pytest.fixture(name="full_disk")
def _full_disk(tmp_path: Path) -> Iterator[Path]:
    """A tiny tmpfs, filled up: writing a file there fails with ENOSPC."""
    require("root (to mount a tmpfs)", os.geteuid() == 0, "run the tests as root")
    mount = tmp_path / "full"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(mount)], check=True)
    try:
        fd = os.open(mount / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError:
            pass
        finally:
            os.close(fd)
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_full_disk_is_a_clear_error_and_leaves_nothing(xvfb: XServer, full_disk: Path) -> None:
    """ENOSPC: our error, naming the place; no half-written file, no session directory."""
    before = set(os.listdir(full_disk))
    with pytest.raises(X11PassthroughError, match="No space left on device"):
        passthrough(xvfb, host_dir=full_disk).start()
    assert set(os.listdir(full_disk)) == before
    assert relay_threads() == []


# -- leaving never raises ---------------------------------------------------------------------


def test_leaving_after_the_server_died_does_not_raise(
    xvfb: XServer, caplog: pytest.LogCaptureFixture
) -> None:
    """untrusted mode: revoking on a dead server fails; that is a warning, not an exception."""
    caplog.set_level(logging.WARNING, logger="x11passthrough")
    p = passthrough(xvfb, auth="untrusted")
    with p as args:
        xvfb.stop()
        session = args.xauthority
    assert "cleanup: revoking the untrusted cookie failed" in caplog.text
    assert session is not None
    assert not session.exists()
    assert relay_threads() == []


def test_a_failing_cleanup_never_masks_the_body(xvfb: XServer) -> None:
    """The body's exception comes out unchanged, whatever cleanup meets."""

    def body() -> None:
        with passthrough(xvfb, auth="untrusted"):
            xvfb.stop()
            raise KeyError("from the body")

    with pytest.raises(KeyError, match="from the body"):
        body()


# -- leftovers of killed processes ------------------------------------------------------------


HOLDER = """
import sys
from x11passthrough import X11Passthrough
p = X11Passthrough({display!r}, {xauthority!r}, bind="127.0.0.1", host_dir={host_dir!r},
                   display_range=range({start}, {stop}))
args = p.start()
print(args.xauthority.parent, flush=True)
sys.stdin.read()
"""


def hold(xvfb: XServer, host_dir: Path, numbers: range) -> tuple[subprocess.Popen[str], Path]:
    """A process that holds a passthrough open; returns it and its session directory."""
    code = HOLDER.format(
        display=xvfb.display,
        xauthority=str(xvfb.xauthority),
        host_dir=str(host_dir),
        start=numbers.start,
        stop=numbers.stop,
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    return process, Path(process.stdout.readline().strip())


def test_the_next_start_removes_what_a_killed_process_left(xvfb: XServer, tmp_path: Path) -> None:
    """SIGKILL leaves the session directory; the next start removes it, and only it."""
    killed, left = hold(xvfb, tmp_path, range(1450, 1460))
    alive, kept = hold(xvfb, tmp_path, range(1460, 1470))
    try:
        assert left.is_dir()
        assert left.name.startswith(f"x11passthrough-{killed.pid}-")
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        wait_until(lambda: not pid_alive(killed.pid), "the killed process to be gone")
        assert left.is_dir()  # SIGKILL leaves it
        with passthrough(xvfb, host_dir=tmp_path, display_range=range(1470, 1480)) as args:
            assert args.xauthority is not None
            assert not left.exists()
            assert kept.is_dir()  # its owner still runs
    finally:
        for process in (killed, alive):
            if process.poll() is None:
                process.kill()
            process.wait()
            for stream in (process.stdin, process.stdout):
                if stream is not None:
                    stream.close()
