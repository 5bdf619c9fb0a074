"""
``x11passthrough doctor``: explain a setup, step by step, before anything breaks.

Each step prints one line (``ok``, ``warn`` or ``FAIL``, the step, what it found) and, on
failure, a line saying what to do. The steps are the passthrough's own: doctor starts it and
reports each step as it passes (:class:`~._passthrough.Watcher`): the display and who owns it,
the cookie proved by a real X11 setup, the engine, the transport; then it makes a connection
setup at the relay's own endpoints exactly as a container does, looks at the server as
python-xlib sees it through the relay, and with ``--image`` runs the probe (:mod:`._probe`) in
a container of that image.

Lines are wrapped to :data:`WIDTH` columns (a terminal's 80, and the docs' code blocks), the
continuation indented under the text. An X server started without ``-noreset`` (as
``xvfb-run`` and pytest-xvfb start Xvfb) resets when its last client leaves, and closes a
connection that arrives meanwhile during its setup: 2 of 15 doctor runs failed so before each
X11 setup was retried once.
"""

from __future__ import annotations

import importlib.resources
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import textwrap
import time
import urllib.parse

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any, TypeVar

import attrs

from . import _session
from ._args import DockerRunArgs
from ._destination import SshDestination
from ._display._endpoint import Endpoint
from ._display._locate import DisplayConnection
from ._display._owner import owner_uid
from ._engine import Engine
from ._options import EngineChoice
from ._passthrough import X11Passthrough, relay_endpoints, start_watched
from ._upstream import Upstream
from ._x11.handshake import handshake
from ._x11.requests import HIDDEN_EXTENSIONS
from ._x11.wire import MIT_MAGIC_COOKIE_1, SetupStatus
from ._x11.xlib import open_display
from ._xauth.authority import Xauthority
from .exceptions import Spelling, X11PassthroughError, X11SetupError, keyword


#: The width of the report's lines.
WIDTH = 79
_INDENT = " " * 17  # under the text: "ok    display    " is 17 columns
#: What an X server that resets between clients does to a connection during the reset: it
#: closes it, during its setup or while we send it.
_RESETTING = (
    "closed the connection during its setup",
    "the X server closed the connection (",
    "the connection to the X server failed",
)
_T = TypeVar("_T")


#: Where the probe is mounted in the container.
_PROBE_PATH = "/tmp/.x11passthrough-probe.py"
_PROBE_COMMAND = (
    f"if command -v python3 >/dev/null 2>&1; then exec python3 {_PROBE_PATH}; "
    "elif command -v xdpyinfo >/dev/null 2>&1; then exec xdpyinfo; "
    'else echo "the image has neither python3 nor xdpyinfo to probe with" >&2; exit 199; fi'
)
_NO_PROBE = 199
#: How a remote engine's probe container runs the probe: from its environment.
_PROBE_FROM_ENV = 'python3 -c "$X11PASSTHROUGH_PROBE"'


def probe_source() -> str:
    """Return the probe program (:mod:`._probe`, shipped with the package) as text."""
    return importlib.resources.files(__package__).joinpath("_probe.py").read_text()


@attrs.define
class Report:
    """The lines of a diagnosis, written as they come."""

    out: IO[str]
    failed: bool = False

    def line(self, status: str, step: str, text: str, hint: str = "") -> None:
        """Write one step's verdict, and what to do about a failure."""
        self.out.write(_wrap(f"{status:<5} {step:<10} ", text))
        if hint:
            self.out.write(_wrap(f"{_INDENT}-> ", hint, indent=_INDENT + "   "))
        self.out.flush()
        if status == "FAIL":
            self.failed = True

    def fail(self, step: str, error: BaseException | str, hint: str = "") -> bool:
        """Write a failure; return False (so a step can ``return report.fail(...)``)."""
        self.line("FAIL", step, str(error), hint)
        return False


def _wrap(first: str, text: str, *, indent: str = _INDENT) -> str:
    """Return `text` after `first`, wrapped to :data:`WIDTH` columns, each line ended."""
    lines: list[str] = []
    for number, paragraph in enumerate(text.splitlines() or [""]):
        lead = " " * (len(paragraph) - len(paragraph.lstrip()))  # a listed item's own indent
        lines += textwrap.wrap(
            paragraph.lstrip(),
            WIDTH,
            initial_indent=first if number == 0 else indent + lead,
            subsequent_indent=indent + lead + ("  " if lead else ""),
            break_long_words=False,
            break_on_hyphens=False,
        ) or [first.rstrip()]
    return "".join(f"{line}\n" for line in lines)


def _resetting(error: X11PassthroughError) -> bool:
    return any(marker in str(error) for marker in _RESETTING)


def _retried(setup: Callable[[], _T]) -> _T:
    """Run an X11 `setup`; once more if the server closed it while resetting."""
    try:
        return setup()
    except X11PassthroughError as e:
        if not _resetting(e):
            raise
    time.sleep(0.5)  # the reset takes milliseconds; the next connection is served after it
    try:
        return setup()
    except X11PassthroughError as e:
        if not _resetting(e):
            raise
        raise X11SetupError(
            f"{e} twice: the X server resets when its last client leaves (Xvfb without "
            "-noreset, as xvfb-run starts it); start it with -noreset, or run doctor again"
        ) from None


def _who(uid: int | None) -> str:
    if uid is None:
        return "a remote host (not checked)"
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def diagnose(
    passthrough: Callable[[], X11Passthrough],
    *,
    out: IO[str],
    image: str | None = None,
    engine_command: Sequence[str] | None = None,
    engine_options: Sequence[str] = (),
    spell: Spelling = keyword,
) -> bool:
    """
    Check every step a container's display depends on; return True when all passed.

    Args:
        passthrough: Makes the passthrough to diagnose (its options may be invalid).
        out: Where the report goes.
        image: An image to run a probe container of.
        engine_command: The engine's command, for the probe (default: ``podman`` when Podman
            answers, or was named, else ``docker``).
        engine_options: Options of the probe's ``ENGINE run`` (``--runtime runsc``).
        spell: Spells the options the library's messages name (as the command line's flags).
    """
    report = Report(out)
    _steps(report, passthrough, _Probe(image, engine_command, tuple(engine_options)), spell)
    if report.failed:
        out.write("a container would not get a working display\n")
    else:
        out.write("a container would get a working display\n")
    return not report.failed


@attrs.frozen
class _Probe:
    """The probe container: its image, the engine's command and ``run`` options."""

    image: str | None
    command: Sequence[str] | None
    options: tuple[str, ...]


@attrs.define
class _Watcher:
    """
    Reports the passthrough's steps as they pass, and knows which one is under way.

    A start that is tried again (the X server reset) passes the steps again: each is reported
    once.
    """

    report: Report
    step: str = "display"
    name: str = ""
    told: EngineChoice = "auto"
    found: Engine | None = None
    reported: set[str] = attrs.field(factory=set)

    def line(self, status: str, step: str, text: str, hint: str = "") -> None:
        """Write a step's line, unless that step was reported already."""
        if step not in self.reported:
            self.reported.add(step)
            self.report.line(status, step, text, hint)

    def located(self, connection: DisplayConnection) -> None:
        owner = owner_uid(connection.socket)
        self.name = str(connection.name)
        self.line("ok", "display", f"{self.name} is {connection.endpoint}, owned by {_who(owner)}")
        self.step = "cookie"

    def proved(self, upstream: Upstream, authority: str) -> None:
        where = authority or "no authority file"
        if upstream.real is None:
            what = f"no cookie for {self.name} in {where}; trying without one"
        else:
            family = getattr(upstream.family, "name", upstream.family)
            what = f"MIT-MAGIC-COOKIE-1 for {self.name} from {where} (family {family})"
        what += ": the X server accepted it"
        if upstream.untrusted is not None:
            what += "; it issued an untrusted cookie for the relay"
        self.line("ok", "cookie", what)
        self.step = "engine"

    def engine(self, found: Engine | None, told: EngineChoice) -> None:
        self.step = "transport"
        self.told, self.found = told, found
        if found is None:
            self.line(
                "FAIL",
                "engine",
                "no container engine answered on its API socket",
                "start Docker or Podman, or pass --engine (and --transport) to name it",
            )
            return
        where = "this host's kernel" if found.same_kernel else "a VM (no shared sockets)"
        if told != "auto" and found.socket is None:  # none of that kind answered
            self.line("ok", "engine", f"{told}, as told; containers on {where}")
            return
        if found.socket is None and not _remote_answers(self):
            return
        mode = "rootless" if found.rootless else "rootful"
        self.line("ok", "engine", f"{found.description}, {mode}, containers on {where}")

    def remote(self, where: SshDestination) -> None:
        self.step = "transport"
        self.told = "podman" if where.source.startswith(("CONTAINER_", "the Podman")) else "auto"
        self.line(
            "ok",
            "engine",
            f"on another host, {where.shown} ({where.source}={where.url}): containers there "
            "reach the display through the same SSH",
        )


def _engine_command(told: EngineChoice, found: Engine | None) -> tuple[str, ...]:
    """Return the engine's command for the probe: Podman's when told or found (installed)."""
    podman = told == "podman" or (found is not None and found.kind == "podman")
    return ("podman",) if podman and shutil.which("podman") else ("docker",)


def _remote_answers(watcher: _Watcher) -> bool:
    """Check that a ``DOCKER_HOST`` of TCP answers (one of SSH is not checked)."""
    host = os.environ.get("DOCKER_HOST", "")
    url = urllib.parse.urlsplit(host)
    if url.scheme != "tcp":
        watcher.line("warn", "engine", f"DOCKER_HOST={host}: not checked")
        return False
    try:
        port = url.port or 2375
        with socket.create_connection((url.hostname or "localhost", port), timeout=5):
            pass
    except (OSError, ValueError) as e:
        watcher.line(
            "FAIL",
            "engine",
            f"DOCKER_HOST={host} does not answer: {getattr(e, 'strerror', None) or e}",
            "start that engine, or point DOCKER_HOST at one that runs",
        )
        return False
    return True


def _steps(
    report: Report, make: Callable[[], X11Passthrough], probe: _Probe, spell: Spelling
) -> None:
    watcher = _Watcher(report)
    passthrough: X11Passthrough | None
    try:
        passthrough = make()
    except X11PassthroughError as e:
        report.fail("options", e.explain(spell))
        return

    def start() -> DockerRunArgs:
        nonlocal passthrough
        if passthrough is None:  # a retry: start() undid all it did
            passthrough = make()
        started, passthrough = passthrough, None
        args = start_watched(started, watcher)
        passthrough = started
        return args

    try:
        args = _retried(start)
    except X11PassthroughError as e:
        report.fail(watcher.step, e.explain(spell))
        return
    assert passthrough is not None  # noqa: S101 - set by a start that returned
    try:
        remote = passthrough._remote  # the SSH lend, when the engine is on another host
        local = remote.local_args if remote is not None else None
        if remote is not None and local is not None:
            where = (
                f"unix over SSH: {args.socket} on {remote.where.shown} (0666 in a 0700 "
                "directory), forwarded to the relay here"
            )
        elif args.socket is not None:
            where = f"unix: {args.socket}, mounted as {args.container_socket}"
        else:
            hosts = ", ".join(f"{n}:{a}" for n, a in args.extra_hosts.items())
            where = "tcp" + (f" (with --add-host {hosts})" if hosts else "")
        report.line("ok", "transport", f"{where}; the container gets DISPLAY={args.display}")
        endpoint = _container_endpoint(relay_endpoints(passthrough))
        here = local or args  # the session's files on this host
        if _relay_step(report, here, endpoint):
            _server_step(report, here, endpoint)
        if probe.image is not None and not report.failed:
            command = (
                (*probe.command,)
                if probe.command
                else _engine_command(watcher.told, watcher.found)
            )
            _probe_step(
                report, args, probe.image, command, probe.options, remote=local is not None
            )
    finally:
        passthrough.close()


def _container_endpoint(endpoints: Sequence[Endpoint]) -> Endpoint:
    """Return the relay's endpoint a container uses: the mounted socket, else TCP."""
    for kind in ("unix", "tcp"):
        for endpoint in endpoints:
            if endpoint.kind == kind:
                return endpoint
    return endpoints[0]


def _session_cookie(args: DockerRunArgs) -> bytes:
    if args.xauthority is None:
        return b""
    return Xauthority.load(args.xauthority)[0].data


def _relay_socket(endpoint: Endpoint) -> socket.socket:
    """Connect to the relay's `endpoint`, as a container would."""
    if endpoint.kind == "unix":
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(5)
        try:
            with _session.socket_address(Path(str(endpoint.path))) as address:
                sock.connect(address)
        except BaseException:
            sock.close()
            raise
        return sock
    sock = endpoint.connect(timeout=5)
    sock.settimeout(5)
    return sock


def _relay_step(report: Report, args: DockerRunArgs, endpoint: Endpoint) -> bool:
    cookie = _session_cookie(args)

    def setup() -> Any:
        with _relay_socket(endpoint) as sock:
            return handshake(sock, MIT_MAGIC_COOKIE_1 if cookie else b"", cookie, timeout=10.0)

    try:
        reply = _retried(setup)
    except (OSError, X11PassthroughError) as e:
        return report.fail("relay", f"cannot reach the relay as a container would: {e}")
    if reply.status is not SetupStatus.SUCCESS:
        return report.fail(
            "relay", f"the relay refused the session cookie: {reply.reason.strip()}"
        )
    where = endpoint.path if endpoint.kind == "unix" else f"{endpoint.host}:{endpoint.port}"
    report.line("ok", "relay", f"a container's connection setup at {where} succeeded")
    return True


def _server_step(report: Report, args: DockerRunArgs, endpoint: Endpoint) -> None:
    cookie = _session_cookie(args)
    number = int(args.display.rsplit(":", 1)[1])
    try:
        display = _retried(
            lambda: open_display(
                _relay_socket(endpoint),
                MIT_MAGIC_COOKIE_1 if cookie else b"",
                cookie,
                number=number,
                timeout=10.0,
                what="the relay",
            )
        )
    except (OSError, X11PassthroughError) as e:
        report.fail("server", f"python-xlib could not open the display through the relay: {e}")
        return
    try:
        screen = display.screen()
        extensions = display.list_extensions()
        hidden = [
            n.decode() for n in HIDDEN_EXTENSIONS if display.query_extension(n.decode()) is None
        ]
        vendor = display.display.info.vendor
        release = display.display.info.release_number
        text = (
            f"{vendor} {release}, screen {screen.width_in_pixels}x{screen.height_in_pixels}"
            f"x{screen.root_depth}, {len(extensions)} extensions"
        )
        if hidden:
            # ListExtensions (xdpyinfo's list) still names them; QueryExtension, which every
            # client asks before it uses one, finds none for this connection. Whether a
            # container gets MIT-SHM depends on its IPC namespace: the probe's line says.
            text += f" ({' and '.join(hidden)} listed, but QueryExtension reports them absent)"
        report.line("ok", "server", text)
    finally:
        display.close()


def _probe_step(
    report: Report,
    args: DockerRunArgs,
    image: str,
    engine_command: Sequence[str],
    engine_options: Sequence[str] = (),
    *,
    remote: bool = False,
) -> None:
    with tempfile.TemporaryDirectory(prefix="x11passthrough-probe-") as tmp:
        probe = Path(tmp) / "probe.py"
        probe.write_text(probe_source())
        probe.chmod(0o644)
        Path(tmp).chmod(0o755)
        argv = [*engine_command, "run", "--rm", *engine_options, *args]
        if remote:
            # No file of this host reaches a remote engine: the probe goes in the environment.
            argv += ["--env", f"X11PASSTHROUGH_PROBE={probe_source()}", image]
            argv += ["sh", "-c", _PROBE_COMMAND.replace(f"python3 {_PROBE_PATH}", _PROBE_FROM_ENV)]
        else:
            argv += ["--volume", f"{probe}:{_PROBE_PATH}:ro", image]
            argv += ["sh", "-c", _PROBE_COMMAND]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
        except FileNotFoundError:
            report.fail(
                "container",
                f"{engine_command[0]!r} is not on PATH",
                "install the engine's command, or pass --engine",
            )
            return
        except subprocess.TimeoutExpired:
            report.fail("container", f"the probe container of {image} did not end within 300 s")
            return
    output = (done.stdout.strip().splitlines() or [""])[0]
    if done.returncode == _NO_PROBE:
        report.line(
            "warn",
            "container",
            f"{image} has neither python3 nor xdpyinfo to probe with; the display itself "
            "answered through the relay",
            f"try a client: x11passthrough run -- {engine_command[-1]} run --rm {image} ...",
        )
        return
    if done.returncode != 0:
        lines = [
            line.strip()
            for line in done.stderr.splitlines()
            if line.strip() and not line.startswith("See '") and "--help" not in line
        ]
        problem = "; ".join(lines[-2:]) or f"exit status {done.returncode}"
        report.fail(
            "container",
            f"{image}: {problem}",
            f"run it yourself: x11passthrough run -- {engine_command[-1]} run --rm {image} ...",
        )
        return
    report.line("ok", "container", f"{image}: {output}")
