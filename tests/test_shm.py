"""
Shared memory through the relay, granted as the X server would grant it (issue 19, item 2).

Real Xvfb (MIT-SHM on, as by default), the real relay on its UNIX socket, System V segments
made here with ``shmget``, raw X clients: this process (root, in the X server's IPC
namespace) and a probe run as the second local user. Descriptors cross the relay both ways:
``ShmAttachFd`` with a memfd whose pixels the server draws, ``ShmCreateSegment`` whose reply
carries the server's descriptor; a flood of descriptors is bounded and closes only its own
connection.
"""

from __future__ import annotations

import array
import contextlib
import json
import mmap
import os
import socket
import struct
import subprocess
import sys

from collections.abc import Callable

import pytest

from x11passthrough import DockerRunArgs, X11Passthrough
from x11passthrough._relay.shm import Credentials, Segment, may_attach
from x11passthrough.exceptions import ConfigurationError
from x11passthrough.xauth import Xauthority

from infra.processes import wait_until
from infra.rawx import Client, recv_exactly
from infra.relay_peers import open_fds
from infra.shm import BAD_ACCESS, PROBE
from infra.users import SYSTEM_PYTHON, other_user
from infra.xvfb import XServer


RANGE = range(860, 900)
SHM_ATTACH_FD = 6
SHM_CREATE_SEGMENT = 7
SHM_PUT_IMAGE = 3
SHM_GET_IMAGE = 4
Z_PIXMAP = 2
SIDE = 16
IMAGE = SIDE * SIDE * 4


def lend(xvfb: XServer, **options: object) -> X11Passthrough:
    return X11Passthrough(
        xvfb.display,
        xvfb.xauthority,
        transport="unix",
        display_range=RANGE,
        **options,  # type: ignore[arg-type]
    )


def session_cookie(args: DockerRunArgs) -> bytes:
    assert args.xauthority is not None
    return Xauthority.load(args.xauthority).entries[0].data


def mit_shm(args: DockerRunArgs) -> tuple[bool, int]:
    """What a session client on the mounted socket is told of MIT-SHM: (present, major)."""
    assert args.socket is not None
    client = Client(str(args.socket), session_cookie(args))
    try:
        return client.query(b"MIT-SHM")
    finally:
        client.close()


def probe_as_other_user(path: str, cookie: bytes, *ids: str) -> dict[str, object]:
    user = other_user()
    done = subprocess.run(
        [SYSTEM_PYTHON, "-I", "-c", PROBE.read_text(), path, cookie.hex(), *ids],
        user=user.pw_uid,
        group=user.pw_gid,
        extra_groups=[],
        env={"PATH": "/usr/bin:/bin"},
        cwd="/",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    assert result["uid"] == user.pw_uid
    return result


def test_a_client_in_the_servers_ipc_namespace_gets_mit_shm(
    xvfb: XServer, segments: Callable[[int], int]
) -> None:
    shmid = segments(0o600)
    with lend(xvfb) as args:
        assert args.socket is not None
        assert "--ipc" not in list(args)  # "auto" adds nothing to the container's arguments
        client = Client(str(args.socket), session_cookie(args))
        try:
            present, major = client.query(b"MIT-SHM")
            assert present
            # Root (this process) may attach a root-owned 0600 segment, as directly.
            client.send(major, 1, struct.pack("<IIBxxx", client.new_id(), shmid, 0))
            client.sync()
        finally:
            client.close()


def test_a_client_whose_process_is_gone_gets_no_mit_shm(xvfb: XServer) -> None:
    """A connection made by a process that exited (its pid free for reuse): fail closed."""
    with lend(xvfb) as args:
        assert args.socket is not None
        ours, theirs = socket.socketpair()
        script = (
            "import array, socket, sys; s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]);"
            " p = socket.socket(fileno=int(sys.argv[2]));"
            " fds = array.array('i', [s.fileno()]);"
            " p.sendmsg([b'x'], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])"
        )
        subprocess.run(
            [sys.executable, "-c", script, str(args.socket), str(theirs.fileno())],
            pass_fds=(theirs.fileno(),),
            check=True,
            timeout=60,
        )
        theirs.close()
        fds: list[int] = []
        recv_exactly(ours, 1, fds)
        ours.close()
        client = Client.adopt(socket.socket(fileno=fds[0]), session_cookie(args))
        try:
            assert client.query(b"MIT-SHM") == (False, 0)
        finally:
            client.close()


def test_untrusted_clients_get_no_mit_shm_even_in_the_servers_ipc_namespace(
    xvfb: XServer,
) -> None:
    """The server refuses MIT-SHM to untrusted clients: the relay has nothing to grant."""
    with lend(xvfb, auth="untrusted") as args:
        assert mit_shm(args) == (False, 0)


def test_shm_false_hides_it_from_every_client(xvfb: XServer) -> None:
    with lend(xvfb, shm=False) as args:
        assert mit_shm(args) == (False, 0)


def test_another_user_attaches_exactly_what_the_server_lets_it_attach(
    xvfb: XServer, segments: Callable[[int], int]
) -> None:
    """
    The server, seeing the relay (root), would attach anything: the relay checks the client.

    Every answer through the relay is the one the same user gets connected directly.
    """
    private = segments(0o600)
    shared = segments(0o606)
    readable = segments(0o604)
    ids = [str(private), str(shared), str(readable), f"{readable}:ro", f"{private}:ro", "999999"]
    direct = probe_as_other_user(xvfb.unix_path, xvfb.cookie, *ids)
    assert direct["shm"] is True
    with lend(xvfb) as args:
        assert args.socket is not None
        args.socket.parent.parent.chmod(0o711)  # let the other user reach the socket
        relayed = probe_as_other_user(str(args.socket), session_cookie(args), *ids)
    assert relayed["shm"] is True
    assert relayed["attach"] == direct["attach"]
    assert relayed["attach"] == {
        str(private): BAD_ACCESS,
        str(shared): 0,
        str(readable): BAD_ACCESS,
        f"{readable}:ro": 0,
        f"{private}:ro": BAD_ACCESS,
        "999999": BAD_ACCESS,
    }


def draw_pixmap(client: Client) -> tuple[int, int]:
    """Create a SIDE x SIDE pixmap of the root's depth and a GC for it."""
    pixmap, gc = client.new_id(), client.new_id()
    client.send(53, client.depth, struct.pack("<IIHH", pixmap, client.root, SIDE, SIDE))
    client.send(55, 0, struct.pack("<III", gc, pixmap, 0))
    return pixmap, gc


def pattern() -> bytes:
    """Pixels with the padding byte 0, as a depth-24 server returns them."""
    return bytes((i * 7 + 3) % 256 if i % 4 != 3 else 0 for i in range(IMAGE))


def test_descriptors_cross_the_relay_both_ways(xvfb: XServer) -> None:
    with lend(xvfb) as args:
        assert args.socket is not None
        client = Client(str(args.socket), session_cookie(args))
        try:
            present, major = client.query(b"MIT-SHM")
            assert present
            assert client.depth == 24
            pixmap, gc = draw_pixmap(client)
            # Up: the server draws from a memfd this client passes with ShmAttachFd.
            memfd = os.memfd_create("x11passthrough-test")
            os.ftruncate(memfd, IMAGE)
            with mmap.mmap(memfd, IMAGE) as memory:
                memory[:] = pattern()
            seg_up = client.new_id()
            client.send(major, SHM_ATTACH_FD, struct.pack("<IBxxx", seg_up, 0), (memfd,))
            os.close(memfd)
            put = struct.pack(
                "<IIHHHHHHhhBBBxII",
                pixmap,
                gc,
                SIDE,
                SIDE,
                0,
                0,
                SIDE,
                SIDE,
                0,
                0,
                client.depth,
                Z_PIXMAP,
                0,
                seg_up,
                0,
            )
            client.send(major, SHM_PUT_IMAGE, put)
            _, pixels = client.reply(
                client.send(
                    73, Z_PIXMAP, struct.pack("<IhhHHI", pixmap, 0, 0, SIDE, SIDE, 0xFFFFFFFF)
                )
            )
            assert pixels[:IMAGE] == pattern()
            # Down: the server makes a segment and passes its descriptor with the reply.
            seg_down = client.new_id()
            head, _ = client.reply(
                client.send(major, SHM_CREATE_SEGMENT, struct.pack("<IIBxxx", seg_down, IMAGE, 0))
            )
            assert head[1] == 1, "the reply says it carries one descriptor"
            assert len(client.fds) == 1, "the descriptor came with the reply"
            client.send(
                major,
                SHM_GET_IMAGE,
                struct.pack(
                    "<IhhHHIBxxxII", pixmap, 0, 0, SIDE, SIDE, 0xFFFFFFFF, Z_PIXMAP, seg_down, 0
                ),
            )
            client.sync()
            with mmap.mmap(client.fds[0], IMAGE) as memory:
                assert memory[:IMAGE] == pattern()
        finally:
            client.close()


def closed(sock: socket.socket) -> bool:
    """Tell whether the relay closed `sock`'s connection (reading what is left of it)."""
    try:
        while sock.recv(65536):
            pass
    except OSError:
        return True
    return True


def test_a_descriptor_flood_costs_only_its_own_connection(xvfb: XServer) -> None:
    """Descriptors the relay cannot pass on at once are bounded; other clients go on."""
    with lend(xvfb) as args:
        assert args.socket is not None
        cookie = session_cookie(args)
        bystander = Client(str(args.socket), cookie)
        flooder = Client(str(args.socket), cookie)
        baseline = open_fds()
        spare = os.open("/dev/null", os.O_RDONLY)
        try:
            assert flooder.query(b"MIT-SHM")[0]
            # A QueryExtension the filter must see whole (DRI3 is hidden), one byte per
            # message, 16 descriptors each: the relay holds the descriptors until the bytes
            # they came with can go, and past its bound closes the connection instead.
            name = b"DRI3"
            query = struct.pack("<BxHHxx", 98, 3, len(name)) + name
            with contextlib.suppress(OSError):
                for byte in query:
                    flooder.sock.sendmsg(
                        [bytes([byte])],
                        [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [spare] * 16))],
                    )
                    bystander.sync()
            wait_until(lambda: closed(flooder.sock), "the flooder closed", timeout=30)
            wait_until(lambda: open_fds() <= baseline + 1, "the relay's descriptors", timeout=30)
            bystander.sync()
            # More descriptors in one message than any client sends: closed at once.
            other = Client(str(args.socket), cookie)
            with contextlib.suppress(OSError):
                other.sock.sendmsg(
                    [struct.pack("<BxH", 127, 1)],
                    [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [spare] * 40))],
                )
            wait_until(lambda: closed(other.sock), "the other client closed", timeout=30)
            other.close()
            wait_until(lambda: open_fds() <= baseline + 1, "the relay's descriptors", timeout=30)
            bystander.sync()
        finally:
            os.close(spare)
            bystander.close()
            flooder.close()


def test_the_server_rules_of_attach_permission() -> None:
    """may_attach is the server's shm_access, rule for rule."""
    seg = Segment(mode=0o640, uid=1000, gid=100, cuid=1001, cgid=101)
    assert may_attach(Credentials(pid=1, uid=0, gid=0), seg, read_only=False)
    assert may_attach(Credentials(pid=1, uid=1000, gid=5), seg, read_only=False)
    assert may_attach(Credentials(pid=1, uid=1001, gid=5), seg, read_only=False)  # creator
    assert may_attach(Credentials(pid=1, uid=7, gid=100), seg, read_only=True)
    assert not may_attach(Credentials(pid=1, uid=7, gid=101), seg, read_only=False)
    assert not may_attach(Credentials(pid=1, uid=7, gid=7), seg, read_only=True)
    # The owner's bits decide for the owner, even where the group's or others' would allow.
    owner_blind = Segment(mode=0o066, uid=1000, gid=100, cuid=1000, cgid=100)
    assert not may_attach(Credentials(pid=1, uid=1000, gid=100), owner_blind, read_only=True)
    # Root inside a user namespace is the uid it maps to on the host, not root.
    assert not may_attach(Credentials(pid=1, uid=100000, gid=100000), seg, read_only=True)


def test_shm_true_gives_the_container_the_hosts_ipc_namespace(xvfb: XServer) -> None:
    with lend(xvfb, shm=True) as args:
        assert args.ipc == "host"
        assert [a for a in args if a in ("--ipc", "host")] == ["--ipc", "host"]
        assert args.docker_py()["ipc_mode"] == "host"
        assert args.compose()["ipc"] == "host"


def test_shm_takes_only_its_three_choices() -> None:
    with pytest.raises(ConfigurationError, match="shm='yes' is not a shared-memory choice"):
        X11Passthrough(":0", shm="yes")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"shm": True, "transport": "tcp"}, "shm=True needs the UNIX transport"),
        ({"shm": True, "auth": "untrusted"}, "refuses MIT-SHM to untrusted clients"),
    ],
)
def test_shm_choices_that_cannot_work_are_refused(
    xvfb: XServer, options: dict[str, object], words: str
) -> None:
    passthrough = X11Passthrough(
        xvfb.display,
        xvfb.xauthority,
        display_range=RANGE,
        **{"transport": "unix", **options},  # type: ignore[arg-type]
    )
    with pytest.raises(ConfigurationError, match=words):
        passthrough.start()
    passthrough.close()
