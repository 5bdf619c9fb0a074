"""
Benchmark the Xauthority reader, matcher and writer on a 10,000-entry file.

Run: ``python benchmarks/bench_xauth.py [--entries N] [--runs R]``. Prints the median, best and
worst time of R runs for each operation.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time

from collections.abc import Callable
from pathlib import Path

from x11passthrough.xauth import MIT_MAGIC_COOKIE_1, Family, XauthEntry, Xauthority


def make_entries(count: int, rng: random.Random) -> list[XauthEntry]:
    """Entries like a busy shared file: mostly FamilyLocal hosts, some IPv4/IPv6 and wild."""
    entries = []
    for index in range(count):
        kind = index % 10
        if kind < 6:
            family, address = Family.LOCAL, f"host{index % 97}.example.org".encode()
        elif kind < 8:
            family, address = Family.INTERNET, rng.randbytes(4)
        elif kind == 8:
            family, address = Family.INTERNET6, rng.randbytes(16)
        else:
            family, address = Family.WILD, b"wildhost"
        name = MIT_MAGIC_COOKIE_1 if index % 7 else "XDM-AUTHORIZATION-1"
        entries.append(XauthEntry(family, address, str(index), name, rng.randbytes(16)))
    return entries


def measure(function: Callable[[], object], runs: int) -> list[float]:
    """Return the wall-clock seconds of `runs` calls (after one warm-up call)."""
    function()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()

    rng = random.Random(1234)
    auth = Xauthority(make_entries(args.entries, rng))
    data = auth.dumps()
    host = b"host5.example.org"
    last = auth[-1]
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "Xauthority"
        auth.save(path)
        loaded = Xauthority.load(path)
        sane = loaded == auth and loaded.find(Family.LOCAL, host, "5") == auth[5]
        if not sane or loaded.find(Family.LOCAL, b"absent", "123456") is not None:
            raise SystemExit("the file did not load back to the same entries")

        cases: list[tuple[str, Callable[[], object]]] = [
            ("load (read + parse file)", lambda: Xauthority.load(path)),
            ("loads (parse bytes)", lambda: Xauthority.loads(data)),
            ("dumps", auth.dumps),
            ("save (lock, write, fsync, replace)", lambda: auth.save(path)),
            ("find: match near the start", lambda: auth.find(Family.LOCAL, host, "5")),
            (
                "find: last entry",
                lambda: auth.find(last.family, last.address, last.number, names=(last.name,)),
            ),
            ("find: no match (full scan)", lambda: auth.find(Family.LOCAL, b"absent", "123456")),
            ("merge 1 new entry", lambda: auth.merge([XauthEntry(256, b"x", "1", "N", b"")])),
        ]
        size = os.path.getsize(path)
        print(f"Xauthority with {len(auth)} entries, {size} bytes; {args.runs} runs each")
        print(f"{'operation':<36} {'median ms':>10} {'min ms':>9} {'max ms':>9}")
        for label, function in cases:
            times = [t * 1000 for t in measure(function, args.runs)]
            print(
                f"{label:<36} {statistics.median(times):>10.3f} {min(times):>9.3f} "
                f"{max(times):>9.3f}"
            )


if __name__ == "__main__":
    main()
