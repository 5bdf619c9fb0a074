"""
Benchmark the relay on the real path: x11perf inside containers, not on the host's loopback.

Usage::

    nox -s bench -- realpath                    # 3 rounds of 2 s per test and path
    nox -s bench -- realpath --quick            # 1 round of 1 s, noisier
    nox -s bench -- realpath --paths direct-unix,relay-unix --tests getimage500
    nox -s bench -- realpath --cpuset 0 --json out.json   # everything on CPU 0

It starts an :class:`x11passthrough.Xvfb` :N (cookie auth, ``-listen tcp``) and keeps one
container per path running in the test infrastructure's Debian image (which has x11perf);
each x11perf run is a ``docker exec``, so container start-up is never measured. The paths:

- ``direct-unix``: the server's socket mounted, ``DISPLAY=:N``: the reference (1.00x);
- ``direct-tcp``: the server's own TCP listener, ``DISPLAY=<docker0 address>:N``;
- ``socat-briefcase``: ``socat TCP-LISTEN:P,reuseaddr,fork,bind=0.0.0.0
  UNIX-CONNECT:/tmp/.X11-unix/XN`` exactly as BeeWare Briefcase runs it (first round only,
  ``--socat-time`` seconds per run: Nagle's algorithm makes it slow);
- ``socat-nodelay``: the same with ``nodelay`` on the listening side;
- ``socat-unix``: ``socat -b 262144 UNIX-LISTEN:DIR/XP,fork UNIX-CONNECT:...``, DIR mounted
  as the container's ``/tmp/.X11-unix``: a copying relay in C on our transport;
- ``relay-unix`` and ``relay-tcp``: ``with X11Passthrough(transport=...)`` in a process of
  its own (``_relay_runner.py``), the container started with its docker-run arguments;
- ``relay-unix-async`` and ``relay-tcp-async``: the same with ``async with``.

Tests: ``x11perf -repeat 1 -time T`` with ``-prop`` (a GetProperty round trip),
``-getimage500`` (1 MB to the client) and ``-putimage500`` (1 MB to the server), every path in
turn, the order rotated each round. Reported per path: the median msec per operation and its
ratio to ``direct-unix``; the best run; the forwarder's CPU (and Xvfb's) per unit moved:
seconds per GB for the images, per 10,000 round trips for GetProperty (bytes come from the
relay's RelayStats, socat's ``wchar``, or, for the direct paths, what Xvfb wrote).

Concurrency (``--concurrent 1,2,4``): ``x11perf -getimage500`` in N containers at once
through one path, each ``-repeat 2 -reps R`` (no calibration; the second run counts): the
median time per container, the aggregate throughput and how much the timed runs overlapped.

Needs root (or docker access), Docker Engine with docker0, Xvfb, socat and debootstrap (for
the image, built once). Exits 2 if one is missing.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import statistics
import sys
import tempfile
import time

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import _harness as h
import _images


TESTS = {
    "prop": "GetProperty",
    "getimage500": "GetImage 500x500",
    "putimage500": "PutImage 500x500",
}
#: Bytes of image data one GetImage/PutImage 500x500 operation moves (4 bytes a pixel).
IMAGE_BYTES = 500 * 500 * 4
#: Bytes of one GetProperty request, and of a round trip (request and reply).
GETPROPERTY_REQUEST = 24
GETPROPERTY_ROUND_TRIP = 72
PATHS = (
    "direct-unix",
    "direct-tcp",
    "socat-briefcase",
    "socat-nodelay",
    "socat-unix",
    "relay-unix",
    "relay-tcp",
    "relay-unix-async",
    "relay-tcp-async",
)
REFERENCE = "direct-unix"
XAUTHORITY = "/tmp/.bench.xauth"


@dataclass
class Sample:
    """One x11perf run (or one batch of N at once) in one path's container(s)."""

    test: str
    round: int
    msec: float
    reps: int
    wall: float
    cpu: float | None
    server_cpu: float
    #: Bytes: what the forwarder moved (relay: up and down; socat: total), what Xvfb wrote.
    up: int | None
    total: int | None
    server_down: int
    containers: int = 1
    msec_each: list[float] = field(default_factory=list)
    overlap: float = 1.0
    load: float = 0.0
    #: Part of the N-containers test, not of the rounds.
    batch: bool = False


@dataclass
class Route:
    """One way into the display, with its containers."""

    name: str
    display: str
    run_args: list[str]
    forwarder: h.Forwarder | None = None
    first_round_only: bool = False
    seconds: int | None = None
    containers: list[str] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)

    def runs(self, test: str) -> list[Sample]:
        """The runs of `test` in the rounds."""
        return [s for s in self.samples if s.test == test and not s.batch]

    def times(self, test: str) -> list[float]:
        """Milliseconds per operation of the runs of `test` in the rounds."""
        return [s.msec for s in self.runs(test)]


class Setup:
    """The X server, the forwarders and the containers of one benchmark run."""

    def __init__(self, server: h.Server, workdir: Path, containers: h.Containers) -> None:
        self.server = server
        self.workdir = workdir
        self.containers = containers
        self.forwarders: list[h.Forwarder] = []
        self.used = {server.number}
        self.gateway = h.docker0_address()
        self.authority = workdir / "client.xauth"

    def extra_number(self) -> int:
        """Reserve one more display number (the cookie file is written once all are known)."""
        number = h.free_display(self.used, start=self.server.number + 1)
        self.used.add(number)
        return number

    def mounted(self, display: str, *volumes: str) -> list[str]:
        """The docker-run arguments of a path that uses the benchmark's authority file."""
        args = ["--env", f"DISPLAY={display}", "--env", f"XAUTHORITY={XAUTHORITY}"]
        args += ["--volume", f"{self.authority}:{XAUTHORITY}:ro"]
        for volume in volumes:
            args += ["--volume", volume]
        return args

    def make(self, name: str, socat_time: int) -> Route:
        """Start what path `name` needs; return it."""
        server, cpuset = self.server, self.containers.cpuset
        if name == "direct-unix":
            display = f":{server.number}"
            volume = f"{server.socket}:{server.socket}"
            return Route(name, display, self.mounted(display, volume))
        if name == "direct-tcp":
            display = f"{self.gateway}:{server.number}"
            return Route(name, display, self.mounted(display))
        if name == "socat-unix":
            number = self.extra_number()
            directory = self.workdir / f"{name}.X11-unix"
            directory.mkdir(mode=0o755)
            path = directory / f"X{number}"
            forwarder = h.start_socat(
                name,
                f"UNIX-LISTEN:{path},fork,mode=777",
                server.socket,
                path.exists,
                cpuset=cpuset,
            )
            self.forwarders.append(forwarder)
            display = f":{number}"
            args = self.mounted(display, f"{directory}:/tmp/.X11-unix")
            return Route(name, display, args, forwarder)
        if name.startswith("socat-"):
            number = self.extra_number()
            listen = h.briefcase_socat(6000 + number)
            nodelay = name == "socat-nodelay"
            listen += ",nodelay" if nodelay else ""
            ready = h.tcp_listening(6000 + number)
            forwarder = h.start_socat(name, listen, server.socket, ready, cpuset=cpuset)
            self.forwarders.append(forwarder)
            display = f"{self.gateway}:{number}"
            route = Route(name, display, self.mounted(display), forwarder)
            if not nodelay:
                route.first_round_only, route.seconds = True, socat_time
            return route
        transport = "unix" if name.startswith("relay-unix") else "tcp"
        config = {
            "display": f":{server.number}",
            "xauthority": str(server.xauthority),
            "options": {"transport": transport},
            "async": name.endswith("-async"),
        }
        forwarder = h.start_relay(name, config, cpuset=cpuset)
        self.forwarders.append(forwarder)
        return Route(name, h.display_of(forwarder.args), forwarder.args, forwarder)

    def close(self) -> None:
        """Remove the containers, stop the forwarders."""
        self.containers.close()
        for forwarder in reversed(self.forwarders):
            forwarder.stop()


# -- running --------------------------------------------------------------------------------


@dataclass
class Reading:
    """CPU times and byte counts read around a run."""

    cpu: float | None
    server_cpu: float
    server_down: int
    moved: tuple[int | None, int | None, int] | None


def read(route: Route, server: h.Server) -> Reading:
    """Read the forwarder's CPU and bytes, and Xvfb's (its ``wchar``: what it sent clients)."""
    forwarder = route.forwarder
    cpu = forwarder.cpu() if forwarder else None
    reading = Reading(cpu, server.cpu(), h.written_bytes(server.pid), None)
    if forwarder is not None:
        reading.moved = forwarder.moved()
    return reading


def x11perf(container: str, test: str, seconds: int, reps: int | None = None) -> list[str]:
    """The x11perf command: calibrated, for `seconds`; or ``-repeat 2 -reps`` `reps`."""
    timing = ["-time", str(seconds), "-repeat", "1"] if reps is None else ["-repeat", "2"]
    timing += [] if reps is None else ["-reps", str(reps)]
    return ["docker", "exec", container, "x11perf", *timing, f"-{test}"]


def timed(command: list[str]) -> tuple[str, float]:
    """Run x11perf `command`; return its output and the monotonic time it ended."""
    stdout, stderr, status = h.exec_in(command[2], command[3:])
    if status or not h.parse_x11perf(stdout):
        raise h.BenchError(f"{' '.join(command)} failed:\n{stdout}{stderr}")
    return stdout, time.monotonic()


def overlap(windows: Sequence[tuple[float, float]]) -> float:
    """How much the timed windows have in common, as a fraction of the median window."""
    common = min(end for _, end in windows) - max(start for start, _ in windows)
    return max(0.0, common) / statistics.median(end - start for start, end in windows)


def run(
    route: Route, server: h.Server, test: str, round_: int, commands: list[list[str]]
) -> Sample:
    """Run `commands` (one per container, at once), reading CPU and bytes around them."""
    before, started = read(route, server), time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(len(commands)) as pool:
        results = list(pool.map(timed, commands))
    wall, after = time.monotonic() - started, read(route, server)
    msec = [h.parse_x11perf(out)[-1] for out, _ in results]
    windows = [
        (end - h.x11perf_reps(out) * ms / 1000, end)
        for (out, end), ms in zip(results, msec, strict=True)
    ]
    up = total = None
    if before.moved is not None and after.moved is not None:
        (up0, _, total0), (up1, _, total1) = before.moved, after.moved
        up = None if up0 is None or up1 is None else up1 - up0
        total = total1 - total0
    return Sample(
        test=test,
        round=round_,
        msec=statistics.median(msec),
        reps=h.x11perf_reps(results[0][0]),
        wall=wall,
        cpu=None if after.cpu is None or before.cpu is None else after.cpu - before.cpu,
        server_cpu=after.server_cpu - before.server_cpu,
        up=up,
        total=total,
        server_down=after.server_down - before.server_down,
        containers=len(commands),
        msec_each=msec,
        overlap=overlap(windows) if len(windows) > 1 else 1.0,
        load=os.getloadavg()[0],
    )


def run_rounds(routes: list[Route], server: h.Server, args: argparse.Namespace) -> None:
    """Every test through every path, round after round, the order rotated."""
    for round_ in range(args.rounds):
        for test in args.tests:
            for route in h.rotated(routes, round_):
                if route.first_round_only and round_ > 0:
                    continue
                command = x11perf(route.containers[0], test, route.seconds or args.time)
                sample = run(route, server, test, round_, [command])
                route.samples.append(sample)
                print(
                    f"round {round_ + 1}/{args.rounds} -{test:<12} {route.name:<17} "
                    f"{sample.msec:9.4f} ms  ({sample.wall:.1f} s)",
                    file=sys.stderr,
                )


def run_concurrent(
    routes: list[Route], server: h.Server, setup: Setup, args: argparse.Namespace
) -> None:
    """x11perf -getimage500 in N containers of a path at once, for each N of --concurrent."""
    chosen = [r for r in routes if r.name in args.concurrent_paths]
    fixed: dict[str, int] = {}
    for route in chosen:
        while len(route.containers) < max(args.concurrent):
            route.containers.append(setup.containers.start(route.name, route.run_args))
        reps = [s.reps for s in route.samples if s.test == "getimage500" and s.reps]
        if not reps:
            command = x11perf(route.containers[0], "getimage500", args.time)
            reps = [run(route, server, "getimage500", 0, [command]).reps]
        probe, _ = timed(x11perf(route.containers[0], "getimage500", args.time, 1))
        objects = max(1, h.x11perf_reps(probe))  # operations per rep
        fixed[route.name] = max(1, int(statistics.median(reps)) // objects // 2)
    for round_ in range(args.rounds):
        for count in args.concurrent:
            for route in h.rotated(chosen, round_):
                commands = [
                    x11perf(c, "getimage500", args.time, fixed[route.name])
                    for c in route.containers[:count]
                ]
                sample = run(route, server, "getimage500", round_, commands)
                sample.batch = True
                route.samples.append(sample)
                print(
                    f"concurrent round {round_ + 1}/{args.rounds} x{count} {route.name:<17} "
                    f"{sample.msec:9.4f} ms per container, overlap {sample.overlap:.0%}",
                    file=sys.stderr,
                )


# -- reporting ------------------------------------------------------------------------------


def units_moved(samples: Sequence[Sample], test: str) -> float | None:
    """
    GB moved (images) or 10k round trips (GetProperty) in `samples`, or None.

    Counted by the forwarder where there is one (the relay's bytes up / 24 for round trips;
    socat's total / 72), else from what Xvfb wrote (no count for PutImage, which has none).
    """
    if not samples:
        return None
    if all(s.up is not None for s in samples):
        up, total = sum(s.up or 0 for s in samples), sum(s.total or 0 for s in samples)
        return up / GETPROPERTY_REQUEST / 1e4 if test == "prop" else total / 1e9
    if all(s.total is not None for s in samples):
        total = sum(s.total or 0 for s in samples)
        return total / GETPROPERTY_ROUND_TRIP / 1e4 if test == "prop" else total / 1e9
    down = sum(s.server_down for s in samples)
    if test == "prop":
        return down / (GETPROPERTY_ROUND_TRIP - GETPROPERTY_REQUEST) / 1e4
    return down / 1e9 if test == "getimage500" else None


def cpu_rates(route: Route, test: str) -> tuple[float | None, float | None]:
    """Forwarder and Xvfb CPU seconds per unit moved (see :func:`units_moved`)."""
    samples = route.runs(test)
    units = units_moved(samples, test)
    if not units:
        return None, None
    cpu = [s.cpu for s in samples if s.cpu is not None]
    server = sum(s.server_cpu for s in samples)
    return (sum(cpu) / units if cpu else None), server / units


def report(routes: list[Route], tests: list[str], notes: list[str]) -> list[str]:
    """The tables, as Markdown lines."""
    reference = next(r for r in routes if r.name == REFERENCE)
    header = ["path"]
    for test in tests:
        header += [f"{TESTS[test]} ms", "ratio"]
    rows, best, cpu = [], [], []
    for route in routes:
        cells, best_cells, cpu_cells = [route.name], [route.name], [route.name]
        for test in tests:
            times, base = route.times(test), reference.times(test)
            median, base_median = h.median(times), h.median(base)
            ratio = median / base_median if median is not None and base_median else None
            cells += [h.num(median, 4), h.ratio_text(ratio)]
            low = min(times) if times else None
            ratio = low / min(base) if low is not None and base else None
            best_cells += [h.num(low, 4), h.ratio_text(ratio)]
            forwarder, server = cpu_rates(route, test)
            cpu_cells.append(
                f"{h.num(forwarder) if route.forwarder else '-'} (Xvfb {h.num(server)})"
            )
        rows.append(cells)
        best.append(best_cells)
        cpu.append(cpu_cells)
    lines = h.markdown(header, rows)
    lines += ["", f"best run of each path (ratio to the best {REFERENCE} run)", ""]
    lines += h.markdown(header, best)
    units = {"prop": "s/10k round trips", "getimage500": "s/GB", "putimage500": "s/GB"}
    lines += ["", "CPU of the forwarding process (and of Xvfb) per unit moved", ""]
    lines += h.markdown(["path", *(f"{TESTS[t]} {units[t]}" for t in tests)], cpu)
    lines += concurrent_table(routes)
    notes.append(h.load_note([s.load for r in routes for s in r.samples]))
    return [*lines, "", *(f"- {note}" for note in notes)]


def concurrent_table(routes: list[Route]) -> list[str]:
    """The N-containers table (medians over rounds), or nothing."""
    rows = []
    for route in routes:
        batches = [s for s in route.samples if s.batch]
        for count in sorted({b.containers for b in batches}):
            runs = [b for b in batches if b.containers == count]
            each = [ms for b in runs for ms in b.msec_each]
            aggregate = statistics.median(
                sum(IMAGE_BYTES / (ms / 1000) for ms in b.msec_each) / 1e6 for b in runs
            )
            cpu = sum(b.cpu for b in runs if b.cpu is not None)
            moved = sum(b.total for b in runs if b.total)
            rows.append(
                [
                    route.name,
                    str(count),
                    f"{statistics.median(each):.4f}",
                    f"{aggregate:.0f}",
                    f"{statistics.median(b.overlap for b in runs):.0%}",
                    h.num(cpu / (moved / 1e9) if moved and route.forwarder else None),
                ]
            )
    if not rows:
        return []
    header = ["path", "N", "ms per op per container", "aggregate MB/s", "overlap", "CPU s/GB"]
    return ["", "x11perf -getimage500 in N containers at once", "", *h.markdown(header, rows)]


# -- main -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line (see the module's docstring)."""
    parser = h.parser_for(__doc__, containers=True)
    add = parser.add_argument
    add("--time", type=int, help="seconds per x11perf run (default 2; --quick: 1)")
    add("--socat-time", type=int, default=1, help="seconds per socat-briefcase run (default 1)")
    add("--tests", default=",".join(TESTS), help="comma-separated x11perf tests")
    add("--paths", default=",".join(PATHS), help="comma-separated paths")
    add("--concurrent", default="1,2,4", help="container counts for -getimage500 ('' for none)")
    add("--concurrent-paths", default="direct-unix,relay-unix,relay-tcp", help="paths for it")
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.time = args.time or (1 if args.quick else 2)
    args.tests = h.chosen(parser, args.tests, TESTS, "test")
    args.paths = h.chosen(parser, args.paths, PATHS, "path", first=REFERENCE)
    args.concurrent = [int(n) for n in h.split(args.concurrent)]
    concurrent = h.chosen(parser, args.concurrent_paths, PATHS, "path")
    args.concurrent_paths = [name for name in concurrent if name in args.paths]
    return args


def bench(args: argparse.Namespace) -> None:
    """Set up every path, run the rounds and the N-container test, tear down, report."""
    notes = [] if args.cpuset is None else [f"Xvfb, forwarders, containers on CPUs {args.cpuset}"]
    containers = h.Containers(_images.test_image(), cpuset=args.cpuset)
    with (
        tempfile.TemporaryDirectory(prefix="bench-realpath-") as tmp,
        h.x_server(tcp=True, cpuset=args.cpuset) as server,
    ):
        Path(tmp).chmod(0o755)
        setup = Setup(server, Path(tmp), containers)
        try:
            routes = [setup.make(name, args.socat_time) for name in args.paths]
            h.wild_authority(setup.authority, sorted(setup.used), server.cookie)
            for route in routes:
                route.containers.append(containers.start(route.name, route.run_args))
                print(f"{route.name:<17} DISPLAY={route.display}", file=sys.stderr)
            run_rounds(routes, server, args)
            if args.concurrent and args.concurrent_paths:
                run_concurrent(routes, server, setup, args)
        finally:
            setup.close()
    title = f"x11perf in containers, {args.rounds} round(s) of {args.time} s; median ms per op"
    lines = [title, "", *report(routes, args.tests, notes)]
    h.publish(
        lines, {"paths": {r.name: [asdict(s) for s in r.samples] for r in routes}}, args.json
    )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (exit statuses: :func:`_harness.run_main`)."""
    args = parse_args(argv)
    return h.run_main("bench_realpath", h.CONTAINER_TOOLS, lambda: bench(args))


if __name__ == "__main__":
    sys.exit(main())
