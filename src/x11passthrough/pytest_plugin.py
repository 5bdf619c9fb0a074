"""
pytest fixtures that lend an X display to containers, and screenshot the tests that fail.

Installed with the package and loaded automatically (entry point ``pytest11``)::

    def test_gui_app_in_container(x11passthrough):
        subprocess.run(["docker", "run", "--rm", *x11passthrough, IMAGE, "my-app"], check=True)

The fixtures (``x11passthrough``, ``x11passthrough_factory``, ``x11passthrough_session``,
``x11passthrough_display``), which display they lend, the screenshots of failures and the
options are documented in the pytest how-to (``docs/howto/pytest.md``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re

from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import attrs
import pytest


# The library is imported where a fixture or a screenshot first needs it, not here: pytest
# loads this module in every run of every project in the environment, most of which never
# use it (measured: importing the library here cost each of them about 0.11 s).
if TYPE_CHECKING:
    from ._args import DockerRunArgs
    from ._passthrough import X11Passthrough
    from ._xvfb import Xvfb


__all__ = ["HostDisplay"]

logger = logging.getLogger("x11passthrough")

#: Seconds a screenshot may take (connecting, one GetImage) before it is given up.
_SCREENSHOT_TIMEOUT = 10.0
_SCREENSHOT_SECTION = "x11passthrough screenshot"
_FIXES = "set DISPLAY, pass --x11passthrough-xvfb (a private Xvfb), or use pytest-xvfb"
_NO_DISPLAY = (
    f"x11passthrough: no DISPLAY is set for this test run: {_FIXES}; "
    "--x11passthrough-required fails instead of skipping"
)
_NO_DISPLAY_REQUIRED = f"x11passthrough: no DISPLAY is set (--x11passthrough-required): {_FIXES}"
_SCREEN = re.compile(r"(?P<width>\d+)x(?P<height>\d+)(?:x(?P<depth>\d+))?")
_DEFAULT_SCREEN = "1280x1024x24"
#: Set on the failures this plugin raises: the display is unusable, so no screenshot is tried.
_OWN_FAILURE = "_x11passthrough_environment"


@attrs.frozen(kw_only=True)
class HostDisplay:
    """
    The X display the fixtures lend, as this host's clients reach it.

    Attributes:
        display: Its name, as in ``$DISPLAY`` (``:N`` for the private Xvfb).
        xauthority: Its authority file, or ``None`` for libXau's default (``~/.Xauthority``).
        xvfb: The plugin's private :class:`~x11passthrough.Xvfb`, or ``None`` when the display
            is ``$DISPLAY``.
    """

    display: str
    xauthority: str | None = None
    xvfb: Xvfb | None = attrs.field(default=None, eq=False, repr=False)

    def environ(self) -> dict[str, str]:
        """Return this process's environment with ``DISPLAY`` (and ``XAUTHORITY``) for it."""
        env = {**os.environ, "DISPLAY": self.display}
        if self.xauthority is not None:
            env["XAUTHORITY"] = self.xauthority
        return env


@attrs.frozen(kw_only=True)
class _Settings:
    """The plugin's options, read once at configure time."""

    required: bool
    xvfb: bool
    screen: tuple[int, int, int]
    screenshots: bool
    screenshot_dir: Path | None


_SETTINGS = pytest.StashKey[_Settings]()
_TMP = pytest.StashKey[pytest.TempPathFactory]()
_RUN_DISPLAY = pytest.StashKey[HostDisplay]()
_LENT = pytest.StashKey[list[HostDisplay]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    """Register the plugin's command-line and ini options."""
    group = parser.getgroup("x11passthrough")
    group.addoption(
        "--x11passthrough-required",
        action="store_true",
        help="fail, rather than skip, tests that need a display when none is set",
    )
    group.addoption(
        "--x11passthrough-xvfb",
        action="store_true",
        help="where no DISPLAY is set, lend a private Xvfb (one per process, so per xdist worker)",
    )
    parser.addini(
        "x11passthrough_auth",
        "auth mode of the x11passthrough fixtures: substitute, untrusted or forward",
        default="substitute",
    )
    parser.addini(
        "x11passthrough_bind",
        "addresses the relay listens on (setting it means the TCP transport)",
        type="args",
        default=[],
    )
    parser.addini(
        "x11passthrough_xvfb",
        "where no DISPLAY is set, lend a private Xvfb (as --x11passthrough-xvfb)",
        type="bool",
        default=False,
    )
    parser.addini(
        "x11passthrough_xvfb_screen",
        "screen of the private Xvfb: WIDTHxHEIGHTxDEPTH (or WIDTHxHEIGHT, depth 24)",
        default=_DEFAULT_SCREEN,
    )
    parser.addini(
        "x11passthrough_screenshots",
        "screenshot the lent display when a test using it fails",
        type="bool",
        default=True,
    )
    parser.addini(
        "x11passthrough_screenshot_dir",
        "where screenshots go (default: x11passthrough-screenshots in pytest's basetemp)",
        default="",
    )


def _parse_screen(text: str) -> tuple[int, int, int]:
    match = _SCREEN.fullmatch(text.strip())
    if match is None:
        raise pytest.UsageError(
            f"x11passthrough_xvfb_screen = {text!r} is not WIDTHxHEIGHTxDEPTH (e.g. 1280x1024x24)"
        )
    screen = (int(match["width"]), int(match["height"]), int(match["depth"] or 24))
    if text.strip() == _DEFAULT_SCREEN:
        return screen  # valid: the library need not be imported to check it
    from ._xvfb import Xvfb
    from .exceptions import ConfigurationError

    try:
        Xvfb(width=screen[0], height=screen[1], depth=screen[2])
    except ConfigurationError as e:
        raise pytest.UsageError(f"x11passthrough_xvfb_screen = {text!r}: {e}") from None
    return screen


def pytest_configure(config: pytest.Config) -> None:
    """Read the plugin's options (a bad ini value is a usage error at once)."""
    folder = str(config.getini("x11passthrough_screenshot_dir")).strip()
    config.stash[_SETTINGS] = _Settings(
        required=bool(config.getoption("x11passthrough_required")),
        xvfb=bool(config.getoption("x11passthrough_xvfb") or config.getini("x11passthrough_xvfb")),
        screen=_parse_screen(str(config.getini("x11passthrough_xvfb_screen"))),
        screenshots=bool(config.getini("x11passthrough_screenshots")),
        screenshot_dir=config.rootpath / folder if folder else None,
    )


def _fail(message: str) -> NoReturn:
    """Fail the test with `message` alone, marked as the environment's fault (no screenshot)."""
    __tracebackhide__ = True
    error = pytest.fail.Exception(message, pytrace=False)
    setattr(error, _OWN_FAILURE, True)
    raise error from None


def _one_line(message: str) -> str:
    """Join a multi-line message (a list of places tried) into one line."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    text = lines[0] if lines else message
    for line in lines[1:]:
        text += (" " if text.endswith(":") else "; ") + line
    return text


def _resolve(request: pytest.FixtureRequest) -> HostDisplay:
    """Return the display to lend now: ``$DISPLAY``, else the private Xvfb; else skip or fail."""
    __tracebackhide__ = True
    name = os.environ.get("DISPLAY")
    if name:
        return HostDisplay(display=name, xauthority=os.environ.get("XAUTHORITY"))
    settings = request.config.stash[_SETTINGS]
    if settings.xvfb:
        xvfb: Xvfb = request.getfixturevalue("_x11passthrough_xvfb")
        return HostDisplay(display=xvfb.display, xauthority=str(xvfb.xauthority), xvfb=xvfb)
    if settings.required:
        _fail(_NO_DISPLAY_REQUIRED)
    pytest.skip(_NO_DISPLAY)


def _ini_options(config: pytest.Config, options: dict[str, Any]) -> dict[str, Any]:
    """Return `options` with the ini keys' values where they are not given."""
    options.setdefault("auth", config.getini("x11passthrough_auth"))
    bind = config.getini("x11passthrough_bind")
    if bind and options.get("transport", "auto") != "unix":
        options.setdefault("bind", bind)
    return options


def _start(options: dict[str, Any]) -> tuple[X11Passthrough, DockerRunArgs]:
    """Start a passthrough; our errors fail the test with their one-line reason."""
    __tracebackhide__ = True
    from ._passthrough import X11Passthrough
    from .exceptions import X11PassthroughError

    try:
        passthrough = X11Passthrough(**options)
        return passthrough, passthrough.start()
    except X11PassthroughError as e:
        _fail(f"x11passthrough: {_one_line(str(e))}")


def _track(request: pytest.FixtureRequest, lent: HostDisplay | None = None) -> None:
    """Remember where this test's screenshots go, and (if given) a display it lent."""
    config = request.config
    if _TMP not in config.stash:
        config.stash[_TMP] = request.getfixturevalue("tmp_path_factory")
    if lent is not None:
        request.node.stash.setdefault(_LENT, []).append(lent)


@pytest.fixture(scope="session", name="_x11passthrough_xvfb")
def _private_xvfb(pytestconfig: pytest.Config) -> Iterator[Xvfb]:
    """Start the plugin's private Xvfb for this process (each xdist worker has its own)."""
    from ._xvfb import Xvfb
    from .exceptions import X11PassthroughError

    width, height, depth = pytestconfig.stash[_SETTINGS].screen
    xvfb = Xvfb(width=width, height=height, depth=depth)
    try:
        xvfb.start()
    except X11PassthroughError as e:
        _fail(f"x11passthrough: --x11passthrough-xvfb: {_one_line(str(e))}")
    try:
        yield xvfb
    finally:
        xvfb.close()


@pytest.fixture(scope="session", name="x11passthrough_display")
def _x11passthrough_display(request: pytest.FixtureRequest) -> HostDisplay:
    """
    Return the display the fixtures lend, as this host's clients reach it (at first use).

    ``$DISPLAY`` when set, else the private Xvfb of ``--x11passthrough-xvfb``; skips (or, with
    ``--x11passthrough-required``, fails) the test when there is neither.
    """
    display = _resolve(request)
    _track(request)
    request.config.stash[_RUN_DISPLAY] = display
    return display


@pytest.fixture(scope="session", name="x11passthrough_session")
def _x11passthrough_session(
    request: pytest.FixtureRequest, x11passthrough_display: HostDisplay
) -> Iterator[DockerRunArgs]:
    """
    Lend ``x11passthrough_display`` for the whole test run (or xdist worker).

    Yields the docker-run arguments of one passthrough with the ini keys' options, closed when
    the test run ends.
    """
    options = {
        "display": x11passthrough_display.display,
        "xauthority": x11passthrough_display.xauthority,
    }
    passthrough, args = _start(_ini_options(request.config, options))
    try:
        yield args
    finally:
        passthrough.close()


@pytest.fixture(name="x11passthrough_factory")
def _x11passthrough_factory(
    request: pytest.FixtureRequest,
) -> Iterator[Callable[..., DockerRunArgs]]:
    """
    Start passthroughs with any :class:`~x11passthrough.X11Passthrough` options.

    Without ``display=``, each lends the display as it is when called (``$DISPLAY``, else the
    private Xvfb). Every passthrough started through the factory is closed when the test ends.
    """
    started: list[X11Passthrough] = []

    def start(**options: Any) -> DockerRunArgs:
        __tracebackhide__ = True
        if options.get("display") is None:
            host = _resolve(request)
            options["display"] = host.display
            if options.get("xauthority") is None:
                options["xauthority"] = host.xauthority
        xauthority = options.get("xauthority")
        lent = HostDisplay(
            display=str(options["display"]),
            xauthority=None if xauthority is None else os.fspath(xauthority),
        )
        passthrough, args = _start(_ini_options(request.config, options))
        started.append(passthrough)
        _track(request, lent)
        return args

    yield start
    for passthrough in reversed(started):
        passthrough.close()


@pytest.fixture(name="x11passthrough")
def _x11passthrough(x11passthrough_factory: Callable[..., DockerRunArgs]) -> DockerRunArgs:
    """Return the docker-run arguments of a passthrough of the display, open for this test."""
    return x11passthrough_factory()


# -- screenshots of failures ------------------------------------------------------------------


def _lent_displays(item: pytest.Item) -> list[HostDisplay]:
    """Return the displays `item` lent (or asked for), each once."""
    found = list(item.stash.get(_LENT, ()))
    run_display = item.config.stash.get(_RUN_DISPLAY, None)
    if run_display is not None and "x11passthrough_display" in getattr(item, "fixturenames", ()):
        found.append(run_display)
    return list(dict.fromkeys(found))


def _screenshot_png(target: HostDisplay, *, timeout: float = _SCREENSHOT_TIMEOUT) -> bytes:
    """
    Return a PNG of the windows on `target`'s screen, taken with python-xlib.

    The display is reached as the passthrough reaches it: its endpoint's owner is checked
    before any cookie is sent, the cookie is the one libXau's rules pick from `target`'s
    authority file (``os.environ`` is not touched), and every step has a deadline, so a server
    that never answers cannot hang the run.

    Raises:
        X11PassthroughError: The display cannot be reached, refused the connection, did not
            answer within `timeout` seconds, or has a pixel format that is not read.
        Exception: python-xlib's own errors (an X protocol error of the GetImage).
    """
    from ._display._locator import DisplayLocator
    from ._x11.screenshot import grab_windows
    from ._x11.wire import MIT_MAGIC_COOKIE_1
    from ._x11.xlib import deadline, open_display
    from ._xauth.authority import Xauthority

    what = f"the screenshot of display {target.display}"
    connection = DisplayLocator(connect_timeout=timeout).connect(target.display)
    try:
        authority = Xauthority.load(target.xauthority)
        entry = authority.for_connection(connection.socket, connection.name.number)
    except BaseException:
        connection.close()
        raise
    display = open_display(
        connection.socket,
        MIT_MAGIC_COOKIE_1 if entry is not None else b"",
        entry.data if entry is not None else b"",
        number=connection.name.number,
        timeout=timeout,
        what=what,
    )
    try:
        with deadline(connection.socket, timeout, what):
            shot = grab_windows(display)
    finally:
        with contextlib.suppress(Exception):
            display.close()
    return shot.png()


def _screenshot_path(item: pytest.Item, index: int) -> Path:
    """Return a new file for `item`'s screenshot number `index`, in the screenshot folder."""
    settings = item.config.stash[_SETTINGS]
    folder = settings.screenshot_dir
    if folder is None:
        folder = item.config.stash[_TMP].getbasetemp() / "x11passthrough-screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"[^\w.-]+", "-", item.nodeid).strip("-.")[:150] or "test"
    if index:
        stem += f"-{index + 1}"
    path = folder / f"{stem}.png"
    counter = 1
    while path.exists():
        counter += 1
        path = folder / f"{stem}.{counter}.png"
    return path


def _save_screenshot(item: pytest.Item, target: HostDisplay, index: int) -> str:
    """Write a screenshot of `target` for `item`; return its path, or why there is none."""
    try:
        png = _screenshot_png(target)
        path = _screenshot_path(item, index)
        with path.open("xb") as file:
            file.write(png)
    except Exception as e:  # a screenshot must never break the run
        reason = _one_line(f"{type(e).__name__}: {e}")
        logger.warning("no screenshot of %s for %s: %s", target.display, item.nodeid, reason)
        return f"not taken: {reason}"
    return str(path)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Add a screenshot of the lent display to the report of a failed setup or test body."""
    report = yield
    if call.when not in ("setup", "call") or not report.failed:
        return report
    if _LENT not in item.stash and _RUN_DISPLAY not in item.config.stash:
        return report  # the common case, kept cheap: this test lent no display
    if not item.config.stash[_SETTINGS].screenshots:
        return report
    if call.excinfo is not None and getattr(call.excinfo.value, _OWN_FAILURE, False):
        return report  # the display is unusable: the failure says why
    for index, target in enumerate(_lent_displays(item)):
        text = _save_screenshot(item, target, index)
        report.sections.append((_SCREENSHOT_SECTION, text))
        if not text.startswith("not taken"):
            # JUnit XML writes the properties the item has at teardown.
            item.user_properties.append(("x11passthrough_screenshot", text))
    return report
