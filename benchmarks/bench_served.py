"""
Benchmark a served display (``x11passthrough serve``): how soon it serves, how soon it serves
again after the X server behind it restarts with a new cookie.

Run: ``python benchmarks/bench_served.py [--runs N]``. Starts a private Xvfb with cookie auth
on a free display number, then measures:

- ``start``: ``ServedDisplay(...).start()`` until it returns (the name's lock, the display
  proven, the number reserved, the cookie written, the relay listening), then ``close()``;
- ``cli ready``: ``python -m x11passthrough serve --name ...`` from its start until its ready
  line (interpreter and imports included);
- ``recovery``: the Xvfb is stopped and started again on the same number with a new cookie
  written to its authority file; from the moment the new server accepts a connection until a
  client (python-xlib, through the served display) completes its setup.

Prints the median, best and worst of each.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from pathlib import Path

from _harness import free_display
from Xlib import display as xdisplay
from Xlib import error as xerror

from x11passthrough.served import ServedDisplay


def start_xvfb(number: int, auth: Path, cookie: bytes) -> subprocess.Popen[bytes]:
    subprocess.run(
        ["xauth", "-f", str(auth), "add", f":{number}", ".", cookie.hex()],
        check=True,
        capture_output=True,
    )
    proc = subprocess.Popen(
        ["Xvfb", f":{number}", "-auth", str(auth), "-nolisten", "tcp", "-noreset"],
        stderr=subprocess.DEVNULL,
    )
    path = f"/tmp/.X11-unix/X{number}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket(socket.AF_UNIX) as probe:
            try:
                probe.connect(path)
            except OSError:
                time.sleep(0.001)
                continue
            return proc
    raise SystemExit(f"Xvfb :{number} did not start")


def connects(name: str, xauthority: Path) -> bool:
    os.environ["XAUTHORITY"] = str(xauthority)
    try:
        xdisplay.Display(name).close()
    except (xerror.DisplayError, xerror.ConnectionClosedError, OSError) as e:
        if os.environ.get("BENCH_DEBUG"):
            print(type(e).__name__, e)
        return False
    return True


def summary(what: str, times: list[float]) -> None:
    print(
        f"{what:>10}: median {statistics.median(times) * 1000:7.1f} ms, "
        f"best {min(times) * 1000:7.1f} ms, worst {max(times) * 1000:7.1f} ms ({len(times)} runs)"
    )


def measure_start(number: int, auth: Path, host_dir: Path, runs: int) -> list[float]:
    starts = []
    for _ in range(runs + 1):
        served = ServedDisplay(
            "bench", f":{number}", auth, host_dir=host_dir, display_range=range(700, 800)
        )
        began = time.perf_counter()
        served.start()
        starts.append(time.perf_counter() - began)
        served.close()
    return starts[1:]  # the first one warms up


def measure_cli(number: int, auth: Path, host_dir: Path, runs: int) -> list[float]:
    ready = []
    for _ in range(runs):
        began = time.perf_counter()
        argv = [sys.executable, "-m", "x11passthrough", "serve", "--name", "bench"]
        argv += ["--host-dir", str(host_dir), "--display", f":{number}"]
        proc = subprocess.Popen(
            [*argv, "--xauthority", str(auth)], stdout=subprocess.PIPE, text=True
        )
        line = proc.stdout.readline() if proc.stdout is not None else ""
        ready.append(time.perf_counter() - began)
        if "serving" not in line:
            raise SystemExit(f"serve did not start: {line!r}")
        proc.terminate()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
    return ready


def measure_recovery(
    xvfb: subprocess.Popen[bytes], number: int, auth: Path, host_dir: Path, runs: int
) -> tuple[list[float], subprocess.Popen[bytes]]:
    recoveries = []
    # python-xlib finds its cookie under this host's name only.
    served = ServedDisplay(
        "bench", f":{number}", auth, host_dir=host_dir, container_hostname=socket.gethostname()
    )
    with served as args:
        if args.xauthority is None:
            raise SystemExit("the served display has no authority file")
        for _ in range(runs):
            xvfb.terminate()
            xvfb.wait(10)
            while connects(args.display, args.xauthority):
                time.sleep(0.001)
            xvfb = start_xvfb(number, auth, secrets.token_bytes(16))
            began = time.perf_counter()
            while not connects(args.display, args.xauthority):
                time.sleep(0.001)
            recoveries.append(time.perf_counter() - began)
    return recoveries, xvfb


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    opts = parser.parse_args()
    number = free_display(set())
    workdir = Path(tempfile.mkdtemp(prefix="bench-served-"))
    auth = workdir / "xauth"
    xvfb = start_xvfb(number, auth, secrets.token_bytes(16))
    host_dir = workdir / "served"
    try:
        summary("start", measure_start(number, auth, host_dir, opts.runs))
        summary("cli ready", measure_cli(number, auth, host_dir, max(3, opts.runs // 3)))
        recoveries, xvfb = measure_recovery(xvfb, number, auth, host_dir, opts.runs)
        summary("recovery", recoveries)
    finally:
        xvfb.terminate()
        xvfb.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
