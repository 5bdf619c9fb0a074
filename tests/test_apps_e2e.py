"""
The app matrix: real toolkits in a real Debian image open real windows through both transports.

Each app runs in a container of the distro image (:mod:`infra.distro`) as uid 1000. The host
waits for its window on the Xvfb and takes screenshots (one GetImage) until the window is
drawn. Apps that draw the same picture every time (xeyes with the pointer still, a Tk canvas)
must give the very same pixels as through the display's own socket mounted into the container
(the direct path, no relay). Screenshots are kept in the test's temporary directory.

MIT-SHM is where containers differ from local clients. Without ``--ipc host`` the relay hides
it, and x11perf measures PutImage and GetImage without failing on ShmPutImage; with ``--ipc
host`` it grants it as the server would, so Qt 5 (descriptors from ``ShmCreateSegment``), GTK
3 and Mesa (System V segments) draw through shared memory, and x11perf runs ShmPutImage.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import time

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from Xlib import X
from Xlib import display as xdisplay
from Xlib.error import XError

from x11passthrough import Transport, X11Passthrough
from x11passthrough._x11.screenshot import Screenshot, grab

from infra.ci import run_checked
from infra.xvfb import XServer, start_xvfb


pytestmark = pytest.mark.e2e
RANGE = range(800, 850)
USER = ("--user", "1000:1000", "--env", "HOME=/tmp")
ANALOGCLOCK = "/usr/lib/x86_64-linux-gnu/qt5/examples/widgets/widgets/analogclock/analogclock"
X11PERF = ("x11perf", "-repeat", "1", "-reps", "20", "-shmput500", "-putimage500", "-getimage500")
TK_SCRIPT = """
import tkinter
root = tkinter.Tk()
root.geometry("240x120+0+0")
canvas = tkinter.Canvas(root, width=240, height=120, background="white", highlightthickness=0)
canvas.pack()
canvas.create_rectangle(20, 20, 220, 100, fill="#c03020", outline="black", width=3)
canvas.create_oval(90, 30, 150, 90, fill="#2060c0")
root.mainloop()
"""


@attrs.frozen
class App:
    """An X client of the distro image and how to tell that it drew its window."""

    command: tuple[str, ...]
    #: True: the picture never changes, so it must equal the direct path's.
    same_as_direct: bool = False
    #: Fewest distinct colours of a drawn window (a blank one has 1).
    colours: int = 3


APPS = {
    "xeyes": App(("xeyes", "-geometry", "160x100+0+0"), same_as_direct=True),
    "tk": App(("python3", "-c", TK_SCRIPT), same_as_direct=True),
    "gtk3": App(("gtk3-demo",)),
    "qt5": App((ANALOGCLOCK,)),
    "glxgears": App(("glxgears", "-geometry", "200x200+0+0")),
}


@attrs.define
class Screen:
    """The module's Xvfb and a python-xlib connection of the host to it."""

    server: XServer
    display: Any
    direct_auth: Path
    shots: dict[str, Screenshot] = attrs.field(factory=dict)

    def windows(self) -> dict[int, Any]:
        """Return the viewable top-level windows by id."""
        found = {}
        for window in self.display.screen().root.query_tree().children:
            with contextlib.suppress(XError):
                if window.get_attributes().map_state == X.IsViewable:
                    found[window.id] = window
        return found


@pytest.fixture(scope="module", name="screen")
def _screen(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Screen]:
    workdir = tmp_path_factory.mktemp("apps-xvfb")
    server = start_xvfb(workdir)
    direct_auth = workdir / "direct.xauth"
    # The direct path's cookie for any host name (FamilyWild), written with the real xauth.
    listed = run_checked(
        ["xauth", "-f", str(server.xauthority), "nlist", server.display], what="xauth nlist"
    ).stdout
    run_checked(
        ["xauth", "-f", str(direct_auth), "nmerge", "-"],
        what="xauth nmerge",
        stdin_text="".join("ffff" + line[4:] + "\n" for line in listed.splitlines()),
    )
    direct_auth.chmod(0o644)
    previous = os.environ.get("XAUTHORITY")
    os.environ["XAUTHORITY"] = str(server.xauthority)
    try:
        connection = xdisplay.Display(server.display)
    finally:
        if previous is None:
            del os.environ["XAUTHORITY"]
        else:
            os.environ["XAUTHORITY"] = previous
    try:
        yield Screen(server, connection, direct_auth)
    finally:
        connection.close()
        server.stop()


def direct_args(screen: Screen) -> list[str]:
    """The display's own socket and cookie, mounted (what rocker and toolbox do)."""
    path = screen.server.unix_path
    return [
        f"--volume={path}:{path}",
        f"--volume={screen.direct_auth}:/tmp/.direct.xauth:ro",
        "--env=XAUTHORITY=/tmp/.direct.xauth",
        f"--env=DISPLAY={screen.server.display}",
    ]


@contextlib.contextmanager
def running(
    image: str, args: list[str], command: tuple[str, ...], options: tuple[str, ...] = ()
) -> Iterator[str]:
    """Run `command` in a detached container; kill it on the way out."""
    name = f"x11pt-app-{secrets.token_hex(4)}"
    run_checked(
        ["docker", "run", "-d", "--rm", "--name", name, *USER, *options, *args, image, *command],
        what="starting the app container",
    )
    try:
        yield name
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False)


def logs(name: str) -> str:
    done = subprocess.run(["docker", "logs", name], capture_output=True, text=True, check=False)
    return (done.stdout + done.stderr)[-2000:]


def drawn_window(
    screen: Screen, before: set[int], app: App, name: str, *, timeout: float = 60
) -> Screenshot:
    """Wait for the app's new window and return its first screenshot that looks drawn."""
    deadline = time.monotonic() + timeout
    last: Screenshot | None = None
    while time.monotonic() < deadline:
        new = [w for i, w in screen.windows().items() if i not in before]
        for window in new:
            with contextlib.suppress(XError):
                shot = grab(screen.display, window)
                last = shot
                if shot.colours() >= app.colours and (
                    not app.same_as_direct or stable(screen, window, shot)
                ):
                    return shot
        time.sleep(0.05)
    state = "no window" if last is None else f"a window of {last.colours()} colour(s)"
    pytest.fail(f"{app.command[0]} showed {state} within {timeout:g} s; its output: {logs(name)}")


def stable(screen: Screen, window: Any, shot: Screenshot) -> bool:
    """A static picture is finished once two screenshots 0.2 s apart agree."""
    time.sleep(0.2)
    return grab(screen.display, window) == shot


def gone(screen: Screen, before: set[int]) -> None:
    deadline = time.monotonic() + 30
    while set(screen.windows()) - before:
        assert time.monotonic() < deadline, "the app's window outlived its container"
        time.sleep(0.02)


def show(
    screen: Screen,
    image: str,
    *,
    app_name: str,
    args: list[str],
    tmp_path: Path,
    options: tuple[str, ...] = (),
    path: str = "relay",
) -> Screenshot:
    app = APPS[app_name]
    before = set(screen.windows())
    with running(image, args, app.command, options) as name:
        shot = drawn_window(screen, before, app, name)
    gone(screen, before)
    (tmp_path / f"{app_name}-{path}.png").write_bytes(shot.png())
    return shot


def direct_shot(screen: Screen, image: str, app_name: str, tmp_path: Path) -> Screenshot:
    if app_name not in screen.shots:
        screen.shots[app_name] = show(
            screen,
            image,
            app_name=app_name,
            args=direct_args(screen),
            tmp_path=tmp_path,
            path="direct",
        )
    return screen.shots[app_name]


def lend(screen: Screen, transport: Transport) -> X11Passthrough:
    return X11Passthrough(
        screen.server.display,
        screen.server.xauthority,
        transport=transport,
        display_range=RANGE,
    )


@pytest.mark.parametrize("transport", ["unix", "tcp"])
@pytest.mark.parametrize("app_name", list(APPS))
def test_app_draws_its_window(
    screen: Screen, distro_image: str, tmp_path: Path, app_name: str, transport: Transport
) -> None:
    with lend(screen, transport) as args:
        shot = show(screen, distro_image, app_name=app_name, args=list(args), tmp_path=tmp_path)
    if APPS[app_name].same_as_direct:
        assert shot == direct_shot(screen, distro_image, app_name, tmp_path)


@pytest.mark.parametrize("app_name", ["qt5", "gtk3", "glxgears"])
def test_shared_memory_apps_with_ipc_host(
    screen: Screen, distro_image: str, tmp_path: Path, app_name: str
) -> None:
    """
    With ``--ipc host`` a client's SysV segments are the X server's too, and the relay grants
    MIT-SHM: Qt 5 gets its segments as descriptors with the replies, the others attach theirs.
    """
    with lend(screen, "unix") as args:
        show(
            screen,
            distro_image,
            app_name=app_name,
            args=list(args),
            tmp_path=tmp_path,
            options=("--ipc", "host"),
        )


@pytest.mark.parametrize(
    ("transport", "options"), [("unix", ()), ("tcp", ()), ("unix", ("--ipc", "host"))]
)
def test_x11perf_images(
    screen: Screen, distro_image: str, transport: Transport, options: tuple[str, ...]
) -> None:
    """x11perf's image tests run; ShmPutImage only where the relay grants MIT-SHM."""
    with lend(screen, transport) as args:
        done = subprocess.run(
            ["docker", "run", "--rm", *USER, *options, *args, distro_image, *X11PERF],
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )
    assert done.returncode == 0, done.stderr
    assert "PutImage 500x500 square" in done.stdout
    assert "GetImage 500x500 square" in done.stdout
    assert ("ShmPutImage 500x500 square" in done.stdout) == ("--ipc" in options)
    assert "X Error" not in done.stderr


def test_the_direct_path_is_what_the_relay_is_compared_with(
    screen: Screen, distro_image: str, tmp_path: Path
) -> None:
    """The baseline itself: the mounted socket shows the Tk canvas, drawn as scripted."""
    shot = direct_shot(screen, distro_image, "tk", tmp_path)
    assert (shot.width, shot.height) == (240, 120)
    # The red rectangle's inside, well away from the outline and the oval.
    at = (40 * shot.width + 40) * 3
    assert shot.rgb[at : at + 3] == bytes.fromhex("c03020")
