"""
The pytest plugin, tested with pytester as its users run it: real Xvfb servers, real relays.

Each test runs an inner pytest in a subprocess; the inner tests check what only they can see
(the fixtures' values, the relay answering xdpyinfo) and write what the outer test needs to a
directory named by ``X11PT_OUT``.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import struct
import subprocess
import sys
import zlib

from pathlib import Path
from xml.etree import ElementTree

import pytest

from infra.ci import require, require_executables
from infra.processes import process_gone
from infra.users import free_display
from infra.xvfb import XServer


#: Seconds an inner pytest run may take on a busy machine before it counts as hung.
INNER_TIMEOUT = 180

LENDING_TESTS = """
def test_lent(x11passthrough):
    assert x11passthrough.display.startswith("tcp/host.docker.internal:")
    assert x11passthrough.xauthority.exists()

def test_factory(x11passthrough_factory):
    a = x11passthrough_factory()
    b = x11passthrough_factory(auth="forward")
    assert a.display != b.display
"""

# Helpers of the inner tests: xdpyinfo against a relay from the host, files for the outer test.
HELPERS = """
import os, pathlib, subprocess

def xdpyinfo(display, xauthority):
    env = {**os.environ, "DISPLAY": display, "XAUTHORITY": str(xauthority)}
    done = subprocess.run(
        ["xdpyinfo"], env=env, capture_output=True, text=True, check=False, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout

def number(args):
    return args.display.rsplit(":", 1)[1]

def record(name, text):
    (pathlib.Path(os.environ["X11PT_OUT"]) / name).write_text(text)
"""

XVFB_TESTS = """
import os
from helpers import number, record, xdpyinfo

SEEN = []

def test_unix_transport(x11passthrough, x11passthrough_display):
    xvfb = x11passthrough_display.xvfb
    assert xvfb is not None and x11passthrough_display.display == xvfb.display
    assert x11passthrough_display.xauthority == str(xvfb.xauthority)
    assert "DISPLAY" not in os.environ  # the private Xvfb stays out of the environment
    assert x11passthrough_display.environ()["DISPLAY"] == xvfb.display
    record("xvfb.pid", str(xvfb.pid))
    # The default transport is a socket to bind-mount; on the host the relay holds display
    # M's abstract socket too, so a client of ":M" here goes through the relay.
    assert x11passthrough.socket is not None and x11passthrough.display.startswith(":")
    out = xdpyinfo(":" + number(x11passthrough), x11passthrough.xauthority)
    assert "dimensions:    640x480 pixels" in out

def test_tcp_transport(x11passthrough_factory):
    args = x11passthrough_factory(bind=["127.0.0.1"])
    assert args.display.startswith("tcp/host.docker.internal:")
    out = xdpyinfo("127.0.0.1:" + number(args), args.xauthority)
    assert "dimensions:    640x480 pixels" in out

def test_session_first(x11passthrough_session):
    SEEN.append(x11passthrough_session)
    out = xdpyinfo(":" + number(x11passthrough_session), x11passthrough_session.xauthority)
    assert "dimensions:    640x480 pixels" in out

def test_session_second(x11passthrough_session):
    assert len(SEEN) == 1 and SEEN[0] is x11passthrough_session
"""

SKIP_TESTS = """
def test_fixture(x11passthrough):
    pass

def test_factory_in_the_body(x11passthrough_factory):
    x11passthrough_factory()

def test_session(x11passthrough_session):
    pass
"""

XDIST_TESTS = """
import os, pytest
from helpers import record

@pytest.mark.parametrize("n", range(8))
def test_records_its_display(n, x11passthrough, x11passthrough_display):
    xvfb = x11passthrough_display.xvfb
    record(f"{n}.txt", f"{os.environ['PYTEST_XDIST_WORKER']} {xvfb.display} {xvfb.pid}")

def test_fails(x11passthrough):
    assert False
"""

SCREENSHOT_TESTS = """
import subprocess, pytest

def fill(display, colour):
    subprocess.run(["xsetroot", "-solid", colour], env=display.environ(), check=True, timeout=60)

@pytest.fixture
def app(x11passthrough, x11passthrough_display):
    fill(x11passthrough_display, "#ff0000")
    raise RuntimeError("the app did not start")

def test_body_fails(x11passthrough, x11passthrough_display):
    fill(x11passthrough_display, "#00ff00")
    assert False, "the window did not appear"

def test_setup_fails(app):
    pass

def test_passes(x11passthrough):
    pass

def test_fails_without_the_fixtures():
    assert False
"""

# Two windows of known colours drawn with python-xlib on pytest-xvfb's display (the test's
# DISPLAY); the odd widths make rows that the depth-16 format pads. The connection stays open
# (closed at teardown, after the report) so the windows are there for the screenshot.
WINDOW_TESTS = """
import json, os, time
import pytest
from Xlib import X, display as xdisplay

WINDOWS = {"red": (40, 30, 101, 50, 0xFF0000), "blue": (200, 120, 61, 41, 0x0000FF)}

def pixel(visual, rgb):
    value = 0
    for mask, byte in zip((visual.red_mask, visual.green_mask, visual.blue_mask),
                          ((rgb >> 16) & 0xFF, (rgb >> 8) & 0xFF, rgb & 0xFF)):
        value |= mask if byte else 0  # a channel is all on or all off at any depth
    return value

@pytest.fixture
def screen():
    connection = xdisplay.Display(os.environ["DISPLAY"])
    yield connection
    connection.close()

def test_windows(screen, x11passthrough, x11passthrough_display):
    root = screen.screen().root
    depth = screen.screen().root_depth
    visual = next(v for d in screen.screen().allowed_depths if d.depth == depth
                  for v in d.visuals if v.visual_id == screen.screen().root_visual)
    windows = []
    for x, y, width, height, rgb in WINDOWS.values():
        window = root.create_window(x, y, width, height, 0, depth, X.InputOutput,
                                    background_pixel=pixel(visual, rgb))
        window.map()
        windows.append(window)
    deadline = time.monotonic() + 60
    while not all(w.get_attributes().map_state == X.IsViewable for w in windows):
        assert time.monotonic() < deadline, "the windows were not mapped"
        time.sleep(0.02)
    for window in windows:
        window.clear_area()
    screen.sync()
    record = {"depth": depth, "masks": [visual.red_mask, visual.green_mask, visual.blue_mask]}
    (__import__("pathlib").Path(os.environ["X11PT_OUT"]) / "screen.json").write_text(
        json.dumps(record))
    assert False, "the app did not answer"
"""

STANDIN_CONFTEST = """
import os
from x11passthrough import Xvfb

server = Xvfb(width=400, height=300)

def pytest_configure(config):
    # What pytest-xvfb does: start a display before any test runs, put it in the environment.
    server.start()
    os.environ["DISPLAY"] = server.display
    os.environ["XAUTHORITY"] = str(server.xauthority)

def pytest_unconfigure(config):
    server.close()
"""

STANDIN_TESTS = """
import os
from helpers import number, xdpyinfo

def test_lends_the_display_already_set(x11passthrough, x11passthrough_display):
    assert x11passthrough_display.xvfb is None
    assert x11passthrough_display.display == os.environ["DISPLAY"]
    out = xdpyinfo(":" + number(x11passthrough), x11passthrough.xauthority)
    assert "dimensions:    400x300 pixels" in out
"""

CONTAINER_TESTS = """
import os, subprocess, pytest

def docker_run(args, *command):
    image = os.environ["X11PT_IMAGE"]
    return subprocess.run(
        ["docker", "run", "--rm", *args, image, *command],
        capture_output=True, text=True, check=False, timeout=120,
    )

@pytest.mark.parametrize("n", range(2))
def test_a_container_reaches_the_display(n, x11passthrough):
    done = docker_run(x11passthrough, "xdpyinfo")
    assert done.returncode == 0, done.stderr
    assert "dimensions:    640x480 pixels" in done.stdout

@pytest.mark.parametrize("n", range(2))
def test_a_container_of_the_session_passthrough(n, x11passthrough_session):
    done = docker_run(x11passthrough_session, "xlib-probe")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("screen 640x480")
"""


def run(pytester: pytest.Pytester, *args: str, pytest_xvfb: bool = False) -> pytest.RunResult:
    """
    Run the inner suite in a subprocess, as a user runs it.

    Hypothesis's plugin, which the inner suites do not use, is left out: it costs about a
    second of every start. So is pytest-xvfb (it would set DISPLAY), unless `pytest_xvfb`.
    """
    plugins = ["-p", "no:cacheprovider", "-p", "no:hypothesispytest"]
    if not pytest_xvfb:
        plugins += ["-p", "no:xvfb"]
    return pytester.runpytest_subprocess(*plugins, *args, timeout=INNER_TIMEOUT)


def read_png(path: Path) -> tuple[int, int, list[bytes]]:
    """
    Check that `path` is a well-formed 8-bit RGB PNG; return its size and its pixel rows.

    Every chunk's CRC is checked, and the image data must inflate to exactly one row per
    line. Rows are read as filter type 0 (what the plugin writes).
    """
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks: list[tuple[bytes, bytes]] = []
    offset = 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        body = data[offset + 8 : offset + 8 + length]
        (crc,) = struct.unpack(">I", data[offset + 8 + length : offset + 12 + length])
        assert zlib.crc32(kind + body) & 0xFFFFFFFF == crc, f"bad CRC in {kind!r}"
        chunks.append((kind, body))
        offset += 12 + length
    assert offset == len(data)
    assert chunks[0][0] == b"IHDR"
    assert chunks[-1] == (b"IEND", b"")
    width, height, bits, colour, _, _, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (bits, colour, interlace) == (8, 2, 0)
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    stride = 1 + 3 * width
    assert len(raw) == height * stride
    rows = [raw[y * stride : (y + 1) * stride] for y in range(height)]
    assert all(row[0] == 0 for row in rows)
    return width, height, [row[1:] for row in rows]


def screenshot_paths(result: pytest.RunResult) -> list[Path]:
    """The screenshots named in the inner run's report, in the order shown."""
    return [Path(p) for p in re.findall(r"^(/\S+\.png)$", result.stdout.str(), re.MULTILINE)]


@pytest.fixture(name="suite")
def _suite(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> pytest.Pytester:
    """An inner suite's directory: no DISPLAY, the helpers, and X11PT_OUT for its records."""
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("XAUTHORITY", raising=False)
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setenv("X11PT_OUT", str(out))
    pytester.makepyfile(helpers=HELPERS)
    return pytester


def recorded(name: str) -> str:
    """A file the inner tests wrote."""
    return (Path(os.environ["X11PT_OUT"]) / name).read_text()


def test_the_plugin_imports_none_of_the_library_until_a_fixture_is_used(
    suite: pytest.Pytester,
) -> None:
    """
    pytest loads the plugin in every run: that run imports no module of the library.

    In a fresh interpreter, importing the plugin loads only the package's lazy front door; a
    whole pytest run of tests that use no fixture (the plugin configured, the screenshot
    hook called for a failure) loads nothing more.
    """
    probe = (
        "import sys, x11passthrough.pytest_plugin; "
        "print(sorted(m for m in sys.modules if m.startswith(('x11passthrough', 'Xlib'))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "['x11passthrough', 'x11passthrough.pytest_plugin']"
    suite.makepyfile(
        test_plain="""
        import sys

        def loaded():
            return sorted(m for m in sys.modules if m.startswith(("x11passthrough", "Xlib")))

        def test_fails():
            assert False

        def test_after_a_failure():
            assert loaded() == ["x11passthrough", "x11passthrough.pytest_plugin"], loaded()
        """
    )
    result = run(suite)
    result.assert_outcomes(passed=1, failed=1)


def test_the_package_says_it_is_a_pytest_plugin() -> None:
    """The `Framework :: Pytest` classifier, beside the `pytest11` entry point."""
    metadata = importlib.metadata.metadata("x11passthrough")
    assert "Framework :: Pytest" in metadata.get_all("Classifier", [])
    plugins = importlib.metadata.entry_points(group="pytest11")
    assert [p.value for p in plugins if p.name == "x11passthrough"] == [
        "x11passthrough.pytest_plugin"
    ]


def test_fixtures_lend_the_display(
    suite: pytest.Pytester, xvfb: XServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With DISPLAY set, both fixtures lend it; `x11passthrough_bind` means TCP there."""
    suite.makepyfile(test_lend=LENDING_TESTS)
    suite.makeini("[pytest]\nx11passthrough_bind = 127.0.0.1\n")
    monkeypatch.setenv("DISPLAY", xvfb.display)
    monkeypatch.setenv("XAUTHORITY", str(xvfb.xauthority))
    run(suite).assert_outcomes(passed=2)


def test_without_a_display_the_tests_skip_at_the_test(suite: pytest.Pytester) -> None:
    """
    No DISPLAY: the tests that need one are skipped, with a message naming every fix.

    The skip is reported at the test, never inside the plugin: at the test's line when a
    fixture skips it (pytest uses the item's location for a fixture's skip), at the line that
    called the factory when the body does.
    """
    suite.makepyfile(test_skips=SKIP_TESTS)
    result = run(suite, "-rs")
    result.assert_outcomes(skipped=3)
    reason = (
        "x11passthrough: no DISPLAY is set for this test run: set DISPLAY, pass "
        "--x11passthrough-xvfb (a private Xvfb), or use pytest-xvfb; "
        "--x11passthrough-required fails instead of skipping"
    )
    lines = [line for line in result.stdout.lines if line.startswith("SKIPPED")]
    assert sorted(lines) == sorted(
        f"SKIPPED [1] test_skips.py:{line}: {reason}" for line in (1, 5, 7)
    )
    assert "pytest_plugin" not in result.stdout.str()


def test_required_display_fails_instead(suite: pytest.Pytester) -> None:
    """
    --x11passthrough-required turns the skips into failures naming the reason.

    The fixture's failure is a setup error of the test using it; the factory called in a test
    body fails that test.
    """
    suite.makepyfile(test_lend=LENDING_TESTS)
    result = run(suite, "--x11passthrough-required")
    result.assert_outcomes(failed=1, errors=1)
    result.stdout.fnmatch_lines(
        ["x11passthrough: no DISPLAY is set (--x11passthrough-required): set DISPLAY, *"]
    )


def test_a_dead_display_fails_with_a_one_line_reason(
    suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A DISPLAY with no server behind it fails the tests with the reason, not a traceback."""
    number = free_display()
    suite.makepyfile(test_lend=SKIP_TESTS)
    monkeypatch.setenv("DISPLAY", f":{number}")
    result = run(suite, "--x11passthrough-xvfb")
    result.assert_outcomes(failed=1, errors=2)
    reasons = [line for line in result.stdout.lines if line.startswith("x11passthrough: ")]
    assert len(reasons) == 3
    for reason in reasons:
        assert reason.startswith(f"x11passthrough: no X server answers for display ':{number}'")
        assert "tried: unix:" in reason
        assert "is DISPLAY right?" in reason
    output = result.stdout.str()
    assert "Traceback" not in output
    assert "_passthrough.py" not in output
    assert "x11passthrough screenshot" not in output  # nothing to take a screenshot of


def test_a_private_xvfb_is_lent_where_no_display_is_set(suite: pytest.Pytester) -> None:
    """
    `x11passthrough_xvfb = true`: a real Xvfb of the configured size, lent through real relays.

    Both transports reach it from the host, the session passthrough is one for the run, and
    the server is gone when the run ends.
    """
    require_executables("xdpyinfo")
    suite.makepyfile(test_private=XVFB_TESTS)
    suite.makeini(
        "[pytest]\nx11passthrough_xvfb = true\nx11passthrough_xvfb_screen = 640x480x24\n"
    )
    run(suite).assert_outcomes(passed=4)
    assert process_gone(int(recorded("xvfb.pid")))


def test_a_private_xvfb_that_cannot_start_fails_the_tests(
    suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """No Xvfb on PATH: each test that needs the display fails with the install hint."""
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    suite.makepyfile(test_lend=LENDING_TESTS)
    result = run(suite, "--x11passthrough-xvfb")
    result.assert_outcomes(failed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "x11passthrough: --x11passthrough-xvfb: cannot start a private X server: 'Xvfb' "
            "is not on PATH; install it *"
        ]
    )
    assert "x11passthrough screenshot" not in result.stdout.str()


def test_a_display_that_is_set_wins_over_the_private_xvfb(suite: pytest.Pytester) -> None:
    """
    A plugin that sets DISPLAY in its pytest_configure (as pytest-xvfb does) composes.

    With --x11passthrough-xvfb its display is lent, and no private Xvfb starts.
    """
    require_executables("xdpyinfo")
    suite.makeconftest(STANDIN_CONFTEST)
    suite.makepyfile(test_standin=STANDIN_TESTS)
    run(suite, "--x11passthrough-xvfb").assert_outcomes(passed=1)


def test_each_xdist_worker_gets_its_own_xvfb(suite: pytest.Pytester) -> None:
    """
    `-n 2 --x11passthrough-xvfb`: one private Xvfb per worker, each its own display.

    Both workers write their screenshots into `x11passthrough_screenshot_dir`.
    """
    require(
        "pytest-xdist",
        importlib.util.find_spec("xdist") is not None,
        "install the tests dependency group",
    )
    suite.makepyfile(test_xdist=XDIST_TESTS)
    suite.makeini("[pytest]\nx11passthrough_screenshot_dir = shots\n")
    run(suite, "-n", "2", "--x11passthrough-xvfb").assert_outcomes(passed=8, failed=1)
    seen: dict[str, set[tuple[str, int]]] = {}
    for n in range(8):
        worker, display, pid = recorded(f"{n}.txt").split()
        seen.setdefault(worker, set()).add((display, int(pid)))
    assert sorted(seen) == ["gw0", "gw1"]
    assert all(len(servers) == 1 for servers in seen.values()), seen
    (first, first_pid), (second, second_pid) = (min(s) for s in seen.values())
    assert first != second
    assert first_pid != second_pid
    assert process_gone(first_pid)
    assert process_gone(second_pid)
    shot = suite.path / "shots" / "test_xdist.py-test_fails.png"
    assert read_png(shot)[:2] == (1280, 1024)


def test_a_failing_test_gets_a_screenshot_of_the_lent_display(suite: pytest.Pytester) -> None:
    """
    A failure in the body or in a fixture's setup attaches a PNG of the lent display's screen.

    The path is a report section and a JUnit XML property; the PNG is valid, of the screen's
    size, and shows what the test drew. Passing tests and tests without the fixtures get none.
    """
    require_executables("xsetroot")
    suite.makepyfile(test_shots=SCREENSHOT_TESTS)
    suite.makeini("[pytest]\nx11passthrough_xvfb_screen = 320x240x24\n")
    xml = suite.path / "report.xml"
    result = run(suite, "--x11passthrough-xvfb", f"--junitxml={xml}")
    result.assert_outcomes(passed=1, failed=2, errors=1)
    assert result.stdout.str().count("x11passthrough screenshot") == 2
    shots = {p.name.removeprefix("test_shots.py-"): p for p in screenshot_paths(result)}
    assert sorted(shots) == ["test_body_fails.png", "test_setup_fails.png"]
    colours = {"test_body_fails.png": b"\x00\xff\x00", "test_setup_fails.png": b"\xff\x00\x00"}
    for name, path in shots.items():
        # In pytest's base temporary directory, which pytester puts in its own.
        assert path.parent.name == "x11passthrough-screenshots"
        assert path.is_relative_to(suite.path)
        width, height, rows = read_png(path)
        assert (width, height) == (320, 240)
        assert set(rows) == {colours[name] * width}
    report = ElementTree.parse(xml).getroot()  # noqa: S314 - pytest's own report
    properties = {
        case.get("name"): [p.get("value") for p in case.iter("property")]
        for case in report.iter("testcase")
    }
    assert properties == {
        "test_body_fails": [str(shots["test_body_fails.png"])],
        "test_setup_fails": [str(shots["test_setup_fails.png"])],
        "test_passes": [],
        "test_fails_without_the_fixtures": [],
    }


def test_a_test_lending_two_displays_gets_a_screenshot_of_each(
    suite: pytest.Pytester, xvfb: XServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`display=` given to the factory: no skip without DISPLAY, and that display is shot too."""
    monkeypatch.setenv("X11PT_DISPLAY", xvfb.display)
    monkeypatch.setenv("X11PT_XAUTHORITY", str(xvfb.xauthority))
    suite.makepyfile(
        test_two="""
        import os

        def test_fails(x11passthrough_factory):
            x11passthrough_factory()  # the private Xvfb
            x11passthrough_factory(
                display=os.environ["X11PT_DISPLAY"], xauthority=os.environ["X11PT_XAUTHORITY"]
            )
            assert False
        """
    )
    suite.makeini("[pytest]\nx11passthrough_xvfb_screen = 320x240\n")
    result = run(suite, "--x11passthrough-xvfb")
    result.assert_outcomes(failed=1)
    shots = screenshot_paths(result)
    assert [p.name for p in shots] == [
        "test_two.py-test_fails.png",
        "test_two.py-test_fails-2.png",
    ]
    assert [read_png(p)[:2] for p in shots] == [(320, 240), (1024, 768)]


def test_a_screenshot_that_cannot_be_taken_does_not_break_the_run(
    suite: pytest.Pytester,
) -> None:
    """A screen the screenshot cannot read (depth 8, PseudoColor): the report says why."""
    suite.makepyfile(test_shots="def test_fails(x11passthrough):\n    assert False\n")
    suite.makeini("[pytest]\nx11passthrough_xvfb_screen = 320x240x8\n")
    result = run(suite, "--x11passthrough-xvfb")
    result.assert_outcomes(failed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "*- x11passthrough screenshot -*",
            "not taken: DisplayError: cannot read a screenshot of depth 8 *visual class 3*",
        ]
    )
    assert screenshot_paths(result) == []


@pytest.mark.parametrize("depth", [15, 16, 24])
def test_pytest_xvfb_screenshots_are_cropped_to_the_windows(
    suite: pytest.Pytester, depth: int
) -> None:
    """
    With pytest-xvfb (its default depth, 16; and 15, 24): the screenshot shows the windows.

    A failing test that drew two windows of known colours gets a real PNG cropped to their
    bounding box, with each window's pixels in its colour.
    """
    require(
        "pytest-xvfb",
        importlib.util.find_spec("pytest_xvfb") is not None,
        "install the tests dependency group",
    )
    suite.makepyfile(test_windows=WINDOW_TESTS)
    ini = "[pytest]\n" if depth == 16 else f"[pytest]\nxvfb_colordepth = {depth}\n"
    suite.makeini(ini)
    result = run(suite, "-p", "xvfb", pytest_xvfb=True)
    result.assert_outcomes(failed=1)
    screen = json.loads(recorded("screen.json"))
    assert screen["depth"] == depth  # pytest-xvfb's display, at the depth asked for
    [path] = screenshot_paths(result)
    width, height, rows = read_png(path)
    # Red at (40, 30) 101x50 and blue at (200, 120) 61x41: the box is (40, 30) to (261, 161).
    assert (width, height) == (221, 131)
    red, blue = b"\xff\x00\x00", b"\x00\x00\xff"
    for y in range(50):
        assert rows[y][: 101 * 3] == red * 101, f"row {y}"
    for y in range(90, 131):
        assert rows[y][160 * 3 :] == blue * 61, f"row {y}"
    corner = rows[0][220 * 3 :]  # above the blue window: the root window, neither colour
    assert corner not in (red, blue)


def test_screenshots_can_be_turned_off(suite: pytest.Pytester) -> None:
    """`x11passthrough_screenshots = false`: a failing test's report has no screenshot."""
    suite.makepyfile(test_shots="def test_fails(x11passthrough):\n    assert False\n")
    suite.makeini(
        "[pytest]\nx11passthrough_screenshots = false\nx11passthrough_xvfb_screen = 64x64\n"
    )
    result = run(suite, "--x11passthrough-xvfb")
    result.assert_outcomes(failed=1)
    assert "x11passthrough screenshot" not in result.stdout.str()


@pytest.mark.parametrize(
    ("screen", "problem"),
    [("640 by 480", "is not WIDTHxHEIGHTxDEPTH"), ("640x480x7", "depth=7 is not one of")],
)
def test_a_bad_screen_is_a_usage_error(suite: pytest.Pytester, screen: str, problem: str) -> None:
    """A bad `x11passthrough_xvfb_screen` stops the run at once, naming the key and the value."""
    suite.makepyfile(test_nothing="def test_nothing():\n    pass\n")
    suite.makeini(f"[pytest]\nx11passthrough_xvfb_screen = {screen}\n")
    result = run(suite)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*x11passthrough_xvfb_screen = {screen!r}*{problem}*"])


@pytest.mark.e2e
def test_containers_reach_each_workers_private_xvfb(
    suite: pytest.Pytester, x11_image: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    The whole story on Docker Engine: `-n 2 --x11passthrough-xvfb` with no display anywhere.

    libxcb and python-xlib clients in containers reach their worker's private Xvfb through the
    per-test and the session passthroughs (the default transport: a bind-mounted socket).
    """
    require(
        "pytest-xdist",
        importlib.util.find_spec("xdist") is not None,
        "install the tests dependency group",
    )
    monkeypatch.setenv("X11PT_IMAGE", x11_image)
    suite.makepyfile(test_containers=CONTAINER_TESTS)
    suite.makeini("[pytest]\nx11passthrough_xvfb_screen = 640x480x24\n")
    run(suite, "-n", "2", "--x11passthrough-xvfb").assert_outcomes(passed=4)
