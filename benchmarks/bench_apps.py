"""
Benchmark real applications in a container through each way of reaching the X display.

Usage::

    nox -s bench -- apps                          # 3 rounds of 5 s per app and path
    nox -s bench -- apps --quick                  # 1 round of 2 s
    nox -s bench -- apps --apps qt,mpv --paths bare,relay --json out.json

The applications (``benchmarks/clients/``, mounted into the container as ``/bench``), each
counting what it draws after a second of warm-up:

- ``glxgears``: Mesa's llvmpipe, no vsync (frames a second, as glxgears prints them);
- ``qt``: a PyQt5 widget repainting itself from its ``paintEvent``;
- ``gtk``: a GTK 3 drawing area painted with cairo, queueing its next draw;
- ``tk``: a tkinter canvas of 200 items moved every frame;
- ``mpv``: ``mpv --vo=x11 --untimed`` on a generated 640x480 clip;
- ``xterm``: xterm printing a large file (MB a second);
- ``putimage``, ``getimage`` and ``shmput``: ``x11perf -putimage500``, ``-getimage500`` and
  ``-shmput500`` (operations a second; ``shmput`` needs MIT-SHM and shows ``-`` where the
  client does not get it).

The paths (:data:`PATHS`; one line each), against the same Xvfb:

- ``bare``: the X server's socket and cookie mounted into the container (the reference);
- ``bare-ipc-host``: the same with ``--ipc host``, so that System V shared memory works;
- ``relay``: ``with X11Passthrough()``, the defaults (UNIX socket, session cookie);
- ``relay-shm``: ``X11Passthrough(shm=True, display_range=range(1, 10))`` (mpv uses MIT-SHM
  only on a display numbered below 10), skipped with a note where the installed
  X11Passthrough has no ``shm`` parameter;
- ``relay-tcp``: ``X11Passthrough(transport="tcp")``;
- ``socat``: ``socat TCP-LISTEN:P,reuseaddr,fork,bind=0.0.0.0 UNIX-CONNECT:...`` exactly as
  BeeWare Briefcase runs it;
- ``floor``: ``_floor_relay.py``, two threads per connection that only ``recv_into`` and
  ``sendall``, its UNIX socket mounted like the relay's: no filter, no checks, no limits, so
  about the best any relay in one more process can do here (a reference, not a product).

Every round runs each application through every path in turn, the order of the paths rotated
each round. Reported per application and path: the median rate, its spread over the rounds,
the ratio to ``bare`` (the median of the per-round ratios, so that a busy round slows both
sides of a ratio alike), the CPU of the forwarding process and of Xvfb (% of one CPU over the
whole ``docker exec``), and whether the client really used shared memory: how many MIT-SHM
segments Xvfb attached while it ran (``_shm.py``).

Needs Docker Engine with its docker0 bridge, Xvfb, x11perf, socat, debootstrap (the image is
built once, cached by its package list) and root. Exits 2 if a tool is missing.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import statistics
import sys
import tempfile
import time

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import MappingProxyType

import _harness as h
import _images
import _shm

import x11passthrough

from x11passthrough import X11Passthrough


CLIENTS = h.BENCHMARKS / "clients"
#: x11perf's ``-time``: it calibrates first, so a run takes several times as long.
X11PERF_SECONDS = 2
XAUTHORITY = "/tmp/.bench.xauth"


@dataclass(frozen=True)
class App:
    """An application: its command in the container, and what its rate counts."""

    title: str
    argv: tuple[str, ...]
    unit: str
    #: An x11perf test: the rate is x11perf's operations a second.
    x11perf: bool = False


APPS: Mapping[str, App] = MappingProxyType(
    {
        "glxgears": App("glxgears (llvmpipe)", ("python3", "/bench/glxgears_fps.py"), "fps"),
        "qt": App("Qt 5 repaint loop", ("python3", "/bench/qt_repaint.py"), "fps"),
        "gtk": App("GTK 3 / cairo loop", ("python3", "/bench/gtk_cairo.py"), "fps"),
        "tk": App("Tk canvas loop", ("python3", "/bench/tk_canvas.py"), "fps"),
        "mpv": App("mpv --vo=x11", ("python3", "/bench/mpv_clip.py"), "fps"),
        "xterm": App("xterm printing a file", ("python3", "/bench/xterm_flood.py"), "MB/s"),
        "putimage": App("x11perf PutImage 500x500", ("-putimage500",), "ops/s", x11perf=True),
        "getimage": App("x11perf GetImage 500x500", ("-getimage500",), "ops/s", x11perf=True),
        "shmput": App("x11perf ShmPutImage 500x500", ("-shmput500",), "ops/s", x11perf=True),
    }
)


@dataclass(frozen=True)
class PathSpec:
    """A way into the display: the X server's socket, a relay, or socat."""

    name: str
    what: str
    kind: str  # "bare", "relay", "socat" or "floor"
    #: More docker-run arguments for the container.
    run_args: tuple[str, ...] = ()
    #: Keyword arguments of X11Passthrough (relay paths).
    options: Mapping[str, object] = field(default_factory=dict)


PATHS: tuple[PathSpec, ...] = (
    PathSpec("bare", "the X server's socket and cookie mounted", "bare"),
    PathSpec("bare-ipc-host", "the same, `--ipc host`", "bare", run_args=("--ipc", "host")),
    PathSpec("relay", "`with X11Passthrough()`", "relay"),
    PathSpec(
        "relay-shm",
        "`X11Passthrough(shm=True, display_range=range(1, 10))`",
        "relay",
        options={"shm": True, "display_range": list(range(1, 10))},
    ),
    PathSpec(
        "relay-tcp", '`X11Passthrough(transport="tcp")`', "relay", options={"transport": "tcp"}
    ),
    PathSpec("socat", "socat TCP-LISTEN, as Briefcase runs it", "socat"),
    PathSpec("floor", "the least a relay does: `_floor_relay.py`, mounted", "floor"),
)
REFERENCE = "bare"
#: The reference of an application that gets nothing done on ``bare`` (mpv stalls there, and
#: ShmPutImage cannot attach its segment): the same socket with ``--ipc host``.
FALLBACK_REFERENCE = "bare-ipc-host"


@dataclass
class Sample:
    """One run of one application through one path."""

    app: str
    path: str
    round: int
    rate: float | None
    wall: float
    forwarder_cpu: float | None
    server_cpu: float
    shm_segments: int
    shm_bytes: int
    load: float
    #: Why the run gave no rate, when it failed.
    error: str | None = None


@dataclass
class Route:
    """A path set up: its container and its forwarder."""

    spec: PathSpec
    container: str
    forwarder: h.Forwarder | None
    display: str


def unsupported(spec: PathSpec) -> list[str]:
    """The options of `spec` the installed X11Passthrough does not take."""
    parameters = inspect.signature(X11Passthrough).parameters
    return [name for name in spec.options if name not in parameters]


@contextlib.contextmanager
def routes(
    specs: Sequence[PathSpec], workdir: Path, cpuset: str | None, notes: list[str]
) -> Iterator[tuple[h.Server, list[Route]]]:
    """Start the X server, the forwarders and one container per path; undo it all after."""
    containers = h.Containers(_images.apps_image(), cpuset=cpuset)
    forwarders: list[h.Forwarder] = []
    try:
        with h.x_server(cpuset=cpuset) as server:
            made = list(
                _make_routes(
                    specs,
                    server=server,
                    workdir=workdir,
                    containers=containers,
                    forwarders=forwarders,
                    notes=notes,
                )
            )
            yield server, made
    finally:
        containers.close()
        for forwarder in reversed(forwarders):
            forwarder.stop()


def _make_routes(
    specs: Sequence[PathSpec],
    *,
    server: h.Server,
    workdir: Path,
    containers: h.Containers,
    forwarders: list[h.Forwarder],
    notes: list[str],
) -> Iterator[Route]:
    numbers = [server.number]
    bench = ["--volume", f"{CLIENTS}:/bench:ro", "--env", "XDG_RUNTIME_DIR=/tmp"]
    authority = workdir / "client.xauth"
    socat_number = h.free_display({server.number}, start=server.number + 1)
    floor_number = h.free_display({server.number, socat_number}, start=socat_number + 1)
    numbers += [socat_number, floor_number]
    h.wild_authority(authority, numbers, server.cookie)
    mounted = ["--env", f"XAUTHORITY={XAUTHORITY}", "--volume", f"{authority}:{XAUTHORITY}:ro"]
    for spec in specs:
        forwarder: h.Forwarder | None = None
        if spec.kind == "bare":
            display = f":{server.number}"
            args = ["--env", f"DISPLAY={display}", *mounted]
            args += ["--volume", f"{server.socket}:{server.socket}"]
        elif spec.kind == "socat":
            port = 6000 + socat_number
            forwarder = h.start_socat(
                spec.name,
                h.briefcase_socat(port),
                server.socket,
                h.tcp_listening(port),
                cpuset=containers.cpuset,
            )
            forwarders.append(forwarder)
            display = f"{h.docker0_address()}:{socat_number}"
            args = ["--env", f"DISPLAY={display}", *mounted]
        elif spec.kind == "floor":
            listen = workdir / f"X{floor_number}"
            forwarder = h.start_floor(
                spec.name, listen, str(server.socket), cpuset=containers.cpuset
            )
            forwarders.append(forwarder)
            display = f":{floor_number}"
            args = ["--env", f"DISPLAY={display}", *mounted]
            args += ["--volume", f"{listen}:/tmp/.X11-unix/X{floor_number}"]
        else:
            missing = unsupported(spec)
            if missing:
                notes.append(
                    f"{spec.name} skipped: X11Passthrough {x11passthrough.__version__} takes "
                    f"no {', '.join(f'{name}=' for name in missing)}"
                )
                continue
            config = {
                "display": f":{server.number}",
                "xauthority": str(server.xauthority),
                "options": dict(spec.options),
            }
            forwarder = h.start_relay(spec.name, config, cpuset=containers.cpuset)
            forwarders.append(forwarder)
            args, display = forwarder.args, h.display_of(forwarder.args)
        container = containers.start(spec.name, [*args, *spec.run_args, *bench])
        print(f"{spec.name:<14} DISPLAY={display:<24} {spec.what}", file=sys.stderr)
        yield Route(spec, container, forwarder, display)


def rate_of(app: App, stdout: str, stderr: str, status: int) -> float | None:
    """
    The rate a run printed; None where the client could not run this test.

    x11perf skips, with no result line, a test the server lacks (ShmPutImage where the client
    sees no MIT-SHM).

    Raises:
        BenchError: The client failed (the message holds its output).
    """
    if app.x11perf:
        times = h.parse_x11perf(stdout)
        if status == 0:
            return 1000 / times[-1] if times else None
    else:
        lines = [line for line in stdout.splitlines() if line.startswith("{")]
        if status == 0 and lines:
            result = json.loads(lines[-1])
            if result.get("error"):
                raise h.BenchError(str(result["error"]))
            return float(result["rate"])
    raise h.BenchError(f"{app.title} exited {status}:\n{stdout}{stderr}".strip())


def run_one(
    server: h.Server, route: Route, name: str, round_: int, *, seconds: float, warmup: float
) -> Sample:
    """Run application `name` once through `route`, measuring around it."""
    app = APPS[name]
    if app.x11perf:
        argv = ["x11perf", "-repeat", "1", "-time", str(X11PERF_SECONDS), *app.argv]
    else:
        argv = [*app.argv, "--seconds", str(seconds), "--warmup", str(warmup)]
    forwarder = route.forwarder
    before = forwarder.cpu() if forwarder else 0.0
    server_before, started = server.cpu(), time.monotonic()
    with _shm.ShmWatch(server.pid) as watch:
        stdout, stderr, status = h.exec_in(route.container, argv)
    wall = time.monotonic() - started
    server_cpu = (server.cpu() - server_before) / wall
    forwarder_cpu = (forwarder.cpu() - before) / wall if forwarder else None
    error = None
    try:
        rate = rate_of(app, stdout, stderr, status)
    except h.BenchError as exc:  # one failed run is a result too: the others go on
        rate, error = None, str(exc)
    return Sample(
        name,
        route.spec.name,
        round_,
        rate,
        wall,
        forwarder_cpu,
        server_cpu,
        watch.segments,
        watch.peak_bytes,
        os.getloadavg()[0],
        error,
    )


def run_rounds(
    server: h.Server,
    all_routes: Sequence[Route],
    apps: Sequence[str],
    *,
    rounds: int,
    seconds: float,
    warmup: float,
) -> list[Sample]:
    """Every app through every route, round after round, the routes rotated each round."""
    samples: list[Sample] = []
    for round_ in range(rounds):
        for name in apps:
            for route in h.rotated(all_routes, round_):
                sample = run_one(server, route, name, round_, seconds=seconds, warmup=warmup)
                samples.append(sample)
                print(
                    f"round {round_ + 1}/{rounds} {name:<9} {route.spec.name:<14} "
                    f"{h.num(sample.rate, 1):>8} {APPS[name].unit:<5} "
                    f"shm {sample.shm_segments}  ({sample.wall:.1f} s)",
                    file=sys.stderr,
                )
    return samples


def reference_of(samples: Sequence[Sample], app: str) -> str:
    """The path `app` is compared with: ``bare``, or its fallback where bare gave no rate."""
    if any(s.rate for s in samples if (s.app, s.path) == (app, REFERENCE)):
        return REFERENCE
    return FALLBACK_REFERENCE


def per_round_ratio(samples: Sequence[Sample], app: str, path: str) -> float | None:
    """The median over rounds of (rate through `path` / rate through the reference)."""
    reference = reference_of(samples, app)
    ratios = []
    for round_ in sorted({s.round for s in samples}):
        here = [s.rate for s in samples if (s.app, s.path, s.round) == (app, path, round_)]
        base = [s.rate for s in samples if (s.app, s.path, s.round) == (app, reference, round_)]
        if here and base and here[0] is not None and base[0]:
            ratios.append(here[0] / base[0])
    return h.median(ratios)


def shm_text(samples: Sequence[Sample]) -> str:
    """Whether the runs had Xvfb attach shared memory: ``yes (N)``, ``no``, or ``some``."""
    used = [s.shm_segments for s in samples]
    if all(used):
        return f"yes ({statistics.median(used):.0f})"
    return "no" if not any(used) else f"{sum(1 for u in used if u)}/{len(used)} runs"


def report(
    samples: Sequence[Sample], specs: Sequence[str], apps: Sequence[str], notes: list[str]
) -> list[str]:
    """The summary table (ratios) and the detail table, as Markdown lines."""
    lines = ["Ratio to bare (median of per-round ratios; higher is faster)", ""]
    rows = []
    for app in apps:
        reference = reference_of(samples, app)
        rates = [s.rate for s in samples if (s.app, s.path) == (app, reference) and s.rate]
        base = f"{h.num(h.median(rates), 1)} {APPS[app].unit}"
        if reference != REFERENCE:
            base += f" ({reference}; none on {REFERENCE})"
        cells = [APPS[app].title, base]
        cells += [h.ratio_text(per_round_ratio(samples, app, p)) for p in specs if p != REFERENCE]
        rows.append(cells)
    header = ["application", "bare", *(p for p in specs if p != REFERENCE)]
    lines += h.markdown(header, rows)
    lines += ["", "Per application and path", ""]
    rows = []
    for app in apps:
        for path in specs:
            runs = [s for s in samples if (s.app, s.path) == (app, path)]
            rates = [s.rate for s in runs if s.rate is not None]
            forwarder = [s.forwarder_cpu for s in runs if s.forwarder_cpu is not None]
            spread = h.spread(rates)
            rows.append(
                [
                    app,
                    path,
                    f"{h.num(h.median(rates), 1)} {APPS[app].unit}" if rates else "-",
                    "-" if spread is None else f"{spread:.0%}",
                    h.ratio_text(per_round_ratio(samples, app, path)),
                    "-" if not forwarder else f"{statistics.median(forwarder):.0%}",
                    f"{statistics.median(s.server_cpu for s in runs):.0%}" if runs else "-",
                    shm_text(runs) if runs else "-",
                ]
            )
    header = ["app", "path", "median", "spread", "ratio", "forwarder CPU", "Xvfb CPU", "MIT-SHM"]
    lines += h.markdown(header, rows, left=2)
    for sample in samples:
        if sample.error is not None:
            reason = sample.error.splitlines()[-1][:160]
            notes.append(f"{sample.app} through {sample.path}, round {sample.round + 1}: {reason}")
    notes.append(h.load_note([s.load for s in samples]))
    lines += ["", *(f"- {note}" for note in notes)]
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line (see the module's docstring)."""
    parser = h.parser_for(__doc__, containers=True)
    add = parser.add_argument
    add("--seconds", type=float, help="counting seconds per run (default 5; --quick: 2)")
    add("--warmup", type=float, default=1.0, help="uncounted seconds first (default 1)")
    add("--apps", default=",".join(APPS), help="comma-separated applications")
    add("--paths", default=",".join(p.name for p in PATHS), help="comma-separated paths")
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.seconds = args.seconds or (2.0 if args.quick else 5.0)
    args.apps = h.chosen(parser, args.apps, APPS, "application")
    names = [p.name for p in PATHS]
    args.paths = h.chosen(parser, args.paths, names, "path", first=REFERENCE)
    return args


def bench(args: argparse.Namespace) -> None:
    """Set up the paths, run the rounds, print the tables (and write the JSON)."""
    notes: list[str] = []
    specs = [spec for spec in PATHS if spec.name in args.paths]
    with tempfile.TemporaryDirectory(prefix="bench-apps-") as tmp:
        workdir = Path(tmp)
        workdir.chmod(0o755)
        with routes(specs, workdir, args.cpuset, notes) as (server, all_routes):
            samples = run_rounds(
                server,
                all_routes,
                args.apps,
                rounds=args.rounds,
                seconds=args.seconds,
                warmup=args.warmup,
            )
        names = [route.spec.name for route in all_routes]
    title = f"{args.rounds} interleaved round(s) of {args.seconds:g} s per application and path"
    lines = [title, "", *report(samples, names, args.apps, notes)]
    h.publish(lines, {"samples": [asdict(s) for s in samples]}, args.json)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (exit statuses: :func:`_harness.run_main`)."""
    args = parse_args(argv)
    return h.run_main("bench_apps", h.CONTAINER_TOOLS, lambda: bench(args))


if __name__ == "__main__":
    sys.exit(main())
