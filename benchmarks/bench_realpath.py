"""
Benchmark the relay on the real path: x11perf inside containers, not on the host's loopback.

Usage::

    python benchmarks/bench_realpath.py                  # 3 rounds of 2 s per test and path
    python benchmarks/bench_realpath.py --quick          # 1 round of 1 s, noisier
    python benchmarks/bench_realpath.py --json out.json
    python benchmarks/bench_realpath.py --paths direct-unix,relay-unix --tests getimage500
    python benchmarks/bench_realpath.py --private-unix   # relay-unix from the private API
    python benchmarks/bench_realpath.py --cpuset 0       # everything on CPU 0

It starts its own Xvfb :N (MIT-MAGIC-COOKIE-1 auth, ``-listen tcp``), makes a small image of
this host's x11perf with ``docker import`` (the binary, every library ``ldd`` lists and a
static busybox for ``/bin/sh`` and ``sleep``; no font files, as the server renders core
fonts; tagged by a digest of those files and reused while they are unchanged) and keeps one
container per path running (``sleep infinity``). Each x11perf run is a ``docker exec`` in
that container, so container start-up is never measured. The paths:

- ``direct-unix``: the server's own socket ``/tmp/.X11-unix/XN`` bind-mounted, ``DISPLAY=:N``:
  the physical limit and the reference (1.00x);
- ``direct-tcp``: the server's own TCP listener, ``DISPLAY=<docker0 address>:N``;
- ``socat-briefcase``: ``socat TCP-LISTEN:P,reuseaddr,fork,bind=0.0.0.0
  UNIX-CONNECT:/tmp/.X11-unix/XN`` exactly as BeeWare Briefcase runs it,
  ``DISPLAY=<docker0 address>:P-6000``; Nagle's algorithm makes it slow, so it runs in the
  first round only, with ``--socat-time`` seconds per run;
- ``socat-nodelay``: the same with ``nodelay`` on the listening side;
- ``socat-unix``: ``socat -b 262144 UNIX-LISTEN:DIR/XP,fork UNIX-CONNECT:/tmp/.X11-unix/XN``,
  DIR mounted as the container's ``/tmp/.X11-unix``, ``DISPLAY=:P``: a copying relay in C on
  the same transport as ours, with large reads (the floor of any copying relay here);
- ``relay-tcp`` and ``relay-unix``: ``with X11Passthrough(display, xauthority, transport=...)``
  in a process of its own, the container started with its docker-run arguments. The
  transport values are taken from the installed package: ``transport=`` is passed only when
  :class:`~x11passthrough.X11Passthrough` has the parameter, ``"docker0"`` (else ``"tcp"``)
  for relay-tcp and ``"unix"`` for relay-unix. Without a UNIX transport (or with
  ``--private-unix``) relay-unix is a :class:`~x11passthrough._relay.thread.RelayThread`
  listening on ``<tmpdir>/X<M>``, the directory mounted as ``/tmp/.X11-unix``, with the
  authority file of the direct paths (no cookie substitution);
- ``relay-tcp-async`` and ``relay-unix-async``: the same with ``async with X11Passthrough``
  in an asyncio event loop (no busy-poll there).

Tests: ``x11perf -repeat 1 -time T`` with ``-prop`` (a GetProperty round trip),
``-getimage500`` (1 MB to the client) and ``-putimage500`` (1 MB to the server). For each
round, for each test, every path runs in turn, the order rotated each round, so load from
elsewhere on the machine hits all paths alike. Reported per path: the median msec per
operation and its ratio to ``direct-unix``.

CPU: the forwarding process's utime+stime (and its reaped children's, for socat's forks) is
read from ``/proc/PID/stat`` before and after each run, as is Xvfb's. It is divided by the
bytes it moved in that run (the relay's :class:`~x11passthrough.RelayStats`, asked for over a
pipe; socat's ``wchar`` from ``/proc/PID/io``; for the direct paths, which have no forwarder,
what Xvfb wrote, so Xvfb's own CPU is shown for GetImage and GetProperty), which include
x11perf's calibration as the CPU time does: seconds per GB for GetImage and PutImage, per
10,000 round trips for GetProperty (a GetProperty request is 24 bytes, so round trips are
bytes up / 24).

Concurrency: ``x11perf -getimage500`` in N containers at once (``--concurrent 1,2,4``) through
one relay (and, as the reference, the direct UNIX socket), each with ``-repeat 2 -reps R``
(no calibration; the first run warms up, the second counts), so that the timed runs overlap:
the median per-container
time per operation, the aggregate throughput (the sum over containers of 1 MB per operation
at each one's rate), how much the timed runs overlapped, and what Xvfb wrote per second over
the whole batch (a lower bound: start-up included).

Round-trip times depend on where the scheduler puts x11perf, the forwarder and Xvfb (a
wake-up across CPUs is dearer than one on the same CPU): ``--cpuset 0`` pins them all to one
CPU, which takes the placement out and leaves their CPU work.

Needs root (or docker access), Docker Engine with the docker0 bridge, Xvfb, xauth, x11perf,
socat, ldd, busybox (static) on PATH. Exits 2 if one is missing. Every container, process
and Xvfb it starts is removed when it ends, also on Ctrl-C or SIGTERM; the image stays, as a
cache. Results are printed as Markdown (and written with ``--json``), never kept here.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import inspect
import io
import json
import os
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import typing

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import _host

import x11passthrough

from x11passthrough import X11Passthrough


TESTS = {
    "prop": "GetProperty",
    "getimage500": "GetImage 500x500",
    "putimage500": "PutImage 500x500",
}
#: Bytes of image data one GetImage/PutImage 500x500 operation moves (24-bit depth: 4 bytes).
IMAGE_BYTES = 500 * 500 * 4
#: Bytes of one GetProperty request.
GETPROPERTY_REQUEST = 24
#: Bytes per GetProperty round trip (request and reply), for socat, which counts no direction,
#: when no relay path measured it in the same run.
GETPROPERTY_ROUND_TRIP = 72
LINE = re.compile(r"^\s*(\d+) reps @\s+([\d.]+) msec \(\s*([\d.]+)/sec\): (.*)$", re.MULTILINE)
PATHS = (
    "direct-unix",
    "direct-tcp",
    "socat-briefcase",
    "socat-nodelay",
    "socat-unix",
    "relay-tcp",
    "relay-unix",
    "relay-tcp-async",
    "relay-unix-async",
)
REFERENCE = "direct-unix"
IMAGE_REPOSITORY = "x11passthrough-bench-x11perf"
IMAGE_FORMAT = 1
CONTAINER_XAUTHORITY = "/tmp/.bench.xauth"
CLOCK_TICK = os.sysconf("SC_CLK_TCK")

RELAY_SCRIPT = r"""
import asyncio, json, os, socket, sys

config = json.loads(sys.argv[1])
private = config["private"]


def hello(args, used):
    print(json.dumps({"args": list(args), "transport": used}), flush=True)


def stats_line(stats):
    names = ("bytes_up", "bytes_down", "connections_total", "errors", "rejected", "stalled")
    return json.dumps({name: getattr(stats, name) for name in names})


def private_relay():
    from x11passthrough.display import Endpoint
    from x11passthrough._relay.options import RelayOptions

    path = os.path.join(private["dir"], "X%d" % private["number"])
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    os.chmod(path, 0o777)
    listener.listen(128)
    return [listener], Endpoint.unix(private["upstream"]), RelayOptions()


def passthrough():
    from x11passthrough import X11Passthrough

    kwargs = {} if config["transport"] is None else {"transport": config["transport"]}
    return X11Passthrough(config["display"], config["xauthority"], **kwargs)


def sync_main():
    if private:
        from x11passthrough._relay.thread import RelayThread

        with RelayThread(*private_relay()) as relay:
            hello([], "private-unix")
            for _ in sys.stdin:
                print(stats_line(relay.stats), flush=True)
        return
    lent = passthrough()
    with lent as args:
        hello(args, config["transport"])
        for _ in sys.stdin:
            print(stats_line(lent.stats), flush=True)


async def async_main():
    if private:
        from x11passthrough._relay.server import Relay

        async with Relay(*private_relay()) as relay:
            hello([], "private-unix")
            while await asyncio.to_thread(sys.stdin.readline):
                print(stats_line(relay.stats), flush=True)
        return
    lent = passthrough()
    async with lent as args:
        hello(args, config["transport"])
        while await asyncio.to_thread(sys.stdin.readline):
            print(stats_line(lent.stats), flush=True)


if config["async"]:
    asyncio.run(async_main())
else:
    sync_main()
"""


class BenchError(Exception):
    """The benchmark cannot go on (a tool failed, a path did not come up)."""


# -- measuring ------------------------------------------------------------------------------


def parse_x11perf(output: str) -> list[float]:
    """Return the msec-per-operation of every ``N reps @ X msec (Y/sec): name`` line."""
    return [float(match.group(2)) for match in LINE.finditer(output)]


def cpu_seconds(pid: int, children: bool = False) -> float:
    """Return utime+stime of process `pid` (all its threads), plus its reaped children's."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # After the ")": state is field 3 of stat(5), so utime (14) is index 11 here.
    ticks = sum(int(value) for value in fields[11 : 15 if children else 13])
    return ticks / CLOCK_TICK


def written_bytes(pid: int) -> int:
    """Return ``wchar`` of `pid`: what it and its reaped children wrote."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        key, _, value = line.partition(":")
        if key == "wchar":
            return int(value)
    raise BenchError(f"no wchar in /proc/{pid}/io")


@dataclass
class Moved:
    """Bytes a forwarder moved, by direction where it knows them."""

    up: int | None
    down: int | None
    total: int

    def __sub__(self, other: Moved) -> Moved:
        up = None if self.up is None or other.up is None else self.up - other.up
        down = None if self.down is None or other.down is None else self.down - other.down
        return Moved(up, down, self.total - other.total)


class Forwarder:
    """A process between the container and the display: socat, or a relay process of ours."""

    def __init__(self, name: str, process: subprocess.Popen[str], *, relay: bool) -> None:
        self.name = name
        self.process = process
        self.relay = relay
        self.args: list[str] = []
        self.transport: str | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def settle(self) -> None:
        """Wait (up to 2 s) until socat has reaped the children of the last connections."""
        if self.relay:
            return
        _host.wait_for_reaped_children(self.pid)

    def cpu(self) -> float:
        return cpu_seconds(self.pid, children=not self.relay)

    def moved(self) -> Moved:
        if not self.relay:
            return Moved(None, None, written_bytes(self.pid))
        stats = self.ask()
        up, down = int(stats["bytes_up"]), int(stats["bytes_down"])
        return Moved(up, down, up + down)

    def ask(self) -> dict[str, int]:
        """Ask the relay process for its RelayStats."""
        stdin, stdout = self.process.stdin, self.process.stdout
        if stdin is None or stdout is None:
            raise BenchError(f"{self.name}: the relay process has no pipes")
        stdin.write("stats\n")
        stdin.flush()
        line = stdout.readline()
        if not line:
            raise BenchError(f"{self.name}: the relay process ended")
        answer: dict[str, int] = json.loads(line)
        return answer

    def stop(self) -> None:
        process = self.process
        if process.poll() is None:
            if self.relay and process.stdin is not None:
                with contextlib.suppress(OSError):
                    process.stdin.close()
            else:
                process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for pipe in (process.stdin, process.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


@dataclass
class Sample:
    """One x11perf run in one container."""

    test: str
    round: int
    msec: float
    reps: int
    wall: float
    cpu: float | None = None
    server_cpu: float | None = None
    server_down: int | None = None
    #: The machine's 1-minute load average when the run ended.
    load: float | None = None
    bytes_up: int | None = None
    bytes_down: int | None = None
    bytes_total: int | None = None


@dataclass
class Batch:
    """One x11perf -getimage500 run in N containers of a path at once."""

    containers: int
    round: int
    reps: int
    msec: list[float]
    #: The sum over containers of 1 MB per operation at each one's own rate.
    aggregate_mb_per_s: float
    #: The time all timed windows had in common, as a fraction of the median window.
    overlap: float
    #: What Xvfb wrote to clients over the whole batch (calibration and start-up included).
    server_mb_per_s: float
    wall: float
    cpu: float | None
    server_cpu: float | None
    bytes_total: int | None


@dataclass
class Route:
    """One way into the display, with its containers."""

    name: str
    display: str
    run_args: list[str]
    how: str
    forwarder: Forwarder | None = None
    first_round_only: bool = False
    seconds: int | None = None
    containers: list[str] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    batches: list[Batch] = field(default_factory=list)

    def times(self, test: str) -> list[float]:
        return [s.msec for s in self.samples if s.test == test]


@dataclass
class Measure:
    """What is read around a run: the forwarder's CPU and bytes, and the server's."""

    cpu: float | None
    server_cpu: float
    server_down: int
    moved: Moved | None


def measure(route: Route, server_pid: int) -> Measure:
    """Read CPU times and byte counts (Xvfb's ``wchar``: its writev to clients, all paths)."""
    forwarder = route.forwarder
    if forwarder is not None:
        forwarder.settle()
    server_cpu, server_down = cpu_seconds(server_pid), written_bytes(server_pid)
    if forwarder is None:
        return Measure(None, server_cpu, server_down, None)
    return Measure(forwarder.cpu(), server_cpu, server_down, forwarder.moved())


def fill(sample: Sample, before: Measure, after: Measure) -> None:
    sample.server_cpu = after.server_cpu - before.server_cpu
    sample.server_down = after.server_down - before.server_down
    if before.cpu is not None and after.cpu is not None:
        sample.cpu = after.cpu - before.cpu
    if before.moved is not None and after.moved is not None:
        moved = after.moved - before.moved
        sample.bytes_up, sample.bytes_down, sample.bytes_total = moved.up, moved.down, moved.total


# -- setting up -----------------------------------------------------------------------------


def run_checked(args: Sequence[str], *, what: str, stdin: str | None = None) -> str:
    done = subprocess.run(
        list(args), input=stdin, capture_output=True, text=True, check=False, timeout=600
    )
    if done.returncode != 0:
        raise BenchError(f"{what} failed ({' '.join(args)}):\n{done.stdout}{done.stderr}")
    return done.stdout


def docker0_address() -> str:
    """Return the IPv4 address of the docker0 bridge (where containers reach this host)."""
    done = subprocess.run(
        ["ip", "-4", "addr", "show", "docker0"], capture_output=True, text=True, check=False
    )
    found = re.search(r"inet (\d+\.\d+\.\d+\.\d+)/", done.stdout)
    if found:
        return found.group(1)
    gateway = "{{(index .IPAM.Config 0).Gateway}}"
    text = run_checked(
        ["docker", "network", "inspect", "bridge", "--format", gateway],
        what="asking docker for the bridge gateway",
    )
    if not text.strip():
        raise BenchError("no docker0 address: is Docker Engine running with its default bridge?")
    return text.strip()


def free_display(avoid: set[int], start: int = 20) -> int:
    """Return a free display number (see :func:`_host.free_display`)."""
    number = _host.free_display(avoid, start)
    if number is None:
        raise BenchError(f"no free display number between {start} and 200")
    return number


def wild_entry(source: Path, number: int, out: Path) -> None:
    """Merge `source`'s entry for :`number` into `out` as a FamilyWild entry (any host)."""
    line = run_checked(
        ["xauth", "-f", str(source), "nlist", f":{number}"], what="reading the cookie"
    ).splitlines()[0]
    wild = "ffff" + line[4:]
    run_checked(["xauth", "-f", str(out), "nmerge", "-"], what="writing the cookie", stdin=wild)


def add_cookie(path: Path, number: int, cookie: str) -> None:
    run_checked(
        ["xauth", "-f", str(path), "add", f":{number}", ".", cookie], what="writing the cookie"
    )


def start_xvfb(setup: Setup, cookie: str) -> None:
    """Start Xvfb with cookie auth and ``-listen tcp`` on a free display N of `setup`."""
    workdir, avoid = setup.workdir, set[int]()
    for _ in range(5):
        number = free_display(avoid)
        avoid.add(number)
        auth = workdir / "server.xauth"
        auth.unlink(missing_ok=True)
        add_cookie(auth, number, cookie)
        read_fd, write_fd = os.pipe()
        args = [
            *pinned(setup.cpuset),
            "Xvfb",
            f":{number}",
            "-auth",
            str(auth),
            "-noreset",
            "-listen",
            "tcp",
        ]
        args += ["-screen", "0", "1024x768x24", "-displayfd", str(write_fd)]
        process = subprocess.Popen(
            args,
            pass_fds=(write_fd,),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            text=True,
        )
        setup.server = process
        os.close(write_fd)
        with os.fdopen(read_fd) as pipe:
            line = pipe.readline()
        if line.strip() == str(number):
            setup.number = number
            return
        process.kill()
        process.wait()
        setup.server = None
    raise BenchError("Xvfb did not start on any of five free display numbers")


def image_inputs() -> list[str]:
    """Return the host files the x11perf image is made of: x11perf and its libraries."""
    x11perf = shutil.which("x11perf")
    if x11perf is None:
        raise BenchError("no x11perf on PATH")
    found = [x11perf]
    for line in run_checked(["ldd", x11perf], what="ldd x11perf").splitlines():
        match = re.search(r"(/\S+) \(0x[0-9a-f]+\)$", line.strip())
        if match:
            found.append(match.group(1))
    return found


def build_image() -> str:
    """Make (or reuse) the x11perf image from this host's files; return its tag."""
    files = image_inputs()
    busybox = shutil.which("busybox")
    if busybox is None:
        raise BenchError("no busybox on PATH (apt-get install busybox-static)")
    digest = hashlib.sha256(f"format {IMAGE_FORMAT}\n".encode())
    for name in [*files, busybox]:
        real = Path(name).resolve()
        status = real.stat()
        digest.update(f"{name} {real} {status.st_size} {status.st_mtime_ns}\n".encode())
    tag = f"{IMAGE_REPOSITORY}:{digest.hexdigest()[:16]}"
    known = subprocess.run(
        ["docker", "image", "inspect", tag], capture_output=True, check=False, text=True
    )
    if known.returncode == 0:
        return tag
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        directories = {"tmp", "etc", "bin"}
        for name in files:
            parts = Path(name).parent.parts[1:]
            directories.update("/".join(parts[: i + 1]) for i in range(len(parts)))
        for directory in sorted(directories):
            info = tarfile.TarInfo(directory)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if directory == "tmp" else 0o755
            tar.addfile(info)
        for name in files:
            tar.add(str(Path(name).resolve()), arcname=name.lstrip("/"))
        tar.add(str(Path(busybox).resolve()), arcname="bin/busybox")
        for applet in ("sh", "sleep", "cat", "ls", "env"):
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type, info.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(info)
    done = subprocess.run(
        ["docker", "import", "-", tag], input=buffer.getvalue(), capture_output=True, check=False
    )
    if done.returncode != 0:
        raise BenchError(f"docker import failed: {done.stderr.decode(errors='replace')}")
    return tag


def transport_values() -> tuple[bool, tuple[str, ...]]:
    """Return whether X11Passthrough takes ``transport=``, and the values it names."""
    if "transport" not in inspect.signature(X11Passthrough).parameters:
        return False, ()
    values: tuple[object, ...] = typing.get_args(getattr(x11passthrough, "Transport", None))
    if not values:
        with contextlib.suppress(Exception):
            hints = typing.get_type_hints(X11Passthrough.__init__)
            values = typing.get_args(hints.get("transport"))
    return True, tuple(str(v) for v in values) or ("unix", "tcp")


def relay_environment() -> dict[str, str]:
    """The environment of a relay process: it imports the very package this script imported."""
    env = dict(os.environ)
    here = str(Path(x11passthrough.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [here, env.get("PYTHONPATH")]))
    return env


def pinned(cpuset: str | None) -> list[str]:
    """The command prefix that runs a program on the CPUs `cpuset` (nothing for None)."""
    return [] if cpuset is None else ["taskset", "-c", cpuset]


def start_relay(name: str, config: dict[str, object], cpuset: str | None) -> Forwarder:
    process = subprocess.Popen(
        [*pinned(cpuset), sys.executable, "-c", RELAY_SCRIPT, json.dumps(config)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=relay_environment(),
        start_new_session=True,
        text=True,
    )
    forwarder = Forwarder(name, process, relay=True)
    line = process.stdout.readline() if process.stdout is not None else ""
    if not line:
        forwarder.stop()
        raise BenchError(f"{name}: the relay process did not start")
    hello = json.loads(line)
    forwarder.args = [str(arg) for arg in hello["args"]]
    forwarder.transport = hello["transport"]
    return forwarder


def start_socat(
    name: str, port: int, upstream: str, *, nodelay: bool, cpuset: str | None
) -> Forwarder:
    listen = f"TCP-LISTEN:{port},reuseaddr,fork,bind=0.0.0.0" + (",nodelay" if nodelay else "")
    process = subprocess.Popen(
        [*pinned(cpuset), "socat", listen, f"UNIX-CONNECT:{upstream}"],
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        text=True,
    )
    forwarder = Forwarder(name, process, relay=False)
    deadline = time.monotonic() + 10
    while True:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                break
        if process.poll() is not None or time.monotonic() > deadline:
            forwarder.stop()
            raise BenchError(f"{name}: socat does not listen on port {port}")
        time.sleep(0.02)
    forwarder.settle()
    return forwarder


def start_socat_unix(name: str, path: Path, upstream: str, *, cpuset: str | None) -> Forwarder:
    listen = f"UNIX-LISTEN:{path},fork,mode=777"
    process = subprocess.Popen(
        [*pinned(cpuset), "socat", "-b", "262144", listen, f"UNIX-CONNECT:{upstream}"],
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        text=True,
    )
    forwarder = Forwarder(name, process, relay=False)
    deadline = time.monotonic() + 10
    while not path.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            forwarder.stop()
            raise BenchError(f"{name}: socat does not listen on {path}")
        time.sleep(0.02)
    return forwarder


def display_of(run_args: Sequence[str]) -> str:
    for arg in run_args:
        if arg.startswith("DISPLAY="):
            return arg.removeprefix("DISPLAY=")
    return "?"


@dataclass
class Setup:
    """Everything the benchmark started; `close` undoes it all."""

    workdir: Path
    image: str
    server: subprocess.Popen[str] | None = None
    number: int = 0
    routes: list[Route] = field(default_factory=list)
    containers: list[str] = field(default_factory=list)
    forwarders: list[Forwarder] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: The CPUs Xvfb, the forwarders and the containers are pinned to (None: not pinned).
    cpuset: str | None = None

    @property
    def server_pid(self) -> int:
        if self.server is None:
            raise BenchError("Xvfb is not running")
        return self.server.pid

    def container(self, route: Route, index: int) -> str:
        name = f"x11pt-bench-{os.getpid()}-{route.name}-{index}"
        self.containers.append(name)  # before it exists: an interrupted run still removes it
        command = ["docker", "run", "-d", "--rm", "--name", name, *route.run_args]
        if self.cpuset is not None:
            command += ["--cpuset-cpus", self.cpuset]
        done = subprocess.run(
            [*command, self.image, "sleep", "infinity"],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise BenchError(f"{route.name}: docker run failed: {done.stderr}")
        route.containers.append(name)
        return name

    def close(self) -> None:
        if self.containers:
            subprocess.run(
                ["docker", "rm", "-f", *self.containers],
                capture_output=True,
                check=False,
                timeout=120,
            )
            self.containers.clear()
        for forwarder in reversed(self.forwarders):
            forwarder.stop()
        self.forwarders.clear()
        if self.server is not None and self.server.poll() is None:
            self.server.terminate()
            try:
                self.server.wait(10)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait()


class RouteMaker:
    """Starts the forwarders of the paths and says how their containers reach them."""

    def __init__(self, setup: Setup, gateway: str, *, private_unix: bool, socat_time: int) -> None:
        self.setup = setup
        self.gateway = gateway
        self.socat_time = socat_time
        self.upstream = f"/tmp/.X11-unix/X{setup.number}"
        self.server_auth = setup.workdir / "server.xauth"
        self.client_auth = setup.workdir / "client.xauth"
        self.cookie = run_checked(
            ["xauth", "-f", str(self.server_auth), "nlist", f":{setup.number}"],
            what="reading the cookie",
        ).split()[-1]
        wild_entry(self.server_auth, setup.number, self.client_auth)
        self.client_auth.chmod(0o644)
        self.used = {setup.number}
        self.private_number: int | None = None
        self.takes_transport, values = transport_values()
        self.tcp_transport = next((v for v in ("docker0", "tcp") if v in values), None)
        self.unix_transport = None if private_unix or "unix" not in values else "unix"
        setup.notes.append(
            f"x11passthrough {x11passthrough.__version__}: transport= "
            + (f"accepted, values {', '.join(values)}" if self.takes_transport else "not accepted")
        )

    def extra_number(self) -> int:
        """Reserve one more display number, with a FamilyWild entry in the client's file."""
        extra = free_display(self.used, start=self.setup.number + 1)
        self.used.add(extra)
        scratch = self.setup.workdir / "scratch.xauth"
        scratch.unlink(missing_ok=True)
        add_cookie(scratch, extra, self.cookie)
        wild_entry(scratch, extra, self.client_auth)
        return extra

    def direct_args(self, display: str, *volumes: str) -> list[str]:
        """The docker-run arguments of a path that uses the client's authority file."""
        args = ["--env", f"DISPLAY={display}", "--env", f"XAUTHORITY={CONTAINER_XAUTHORITY}"]
        args += ["--volume", f"{self.client_auth}:{CONTAINER_XAUTHORITY}:ro"]
        for volume in volumes:
            args += ["--volume", volume]
        return args

    def make(self, name: str) -> Route:
        if name == "direct-unix":
            display = f":{self.setup.number}"
            volume = f"{self.upstream}:{self.upstream}"
            return Route(name, display, self.direct_args(display, volume), "its socket, mounted")
        if name == "direct-tcp":
            display = f"{self.gateway}:{self.setup.number}"
            return Route(name, display, self.direct_args(display), "Xvfb -listen tcp")
        if name.startswith("socat-"):
            return self.socat(name)
        return self.relay(name)

    def socat(self, name: str) -> Route:
        extra = self.extra_number()
        if name == "socat-unix":
            directory = self.setup.workdir / f"{name}.X11-unix"
            directory.mkdir()
            directory.chmod(0o755)
            forwarder = start_socat_unix(
                name, directory / f"X{extra}", self.upstream, cpuset=self.setup.cpuset
            )
            self.setup.forwarders.append(forwarder)
            display = f":{extra}"
            volume = f"{directory}:/tmp/.X11-unix"
            args = self.direct_args(display, volume)
            return Route(name, display, args, "socat UNIX-LISTEN, 256 KiB reads", forwarder)
        nodelay = name == "socat-nodelay"
        forwarder = start_socat(
            name, 6000 + extra, self.upstream, nodelay=nodelay, cpuset=self.setup.cpuset
        )
        self.setup.forwarders.append(forwarder)
        display = f"{self.gateway}:{extra}"
        how = "socat TCP-LISTEN" + (",nodelay" if nodelay else " (as Briefcase)")
        route = Route(name, display, self.direct_args(display), how, forwarder)
        if not nodelay:
            route.first_round_only, route.seconds = True, self.socat_time
        return route

    def relay(self, name: str) -> Route:
        unix = name.startswith("relay-unix")
        asynchronous = name.endswith("-async")
        private: dict[str, object] | None = None
        if unix and self.unix_transport is None:
            if self.private_number is None:
                self.private_number = self.extra_number()
            directory = self.setup.workdir / f"{name}.X11-unix"
            directory.mkdir()
            directory.chmod(0o755)
            private = {"dir": str(directory), "number": self.private_number}
            private["upstream"] = self.upstream
        transport = self.unix_transport if unix else self.tcp_transport
        if not self.takes_transport:
            transport = None
        config: dict[str, object] = {
            "display": f":{self.setup.number}",
            "xauthority": str(self.server_auth),
            "transport": transport,
            "async": asynchronous,
            "private": private,
        }
        forwarder = start_relay(name, config, self.setup.cpuset)
        self.setup.forwarders.append(forwarder)
        if private is not None:
            display = f":{self.private_number}"
            run_args = self.direct_args(display, f"{private['dir']}:/tmp/.X11-unix")
            kind = "Relay" if asynchronous else "RelayThread"
            return Route(name, display, run_args, f"private API: {kind}", forwarder)
        loop = "async with" if asynchronous else "with"
        how = f"{loop} X11Passthrough(transport={transport!r})"
        return Route(name, display_of(forwarder.args), forwarder.args, how, forwarder)


# -- running --------------------------------------------------------------------------------


def x11perf(cid: str, test: str, seconds: int, reps: int | None = None) -> list[str]:
    """
    The x11perf command in container `cid`.

    Without `reps`: calibrate, then one run of about `seconds`. With `reps`: no calibration,
    two runs of `reps` (x11perf multiplies them by the test's objects); the first warms up.
    """
    if reps is None:
        return [
            "docker",
            "exec",
            cid,
            "x11perf",
            "-repeat",
            "1",
            "-time",
            str(seconds),
            f"-{test}",
        ]
    return ["docker", "exec", cid, "x11perf", "-repeat", "2", "-reps", str(reps), f"-{test}"]


def result_of(route: Route, test: str, completed: subprocess.CompletedProcess[str]) -> float:
    times = parse_x11perf(completed.stdout)
    if completed.returncode < 0 or completed.returncode == 128 + signal.SIGINT:
        raise KeyboardInterrupt(f"x11perf on {route.name} was interrupted")
    if completed.returncode or not times:
        raise BenchError(
            f"x11perf -{test} on {route.name} (DISPLAY={route.display}) failed:\n"
            f"{completed.stdout}{completed.stderr}"
        )
    return times[-1]


def reps_of(output: str) -> int:
    """Return the operations of the last ``N reps @`` line (the last repetition)."""
    found = LINE.findall(output)
    return int(found[-1][0]) if found else 0


def run_one(setup: Setup, route: Route, test: str, round_: int, seconds: int) -> Sample:
    seconds = route.seconds or seconds
    before = measure(route, setup.server_pid)
    started = time.monotonic()
    completed = subprocess.run(
        x11perf(route.containers[0], test, seconds),
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    wall = time.monotonic() - started
    after = measure(route, setup.server_pid)
    msec, reps = result_of(route, test, completed), reps_of(completed.stdout)
    sample = Sample(test, round_, msec, reps, wall, load=os.getloadavg()[0])
    fill(sample, before, after)
    return sample


def rotated(items: Sequence[Route], by: int) -> list[Route]:
    shift = by % len(items) if items else 0
    return [*items[shift:], *items[:shift]]


def run_rounds(setup: Setup, tests: Sequence[str], rounds: int, seconds: int) -> None:
    for round_ in range(rounds):
        for test in tests:
            for route in rotated(setup.routes, round_):
                if route.first_round_only and round_ > 0:
                    continue
                sample = run_one(setup, route, test, round_, seconds)
                route.samples.append(sample)
                print(
                    f"round {round_ + 1}/{rounds} -{test:<12} {route.name:<17} "
                    f"{sample.msec:9.4f} ms  ({sample.wall:.1f} s)",
                    file=sys.stderr,
                )


def timed(command: list[str]) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run `command`; return its result and the monotonic time it ended."""
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=600)
    return done, time.monotonic()


def overlap(windows: Sequence[tuple[float, float]]) -> float:
    """Return how much the timed windows have in common, as a fraction of the median window."""
    common = min(end for _, end in windows) - max(start for start, _ in windows)
    return max(0.0, common) / statistics.median(end - start for start, end in windows)


def run_concurrent(
    setup: Setup, names: Sequence[str], counts: Sequence[int], rounds: int, seconds: int
) -> None:
    """
    Run x11perf -getimage500 in N containers of a path at once, for each N in `counts`.

    Each container runs a fixed number of operations twice (``-repeat 2 -reps R``, R for
    about `seconds` / 2 on that path alone, as x11perf calibrated it) and the second run
    counts: x11perf's own calibration takes a varying time under load, so the timed runs of
    calibrating containers would hardly overlap; the first run warms up.
    """
    routes = [r for r in setup.routes if r.name in names]
    fixed: dict[str, int] = {}
    for route in routes:
        while len(route.containers) < max(counts):
            setup.container(route, len(route.containers))
        reps = [s.reps for s in route.samples if s.test == "getimage500" and s.reps]
        if not reps:
            reps = [run_one(setup, route, "getimage500", 0, seconds).reps]
        probe = subprocess.run(
            x11perf(route.containers[0], "getimage500", seconds, 1),
            capture_output=True,
            text=True,
            check=False,
            timeout=600,
        )
        objects = max(1, reps_of(probe.stdout))  # operations per rep
        fixed[route.name] = max(1, int(statistics.median(reps)) // objects // 2)
    for round_ in range(rounds):
        for count in counts:
            for route in rotated(routes, round_):
                before = measure(route, setup.server_pid)
                started = time.monotonic()
                commands = [
                    x11perf(c, "getimage500", seconds, fixed[route.name])
                    for c in route.containers[:count]
                ]
                with concurrent.futures.ThreadPoolExecutor(count) as pool:
                    results = list(pool.map(timed, commands))
                wall = time.monotonic() - started
                after = measure(route, setup.server_pid)
                times = [result_of(route, "getimage500", done) for done, _ in results]
                # The timed run is the last reps x msec of each x11perf's life.
                windows = [
                    (end - reps_of(done.stdout) * ms / 1000, end)
                    for (done, end), ms in zip(results, times, strict=True)
                ]
                sample = Sample("getimage500", round_, statistics.median(times), 0, wall)
                fill(sample, before, after)
                aggregate = sum(IMAGE_BYTES / (ms / 1000) for ms in times) / 1e6
                route.batches.append(
                    Batch(
                        containers=count,
                        round=round_,
                        reps=fixed[route.name],
                        msec=times,
                        aggregate_mb_per_s=aggregate,
                        overlap=overlap(windows),
                        server_mb_per_s=(sample.server_down or 0) / wall / 1e6,
                        wall=wall,
                        cpu=sample.cpu,
                        server_cpu=sample.server_cpu,
                        bytes_total=sample.bytes_total,
                    )
                )
                print(
                    f"concurrent round {round_ + 1}/{rounds} x{count} {route.name:<17} "
                    f"{statistics.median(times):9.4f} ms per container, {aggregate:7.1f} MB/s, "
                    f"overlap {overlap(windows):.0%}",
                    file=sys.stderr,
                )


# -- reporting ------------------------------------------------------------------------------


def ratio_text(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


@dataclass(frozen=True)
class RoundTrip:
    """The bytes of one GetProperty round trip, as the relays counted them."""

    total: float
    reply: float


def units_moved(samples: Sequence[Sample], test: str, trip: RoundTrip) -> float | None:
    """
    Return GB moved (images) or 10k round trips (GetProperty) in `samples`, or None.

    Counted by the forwarder where there is one (the relay's stats; socat's writes), else
    from what Xvfb wrote (the replies; no count for PutImage, which has none).
    """
    if not samples:
        return None
    if all(s.bytes_up is not None for s in samples):
        up = sum(s.bytes_up or 0 for s in samples)
        total = sum(s.bytes_total or 0 for s in samples)
        return up / GETPROPERTY_REQUEST / 1e4 if test == "prop" else total / 1e9
    if all(s.bytes_total is not None for s in samples):
        total = sum(s.bytes_total or 0 for s in samples)
        return total / trip.total / 1e4 if test == "prop" else total / 1e9
    down = sum(s.server_down or 0 for s in samples)
    if test == "prop":
        return down / trip.reply / 1e4
    return down / 1e9 if test == "getimage500" else None


def cpu_rates(route: Route, test: str, trip: RoundTrip) -> dict[str, float | None]:
    """Forwarder and server CPU per GB (images) or per 10k round trips (GetProperty)."""
    samples = [s for s in route.samples if s.test == test]
    units = units_moved(samples, test, trip)
    cpu = [s.cpu for s in samples if s.cpu is not None]
    server = sum(s.server_cpu or 0.0 for s in samples)
    return {
        "forwarder_cpu": sum(cpu) / units if cpu and units else None,
        "server_cpu": server / units if units else None,
        "units": units,
    }


def round_trip_size(routes: Sequence[Route]) -> RoundTrip:
    """Bytes per GetProperty round trip (both directions, and the reply), as relays saw them."""
    found = [
        (s.bytes_up / GETPROPERTY_REQUEST, s.bytes_total, s.bytes_down)
        for r in routes
        for s in r.samples
        if s.test == "prop" and s.bytes_up and s.bytes_total and s.bytes_down
    ]
    if not found:
        return RoundTrip(GETPROPERTY_ROUND_TRIP, GETPROPERTY_ROUND_TRIP - GETPROPERTY_REQUEST)
    total = statistics.median(t / n for n, t, _ in found)
    return RoundTrip(total, statistics.median(d / n for n, _, d in found))


def best_table(routes: Sequence[Route], reference: Route, tests: Sequence[str]) -> list[str]:
    lines = ["", f"best run of each path (ratio to the best {REFERENCE} run)", ""]
    lines.append("| path | " + " | ".join(f"{TESTS[t]} ms | ratio" for t in tests) + " |")
    lines.append("|---|" + "---:|---:|" * len(tests))
    for route in routes:
        cells = []
        for test in tests:
            times, base = route.times(test), reference.times(test)
            best = min(times) if times else None
            ratio = best / min(base) if best is not None and base else None
            cells += [num(best, 4), ratio_text(ratio)]
        lines.append(f"| {route.name} | " + " | ".join(cells) + " |")
    return lines


def cpu_table(routes: Sequence[Route], tests: Sequence[str], trip: RoundTrip) -> list[str]:
    lines = ["", "CPU of the forwarding process (and of Xvfb) per unit moved", ""]
    units = {"prop": "s/10k round trips", "getimage500": "s/GB", "putimage500": "s/GB"}
    lines.append("| path | " + " | ".join(f"{TESTS[t]} {units[t]}" for t in tests) + " |")
    lines.append("|---|" + "---:|" * len(tests))
    for route in routes:
        cells = []
        for test in tests:
            rates = cpu_rates(route, test, trip)
            forwarder = num(rates["forwarder_cpu"]) if route.forwarder else "-"
            cells.append(f"{forwarder} (Xvfb {num(rates['server_cpu'])})")
        lines.append(f"| {route.name} | " + " | ".join(cells) + " |")
    return lines


def concurrent_table(routes: Sequence[Route]) -> list[str]:
    batched = [r for r in routes if r.batches]
    if not batched:
        return []
    lines = ["", "x11perf -getimage500 in N containers at once (medians over rounds)", ""]
    lines.append(
        "| path | N | ms per op per container | aggregate MB/s | overlap "
        "| Xvfb MB/s whole batch | relay CPU s/GB |"
    )
    lines.append("|---|---:|---:|---:|---:|---:|---:|")
    for route in batched:
        for count in sorted({b.containers for b in route.batches}):
            runs = [b for b in route.batches if b.containers == count]
            times = [ms for b in runs for ms in b.msec]
            cpu = sum(b.cpu for b in runs if b.cpu is not None)
            moved = sum(b.bytes_total for b in runs if b.bytes_total)
            per_gb = cpu / (moved / 1e9) if moved and route.forwarder else None
            lines.append(
                f"| {route.name} | {count} | {statistics.median(times):.4f} | "
                f"{statistics.median(b.aggregate_mb_per_s for b in runs):.0f} | "
                f"{statistics.median(b.overlap for b in runs):.0%} | "
                f"{statistics.median(b.server_mb_per_s for b in runs):.0f} | {num(per_gb)} |"
            )
    return lines


def report(setup: Setup, tests: Sequence[str], rounds: int, seconds: int) -> dict[str, object]:
    routes = setup.routes
    reference = next((r for r in routes if r.name == REFERENCE), None)
    lines = [f"x11perf in containers, {rounds} round(s) of {seconds} s; median ms per op", ""]
    lines.append("| path | how | " + " | ".join(f"{TESTS[t]} ms | ratio" for t in tests) + " |")
    lines.append("|---|---|" + "---:|---:|" * len(tests))
    results: dict[str, object] = {}
    trip = round_trip_size(routes)
    for route in routes:
        cells, row = [], {}
        for test in tests:
            times = route.times(test)
            median = statistics.median(times) if times else None
            base = reference.times(test) if reference else []
            ratio = median / statistics.median(base) if median is not None and base else None
            cells += [num(median, 4), ratio_text(ratio)]
            row[test] = {
                "median_ms": median,
                "min_ms": min(times) if times else None,
                "samples": len(times),
                f"ratio_to_{REFERENCE}": ratio,
                **cpu_rates(route, test, trip),
            }
        lines.append(f"| {route.name} | {route.how} | " + " | ".join(cells) + " |")
        results[route.name] = {
            "display": route.display,
            "how": route.how,
            "transport": route.forwarder.transport if route.forwarder else None,
            "tests": row,
            "samples": [dataclasses.asdict(s) for s in route.samples],
            "concurrent": [dataclasses.asdict(b) for b in route.batches],
        }
    if reference is not None:
        lines += best_table(routes, reference, tests)
    lines += cpu_table(routes, tests, trip)
    lines += concurrent_table(routes)
    loads = [x.load for r in routes for x in r.samples if x.load is not None]
    if loads:
        setup.notes.append(
            f"{os.cpu_count()} CPUs; 1-minute load average after each run: median "
            f"{statistics.median(loads):.1f}, highest {max(loads):.1f}"
        )
    lines += ["", *(f"- {note}" for note in setup.notes)]
    print("\n".join(lines))
    return {
        "rounds": rounds,
        "seconds": seconds,
        "tests": list(tests),
        "display": setup.number,
        "image": setup.image,
        "getproperty_round_trip_bytes": dataclasses.asdict(trip),
        "notes": setup.notes,
        "paths": results,
        "markdown": "\n".join(lines),
    }


# -- main -----------------------------------------------------------------------------------


@contextlib.contextmanager
def stopping_on_signals() -> Iterator[None]:
    """
    Turn SIGINT, SIGTERM and SIGHUP into one KeyboardInterrupt, so that cleanup runs.

    SIGINT is caught even where it came in ignored (a background job); signals after the
    first are ignored, so that they cannot cut the cleanup short.
    """
    caught: list[int] = []

    def interrupt(signum: int, _frame: FrameType | None) -> None:
        if not caught:
            caught.append(signum)
            raise KeyboardInterrupt(signal.Signals(signum).name)

    names = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {signum: signal.signal(signum, interrupt) for signum in names}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


def split(text: str) -> list[str]:
    return [item.strip().lstrip("-") for item in text.split(",") if item.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    add = parser.add_argument
    add("--quick", action="store_true", help="1 round of 1 s per test")
    add("--rounds", type=int, help="rounds over all paths (default 3)")
    add("--time", type=int, help="seconds per x11perf run (default 2)")
    add("--socat-time", type=int, default=1, help="seconds per socat-briefcase run (default 1)")
    add("--tests", default=",".join(TESTS), help="comma-separated x11perf tests")
    add("--paths", default=",".join(PATHS), help="comma-separated paths")
    add("--concurrent", default="1,2,4", help="container counts for -getimage500 ('' for none)")
    add(
        "--concurrent-paths",
        default="direct-unix,relay-unix,relay-tcp",
        help="the paths to run the N-container test on",
    )
    add("--private-unix", action="store_true", help="relay-unix from the private API")
    add("--cpuset", help="pin Xvfb, forwarders and containers to these CPUs (e.g. 0)")
    add("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.time = args.time or (1 if args.quick else 2)
    args.tests = split(args.tests)
    args.paths = split(args.paths)
    args.concurrent = [int(n) for n in split(args.concurrent)]
    args.concurrent_paths = split(args.concurrent_paths)
    unknown = [p for p in args.paths if p not in PATHS] + [t for t in args.tests if t not in TESTS]
    if unknown:
        parser.error(f"unknown path or test: {', '.join(unknown)}")
    if REFERENCE not in args.paths:
        args.paths.insert(0, REFERENCE)
    return args


def bench(args: argparse.Namespace, workdir: Path) -> dict[str, object]:
    """Set up every path, run the rounds and the N-container test, tear down, report."""
    setup = Setup(workdir, build_image(), cpuset=args.cpuset)
    if args.cpuset is not None:
        setup.notes.append(f"Xvfb, forwarders and containers pinned to CPUs {args.cpuset}")
    try:
        start_xvfb(setup, secrets.token_hex(16))
        maker = RouteMaker(
            setup, docker0_address(), private_unix=args.private_unix, socat_time=args.socat_time
        )
        for name in args.paths:
            route = maker.make(name)
            setup.routes.append(route)
            setup.container(route, 0)
            print(f"{name:<17} DISPLAY={route.display:<30} {route.how}", file=sys.stderr)
        run_rounds(setup, args.tests, args.rounds, args.time)
        if args.concurrent and args.concurrent_paths:
            run_concurrent(setup, args.concurrent_paths, args.concurrent, args.rounds, args.time)
    finally:
        setup.close()
    return report(setup, args.tests, args.rounds, args.time)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tools: tuple[str, ...] = (
        "docker",
        "Xvfb",
        "xauth",
        "x11perf",
        "socat",
        "ldd",
        "busybox",
        "ip",
    )
    tools += ("taskset",) if args.cpuset else ()
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        print(f"bench_realpath: missing {', '.join(missing)}; install them first", file=sys.stderr)
        return 2
    try:
        with (
            stopping_on_signals(),
            tempfile.TemporaryDirectory(prefix="bench-realpath-") as tmp,
        ):
            workdir = Path(tmp)
            workdir.chmod(0o755)
            results = bench(args, workdir)
    except KeyboardInterrupt:
        print("bench_realpath: interrupted; what it started is gone", file=sys.stderr)
        return 130
    except BenchError as exc:
        print(f"bench_realpath: {exc}", file=sys.stderr)
        return 1
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
