"""
A client that asks for images and never reads: the relay drops it before the X server falls.

Xvfb 21.1.7 buffers replies without bound for such a client (about 800 MB/s here) and was
seen to segfault near 2 GB. Through the relay, the client is dropped after ``stall_timeout``.
"""

from __future__ import annotations

import socket
import struct
import threading
import time

from pathlib import Path

from x11passthrough import X11Passthrough
from x11passthrough.xauth import Xauthority

from infra.processes import pid_alive, wait_until
from infra.xvfb import XServer


RANGE = range(1500, 1600)
MIT = b"MIT-MAGIC-COOKIE-1"
GET_IMAGE = 73
Z_PIXMAP = 2


def connect(port: int, cookie: bytes) -> tuple[socket.socket, int]:
    """A set-up client connection through the relay, and the root window's id."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(
        struct.pack("<BxHHHH2x", 0x6C, 11, 0, len(MIT), len(cookie)) + MIT + b"\0\0" + cookie
    )
    head = sock.recv(8, socket.MSG_WAITALL)
    assert head[0] == 1, head
    (words,) = struct.unpack_from("<H", head, 6)
    body = sock.recv(4 * words, socket.MSG_WAITALL)
    vendor_length, _, _, formats = struct.unpack_from("<HHBB", body, 16)
    screens_at = 32 + (vendor_length + 3) // 4 * 4 + 8 * formats
    (root,) = struct.unpack_from("<I", body, screens_at)
    return sock, root


def get_image(root: int, size: int = 500) -> bytes:
    return struct.pack("<BBHIhhHHI", GET_IMAGE, Z_PIXMAP, 5, root, 0, 0, size, size, 0xFFFFFFFF)


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def session(p: X11Passthrough) -> tuple[int, bytes]:
    args = p.args
    assert args.xauthority is not None
    return 6000 + int(args.display.rsplit(":", 1)[1]), Xauthority.load(args.xauthority)[0].data


def test_a_client_that_never_reads_is_dropped_and_the_server_survives(xvfb: XServer) -> None:
    """The relay drops it about stall_timeout after its backlog filled; Xvfb lives on."""
    p = X11Passthrough(xvfb.display, xvfb.xauthority, bind="127.0.0.1", display_range=RANGE)
    with p:
        port, cookie = session(p)
        attacker, root = connect(port, cookie)
        request = get_image(root) * 64
        start_rss = rss(xvfb.process.pid)
        dropped = threading.Event()

        def flood() -> None:
            try:
                while True:
                    attacker.sendall(request)
            except OSError:
                dropped.set()

        thread = threading.Thread(target=flood, daemon=True)
        started = time.monotonic()
        thread.start()
        peak = start_rss
        while p.stats.stalled == 0:
            assert time.monotonic() - started < 15, "the stalled client was never dropped"
            assert pid_alive(xvfb.process.pid), "the X server died"
            peak = max(peak, rss(xvfb.process.pid))
            time.sleep(0.02)  # sampling memory, not waiting for a condition
        took = time.monotonic() - started
        thread.join(10)
        attacker.close()
        assert dropped.is_set()
        assert pid_alive(xvfb.process.pid)
        # The dropped client's replies are freed; others are served.
        client, _ = connect(port, cookie)
        client.close()
    growth = peak - start_rss
    print(f"dropped after {took:.2f} s; Xvfb grew by {growth / 2**20:.0f} MiB at most")
    assert took < 1.0 + 5.0
    assert growth < 1900 * 2**20, f"Xvfb grew by {growth / 2**20:.0f} MiB"


def test_a_slow_reader_is_not_dropped(xvfb: XServer) -> None:
    """A client that reads with pauses shorter than stall_timeout keeps its connection."""
    p = X11Passthrough(
        xvfb.display, xvfb.xauthority, bind="127.0.0.1", display_range=RANGE, stall_timeout=1.0
    )
    with p:
        port, cookie = session(p)
        client, root = connect(port, cookie)
        with client:
            replies = 12
            client.sendall(get_image(root) * replies)
            expected = replies * (32 + 500 * 500 * 4)
            received = 0
            while received < expected:
                if received and received % (4 * 2**20) < 65536:
                    time.sleep(0.3)  # a slow consumer: pauses, but makes progress
                chunk = client.recv(min(65536, expected - received))
                assert chunk, "the relay dropped a client that was reading"
                received += len(chunk)
        wait_until(lambda: p.stats.connections_open == 0, "the client to leave")
        assert p.stats.stalled == 0
