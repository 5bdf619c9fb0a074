"""
What every benchmark script shares: the X server, the forwarders, the containers, the
measurements and the tables.

- the X server is the library's own :class:`x11passthrough.Xvfb` (cookie auth; ``-listen tcp``
  where a path needs the server's TCP listener);
- a :class:`Forwarder` is a process between a client and the server: socat, or a relay in a
  process of its own (``_relay_runner.py``, which uses only the public
  :class:`~x11passthrough.X11Passthrough`), so that its CPU time is its own;
- :class:`Containers` keeps one container per path running (``sleep infinity``) and every
  measured program is a ``docker exec`` in it, so container start-up is never measured;
- CPU accounting reads utime+stime from ``/proc/PID/stat`` around each run;
- :func:`parse_x11perf` reads x11perf's ``N reps @ X msec (Y/sec): name`` lines;
- :func:`markdown` draws the tables every script prints.

Every script runs its paths in rounds, all paths in turn, the order rotated each round
(:func:`rotated`), so that load from elsewhere on the machine hits all paths alike.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TypeVar

from x11passthrough import Xvfb
from x11passthrough.xauth import MIT_MAGIC_COOKIE_1, Family, XauthEntry, Xauthority


BENCHMARKS = Path(__file__).resolve().parent
CLOCK_TICK = os.sysconf("SC_CLK_TCK")
X11PERF_LINE = re.compile(
    r"^\s*(\d+) reps @\s+([\d.]+) msec \(\s*([\d.]+)/sec\): (.*)$", re.MULTILINE
)

#: What the container benchmarks run: the engine, the server, socat, and the image builder.
CONTAINER_TOOLS = ("docker", "Xvfb", "socat", "debootstrap")

T = TypeVar("T")


class BenchError(Exception):
    """The benchmark cannot go on (a tool failed, a path did not come up)."""


# -- this host -------------------------------------------------------------------------------


def run_checked(args: Sequence[str], *, what: str, stdin: str | None = None) -> str:
    """Run `args`; return its output, or raise :class:`BenchError` with it."""
    done = subprocess.run(
        list(args), input=stdin, capture_output=True, text=True, check=False, timeout=600
    )
    if done.returncode != 0:
        raise BenchError(f"{what} failed ({' '.join(args)}):\n{done.stdout}{done.stderr}")
    return done.stdout


def free_display(avoid: set[int], start: int = 20, stop: int = 200) -> int:
    """Return a display number whose socket, lock file and TCP port 6000+N are all free."""
    for number in range(start, stop):
        if number in avoid:
            continue
        if Path(f"/tmp/.X11-unix/X{number}").exists() or Path(f"/tmp/.X{number}-lock").exists():
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("0.0.0.0", 6000 + number))
            except OSError:
                continue
        return number
    raise BenchError(f"no free display number between {start} and {stop}")


def docker0_address() -> str:
    """Return the IPv4 address of the docker0 bridge (where containers reach this host)."""
    gateway = "{{(index .IPAM.Config 0).Gateway}}"
    text = run_checked(
        ["docker", "network", "inspect", "bridge", "--format", gateway],
        what="asking docker for the bridge gateway",
    ).strip()
    if not text:
        raise BenchError("no docker0 address: is Docker Engine running with its default bridge?")
    return text


def pin(pid: int, cpuset: str | None) -> None:
    """Pin every thread of process `pid` to the CPUs `cpuset` ("0", "0-1", "0,1"; None: not)."""
    if cpuset is None:
        return
    cpus: set[int] = set()
    for part in cpuset.split(","):
        low, _, high = part.partition("-")
        cpus.update(range(int(low), int(high or low) + 1))
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            os.sched_setaffinity(int(task.name), cpus)


def cpu_seconds(pid: int, *, children: bool = False) -> float:
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


def wait_for_reaped_children(pid: int, timeout: float = 2.0) -> None:
    """Wait (up to `timeout` seconds) until process `pid` has no children left (socat's forks)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            return
        if not children:
            return
        time.sleep(0.02)


# -- x11perf ---------------------------------------------------------------------------------


def parse_x11perf(output: str) -> list[float]:
    """Return the msec-per-operation of every ``N reps @ X msec (Y/sec): name`` line."""
    return [float(match.group(2)) for match in X11PERF_LINE.finditer(output)]


def x11perf_reps(output: str) -> int:
    """Return the operations of the last ``N reps @`` line (the last repetition)."""
    found = X11PERF_LINE.findall(output)
    return int(found[-1][0]) if found else 0


# -- the X server ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Server:
    """The benchmark's X server: display ``:number``, its process and its cookie."""

    number: int
    pid: int
    xauthority: Path
    cookie: bytes

    @property
    def socket(self) -> str:
        """The server's UNIX socket."""
        return f"/tmp/.X11-unix/X{self.number}"

    def cpu(self) -> float:
        """CPU seconds the server has used."""
        return cpu_seconds(self.pid)


@contextlib.contextmanager
def x_server(*, tcp: bool = False, cpuset: str | None = None) -> Iterator[Server]:
    """Run an :class:`x11passthrough.Xvfb` (1280x1024x24), listening on TCP if asked."""
    extra = ("-listen", "tcp") if tcp else ()
    with Xvfb(width=1280, height=1024, depth=24, extra_args=(*extra, "-noreset")) as xvfb:
        if xvfb.pid is None:
            raise BenchError("Xvfb is not running")
        pin(xvfb.pid, cpuset)
        entry = Xauthority.load(xvfb.xauthority).find(Family.WILD, b"", xvfb.number)
        if entry is None:
            raise BenchError(f"no cookie for :{xvfb.number} in {xvfb.xauthority}")
        yield Server(xvfb.number, xvfb.pid, xvfb.xauthority, entry.data)


def wild_authority(path: Path, numbers: Sequence[int], cookie: bytes) -> Path:
    """Write `cookie` for each display of `numbers`, any host (FamilyWild), to `path` (0644)."""
    entries = [XauthEntry(Family.WILD, b"", str(n), MIT_MAGIC_COOKIE_1, cookie) for n in numbers]
    path.write_bytes(Xauthority(entries).dumps())
    path.chmod(0o644)  # the container's user reads it: a benchmark-only cookie
    return path


# -- forwarders ------------------------------------------------------------------------------


class Forwarder:
    """A process between the clients and the display: socat, or a relay process of ours."""

    def __init__(self, name: str, process: subprocess.Popen[str], *, relay: bool) -> None:
        self.name = name
        self.process = process
        self.relay = relay
        #: The relay's docker-run arguments (empty for socat).
        self.args: list[str] = []

    def cpu(self) -> float:
        """CPU seconds used so far (socat: with its reaped children, after they are reaped)."""
        if not self.relay:
            wait_for_reaped_children(self.process.pid)
        return cpu_seconds(self.process.pid, children=not self.relay)

    def moved(self) -> tuple[int | None, int | None, int]:
        """Bytes moved so far: (to the server, to the clients, total); socat knows the total."""
        if not self.relay:
            return None, None, written_bytes(self.process.pid)
        stats = self.ask()
        return stats["bytes_up"], stats["bytes_down"], stats["bytes_up"] + stats["bytes_down"]

    def ask(self) -> dict[str, int]:
        """Ask the relay process for its :class:`~x11passthrough.RelayStats`."""
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
        """End the process (a relay: by closing its stdin, so that it leaves its ``with``)."""
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


def start_relay(name: str, config: Mapping[str, object], *, cpuset: str | None) -> Forwarder:
    """
    Start ``_relay_runner.py`` with `config` (see there); return it once it serves.

    Its environment finds the very x11passthrough this process imported.
    """
    import x11passthrough  # noqa: PLC0415 - only for its location

    env = dict(os.environ)
    here = str(Path(x11passthrough.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [here, env.get("PYTHONPATH")]))
    runner = str(BENCHMARKS / "_relay_runner.py")
    process = subprocess.Popen(
        [sys.executable, runner, json.dumps(config)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        start_new_session=True,
        text=True,
    )
    forwarder = Forwarder(name, process, relay=True)
    line = process.stdout.readline() if process.stdout is not None else ""
    if not line:
        forwarder.stop()
        raise BenchError(f"{name}: the relay process did not start")
    forwarder.args = [str(arg) for arg in json.loads(line)["args"]]
    pin(process.pid, cpuset)
    return forwarder


def start_socat(
    name: str, listen: str, upstream: str, ready: Callable[[], bool], *, cpuset: str | None
) -> Forwarder:
    """Start ``socat [-b 262144] LISTEN UNIX-CONNECT:upstream``; return it once `ready`."""
    extra = ["-b", "262144"] if listen.startswith("UNIX-") else []
    process = subprocess.Popen(
        ["socat", *extra, listen, f"UNIX-CONNECT:{upstream}"],
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        text=True,
    )
    return _when_ready(Forwarder(name, process, relay=False), ready, f"socat ({listen})", cpuset)


def start_floor(name: str, listen: Path, upstream: str, *, cpuset: str | None) -> Forwarder:
    """Start ``_floor_relay.py`` on the UNIX socket `listen`; return it once it accepts."""
    process = subprocess.Popen(
        [sys.executable, str(BENCHMARKS / "_floor_relay.py"), str(listen), upstream],
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        text=True,
    )
    forwarder = Forwarder(name, process, relay=False)
    return _when_ready(forwarder, listen.exists, f"the floor relay ({listen})", cpuset)


def _when_ready(
    forwarder: Forwarder, ready: Callable[[], bool], what: str, cpuset: str | None
) -> Forwarder:
    """Return `forwarder` once `ready`, pinned to `cpuset`; stop it if it never is."""
    deadline = time.monotonic() + 10
    while not ready():
        if forwarder.process.poll() is not None or time.monotonic() > deadline:
            forwarder.stop()
            raise BenchError(f"{forwarder.name}: {what} did not come up")
        time.sleep(0.02)
    pin(forwarder.process.pid, cpuset)
    return forwarder


def tcp_listening(port: int) -> Callable[[], bool]:
    """A readiness test: something accepts connections on 127.0.0.1:`port`."""

    def ready() -> bool:
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", port)) == 0

    return ready


def briefcase_socat(port: int) -> str:
    """The listening side of socat exactly as BeeWare Briefcase runs it."""
    return f"TCP-LISTEN:{port},reuseaddr,fork,bind=0.0.0.0"


# -- containers ------------------------------------------------------------------------------


@dataclass
class Containers:
    """The containers a benchmark started; :meth:`close` removes them all."""

    image: str
    cpuset: str | None = None
    names: list[str] = field(default_factory=list)

    def start(self, label: str, run_args: Sequence[str]) -> str:
        """Start ``sleep infinity`` in a new container with `run_args`; return its name."""
        name = f"x11pt-bench-{os.getpid()}-{label}-{len(self.names)}"
        self.names.append(name)  # before it exists: an interrupted run still removes it
        command = ["docker", "run", "-d", "--rm", "--name", name, *run_args]
        if self.cpuset is not None:
            command += ["--cpuset-cpus", self.cpuset]
        run_checked([*command, self.image, "sleep", "infinity"], what=f"{label}: docker run")
        return name

    def close(self) -> None:
        """Remove every container started here."""
        if self.names:
            subprocess.run(
                ["docker", "rm", "-f", *self.names], capture_output=True, check=False, timeout=120
            )
            self.names.clear()


def exec_in(container: str, argv: Sequence[str], *, timeout: float = 600) -> tuple[str, str, int]:
    """Run `argv` in `container`; return stdout, stderr and the exit status."""
    done = subprocess.run(
        ["docker", "exec", container, *argv],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )
    if done.returncode < 0 or done.returncode == 128 + signal.SIGINT:
        raise KeyboardInterrupt(f"{' '.join(argv)} was interrupted")
    return done.stdout, done.stderr, done.returncode


def display_of(run_args: Sequence[str]) -> str:
    """The ``DISPLAY`` that docker-run arguments give the container."""
    for arg in run_args:
        if arg.startswith("DISPLAY="):
            return arg.removeprefix("DISPLAY=")
    return "?"


# -- rounds and tables -----------------------------------------------------------------------


def rotated(items: Sequence[T], by: int) -> list[T]:
    """`items` rotated left by `by` (each round starts with another path)."""
    shift = by % len(items) if items else 0
    return [*items[shift:], *items[:shift]]


def median(values: Sequence[float]) -> float | None:
    """The median of `values`, None for none."""
    return statistics.median(values) if values else None


def spread(values: Sequence[float]) -> float | None:
    """(highest - lowest) / median of `values`, None for fewer than two."""
    if len(values) < 2:
        return None
    middle = statistics.median(values)
    return (max(values) - min(values)) / middle if middle else None


def num(value: float | None, digits: int = 2) -> str:
    """`value` with `digits` decimals, or ``-``."""
    return "-" if value is None else f"{value:.{digits}f}"


def ratio_text(value: float | None) -> str:
    """A ratio as ``0.75x``, or ``-``."""
    return "-" if value is None else f"{value:.2f}x"


def markdown(header: Sequence[str], rows: Sequence[Sequence[str]], *, left: int = 1) -> list[str]:
    """A Markdown table; the first `left` columns are left-aligned, the others right-aligned."""
    lines = ["| " + " | ".join(header) + " |"]
    lines.append("|" + "---|" * left + "---:|" * (len(header) - left))
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def load_note(loads: Sequence[float]) -> str:
    """What the machine's load was during the runs."""
    if not loads:
        return f"{os.cpu_count()} CPUs"
    return (
        f"{os.cpu_count()} CPUs; 1-minute load average after each run: median "
        f"{statistics.median(loads):.1f}, highest {max(loads):.1f}"
    )


# -- running a script ------------------------------------------------------------------------


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


def run_main(name: str, tools: Sequence[str], body: Callable[[], object]) -> int:
    """
    Run a benchmark's `body` with its exit statuses: 2 when a tool of `tools` is missing, 1
    on a :class:`BenchError`, 130 when interrupted (after everything it started is gone).
    """
    import shutil  # noqa: PLC0415

    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        print(f"{name}: missing {', '.join(missing)}; install them first", file=sys.stderr)
        return 2
    try:
        with stopping_on_signals():
            body()
    except KeyboardInterrupt:
        print(f"{name}: interrupted; what it started is gone", file=sys.stderr)
        return 130
    except BenchError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 1
    return 0


def publish(lines: Sequence[str], data: dict[str, object], path: str | None) -> None:
    """Print the report `lines`; write them and `data` as JSON to `path` if given."""
    text = "\n".join(lines)
    print(text)
    if path:
        Path(path).write_text(json.dumps({**data, "markdown": text}, indent=2) + "\n")


def split(text: str) -> list[str]:
    """The items of a comma-separated option, without blanks or leading dashes."""
    return [item.strip().lstrip("-") for item in text.split(",") if item.strip()]


def parser_for(doc: str | None, *, containers: bool = False) -> argparse.ArgumentParser:
    """
    A command line with the options every script has: ``--quick``, ``--rounds``, ``--json``;
    and ``--cpuset`` for the `containers` benchmarks.
    """
    parser = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter runs (noisier)")
    parser.add_argument("--rounds", type=int, help="rounds over all paths (default 3)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    if containers:
        parser.add_argument(
            "--cpuset", help="pin Xvfb, forwarders and containers to these CPUs (e.g. 0)"
        )
    return parser


def chosen(
    parser: argparse.ArgumentParser,
    text: str,
    known: Iterable[str],
    what: str,
    *,
    first: str | None = None,
) -> list[str]:
    """The comma-separated `text`, each a name of `known` (else a usage error), `first` first."""
    items, names = split(text), set(known)
    unknown = [item for item in items if item not in names]
    if unknown:
        parser.error(f"unknown {what}: {', '.join(unknown)}")
    if first is not None and first not in items:
        items.insert(0, first)
    return items
