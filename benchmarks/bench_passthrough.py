"""
Benchmark entering plus leaving X11Passthrough, beside what Briefcase does for the same job.

Run: ``python benchmarks/bench_passthrough.py [--runs N]``. Starts an
:class:`x11passthrough.Xvfb` (cookie auth), then times, in one run:

- ``x11passthrough``: ``with X11Passthrough(...): pass`` (locate, read the cookie, reserve,
  write the session file, start and stop the relay thread);
- ``briefcase-like``: Briefcase 0.4's steps, as subprocesses: ``xauth -i nlist``, ``xauth add``,
  ``xauth nlist``, ``xauth nmerge`` (FamilyWild rewrite), socat started with Popen, then
  terminated, and the file removed.

Prints the median, best and worst of each, and the ratio.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from collections.abc import Callable
from pathlib import Path

from x11passthrough import X11Passthrough, Xvfb


def briefcase_like(display: str, xauthority: Path, workdir: Path) -> None:
    env = {**os.environ, "XAUTHORITY": str(xauthority)}
    number = 700
    cookie = subprocess.check_output(["xauth", "-i", "nlist", display], env=env, text=True)
    cookie = cookie.splitlines()[0].split(" ")[8]
    path = workdir / "briefcase.xauth"
    path.unlink(missing_ok=True)
    path.touch()
    f = ["xauth", "-i", "-f", str(path)]
    subprocess.check_output([*f, "add", f":{number}", "MIT-MAGIC-COOKIE-1", cookie])
    listing = subprocess.check_output([*f, "nlist"], text=True)
    wild = "\n".join("ffff" + line[4:] for line in listing.splitlines())
    subprocess.check_output([*f, "nmerge", "-"], input=wild, text=True)
    socat = subprocess.Popen(
        [
            "socat",
            f"TCP-LISTEN:{6000 + number},reuseaddr,fork,bind=0.0.0.0",
            f"UNIX-CONNECT:/tmp/.X11-unix/X{display[1:]}",
        ]
    )
    socat.terminate()
    socat.wait(3)
    path.unlink(missing_ok=True)


def measure(fn: Callable[[], None], runs: int) -> list[float]:
    fn()  # warm up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="fewer runs")
    opts = parser.parse_args()
    runs = 30 if opts.quick else opts.runs
    for tool in ("Xvfb", "xauth", "socat"):
        if shutil.which(tool) is None:
            print(f"needs {tool}", file=sys.stderr)
            return 2
    with tempfile.TemporaryDirectory() as tmp, Xvfb() as xvfb:
        workdir, display, auth = Path(tmp), xvfb.display, xvfb.xauthority

        def ours() -> None:
            with X11Passthrough(display, auth, bind=["127.0.0.1"]):
                pass

        results = {
            "x11passthrough": measure(ours, runs),
            "briefcase-like": measure(
                lambda: briefcase_like(display, auth, workdir), max(10, runs // 10)
            ),
        }
    base = statistics.median(results["x11passthrough"])
    print(f"enter + exit, {runs} runs (briefcase-like: {max(10, runs // 10)})")
    print(f"{'':16} {'median ms':>10} {'best':>8} {'worst':>8} {'ratio':>7}")
    for name, times in results.items():
        median = statistics.median(times)
        print(
            f"{name:16} {median:10.2f} {min(times):8.2f} {max(times):8.2f} {median / base:7.1f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
