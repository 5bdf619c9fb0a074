"""
The session directory: another user cannot redirect it, and a live session is never cleaned up.

The attacker is a real process of the second local user (:mod:`infra.swapper`) that swaps each
fresh session directory for a symlink to its own directory the moment inotify reports it. The
other passthrough is a real one in another PID namespace (``unshare --pid``), on the same base
directory and the same real Xvfb.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from x11passthrough import X11Passthrough
from x11passthrough._session import (
    LOCK_NAME,
    LOCKLESS_GRACE,
    Session,
    socket_address,
    start_time,
)
from x11passthrough._session_base import Directory
from x11passthrough.exceptions import ConfigurationError, X11PassthroughError
from x11passthrough.xauth import Xauthority

from infra.ci import require, require_executables
from infra.cli import cli, display_options
from infra.processes import wait_until
from infra.swapper import Swapper, SwapReport
from infra.users import other_user
from infra.xvfb import XServer


RANGE = range(1900, 2000)
#: How many starts the attacker races against.
STARTS = 20
MIT = b"MIT-MAGIC-COOKIE-1"


def passthrough(server: XServer, **options: object) -> X11Passthrough:
    options.setdefault("transport", "unix")
    options.setdefault("display_range", RANGE)
    return X11Passthrough(server.display, server.xauthority, **options)  # type: ignore[arg-type]


def refused_start(server: XServer, base: Path) -> str:
    """Start a passthrough with `base` as host_dir; return the ConfigurationError's message."""
    p = passthrough(server, host_dir=base)
    try:
        with pytest.raises(ConfigurationError) as info:
            p.start()
    finally:
        p.close()
    return str(info.value)


def relay_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if "x11passthrough" in t.name]


def setup_status(sock: socket.socket, cookie: bytes) -> int:
    """Send an X11 setup with `cookie` on `sock`; return the reply's status (1: Success)."""
    message = b"l\0" + (11).to_bytes(2, "little") + bytes(2)
    message += len(MIT).to_bytes(2, "little") + len(cookie).to_bytes(2, "little") + bytes(2)
    message += MIT + bytes(-len(MIT) % 4) + cookie + bytes(-len(cookie) % 4)
    sock.settimeout(10)
    sock.sendall(message)
    return sock.recv(1, socket.MSG_WAITALL)[0]


@pytest.fixture(name="make_base")
def _make_base() -> Iterator[Callable[[str], Path]]:
    """
    Make a base directory in /tmp: ``theirs`` (the second user's, 0700, as their
    ``$XDG_RUNTIME_DIR``), ``all`` (root's, 0777), ``group`` (root's, 0770), ``sticky``
    (root's, 1777, as /tmp), ``inside all`` (root's 0700, inside a 0777 directory).
    """
    made: list[Path] = []

    def make(kind: str) -> Path:
        top = Path(tempfile.mkdtemp(prefix="x11pt-base-", dir="/tmp"))
        made.append(top)
        if kind == "theirs":
            user = other_user()
            os.chown(top, user.pw_uid, user.pw_gid)
            return top
        modes = {"all": 0o777, "group": 0o770, "sticky": 0o1777, "inside all": 0o777}
        top.chmod(modes[kind])
        if kind == "inside all":
            inner = top / "inner"
            inner.mkdir(mode=0o700)
            return inner
        return top

    yield make
    for top in made:
        shutil.rmtree(top, ignore_errors=True)


def sessions_in(base: Path) -> list[str]:
    return sorted(p.name for p in base.iterdir() if p.name.startswith("x11passthrough-"))


# -- item 4: a base another user can write ------------------------------------------------------


@pytest.mark.parametrize("kind", ["theirs", "all"])
def test_another_user_racing_to_swap_the_session_directory_never_gets_the_cookie(
    xvfb: XServer, make_base: Callable[[str], Path], kind: str
) -> None:
    """
    Root starts STARTS times in a base the second user can write, while that user swaps each
    fresh session directory for a symlink to a directory of theirs (inotify, two system calls).
    Before: the session's authority file landed in their directory, and its cookie opened
    the relay, in 113 of 160 starts (8 runs of 20, both kinds of base, 9 to 17 a run). Now
    every start is refused, naming the directory and the fix.
    """
    require("root (the attacker's victim)", os.geteuid() == 0, "run the tests as root")
    base = make_base(kind)
    refusals: list[str] = []
    failures: list[str] = []
    seen = SwapReport(swaps=0, files=[], cookies=0, opened=0)
    with Swapper(base) as swapper:
        for _ in range(STARTS):
            p = passthrough(xvfb, host_dir=base)
            try:
                p.start()
            except ConfigurationError as e:
                refusals.append(str(e))
            except X11PassthroughError as e:  # the swap broke the start some other way
                failures.append(str(e))
            try:
                report = swapper.report()  # while the relay runs, as the attacker would
            finally:
                p.close()
            seen.swaps += report.swaps
            seen.files += report.files
            seen.cookies += report.cookies
            seen.opened += report.opened
    print(  # the measurement, shown with -s or -rP
        f"base {kind}: {seen.swaps} swaps, {seen.cookies} cookies stolen, {seen.opened} "
        f"relays opened with them, {len(seen.files)} files in theirs, in {STARTS} starts; "
        f"{len(refusals)} refused, {len(failures)} failed otherwise"
    )
    assert (seen.cookies, seen.opened, seen.files) == (0, 0, [])
    assert (len(refusals), failures) == (STARTS, [])
    assert f"host_dir={base} " in refusals[0]
    assert "pass host_dir=..." in refusals[0]
    assert sessions_in(base) == []
    assert relay_threads() == []


@pytest.mark.parametrize(
    ("kind", "problem", "fix"),
    [
        ("all", "is writable by other users (mode 0777) and has no sticky bit", "chmod +t"),
        ("group", "is writable by other users (mode 0770) and has no sticky bit", "chmod go-w"),
        ("theirs", "belongs to uid 2000 (x11pt), not to root", "mkdir -m 0700"),
    ],
)
def test_a_base_others_can_change_is_refused_naming_it_and_the_fix(
    xvfb: XServer, make_base: Callable[[str], Path], kind: str, problem: str, fix: str
) -> None:
    require("root", os.geteuid() == 0, "run the tests as root")
    base = make_base(kind)
    message = refused_start(xvfb, base)
    assert message.startswith(f"host_dir={base} {problem}: another user could swap")
    assert fix in message
    assert "pass host_dir=..." in message
    assert list(base.iterdir()) == []
    assert relay_threads() == []


def test_the_command_line_says_it_in_its_own_words(
    xvfb: XServer, make_base: Callable[[str], Path]
) -> None:
    """The message docs/troubleshooting.md quotes, with the flag instead of the keyword."""
    require("root", os.geteuid() == 0, "run the tests as root")
    base = make_base("all")
    done = cli("--host-dir", str(base), *display_options(xvfb), "args")
    assert done.returncode == 125
    assert done.stderr == (
        f"x11passthrough: error: --host-dir {base} is writable by other users (mode 0777) and "
        "has no sticky bit: another user could swap the session directory made there for a "
        f"symlink, and so read its cookie; make it private (chmod go-w {base}) or give it the "
        f"sticky bit (chmod +t {base}), or pass --host-dir ... naming a directory only you can "
        "write\n"
    )
    assert list(base.iterdir()) == []


def test_a_base_inside_a_directory_others_can_change_is_refused(
    xvfb: XServer, make_base: Callable[[str], Path]
) -> None:
    """Another user could rename the base's parent entry: Docker's later lookup is theirs."""
    require("root", os.geteuid() == 0, "run the tests as root")
    base = make_base("inside all")
    message = refused_start(xvfb, base)
    assert message.startswith(
        f"host_dir={base} lies in {base.parent}, which is writable by other users (mode 0777)"
    )
    assert f"chmod +t {base.parent}" in message
    assert list(base.iterdir()) == []


def test_a_sticky_base_like_tmp_is_used(xvfb: XServer, make_base: Callable[[str], Path]) -> None:
    """With the sticky bit others may add names, not rename ours: the start succeeds."""
    base = make_base("sticky")
    with passthrough(xvfb, host_dir=base) as args:
        assert args.socket is not None
        assert args.xauthority is not None
        assert args.socket.parent.parent.parent == base
        directory = args.socket.parent.parent
        assert directory.stat().st_mode & 0o777 == 0o700
        assert args.socket.parent.stat().st_mode & 0o777 == 0o755
        assert args.socket.stat().st_mode & 0o777 == 0o666
        assert args.xauthority.stat().st_mode & 0o777 == 0o644
    assert list(base.iterdir()) == []


def test_the_runtime_directory_sudo_keeps_is_skipped_when_another_user_owns_it(
    xvfb: XServer,
    make_base: Callable[[str], Path],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``sudo -E`` keeps the user's ``$XDG_RUNTIME_DIR``: root's session goes to /tmp."""
    theirs = make_base("theirs")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(theirs))
    caplog.set_level("INFO", logger="x11passthrough")
    with Swapper(theirs) as swapper, passthrough(xvfb) as args:
        assert args.xauthority is not None
        assert args.xauthority.parent.parent == Path(tempfile.gettempdir())
        report = swapper.report()
    assert (report.swaps, report.cookies) == (0, 0)
    assert sorted(p.name for p in theirs.iterdir()) == ["loot-1"]  # only the attacker's own
    assert f"not using $XDG_RUNTIME_DIR: {theirs} belongs to uid 2000 (x11pt)" in caplog.text


@pytest.mark.parametrize("how", ["symlink", "directory"])
def test_a_swap_of_the_session_directory_redirects_nothing_made_in_it(
    make_base: Callable[[str], Path], how: str
) -> None:
    """
    The second layer alone: the base is not checked (as if that check were wrong) and the
    attacker swaps every session directory, for a symlink or a directory of theirs. A swap
    before the directory is opened is seen (a symlink is not followed, theirs fails the owner
    check, a name between the two renames is missing) and refused; a swap after redirects
    nothing, as the session is held by descriptor and its socket bound through /proc/self/fd.
    Nothing lands in theirs.
    """
    require("root", os.geteuid() == 0, "run the tests as root")
    base = make_base("theirs")
    held = Directory.open(base)  # no checks
    seen = SwapReport(swaps=0, files=[], cookies=0, opened=0)
    refusals: list[str] = []
    try:
        with Swapper(base, how=how) as swapper:
            for _ in range(STARTS):
                try:
                    session = Session.create_in(held)
                except X11PassthroughError as e:
                    refusals.append(str(e))
                    report = swapper.report()
                else:
                    report = _use(session, swapper)
                seen.swaps += report.swaps
                seen.files += report.files
                seen.cookies += report.cookies
    finally:
        held.close()
    reasons = Counter(r.split("(", 1)[1].split(")", 1)[0] for r in refusals)
    print(
        f"{how}: {seen.swaps} swaps in {STARTS} sessions, {len(refusals)} seen and refused "
        f"({dict(reasons)}); {len(seen.files)} files landed in theirs"
    )
    assert seen.swaps == STARTS  # every session directory was swapped
    assert (seen.files, seen.cookies) == ([], 0)
    assert [r for r in refusals if "is not the private directory just made there" not in r] == []
    moved = [p for p in base.iterdir() if p.name.endswith(".moved")]
    assert len(moved) == STARTS
    assert all(list(p.iterdir()) == [] for p in moved)  # emptied through the descriptor


def _use(session: Session, swapper: Swapper) -> SwapReport:
    """Do in `session` what a passthrough does, report the swapper's view, remove it."""
    try:
        sockets = session.mkdir("X11-unix", 0o755)
        with socket.socket(socket.AF_UNIX) as listener:
            listener.bind(sockets.address("X1"))
            session.write_file("Xauthority", b"\0\1\0\0\0\0\0\0", mode=0o644)
            report = swapper.report()
            assert sorted(os.listdir(session.fd)) == ["X11-unix", "Xauthority", "lock"]
            assert os.listdir(sockets.fd) == ["X1"]
    finally:
        session.remove()
    return report


# -- item 5: liveness by lock, across PID namespaces ------------------------------------------


HOLDER = """
import sys
from x11passthrough import X11Passthrough
p = X11Passthrough({display!r}, {xauthority!r}, transport="unix", host_dir={host_dir!r},
                   display_range=range({start}, {stop}))
args = p.start()
print(args.socket, args.xauthority, flush=True)
sys.stdin.read()
p.close()
"""


#: A PID namespace of its own (its /proc too); the child dies with unshare.
UNSHARE = ("unshare", "--pid", "--fork", "--kill-child", "--mount-proc")


class Holder:
    """A passthrough in a PID namespace of its own (``unshare --pid``), held until closed."""

    def __init__(self, server: XServer, host_dir: Path, numbers: range) -> None:
        require_executables("unshare")
        require("root (for unshare --pid)", os.geteuid() == 0, "run the tests as root")
        code = HOLDER.format(
            display=server.display,
            xauthority=str(server.xauthority),
            host_dir=str(host_dir),
            start=numbers.start,
            stop=numbers.stop,
        )
        self.process = subprocess.Popen(
            [*UNSHARE, sys.executable, "-c", code],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().split()
        assert line, "the passthrough in the other PID namespace did not start"
        self.socket, self.xauthority = Path(line[0]), Path(line[1])
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        self.pid = int(children.read_text().split()[0])  # its pid here; 1 in its namespace

    @property
    def directory(self) -> Path:
        return self.xauthority.parent

    def kill(self) -> None:
        """SIGKILL the holder and unshare: no cleanup of theirs runs."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        wait_until(lambda: every_thread_gone(self.pid), "the killed passthrough to be gone")

    def close(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()


def every_thread_gone(pid: int) -> bool:
    """
    Tell whether every thread of `pid` has exited (its descriptors are closed only then).

    A leader shows as a zombie while its other threads (the relay's) still exit.
    """
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return True
    for thread in threads:
        try:
            state = Path(f"/proc/{pid}/task/{thread}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if state[0] not in {"Z", "X"}:
            return False
    return True


@pytest.fixture(name="holders")
def _holders() -> Iterator[list[Holder]]:
    made: list[Holder] = []
    yield made
    for holder in made:
        holder.close()


def test_a_live_session_in_another_pid_namespace_survives_the_cleanup(
    xvfb: XServer, tmp_path: Path, holders: list[Holder]
) -> None:
    """
    Its pid (1 there) names another process here: the pid rule removed its socket and
    authority file while it ran. Its lock says it lives.
    """
    other = Holder(xvfb, tmp_path, range(1950, 1960))
    holders.append(other)
    assert other.directory.name.startswith("x11passthrough-1-")
    with passthrough(xvfb, host_dir=tmp_path, display_range=range(1960, 1970)) as args:
        assert args.xauthority is not None
        assert args.xauthority.parent != other.directory
        assert other.socket.is_socket()
        assert other.xauthority.is_file()
        cookie = Xauthority.load(other.xauthority)[0].data
        with socket.socket(socket.AF_UNIX) as client:
            with socket_address(other.socket) as address:
                client.connect(address)
            assert setup_status(client, cookie) == 1  # its relay still serves
    other.close()
    assert other.process.returncode == 0
    assert not other.directory.exists()  # it removed its own


def test_a_killed_session_in_another_pid_namespace_is_removed_by_the_next_start(
    xvfb: XServer, tmp_path: Path, holders: list[Holder]
) -> None:
    """SIGKILL: the kernel drops the lock, and the next start here removes what was left."""
    other = Holder(xvfb, tmp_path, range(1970, 1980))
    holders.append(other)
    other.kill()
    assert other.directory.is_dir()  # SIGKILL leaves it
    with passthrough(xvfb, host_dir=tmp_path, display_range=range(1980, 1990)):
        assert not other.directory.exists()


def test_a_session_directory_is_locked_for_its_life(xvfb: XServer, tmp_path: Path) -> None:
    """Another open of the lock file cannot take it, in this very process too."""
    with passthrough(xvfb, host_dir=tmp_path) as args:
        assert args.xauthority is not None
        fd = os.open(args.xauthority.parent / LOCK_NAME, os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    assert list(tmp_path.iterdir()) == []


CHURN = """
import sys
from pathlib import Path
from x11passthrough import _session
for _ in range(int(sys.argv[2])):
    session = _session.create_directory(Path(sys.argv[1]))
    session.write_file("Xauthority", b"")
    session.remove()
print("ok", flush=True)
"""


def test_parallel_starts_never_remove_each_others_new_directory(tmp_path: Path) -> None:
    """
    Every start cleans up the base while others are making their directories in it (xdist
    workers each starting an Xvfb). A lock file seen unlocked for a moment made one start
    remove another's new directory: ``cannot create .../Xauthority: No such file``.
    """
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", CHURN, str(tmp_path), "150"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(6)
    ]
    outcomes = [process.communicate(timeout=300) for process in processes]
    assert [(out, err.strip().splitlines()[-1:]) for out, err in outcomes] == [("ok\n", [])] * 6
    assert list(tmp_path.iterdir()) == []


def _lockless(base: Path, pid: int, started: int | None, age: float) -> Path:
    """A session directory as an older version (no lock file) left it, `age` seconds old."""
    path = base / f"x11passthrough-{pid}-{started}-0123abcd"
    path.mkdir(mode=0o700)
    (path / "Xauthority").write_bytes(b"")
    then = time.time() - age
    os.utime(path, (then, then))
    return path


def test_a_directory_without_a_lock_is_judged_by_its_age_and_pid(
    xvfb: XServer, tmp_path: Path
) -> None:
    """Old and dead: removed. Young (maybe being made), or its process alive: kept."""
    gone = subprocess.Popen(["true"])
    gone_start = start_time(gone.pid)
    gone.wait()
    assert gone_start is not None
    old_dead = _lockless(tmp_path, gone.pid, gone_start, LOCKLESS_GRACE + 60)
    young_dead = _lockless(tmp_path, gone.pid, gone_start + 1, 1)
    old_alive = _lockless(tmp_path, os.getpid(), start_time(os.getpid()), LOCKLESS_GRACE + 60)
    with passthrough(xvfb, host_dir=tmp_path):
        assert not old_dead.exists()
        assert young_dead.is_dir()
        assert old_alive.is_dir()


def test_a_dead_sessions_process_of_another_pid_namespace_is_not_stopped(
    xvfb: XServer, tmp_path: Path
) -> None:
    """A pid recorded in another PID namespace names some other process here: left alone."""
    bystander = subprocess.Popen(["sleep", "600"])
    try:
        dead = tmp_path / "x11passthrough-1-1-0123abcd"
        dead.mkdir(mode=0o700)
        (dead / LOCK_NAME).write_bytes(b"")  # nobody holds it: dead
        record = f"{bystander.pid} {start_time(bystander.pid)} pid:[1]\n"
        (dead / "xvfb.pid").write_text(record)
        with passthrough(xvfb, host_dir=tmp_path):
            assert not dead.exists()
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()
