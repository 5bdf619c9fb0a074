"""
A flood of connections that never finish their setup: the host process keeps its descriptors,
and real clients are still served quickly.

The embedding process runs with the common soft RLIMIT_NOFILE of 1024 and keeps doing its own
work (``open()``, ``subprocess.run``) while a client without the cookie holds 2,000 idle
connections from another address.
"""

from __future__ import annotations

import json
import resource
import socket
import statistics
import struct
import subprocess
import sys
import textwrap
import threading
import time

from collections.abc import Iterator

import pytest

from x11passthrough.xauth import Xauthority

from infra.processes import wait_until
from infra.xvfb import XServer


FLOOD = 2000
MIT = b"MIT-MAGIC-COOKIE-1"

EMBEDDER = textwrap.dedent(
    """
    import json, resource, subprocess, sys, threading, time
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
    import attrs
    from x11passthrough import X11Passthrough
    p = X11Passthrough(sys.argv[1], sys.argv[2], bind="127.0.0.1", display_range=range(1600, 1700))
    args = p.start()
    print(json.dumps({"display": args.display, "xauthority": str(args.xauthority)}), flush=True)
    failures, checks, stop = [], [0], threading.Event()
    def work():
        while not stop.is_set():
            try:
                with open("/etc/hostname") as f:
                    f.read()
                subprocess.run(["true"], check=True)
            except OSError as e:
                failures.append(str(e))
            checks[0] += 1
            stop.wait(0.02)
    worker = threading.Thread(target=work)
    worker.start()
    sys.stdin.readline()
    stop.set()
    worker.join()
    stats = attrs.asdict(p.stats)
    p.close()
    print(json.dumps({"failures": failures, "checks": checks[0], "stats": stats}), flush=True)
    """
)


@pytest.fixture(name="many_descriptors")
def _many_descriptors() -> Iterator[None]:
    """Let this test process (the attacker) open a few thousand sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, max(soft, FLOOD + 1000))
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


class Flood:
    """Holds up to `count` idle connections to `port` from 127.0.0.2, reopening dropped ones."""

    def __init__(self, port: int, count: int) -> None:
        self._port = port
        self._count = count
        self._stop = threading.Event()
        self.opened = 0
        self.held_max = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        held: list[socket.socket] = []
        while not self._stop.is_set():
            alive = []
            for sock in held:
                try:
                    if sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"":
                        sock.close()
                        continue
                except BlockingIOError:
                    pass
                except OSError:
                    sock.close()
                    continue
                alive.append(sock)
            held = alive
            while len(held) < self._count and not self._stop.is_set():
                sock = socket.socket()
                sock.bind(("127.0.0.2", 0))
                sock.settimeout(2)
                try:
                    sock.connect(("127.0.0.1", self._port))
                except OSError:
                    sock.close()
                    break
                held.append(sock)
                self.opened += 1
            self.held_max = max(self.held_max, len(held))
        for sock in held:
            sock.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


def setup_latency(port: int, cookie: bytes) -> float:
    """Seconds from connect to the server's Success reply, through the relay."""
    message = struct.pack("<BxHHHH2x", 0x6C, 11, 0, len(MIT), len(cookie)) + MIT + b"\0\0" + cookie
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(message)
        head = sock.recv(8, socket.MSG_WAITALL)
    assert head[:1] == b"\x01", head
    return time.monotonic() - started


def test_an_idle_flood_leaves_the_host_its_descriptors_and_real_clients_fast(
    xvfb: XServer, many_descriptors: None
) -> None:
    """No EMFILE in the embedding process, every real client served, p90 under a second."""
    embedder = subprocess.Popen(
        [sys.executable, "-c", EMBEDDER, xvfb.display, str(xvfb.xauthority)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert embedder.stdin is not None
    assert embedder.stdout is not None
    try:
        started = json.loads(embedder.stdout.readline())
        port = 6000 + int(started["display"].rsplit(":", 1)[1])
        cookie = Xauthority.load(started["xauthority"])[0].data
        flood = Flood(port, FLOOD)
        try:
            # The flood is at full strength before we measure.
            wait_until(
                lambda: flood.opened >= FLOOD, "the flood to open its connections", timeout=60
            )
            latencies = [setup_latency(port, cookie) for _ in range(30)]
        finally:
            flood.stop()
        embedder.stdin.write("done\n")
        embedder.stdin.flush()
        report = json.loads(embedder.stdout.readline())
    finally:
        embedder.stdin.close()
        embedder.wait(60)
        embedder.stdout.close()
    p90 = statistics.quantiles(latencies, n=10)[-1]
    print(
        f"flood opened {flood.opened} connections (held {flood.held_max} at once); real "
        f"clients p90 {p90 * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms; "
        f"host checks {report['checks']}, failures {len(report['failures'])}; "
        f"relay rejected {report['stats']['rejected']}"
    )
    assert report["failures"] == []
    assert report["checks"] > 0
    assert p90 < 1.0
    assert report["stats"]["rejected"] >= FLOOD - 64 - 256
