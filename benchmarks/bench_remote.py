"""
Benchmark a remote engine (``DOCKER_HOST=ssh://``) next to a local lend: time to lend, and
x11perf through the SSH forward.

Usage::

    python benchmarks/bench_remote.py              # 5 lends each, 3 rounds of x11perf
    python benchmarks/bench_remote.py --quick      # 2 lends, 1 round

It starts a private Xvfb and the tests' second host (``tests/infra/remote.py``: a dockerd and
an sshd in network and mount namespaces of their own, reached only over SSH through a veth
pair), loads the test infrastructure's Debian image (with x11perf, as ``bench_realpath.py``
uses) into its engine, and measures:

- ``lend``: ``X11Passthrough.start()`` until it returns the arguments, then ``close()``,
  for the local engine (the UNIX transport) and for the remote one (an SSH connection that
  makes the remote directory, copies the session authority file and forwards the socket);
- x11perf ``-prop`` (a round trip), ``-getimage500`` and ``-putimage500`` (1 MB each way) in a
  ``docker run --rm --network none`` container of each engine, the order alternated each
  round; reported: the median msec per operation, and the remote one's ratio to the local.

The SSH forward here crosses a veth pair on the same machine, so it shows what OpenSSH's
channel (encryption, its 2 MB window, two more hops through ssh and sshd) adds, not a real
network's latency. Needs root, Docker Engine, Xvfb, xauth, x11perf, ldd, busybox, sshd,
nsenter. Exits 2 if something is missing. Everything it starts is stopped at the end.
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

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import _harness as h
import _images

from x11passthrough import X11Passthrough

from infra.remote import RemoteHost, start_remote_host
from infra.xvfb import XServer, start_xvfb


TESTS = ("prop", "getimage500", "putimage500")


@contextmanager
def environment(values: Mapping[str, str | None]) -> Iterator[None]:
    """Set (or, for None, remove) environment variables for the block."""
    old = {name: os.environ.get(name) for name in values}
    try:
        _set_environment(values)
        yield
    finally:
        _set_environment(old)


def _set_environment(values: Mapping[str, str | None]) -> None:
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def remote_env(host: RemoteHost) -> dict[str, str | None]:
    env = host.env()
    return {"PATH": env["PATH"], "DOCKER_HOST": env["DOCKER_HOST"], "DOCKER_CONTEXT": None}


def local_env() -> dict[str, str | None]:
    return {"DOCKER_HOST": None, "DOCKER_CONTEXT": None}


def time_lend(server: XServer, env: Mapping[str, str | None], times: int) -> list[float]:
    """Seconds from start() to the arguments, `times` times."""
    taken = []
    with environment(env):
        for _ in range(times):
            passthrough = X11Passthrough(server.display, server.xauthority)
            started = time.perf_counter()
            passthrough.start()
            taken.append(time.perf_counter() - started)
            passthrough.close()
    return taken


def x11perf(server: XServer, env: Mapping[str, str | None], image: str, test: str) -> float:
    """Msec per operation of one ``x11perf -repeat 1 -time 2 -TEST`` in a fresh container."""
    with environment(env), X11Passthrough(server.display, server.xauthority) as args:
        argv = ["docker", "run", "--rm", "--network", "none", *args, image]
        argv += ["x11perf", "-repeat", "1", "-time", "2", f"-{test}"]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    found = h.parse_x11perf(done.stdout)
    if done.returncode != 0 or not found:
        raise RuntimeError(f"x11perf -{test} failed: {done.stderr.strip()[-500:]}")
    return found[-1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer lends and rounds")
    opts = parser.parse_args()
    missing = [
        n
        for n in ("Xvfb", "xauth", "x11perf", "docker", "nsenter", "busybox")
        if not shutil.which(n)
    ]
    if missing or os.geteuid() != 0:
        print(f"needs root and {', '.join(missing) or 'nothing else'}", file=sys.stderr)
        return 2
    lends, rounds = (2, 1) if opts.quick else (5, 3)
    image = _images.test_image()
    with tempfile.TemporaryDirectory(prefix="x11pt-bench-remote-") as tmp:
        server = start_xvfb(Path(tmp) / "xvfb")
        host = start_remote_host(Path(tmp) / "client", image=image)
        try:
            local = time_lend(server, local_env(), lends)
            remote = time_lend(server, remote_env(host), lends)
            print("| lend | median s | min s | max s |\n|---|---|---|---|")
            for name, taken in (("local (unix)", local), ("remote (ssh)", remote)):
                print(
                    f"| {name} | {statistics.median(taken):.3f} | {min(taken):.3f} "
                    f"| {max(taken):.3f} |"
                )
            results: dict[tuple[str, str], list[float]] = {}
            for round_number in range(rounds):
                order = [("local", local_env()), ("remote", remote_env(host))]
                if round_number % 2:
                    order.reverse()
                for test in TESTS:
                    for name, env in order:
                        results.setdefault((name, test), []).append(
                            x11perf(server, env, image, test)
                        )
            print("\n| x11perf | local msec/op | remote msec/op | remote / local |")
            print("|---|---|---|---|")
            for test in TESTS:
                here = statistics.median(results[("local", test)])
                there = statistics.median(results[("remote", test)])
                print(f"| -{test} | {here:.4f} | {there:.4f} | {there / here:.2f}x |")
        finally:
            host.close()
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
