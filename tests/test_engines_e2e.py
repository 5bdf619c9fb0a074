"""
Podman rootful and rootless, and rootless Docker: real engines, real containers.

Rootless engines run as the second local user (:data:`infra.engines.TEST_USER`, made by
``scripts/setup-engines``), and so does the passthrough that serves them: that user runs
``/usr/bin/python3 -m x11passthrough run -- ...`` with a copy of the library (this checkout may
be unreadable to it) and its own copy of the authority file, as they would on their desktop.
Rootless containers here have no network (the machine gives that user no ``/dev/net/tun``):
the UNIX transport needs none.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from x11passthrough import X11Passthrough, _engine

from infra.ci import require, require_executables
from infra.engines import (
    EngineError,
    PodmanService,
    RootlessDockerd,
    RootlessUser,
    as_user_argv,
    copy_docker_image,
    copy_library,
    podman_name,
    rootful_env,
    rootless_env,
    rootless_user,
    run_podman,
)
from infra.xvfb import XServer


pytestmark = pytest.mark.e2e
RANGE = range(850, 900)
CLIENTS = ["xdpyinfo", "xlib-probe"]
USERS = [(), ("--user", "1000:1000")]


def succeeded(result: subprocess.CompletedProcess[str], client: str) -> None:
    assert result.returncode == 0, result.stderr[-2000:]
    expected = "X.Org" if client == "xdpyinfo" else "screen 1024x768"
    assert expected in result.stdout


def podman(
    image: str, args: list[str], client: str, options: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    return run_podman(["run", "--rm", *options, *args, image, client], check=False)


# Rootful Podman ----------------------------------------------------------------------------


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize(
    "options", [*USERS, ("--network", "none"), ("--network", "host")], ids=str
)
def test_rootful_podman_on_the_unix_transport(
    xvfb: XServer, podman_image: str, client: str, options: tuple[str, ...]
) -> None:
    with X11Passthrough(
        xvfb.display, xvfb.xauthority, engine="podman", display_range=RANGE
    ) as args:
        assert args.display.startswith(":")
        succeeded(podman(podman_image, list(args), client, options), client)


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("options", USERS, ids=str)
def test_rootful_podman_on_tcp(
    xvfb: XServer, podman_image: str, client: str, options: tuple[str, ...]
) -> None:
    """
    Podman's own host.containers.internal (its default network's gateway, an address that
    exists only while a container uses the network), and no --add-host Podman would refuse.
    """
    with X11Passthrough(
        xvfb.display, xvfb.xauthority, engine="podman", transport="tcp", display_range=RANGE
    ) as args:
        assert args.display.startswith("tcp/host.containers.internal:")
        assert not any(a.startswith("--add-host") for a in args)
        assert dict(args.extra_hosts) == {}
        succeeded(podman(podman_image, list(args), client, options), client)


@pytest.mark.parametrize("rootless", [False, True], ids=["rootful", "rootless"])
def test_podman_is_detected_over_its_api(rootless: bool) -> None:
    """A Podman service answers as Podman (Libpod), rootless by its socket's owner."""
    require_executables("podman")
    try:
        service = PodmanService(rootless=rootless)
    except EngineError as e:
        require("the rootless user", False, str(e))
        raise
    with service:
        found = _engine.detect(environ={"DOCKER_HOST": service.url})
    assert found is not None
    assert found.kind == "podman"
    assert found.rootless is rootless
    assert found.same_kernel


def test_the_cli_runs_podman_with_podman_arguments(xvfb: XServer, podman_image: str) -> None:
    """``run -- podman run ...`` reads its engine from the command: Podman's arguments."""
    result = subprocess.run(
        [
            *(sys.executable, "-m", "x11passthrough", "--display", xvfb.display),
            *("--xauthority", str(xvfb.xauthority), "--transport", "tcp", "run", "--"),
            *("podman", "run", "--rm", podman_image, "xdpyinfo"),
        ],
        env=rootful_env(),
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    succeeded(result, "xdpyinfo")
    assert "host.containers.internal" in result.stdout


# Rootless engines, as the second user ----------------------------------------------------------


@pytest.fixture(scope="module", name="other_user")
def _other_user() -> RootlessUser:
    require("root (to act as the second user)", os.geteuid() == 0, "run the e2e tests as root")
    require_executables("setpriv")
    try:
        return rootless_user()
    except EngineError as e:
        require("the rootless user", False, str(e))
        raise


@pytest.fixture(scope="module", name="library")
def _library() -> Iterator[Path]:
    """The library and its dependencies where any user can read them (``/var/tmp``)."""
    directory = Path(tempfile.mkdtemp(prefix="x11pt-lib-", dir="/var/tmp"))
    directory.chmod(0o755)
    try:
        yield copy_library(directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(name="their_authority")
def _their_authority(xvfb: XServer, other_user: RootlessUser) -> Iterator[Path]:
    """The user's own copy of the display's authority file (0600, theirs)."""
    directory = other_user.runtime_dir / f"x11pt-auth-{os.getpid()}-{xvfb.number}"
    directory.mkdir(mode=0o700)
    os.chown(directory, other_user.uid, other_user.gid)
    path = directory / "Xauthority"
    shutil.copyfile(xvfb.xauthority, path)
    path.chmod(0o600)
    os.chown(path, other_user.uid, other_user.gid)
    yield path
    shutil.rmtree(directory)


def as_them(
    user: RootlessUser, library: Path, argv: list[str], **env: str
) -> subprocess.CompletedProcess[str]:
    environment = {**rootless_env(user), "PYTHONPATH": str(library), **env}
    return subprocess.run(
        as_user_argv(user, argv),
        env=environment,
        cwd=user.home,
        capture_output=True,
        text=True,
        check=False,
        timeout=180,
    )


@attrs.frozen
class Them:
    """The second user at their desk: their display's authority file, the library."""

    user: RootlessUser
    library: Path
    server: XServer
    authority: Path

    def run(
        self, command: list[str], *options: str, **env: str
    ) -> subprocess.CompletedProcess[str]:
        """``x11passthrough [OPTIONS] run -- COMMAND`` as the other user, with their file."""
        cli = ["/usr/bin/python3", "-m", "x11passthrough", "--display", self.server.display]
        cli += ["--xauthority", str(self.authority), *options, "run", "--", *command]
        return as_them(self.user, self.library, cli, **env)


@pytest.fixture(name="them")
def _them(xvfb: XServer, other_user: RootlessUser, library: Path, their_authority: Path) -> Them:
    return Them(other_user, library, xvfb, their_authority)


@pytest.fixture(scope="module", name="rootless_podman_image")
def _rootless_podman_image(x11_image: str, other_user: RootlessUser) -> str:
    require_executables("podman")
    copy_docker_image(x11_image, rootless=True)
    return podman_name(x11_image)


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("options", USERS, ids=str)
def test_rootless_podman(
    them: Them, rootless_podman_image: str, client: str, options: tuple[str, ...]
) -> None:
    command = ["podman", "run", "--rm", "--network", "none", *options, rootless_podman_image]
    succeeded(them.run([*command, client]), client)


@pytest.fixture(scope="module", name="rootless_docker")
def _rootless_docker(other_user: RootlessUser, x11_image: str) -> Iterator[RootlessDockerd]:
    require_executables("docker", "rootlesskit")
    engine = RootlessDockerd(user=other_user)
    try:
        engine.start()
    except EngineError as e:
        require("rootless Docker", False, str(e))
        raise
    try:
        engine.load(x11_image)
        yield engine
    finally:
        engine.stop()


def test_rootless_docker_is_detected(
    rootless_docker: RootlessDockerd, other_user: RootlessUser, library: Path
) -> None:
    probe = "from x11passthrough import _engine; e = _engine.detect(); print(e.kind, e.rootless)"
    result = as_them(
        other_user, library, ["/usr/bin/python3", "-c", probe], DOCKER_HOST=rootless_docker.url
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["docker", "True"]


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("options", USERS, ids=str)
def test_rootless_docker(
    them: Them,
    rootless_docker: RootlessDockerd,
    x11_image: str,
    client: str,
    options: tuple[str, ...],
) -> None:
    command = ["docker", "run", "--rm", *options, x11_image, client]
    succeeded(them.run(command, DOCKER_HOST=rootless_docker.url), client)


def test_rootless_docker_refuses_tcp_before_the_container_runs(
    them: Them, rootless_docker: RootlessDockerd, x11_image: str
) -> None:
    """Its containers cannot reach docker0: a one-line error naming the fix, exit status 125."""
    command = ["docker", "run", "--rm", x11_image, "xdpyinfo"]
    result = them.run(command, "--transport", "tcp", DOCKER_HOST=rootless_docker.url)
    assert result.returncode == 125, result.stdout + result.stderr
    assert result.stderr.startswith("x11passthrough: error: --transport tcp with rootless Docker")
    assert "use --transport unix (the default)" in result.stderr


def test_doctor_finds_a_rootless_podman_and_probes_with_it(
    them: Them, rootless_podman_image: str
) -> None:
    """A rootless Podman user without --engine: doctor asks Podman's socket and runs podman."""
    directory = them.user.runtime_dir / "podman"
    directory.mkdir(mode=0o700, exist_ok=True)
    os.chown(directory, them.user.uid, them.user.gid)
    service = PodmanService(rootless=True, socket_path=directory / "podman.sock", user=them.user)
    argv = ["/usr/bin/python3", "-m", "x11passthrough", "--display", them.server.display]
    argv += ["--xauthority", str(them.authority), "doctor", "--image", rootless_podman_image]
    try:
        service.start()
    except EngineError as e:
        require("a rootless Podman service", False, str(e))
        raise
    try:
        result = as_them(them.user, them.library, argv)
    finally:
        service.stop()
    assert result.returncode == 0, result.stdout + result.stderr
    report = " ".join(result.stdout.split())
    assert "ok engine Podman" in report
    assert "ok container" in report
