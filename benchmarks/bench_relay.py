"""
Benchmark the relay against direct connections and socat, with x11perf on one Xvfb.

Usage::

    .venv/bin/python benchmarks/bench_relay.py            # 3 rounds of 2 s (about 5 min)
    .venv/bin/python benchmarks/bench_relay.py --quick    # 2 rounds of 1 s, noisier
    .venv/bin/python benchmarks/bench_relay.py --json out.json
    .venv/bin/python benchmarks/bench_relay.py --variants # also the relay's design variants
    .venv/bin/python benchmarks/bench_relay.py --tests prop --rounds 5

It starts its own Xvfb (MIT-MAGIC-COOKIE-1 auth, ``-listen tcp``) on a free display N, and
makes every path reachable as an X display of its own, ``localhost:M`` (TCP port 6000+M), with
one Xauthority file holding the cookie for every display number used:

- ``direct-unix``: ``DISPLAY=:N``, the server's UNIX socket (the physical limit);
- ``direct-tcp``: ``DISPLAY=localhost:N``, the server's own TCP listener (the reference);
- ``socat``: ``socat TCP-LISTEN:P,reuseaddr,fork,bind=0.0.0.0 UNIX-CONNECT:/tmp/.X11-unix/XN``,
  exactly as Briefcase runs it (measured in the first round only: Nagle's algorithm makes each
  of its x11perf runs take many seconds);
- ``socat-nodelay``: the same with ``nodelay`` on the listening side (socat's UNIX-CONNECT
  side has no TCP option);
- ``relay``: our relay with its defaults, in a separate process (like socat), as a
  :class:`~x11passthrough._relay.RelayThread`;
- ``relay-substitute``: the same relay checking a session cookie in each connection's setup
  message and swapping in the real one (the passthrough's default ``auth="substitute"``);
- with ``--variants``: ``relay-copy`` (``splice=False``) and ``relay-nopoll``
  (``busy_poll=0``, which is also how :class:`~x11passthrough._relay.Relay` behaves in the
  caller's own event loop).

Each x11perf test (``-prop``: a GetProperty round trip, ``-getimage500``: 1 MB to the client,
``-putimage500``: 1 MB to the server) runs for every path in turn, round after round, so that
load from elsewhere on the machine hits all paths alike. The table shows the median time per
operation over all repetitions and its ratio to ``direct-tcp``; ``cpu`` is the CPU time the
forwarding process used per second of x11perf run time. A second table shows each path's
best run: on a shared or virtual machine single runs vary by 10-50 %, and the best runs show
what a path costs when nothing else gets in the way.

Needs Xvfb, xauth, x11perf and socat on PATH. Exits 2 if one is missing.

Results are printed (and written with ``--json``), never kept here: see docs/performance.md
for a recorded run and how to read it.
"""

from __future__ import annotations

import argparse
import contextlib
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
import tempfile
import time

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import _host


REPO = Path(__file__).resolve().parent.parent
TESTS = {
    "prop": "GetProperty",
    "getimage500": "GetImage 500x500",
    "putimage500": "PutImage 500x500",
}
LINE = re.compile(r"^\s*(\d+) reps @\s+([\d.]+) msec \(\s*([\d.]+)/sec\): (.*)$", re.MULTILINE)

X11PERF = ("x11perf", "-display")
RELAY_SCRIPT = """
import json, logging, socket, sys
from x11passthrough.display import Endpoint
from x11passthrough._relay.options import RelayOptions
from x11passthrough._relay.thread import RelayThread
from x11passthrough._x11.gate import CookieGate
port, path, options = int(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
if "gate" in options:
    fake, real = options.pop("gate")
    options["setup_filter"] = CookieGate(
        expected_data=bytes.fromhex(fake),
        replacement_name=b"MIT-MAGIC-COOKIE-1",
        replacement_data=bytes.fromhex(real),
    )
listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("0.0.0.0", port))
listener.listen(64)
with RelayThread([listener], Endpoint.unix(path), RelayOptions(**options)):
    print("ready", flush=True)
    sys.stdin.read()
"""


def parse_x11perf(output: str) -> list[float]:
    """Return the msec-per-operation of every ``N reps @ X msec (Y/sec): name`` line."""
    return [float(match.group(2)) for match in LINE.finditer(output)]


@dataclass
class Route:
    """One way to reach the X server."""

    name: str
    display: str
    process: subprocess.Popen[bytes] | None = None
    times: dict[str, list[float]] = field(default_factory=dict)
    max_rounds: int | None = None
    cpu: float = 0.0
    wall: float = 0.0

    def cpu_seconds(self) -> float:
        """CPU seconds used by the forwarding process and its children (socat forks) so far."""
        if self.process is None:
            return 0.0
        pid = self.process.pid
        _host.wait_for_reaped_children(pid)  # socat reaps the child of the last connection
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        ticks = sum(int(v) for v in fields[11:15])  # utime stime cutime cstime
        return ticks / os.sysconf("SC_CLK_TCK")


def free_display(avoid: set[int]) -> int:
    """Return a free display number (see :func:`_host.free_display`)."""
    number = _host.free_display(avoid)
    if number is None:
        raise SystemExit("no free display number between 20 and 200")
    return number


def start_xvfb(workdir: Path, cookie: str) -> tuple[subprocess.Popen[bytes], int]:
    server_auth = workdir / "server.xauth"
    xauth(server_auth, ":0", cookie)
    read_fd, write_fd = os.pipe()
    args = ["Xvfb", "-displayfd", str(write_fd), "-auth", str(server_auth), "-listen", "tcp"]
    args += ["-screen", "0", "1024x768x24", "-noreset"]
    process = subprocess.Popen(args, pass_fds=(write_fd,), stderr=subprocess.DEVNULL)
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        line = pipe.readline()
    if not line.strip():
        process.kill()
        raise SystemExit("Xvfb did not start")
    number = int(line)
    deadline = time.monotonic() + 10
    while not Path(f"/tmp/.X11-unix/X{number}").exists():
        if time.monotonic() > deadline:
            raise SystemExit("Xvfb did not create its socket")
        time.sleep(0.01)
    return process, number


def xauth(path: Path, display: str, cookie: str) -> None:
    """Add a FamilyLocal MIT-MAGIC-COOKIE-1 entry for `display` to the file `path`."""
    subprocess.run(
        ["xauth", "-f", str(path), "add", display, ".", cookie], check=True, capture_output=True
    )


def wait_port(port: int) -> None:
    deadline = time.monotonic() + 10
    while True:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        if time.monotonic() > deadline:
            raise SystemExit(f"nothing listens on port {port}")
        time.sleep(0.02)


def start_relay(port: int, unix_path: str, options: dict[str, object]) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    process = subprocess.Popen(
        [sys.executable, "-c", RELAY_SCRIPT, str(port), unix_path, json.dumps(options)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
    )
    if process.stdout is None or process.stdout.readline().strip() != b"ready":
        raise SystemExit("the relay process did not start")
    return process


@contextlib.contextmanager
def paths(workdir: Path, variants: bool) -> Iterator[tuple[list[Route], Path]]:
    cookie = secrets.token_hex(16)
    server, number = start_xvfb(workdir, cookie)
    unix_path = f"/tmp/.X11-unix/X{number}"
    processes: list[subprocess.Popen[bytes]] = [server]
    used = {number}
    result = [Route("direct-unix", f":{number}"), Route("direct-tcp", f"localhost:{number}")]

    def add(
        name: str,
        command: list[str] | None,
        options: dict[str, object] | None,
        max_rounds: int | None = None,
    ) -> None:
        display = free_display(used)
        used.add(display)
        port = 6000 + display
        if command is not None:
            args = [arg.format(port=port, path=unix_path) for arg in command]
            process = subprocess.Popen(args)
        else:
            process = start_relay(port, unix_path, options or {})
        processes.append(process)
        wait_port(port)
        result.append(Route(name, f"localhost:{display}", process, max_rounds=max_rounds))

    try:
        socat = "TCP-LISTEN:{port},reuseaddr,fork,bind=0.0.0.0"
        # Without nodelay every x11perf run takes many seconds: one round is plenty.
        add("socat", ["socat", socat, "UNIX-CONNECT:{path}"], None, max_rounds=1)
        add("socat-nodelay", ["socat", socat + ",nodelay", "UNIX-CONNECT:{path}"], None)
        add("relay", None, {})
        # The default passthrough: the client sends a session cookie, the relay swaps it.
        session = secrets.token_hex(16)
        add("relay-substitute", None, {"gate": (session, cookie)})
        session_display = int(result[-1].display.rsplit(":", 1)[1])
        if variants:
            add("relay-copy", None, {"splice": False})
            add("relay-nopoll", None, {"busy_poll": 0})
        xauthority = workdir / "client.xauth"
        for display in sorted(used):
            xauth(xauthority, f":{display}", session if display == session_display else cookie)
        yield result, xauthority
    finally:
        for process in reversed(processes):
            if process.stdin is not None:
                process.stdin.close()
            else:
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def run(
    all_paths: list[Route], xauthority: Path, tests: list[str], rounds: int, seconds: int
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}
    env["XAUTHORITY"] = str(xauthority)
    for round_ in range(rounds):
        for test in tests:
            for path in all_paths:
                if path.max_rounds is not None and round_ >= path.max_rounds:
                    continue
                cpu = path.cpu_seconds()
                started = time.monotonic()
                completed = subprocess.run(
                    [*X11PERF, path.display, "-repeat", "1", "-time", str(seconds), f"-{test}"],
                    env=env,
                    capture_output=True,
                    text=True,
                    check=False,
                )
                path.wall += time.monotonic() - started
                path.cpu += path.cpu_seconds() - cpu
                times = parse_x11perf(completed.stdout)
                if completed.returncode or not times:
                    raise SystemExit(
                        f"x11perf -{test} on {path.name} ({path.display}) failed:\n"
                        f"{completed.stdout}{completed.stderr}"
                    )
                path.times.setdefault(test, []).extend(times)
            medians = ", ".join(
                f"{p.name} {statistics.median(p.times[test]):.4f}"
                for p in all_paths
                if p.times.get(test)
            )
            print(
                f"round {round_ + 1}/{rounds} -{test} (ms, median so far): {medians}",
                file=sys.stderr,
            )


def report(all_paths: list[Route], tests: list[str]) -> dict[str, object]:
    reference = next(p for p in all_paths if p.name == "direct-tcp")
    rows = []
    for path in all_paths:
        row: dict[str, object] = {"path": path.name, "display": path.display}
        for test in tests:
            median = statistics.median(path.times[test])
            base = statistics.median(reference.times[test])
            row[test] = {
                "median_ms": median,
                "min_ms": min(path.times[test]),
                "ratio_to_direct_tcp": median / base,
                "samples": len(path.times[test]),
            }
        row["cpu_per_second"] = path.cpu / path.wall if path.process and path.wall else None
        rows.append(row)
    header = f"{'path':<17}" + "".join(f"{TESTS[t]:>21}" for t in tests) + f"{'cpu':>6}"
    print(header)
    print("-" * len(header))
    for row in rows:
        cells = []
        for test in tests:
            cell = row[test]
            if not isinstance(cell, dict):
                raise TypeError(cell)
            cells.append(f"{cell['median_ms']:.4f} ms {cell['ratio_to_direct_tcp']:6.2f}x")
        cpu = row["cpu_per_second"]
        cpu_text = f"{cpu:.0%}" if isinstance(cpu, float) else "-"
        print(f"{row['path']:<17}" + "".join(f"{c:>21}" for c in cells) + f"{cpu_text:>6}")
    print("\nbest run of each path (ratio to the best direct-tcp run):")
    for row in rows:
        cells = []
        for test in tests:
            best = row_cell(rows, str(row["path"]), test)["min_ms"]
            reference_best = row_cell(rows, "direct-tcp", test)["min_ms"]
            cells.append(f"{best:.4f} ms {best / reference_best:6.2f}x")
        print(f"{row['path']:<17}" + "".join(f"{c:>21}" for c in cells))
    return {"tests": tests, "rows": rows}


def row_cell(rows: list[dict[str, object]], path: str, test: str) -> dict[str, float]:
    """The results of `test` in the row of `path`."""
    for row in rows:
        if row["path"] == path:
            cell = row[test]
            if isinstance(cell, dict):
                return cell
    raise LookupError(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds of 1 s per test")
    parser.add_argument("--rounds", type=int, help="rounds over all paths (default 3)")
    parser.add_argument("--time", type=int, help="seconds per x11perf run (default 2)")
    parser.add_argument("--tests", default=",".join(TESTS), help="comma-separated x11perf tests")
    parser.add_argument("--variants", action="store_true", help="also the relay's variants")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args(argv)
    missing = [t for t in ("Xvfb", "xauth", "x11perf", "socat") if shutil.which(t) is None]
    if missing:
        print(f"bench_relay: missing {', '.join(missing)}; install them first", file=sys.stderr)
        return 2
    rounds = args.rounds or (2 if args.quick else 3)
    seconds = args.time or (1 if args.quick else 2)
    tests = [t.strip().lstrip("-") for t in args.tests.split(",") if t.strip()]
    with tempfile.TemporaryDirectory(prefix="bench-relay-") as tmp:
        with paths(Path(tmp), args.variants) as (all_paths, xauthority):
            print(
                f"x11perf, {rounds} rounds of {seconds} s per test and path, "
                f"median time per operation (ratio to direct-tcp):",
                file=sys.stderr,
            )
            run(all_paths, xauthority, tests, rounds, seconds)
        results = report(all_paths, tests)
    results["rounds"] = rounds
    results["seconds"] = seconds
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
