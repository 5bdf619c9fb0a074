"""
``x11passthrough doctor``: explain a setup, step by step, before anything breaks.

Strictly private. Each step prints one line (``ok``, ``warn`` or ``FAIL``, the step, what it
found) and, on failure, a line saying what to do. The steps are the passthrough's own, in its
order: the display and who owns it, the cookie and a real X11 setup with it, the engine, the
transport, a connection setup through the relay exactly as a container makes it, the server as
python-xlib sees it through the relay, and with ``--image`` a probe container.

Lines are wrapped to :data:`WIDTH` columns (a terminal's 80, and the docs' code blocks), the
continuation indented under the text. An X server started without ``-noreset`` (as
``xvfb-run`` and pytest-xvfb start Xvfb) resets when its last client leaves, and closes a
connection that arrives meanwhile during its setup: 2 of 15 doctor runs failed so before each
X11 setup was retried once.
"""

from __future__ import annotations

import contextlib
import ipaddress
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

from . import _engine, _session
from ._args import DockerRunArgs
from ._display._locator import DisplayLocator
from ._display._name import DisplayName
from ._display._owner import owner_uid
from ._passthrough import X11Passthrough
from ._x11.handshake import handshake
from ._x11.requests import HIDDEN_EXTENSIONS
from ._x11.wire import MIT_MAGIC_COOKIE_1, SetupStatus
from ._x11.xlib import open_display
from ._xauth.authority import Xauthority, default_path
from ._xauth.format import Family
from .exceptions import X11PassthroughError, X11SetupError


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


#: A probe for images: the standard library only, run by the image's python3. It connects as
#: an X client of the image would (``DISPLAY``, ``XAUTHORITY``) and prints the server's vendor.
PROBE = r"""
import os, socket, struct, sys
display = os.environ.get("DISPLAY", "")
host, _, rest = display.rpartition(":")
number = int(rest.split(".")[0])
if host.startswith("tcp/"):
    host = host[4:]
if host and host != "unix":
    sock = socket.create_connection((host, 6000 + number), timeout=10)
else:
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(10)
    sock.connect("/tmp/.X11-unix/X%d" % number)
data = open(os.environ["XAUTHORITY"], "rb").read() if os.environ.get("XAUTHORITY") else b""
name = cookie = b""
at = 0
while at + 2 <= len(data):
    (family,) = struct.unpack(">H", data[at:at + 2])
    fields, at = [], at + 2
    for _ in range(4):
        (size,) = struct.unpack(">H", data[at:at + 2])
        fields.append(data[at + 2:at + 2 + size])
        at += 2 + size
    if fields[1] == str(number).encode() and fields[2] == b"MIT-MAGIC-COOKIE-1":
        name, cookie = fields[2], fields[3]
        break
pad = lambda b: b + b"\0" * (-len(b) % 4)
setup = struct.pack("<BxHHHHxx", 0x6C, 11, 0, len(name), len(cookie))
sock.sendall(setup + pad(name) + pad(cookie))
head = b""
while len(head) < 8:
    chunk = sock.recv(8 - len(head))
    if not chunk:
        sys.exit("x11passthrough probe: the display closed the connection")
    head += chunk
(words,) = struct.unpack("<H", head[6:8])
body = b""
while len(body) < 4 * words:
    chunk = sock.recv(4 * words - len(body))
    if not chunk:
        break
    body += chunk
if head[0] != 1:
    sys.exit("x11passthrough probe: refused: " + body[:head[1]].decode("latin-1"))
vendor_length = struct.unpack("<H", body[16:18])[0]
formats = body[21]
vendor = body[32:32 + vendor_length].decode("latin-1")
screen = 32 + vendor_length + (-vendor_length % 4) + 8 * formats
width, height = struct.unpack("<HH", body[screen + 20:screen + 24])
print("probe: %s, screen %dx%d, display %s" % (vendor, width, height, display))
"""
_PROBE_COMMAND = (
    "if command -v python3 >/dev/null 2>&1; then exec python3 /tmp/.x11passthrough-probe.py; "
    "elif command -v xdpyinfo >/dev/null 2>&1; then exec xdpyinfo; "
    'else echo "the image has neither python3 nor xdpyinfo to probe with" >&2; exit 199; fi'
)
_NO_PROBE = 199


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
    options: dict[str, Any],
    *,
    out: IO[str],
    image: str | None = None,
    engine_command: Sequence[str] | None = None,
    engine_options: Sequence[str] = (),
    speak: Callable[[str], str] = str,
) -> bool:
    """
    Check every step a container's display depends on; return True when all passed.

    Args:
        options: The :class:`X11Passthrough` options the command line was given.
        out: Where the report goes.
        image: An image to run a probe container of.
        engine_command: The engine's command, for the probe (default: ``podman`` when Podman
            answers, or was named, else ``docker``).
        engine_options: Options of the probe's ``ENGINE run`` (``--runtime runsc``).
        speak: Rewrites the library's messages in the command line's words.
    """
    report = Report(out)
    _steps(report, options, _Probe(image, engine_command, tuple(engine_options)), speak)
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


def _engine_command(options: dict[str, Any], engine: _engine.Engine | None) -> tuple[str, ...]:
    """Return the engine's command for the probe: Podman's when told or found (and installed)."""
    podman = options.get("engine") == "podman" or (engine is not None and engine.kind == "podman")
    return ("podman",) if podman and shutil.which("podman") else ("docker",)


def _steps(
    report: Report,
    options: dict[str, Any],
    probe: _Probe,
    speak: Callable[[str], str],
) -> None:
    display_text = options.get("display") or os.environ.get("DISPLAY")
    if not display_text:
        report.fail(
            "display", "DISPLAY is not set", "pass --display :0, or --xvfb for a private X server"
        )
        return
    if not _host_side(report, display_text, options, speak):
        return
    engine = _engine_step(report, options)
    command = probe.command or _engine_command(options, engine)
    passthrough = X11Passthrough(**options)

    def start() -> DockerRunArgs:
        nonlocal passthrough
        passthrough = X11Passthrough(**options)
        return passthrough.start()

    try:
        args = _retried(start)
    except X11PassthroughError as e:
        report.fail("transport", speak(str(e)))
        return
    try:
        if args.socket is not None:
            where = f"unix: {args.socket}, mounted as {args.container_socket}"
        else:
            hosts = ", ".join(f"{n}:{a}" for n, a in args.add_hosts)
            where = "tcp" + (f" (with --add-host {hosts})" if hosts else "")
        report.line("ok", "transport", f"{where}; the container gets DISPLAY={args.display}")
        if _relay_step(report, args):
            _server_step(report, args)
        if probe.image is not None and not report.failed:
            _probe_step(report, args, probe.image, (*command,), probe.options)
    finally:
        passthrough.close()


def _host_side(
    report: Report, display_text: str, options: dict[str, Any], speak: Callable[[str], str]
) -> bool:
    try:
        name = DisplayName.parse(display_text)
        connection = (options.get("locator") or DisplayLocator()).connect(name)
    except X11PassthroughError as e:
        return report.fail("display", speak(str(e)))
    with connection:
        owner = owner_uid(connection.socket)
        report.line(
            "ok",
            "display",
            f"{display_text} is {connection.endpoint}, owned by {_who(owner)}",
        )
        xauthority = options.get("xauthority")
        path = default_path() if xauthority is None else xauthority
        try:
            entry = Xauthority.load(path).for_connection(connection.socket, name.number)
        except X11PassthroughError as e:
            return report.fail("cookie", speak(str(e)))
        where = path or "no authority file"
        if entry is None:
            what = f"no cookie for {display_text} in {where}; trying without one"
        else:
            family = getattr(entry.family, "name", entry.family)
            what = f"MIT-MAGIC-COOKIE-1 for {display_text} from {where} (family {family})"
        first = [connection.socket]
        locator = options.get("locator") or DisplayLocator()

        def setup() -> Any:
            # A retry (after a server's reset) needs a new connection.
            with contextlib.ExitStack() as stack:
                sock = first.pop() if first else stack.enter_context(locator.connect(name)).socket
                return handshake(
                    sock,
                    MIT_MAGIC_COOKIE_1 if entry else b"",
                    entry.data if entry else b"",
                    timeout=float(options.get("connect_timeout", 5.0)),
                )

        try:
            reply = _retried(setup)
        except X11PassthroughError as e:
            return report.fail("cookie", f"{what}: {e}")
    if reply.status is not SetupStatus.SUCCESS:
        return report.fail(
            "cookie",
            f"{what}: the X server refused it: {reply.reason.strip() or 'no reason given'}",
            "point --xauthority at the file your X server uses, or log in again",
        )
    report.line("ok", "cookie", f"{what}: the X server accepted it")
    return True


def _engine_step(report: Report, options: dict[str, Any]) -> _engine.Engine | None:
    hint = options.get("engine", "auto")
    told = hint not in (None, "auto")
    found = _engine.detect(hint if told else None)
    if told and found is not None and found.kind != hint:
        found = None  # the passthrough follows what it was told, not what answered
    if found is None:
        if told:
            where = "a VM" if hint == "desktop" else "this host's kernel"
            report.line(
                "ok",
                "engine",
                f"{hint}, as told; containers on {where}",
            )
            return None
        report.fail(
            "engine",
            "no container engine answered on its API socket",
            "start Docker or Podman, or pass --engine (and --transport) to name it",
        )
        return None
    if found.socket is None and not _remote_answers(report):
        return None
    where = "this host's kernel" if found.same_kernel else "a VM (no shared sockets)"
    mode = "rootless" if found.rootless else "rootful"
    report.line("ok", "engine", f"{found.description}, {mode}, containers on {where}")
    return found


def _remote_answers(report: Report) -> bool:
    """Check that a ``DOCKER_HOST`` of TCP answers (one of SSH is not checked)."""
    host = os.environ.get("DOCKER_HOST", "")
    url = urllib.parse.urlsplit(host)
    if url.scheme != "tcp":
        report.line("warn", "engine", f"DOCKER_HOST={host}: not checked")
        return False
    try:
        port = url.port or 2375
        with socket.create_connection((url.hostname or "localhost", port), timeout=5):
            pass
    except (OSError, ValueError) as e:
        report.fail(
            "engine",
            f"DOCKER_HOST={host} does not answer: {getattr(e, 'strerror', None) or e}",
            "start that engine, or point DOCKER_HOST at one that runs",
        )
        return False
    return True


def _session_cookie(args: DockerRunArgs) -> bytes:
    if args.xauthority is None:
        return b""
    return Xauthority.load(args.xauthority)[0].data


def _relay_socket(args: DockerRunArgs) -> socket.socket:
    """Connect to the relay where a container would."""
    if args.socket is not None:
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(5)
        with _session.socket_address(args.socket) as address:
            sock.connect(address)
        return sock
    number = int(args.display.rsplit(":", 1)[1])
    for entry in Xauthority.load(args.xauthority) if args.xauthority else []:
        if entry.family in (Family.INTERNET, Family.INTERNET6):
            address = str(ipaddress.ip_address(entry.address))
            return socket.create_connection((address, 6000 + number), timeout=5)
    raise OSError("no relay address in the session file")


def _relay_step(report: Report, args: DockerRunArgs) -> bool:
    cookie = _session_cookie(args)

    def setup() -> tuple[Any, Any]:
        with _relay_socket(args) as sock:
            peer = sock.getpeername()
            return peer, handshake(
                sock, MIT_MAGIC_COOKIE_1 if cookie else b"", cookie, timeout=10.0
            )

    try:
        peer, reply = _retried(setup)
    except (OSError, X11PassthroughError) as e:
        return report.fail("relay", f"cannot reach the relay as a container would: {e}")
    if reply.status is not SetupStatus.SUCCESS:
        return report.fail(
            "relay", f"the relay refused the session cookie: {reply.reason.strip()}"
        )
    where = peer if isinstance(peer, str) else f"{peer[0]}:{peer[1]}"
    report.line("ok", "relay", f"a container's connection setup at {where} succeeded")
    return True


def _server_step(report: Report, args: DockerRunArgs) -> None:
    cookie = _session_cookie(args)
    number = int(args.display.rsplit(":", 1)[1])
    try:
        display = _retried(
            lambda: open_display(
                _relay_socket(args),
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
            # client asks before it uses one, finds none.
            text += (
                f" ({' and '.join(hidden)} listed, but QueryExtension reports them absent to "
                "containers)"
            )
        report.line("ok", "server", text)
    finally:
        display.close()


def _probe_step(
    report: Report,
    args: DockerRunArgs,
    image: str,
    engine_command: Sequence[str],
    engine_options: Sequence[str] = (),
) -> None:
    with tempfile.TemporaryDirectory(prefix="x11passthrough-probe-") as tmp:
        probe = Path(tmp) / "probe.py"
        probe.write_text(PROBE)
        probe.chmod(0o644)
        Path(tmp).chmod(0o755)
        argv = [*engine_command, "run", "--rm", *engine_options, *args]
        argv += ["--volume", f"{probe}:/tmp/.x11passthrough-probe.py:ro", image]
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
