"""
Benchmark the relay against direct connections and socat, with x11perf on this host.

Usage::

    nox -s bench -- relay                      # 3 rounds of 2 s (about 5 min)
    nox -s bench -- relay --quick              # 2 rounds of 1 s, noisier
    nox -s bench -- relay --tests prop --rounds 5 --json out.json

It starts an :class:`x11passthrough.Xvfb` (cookie auth, ``-listen tcp``) on display N and
makes every path an X display of its own on this host's loopback:

- ``direct-unix``: ``DISPLAY=:N``, the server's UNIX socket (the physical limit);
- ``direct-tcp``: ``DISPLAY=localhost:N``, the server's own TCP listener (the reference);
- ``socat``: ``socat TCP-LISTEN:P,reuseaddr,fork,bind=0.0.0.0 UNIX-CONNECT:...``, exactly as
  Briefcase runs it (first round only: Nagle's algorithm makes each of its runs take many
  seconds);
- ``socat-nodelay``: the same with ``nodelay`` on the listening side;
- ``relay``: ``X11Passthrough(transport="tcp", bind="127.0.0.1", auth="forward")`` in a
  process of its own (``_relay_runner.py``), the client sending the real cookie;
- ``relay-substitute``: the same with the default ``auth="substitute"``: the client sends
  the session cookie and the relay swaps in the real one.

Each x11perf test (``-prop``: a GetProperty round trip, ``-getimage500``: 1 MB to the client,
``-putimage500``: 1 MB to the server) runs through every path in turn, round after round. The
table shows the median time per operation and its ratio to ``direct-tcp``, and the CPU the
forwarding process used per second of x11perf run time; a second table each path's best run.

Needs Xvfb, x11perf and socat. Exits 2 if one is missing. The container paths are in
``bench_realpath.py``; real applications in ``bench_apps.py``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import _harness as h


TESTS = {
    "prop": "GetProperty",
    "getimage500": "GetImage 500x500",
    "putimage500": "PutImage 500x500",
}
REFERENCE = "direct-tcp"
X11PERF = ("x11perf", "-display")


@dataclass
class Route:
    """One way to reach the X server from this host."""

    name: str
    display: str
    xauthority: Path | None = None
    forwarder: h.Forwarder | None = None
    first_round_only: bool = False
    times: dict[str, list[float]] = field(default_factory=dict)
    cpu: float = 0.0
    wall: float = 0.0


def relay_xauthority(args: Sequence[str]) -> Path:
    """The host file a relay's docker-run arguments mount as the container's authority."""
    target = next(a.removeprefix("XAUTHORITY=") for a in args if a.startswith("XAUTHORITY="))
    for arg in args:
        source, _, rest = arg.partition(":")
        if rest.split(":")[0] == target:
            return Path(source)
    raise h.BenchError(f"no authority file among the relay's arguments {list(args)}")


def make_routes(server: h.Server, workdir: Path, forwarders: list[h.Forwarder]) -> list[Route]:
    """Start the forwarders; return every path with its display and authority file."""
    used = {server.number}
    routes = [Route("direct-unix", f":{server.number}")]
    routes.append(Route(REFERENCE, f"localhost:{server.number}"))
    for name, nodelay in (("socat", False), ("socat-nodelay", True)):
        number = h.free_display(used, start=server.number + 1)
        used.add(number)
        listen = h.briefcase_socat(6000 + number) + (",nodelay" if nodelay else "")
        ready = h.tcp_listening(6000 + number)
        forwarders.append(h.start_socat(name, listen, server.socket, ready, cpuset=None))
        route = Route(name, f"localhost:{number}", forwarder=forwarders[-1])
        route.first_round_only = not nodelay
        routes.append(route)
    for name, auth in (("relay", "forward"), ("relay-substitute", "substitute")):
        options = {"transport": "tcp", "bind": "127.0.0.1", "auth": auth}
        config = {"display": f":{server.number}", "xauthority": str(server.xauthority)}
        forwarder = h.start_relay(name, {**config, "options": options}, cpuset=None)
        forwarders.append(forwarder)
        number = int(h.display_of(forwarder.args).rsplit(":", 1)[1].split(".")[0])
        used.add(number)
        session = relay_xauthority(forwarder.args) if auth == "substitute" else None
        routes.append(Route(name, f"127.0.0.1:{number}", session, forwarder))
    shared = h.wild_authority(workdir / "client.xauth", sorted(used), server.cookie)
    for route in routes:
        route.xauthority = route.xauthority or shared
    return routes


def run(routes: list[Route], tests: list[str], rounds: int, seconds: int) -> None:
    """Every test through every path, round after round."""
    for round_ in range(rounds):
        for test in tests:
            for route in h.rotated(routes, round_):
                if route.first_round_only and round_ > 0:
                    continue
                env = {"XAUTHORITY": str(route.xauthority), "PATH": "/usr/bin:/bin"}
                before = route.forwarder.cpu() if route.forwarder else 0.0
                started = time.monotonic()
                completed = subprocess.run(
                    [*X11PERF, route.display, "-repeat", "1", "-time", str(seconds), f"-{test}"],
                    env=env,
                    capture_output=True,
                    text=True,
                    check=False,
                    timeout=600,
                )
                route.wall += time.monotonic() - started
                route.cpu += route.forwarder.cpu() - before if route.forwarder else 0.0
                times = h.parse_x11perf(completed.stdout)
                if completed.returncode or not times:
                    raise h.BenchError(
                        f"x11perf -{test} on {route.name} ({route.display}) failed:\n"
                        f"{completed.stdout}{completed.stderr}"
                    )
                route.times.setdefault(test, []).extend(times)
            print(f"round {round_ + 1}/{rounds} -{test} done", file=sys.stderr)


def report(routes: list[Route], tests: list[str]) -> tuple[list[str], list[dict[str, object]]]:
    """The median and best-run tables, and the results behind them."""
    reference = next(r for r in routes if r.name == REFERENCE)
    rows, best_rows, results = [], [], []
    for route in routes:
        cells, best_cells = [route.name], [route.name]
        result: dict[str, object] = {"path": route.name, "display": route.display}
        for test in tests:
            median, base = h.median(route.times[test]), h.median(reference.times[test])
            ratio = median / base if median is not None and base else None
            cells.append(f"{h.num(median, 4)} ms {h.ratio_text(ratio)}")
            best, best_base = min(route.times[test]), min(reference.times[test])
            best_cells.append(f"{best:.4f} ms {h.ratio_text(best / best_base)}")
            result[test] = {"median_ms": median, "min_ms": best, "ratio": ratio}
        cpu = route.cpu / route.wall if route.forwarder and route.wall else None
        result["cpu_per_second"] = cpu
        rows.append([*cells, "-" if cpu is None else f"{cpu:.0%}"])
        best_rows.append(best_cells)
        results.append(result)
    names = [TESTS[t] for t in tests]
    lines = h.markdown(["path", *names, "CPU"], rows)
    lines += ["", f"best run of each path (ratio to the best {REFERENCE} run):", ""]
    lines += h.markdown(["path", *names], best_rows)
    return lines, results


def bench(args: argparse.Namespace) -> None:
    """Set up, run, tear down, report."""
    forwarders: list[h.Forwarder] = []
    with tempfile.TemporaryDirectory(prefix="bench-relay-") as tmp, h.x_server(tcp=True) as server:
        try:
            routes = make_routes(server, Path(tmp), forwarders)
            print(
                f"x11perf, {args.rounds} rounds of {args.time} s per test and path",
                file=sys.stderr,
            )
            run(routes, args.tests, args.rounds, args.time)
        finally:
            for forwarder in reversed(forwarders):
                forwarder.stop()
    lines, rows = report(routes, args.tests)
    data = {"tests": args.tests, "rows": rows, "rounds": args.rounds, "seconds": args.time}
    h.publish(lines, data, args.json)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; exit statuses as :func:`_harness.run_main` gives them."""
    parser = h.parser_for(__doc__)
    parser.add_argument("--time", type=int, help="seconds per x11perf run (default 2; --quick 1)")
    parser.add_argument("--tests", default=",".join(TESTS), help="comma-separated x11perf tests")
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (2 if args.quick else 3)
    args.time = args.time or (1 if args.quick else 2)
    args.tests = h.chosen(parser, args.tests, TESTS, "test")
    return h.run_main("bench_relay", ("Xvfb", "x11perf", "socat"), lambda: bench(args))


if __name__ == "__main__":
    sys.exit(main())
