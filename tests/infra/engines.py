"""
Container engines for the tests: Podman rootful and rootless, beside the Docker engine.

``scripts/setup-engines`` prepares the machine (run it once as root): the user :data:`TEST_USER`
with subordinate id ranges, its ``XDG_RUNTIME_DIR``, and the test ``containers.conf`` at
:data:`CONTAINERS_CONF`. Podman reads that file only where the environment variable
``CONTAINERS_CONF`` names it, which every helper here sets, so the system's default configuration
stays untouched. This module has no pytest fixtures; the helpers work from scripts too.

Pieces:

- :func:`run_podman`: run a podman command as root, or as :data:`TEST_USER` through
  ``setpriv`` with a clean environment.
- :func:`copy_docker_image`: ``docker save`` into ``podman load``, skipped when Podman already
  holds the same image id under that name.
- :func:`podman_works`: whether an engine runs a container at all, and why not.
- :class:`PodmanService`: ``podman system service`` on a private socket, ready once ``/_ping``
  answers, and stopped again.
- :func:`unix_http_get`: one HTTP GET over a UNIX socket (engine APIs).
"""

from __future__ import annotations

import contextlib
import fcntl
import http.client
import itertools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from x11passthrough._engine import UnixHTTPConnection


#: The second local user that runs the rootless engines (made by ``scripts/setup-engines``).
TEST_USER = "x11pt"
#: The test configuration for Podman; applies where ``CONTAINERS_CONF`` names it.
CONTAINERS_CONF = Path("/etc/x11passthrough-tests/containers.conf")
#: The script that prepares the machine.
SETUP_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "setup-engines"
#: The PATH given to rootless commands.
ROOTLESS_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: Where rootful API services put their sockets.
ROOTFUL_SOCKET_DIR = Path("/run/x11passthrough-tests")

_service_numbers = itertools.count()


class EngineError(RuntimeError):
    """A container engine command failed, or the machine is not prepared for it."""


@dataclass(frozen=True)
class RootlessUser:
    """The account that runs rootless engines.

    Attributes:
        name: The login name.
        uid: Its user id.
        gid: Its primary group id.
        home: Its home directory.
    """

    name: str
    uid: int
    gid: int
    home: Path

    @property
    def runtime_dir(self) -> Path:
        """The user's ``XDG_RUNTIME_DIR``, ``/run/user/<uid>``."""
        return Path("/run/user") / str(self.uid)


def rootless_user(name: str = TEST_USER) -> RootlessUser:
    """Look up the rootless test user and check that the machine is prepared for it.

    Args:
        name: The login name.

    Returns:
        The user.

    Raises:
        EngineError: The user, its runtime directory or the test ``containers.conf`` is missing
            (run ``scripts/setup-engines`` as root).
    """
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise EngineError(f"no user {name!r}: run {SETUP_SCRIPT} as root") from None
    user = RootlessUser(entry.pw_name, entry.pw_uid, entry.pw_gid, Path(entry.pw_dir))
    try:
        info = user.runtime_dir.stat()
    except FileNotFoundError:
        raise EngineError(f"{user.runtime_dir} is missing: run {SETUP_SCRIPT} as root") from None
    if info.st_uid != user.uid:
        raise EngineError(f"{user.runtime_dir} is not owned by {name}: run {SETUP_SCRIPT}")
    if not CONTAINERS_CONF.is_file():
        raise EngineError(f"{CONTAINERS_CONF} is missing: run {SETUP_SCRIPT} as root")
    return user


def rootful_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for rootful podman: the given one (default: ours) and the test config.

    Args:
        base: The environment to start from; ``os.environ`` when None.

    Returns:
        A new environment with ``CONTAINERS_CONF`` set.
    """
    env = dict(os.environ if base is None else base)
    env["CONTAINERS_CONF"] = str(CONTAINERS_CONF)
    return env


def rootless_env(user: RootlessUser) -> dict[str, str]:
    """A clean environment for the rootless user, as a login would give it.

    Nothing of the caller's environment is passed on (no ``DOCKER_HOST``, ``TMPDIR``, ...).

    Args:
        user: The rootless user.

    Returns:
        ``HOME``, ``USER``, ``LOGNAME``, ``PATH``, ``XDG_RUNTIME_DIR``, ``CONTAINERS_CONF`` and
        ``LANG``.
    """
    return {
        "HOME": str(user.home),
        "USER": user.name,
        "LOGNAME": user.name,
        "PATH": ROOTLESS_PATH,
        "XDG_RUNTIME_DIR": str(user.runtime_dir),
        "CONTAINERS_CONF": str(CONTAINERS_CONF),
        "LANG": "C.UTF-8",
    }


def as_user_argv(user: RootlessUser, argv: Sequence[str]) -> list[str]:
    """Wrap a command so that it runs as ``user`` (``setpriv``, with the user's groups).

    Only root can use this. The environment is whatever the caller passes to the process; give it
    :func:`rootless_env`.

    Args:
        user: The user to become.
        argv: The command.

    Returns:
        The wrapped command.
    """
    return [
        "setpriv",
        f"--reuid={user.uid}",
        f"--regid={user.gid}",
        "--init-groups",
        "--",
        *argv,
    ]


def podman_invocation(
    args: Sequence[str], *, rootless: bool, user: RootlessUser | None = None
) -> tuple[list[str], dict[str, str], Path | None]:
    """The command line, environment and working directory for one podman command.

    Args:
        args: The podman arguments (without ``podman``).
        rootless: Run as the rootless user instead of root.
        user: The rootless user; :func:`rootless_user` when None.

    Returns:
        ``(argv, env, cwd)``; cwd is None for rootful commands.
    """
    argv = ["podman", *args]
    if not rootless:
        return argv, rootful_env(), None
    who = user or rootless_user()
    return as_user_argv(who, argv), rootless_env(who), who.home


def run_podman(
    args: Sequence[str],
    *,
    rootless: bool = False,
    check: bool = True,
    timeout: float = 120,
    input_text: str | None = None,
    user: RootlessUser | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run one podman command rootful (as root) or rootless (as :data:`TEST_USER`).

    Args:
        args: The podman arguments, e.g. ``["run", "--rm", image, "true"]``.
        rootless: Run as the rootless user instead of root.
        check: Raise on a non-zero exit.
        timeout: Seconds before the command is killed.
        input_text: Standard input; none when None.
        user: The rootless user; :func:`rootless_user` when None.

    Returns:
        The finished process, output captured as text.

    Raises:
        EngineError: With ``check``, the command exited non-zero (the message has its stderr).
    """
    argv, env, cwd = podman_invocation(args, rootless=rootless, user=user)
    result = subprocess.run(
        argv,
        env=env,
        cwd=cwd,
        input=input_text,
        stdin=None if input_text is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and result.returncode != 0:
        mode = "rootless" if rootless else "rootful"
        raise EngineError(
            f"{mode} podman {' '.join(args)} exited {result.returncode}: {result.stderr.strip()}"
        )
    return result


def docker_image_id(image: str) -> str:
    """The id of a Docker image, without the ``sha256:`` prefix.

    Args:
        image: An image name or id.

    Returns:
        The hex id.

    Raises:
        EngineError: Docker does not have the image.
    """
    result = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{.Id}}", image],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if result.returncode != 0:
        raise EngineError(f"docker has no image {image!r}: {result.stderr.strip()}")
    return result.stdout.strip().removeprefix("sha256:")


def podman_image_id(image: str, *, rootless: bool) -> str | None:
    """The id of an image in Podman's storage, or None when it has none by that name.

    Args:
        image: An image name or id.
        rootless: Look in the rootless user's storage instead of root's.

    Returns:
        The hex id, or None.
    """
    result = run_podman(
        ["image", "inspect", "--format", "{{.Id}}", image], rootless=rootless, check=False
    )
    if result.returncode != 0:
        return None
    return result.stdout.strip() or None


def podman_name(image: str) -> str:
    """The name Podman gives an image that ``docker save`` wrote under ``image``.

    Docker's short names (``busybox:1``) are read by Podman as ``localhost/...`` when loaded from
    an archive whose name has no registry part.

    Args:
        image: A Docker image name with a tag.

    Returns:
        The name to look the image up by in Podman.
    """
    first = image.split("/", 1)[0]
    if "/" in image and ("." in first or ":" in first or first == "localhost"):
        return image
    return f"localhost/{image}"


@contextlib.contextmanager
def _load_lock(rootless: bool) -> Iterator[None]:
    """Serialize image copies into one engine's storage (e.g. between pytest-xdist workers)."""
    name = "rootless" if rootless else "rootful"
    path = Path(tempfile.gettempdir()) / f"x11passthrough-podman-load-{name}.lock"
    with path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def copy_docker_image(image: str, *, rootless: bool, timeout: float = 300) -> str:
    """Make a Docker image available to Podman (``docker save IMAGE | podman load``).

    Nothing is copied when Podman already has an image of the same id under that name: Podman's
    image id is the id of the image's configuration, as Docker's is, so it stays the same across
    the copy. An image of the same id under another name only gets the name (``podman tag``).
    After a copy, the image that had the name before is removed unless something still uses it.

    Args:
        image: A Docker image name with a tag (not a bare id: Podman would get no name).
        rootless: Copy into the rootless user's storage instead of root's.
        timeout: Seconds the copy may take.

    Returns:
        The image id (hex, no ``sha256:``).

    Raises:
        EngineError: Docker has no such image, or the copy failed or gave another id.
    """
    want = docker_image_id(image)
    name = podman_name(image)
    with _load_lock(rootless):
        before = podman_image_id(name, rootless=rootless)
        if before == want:
            return want
        if podman_image_id(want, rootless=rootless) == want:
            run_podman(["tag", want, name], rootless=rootless)
            return want
        argv, env, cwd = podman_invocation(["load", "--quiet"], rootless=rootless)
        with subprocess.Popen(
            ["docker", "save", image], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        ) as save:
            assert save.stdout is not None
            load = subprocess.run(
                argv,
                env=env,
                cwd=cwd,
                stdin=save.stdout,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
            save.stdout.close()
            save_err = save.stderr.read().decode(errors="replace") if save.stderr else ""
            save_rc = save.wait(timeout=timeout)
        if save_rc != 0:
            raise EngineError(f"docker save {image} exited {save_rc}: {save_err.strip()}")
        if load.returncode != 0:
            raise EngineError(f"podman load exited {load.returncode}: {load.stderr.strip()}")
        got = podman_image_id(name, rootless=rootless)
        if got != want:
            raise EngineError(f"podman load of {image} gave {name} id {got}, not {want}")
        if before is not None:
            # The image that had the name before, unless other names or containers still use it.
            run_podman(["image", "rm", before], rootless=rootless, check=False)
        return want


@dataclass(frozen=True)
class EngineStatus:
    """Whether an engine ran a container.

    Attributes:
        works: The container ran and exited 0.
        detail: Why not (the engine's error message), or ``"ok"``.
    """

    works: bool
    detail: str

    def __bool__(self) -> bool:
        return self.works


def podman_works(
    image: str, *, rootless: bool, network: str | None = "none", timeout: float = 60
) -> EngineStatus:
    """Run ``podman run --rm IMAGE true`` to see whether an engine runs containers.

    Args:
        image: An image already in that engine's storage (see :func:`copy_docker_image`).
        rootless: Check the rootless engine instead of the rootful one.
        network: The ``--network`` value; ``"none"`` by default, because the rootless engine's
            default network (slirp4netns) needs ``/dev/net/tun``, which is for root only unless
            ``scripts/setup-engines --tun`` ran. None for the engine's default network.
        timeout: Seconds before the check counts as failed.

    Returns:
        The result, true when the container ran.
    """
    args = ["run", "--rm"]
    if network is not None:
        args.append(f"--network={network}")
    try:
        result = run_podman(
            [*args, image, "true"], rootless=rootless, check=False, timeout=timeout
        )
    except (EngineError, OSError, subprocess.TimeoutExpired) as error:
        return EngineStatus(works=False, detail=str(error))
    if result.returncode != 0:
        return EngineStatus(
            works=False, detail=result.stderr.strip() or f"exit {result.returncode}"
        )
    return EngineStatus(works=True, detail="ok")


@dataclass(frozen=True)
class HttpAnswer:
    """An engine API answer.

    Attributes:
        status: The HTTP status code.
        headers: The response headers (names as sent).
        body: The response body.
    """

    status: int
    headers: dict[str, str]
    body: bytes


def unix_http_get(socket_path: Path | str, path: str, *, timeout: float = 10) -> HttpAnswer:
    """Send one ``GET`` over a UNIX socket and read the whole answer.

    Args:
        socket_path: The engine's socket, e.g. ``/var/run/docker.sock``.
        path: The request path, e.g. ``/_ping`` or ``/v4.0.0/libpod/info``.
        timeout: Seconds for connecting and for each read.

    Returns:
        The answer.

    Raises:
        OSError: Nothing listens there, or the connection broke.
        http.client.HTTPException: The answer was not HTTP.
    """
    connection = UnixHTTPConnection(str(socket_path), timeout)
    try:
        connection.request("GET", path, headers={"Host": "localhost"})
        response = connection.getresponse()
        body = response.read()
        return HttpAnswer(response.status, dict(response.getheaders()), body)
    finally:
        connection.close()


def _pings(socket_path: Path) -> bool:
    """Whether an engine answers ``GET /_ping`` with 200 on this socket."""
    try:
        answer = unix_http_get(socket_path, "/_ping", timeout=2)
    except (OSError, http.client.HTTPException):
        return False
    return answer.status == 200 and answer.body.strip() == b"OK"


class PodmanService:
    """A ``podman system service --time=0`` on a private UNIX socket, rootful or rootless.

    Use it as a context manager, or call :meth:`start` and :meth:`stop`::

        with PodmanService(rootless=True) as service:
            unix_http_get(service.socket_path, "/version")

    The socket is owned by the engine's user with mode 0600 (root reaches it either way). The
    service's output goes to :attr:`log_path`.

    Attributes:
        rootless: Whether it runs as the rootless user.
        socket_path: Where it listens.
        log_path: Its stdout and stderr.
    """

    def __init__(
        self,
        *,
        rootless: bool,
        socket_path: Path | None = None,
        start_timeout: float = 30,
        user: RootlessUser | None = None,
    ) -> None:
        self.rootless = rootless
        self._user = (user or rootless_user()) if rootless else None
        self._start_timeout = start_timeout
        number = next(_service_numbers)
        name = f"x11pt-podman-{os.getpid()}-{number}"
        if socket_path is None:
            directory = self._user.runtime_dir if self._user else ROOTFUL_SOCKET_DIR
            socket_path = directory / f"{name}.sock"
        self.socket_path = socket_path
        self.log_path = Path(tempfile.gettempdir()) / f"{name}.log"
        self._process: subprocess.Popen[bytes] | None = None

    #: What the service is called in messages.
    what = "podman system service"

    @property
    def url(self) -> str:
        """The socket as a ``unix://`` URL (for ``DOCKER_HOST`` or ``podman --url``)."""
        return f"unix://{self.socket_path}"

    def _invocation(self) -> tuple[list[str], dict[str, str], Path | None]:
        return podman_invocation(
            ["system", "service", "--time=0", self.url], rootless=self.rootless, user=self._user
        )

    @property
    def pid(self) -> int | None:
        """The service's process id while it runs (``setpriv`` execs podman in place)."""
        return self._process.pid if self._process else None

    def start(self) -> None:
        """Start the service and wait until ``GET /_ping`` answers on its socket.

        Raises:
            EngineError: It exited, or did not answer within the start timeout; it is stopped
                and the message has the end of its log.
        """
        if self._process is not None:
            raise EngineError("the service is already running")
        if not self.rootless:
            self.socket_path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        self.socket_path.unlink(missing_ok=True)
        argv, env, cwd = self._invocation()
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(
                argv,
                env=env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + self._start_timeout
        delay = 0.005
        while not _pings(self.socket_path):
            if self._process.poll() is not None:
                code = self._process.returncode
                self._process = None
                raise EngineError(f"{self.what} exited {code}: {self._log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise EngineError(
                    f"{self.what} did not answer on {self.socket_path} within "
                    f"{self._start_timeout} s: {self._log_tail()}"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    def stop(self, timeout: float = 20) -> None:
        """Stop the service (SIGTERM, then SIGKILL to its process group) and remove its socket.

        Args:
            timeout: Seconds to wait for it to end after SIGTERM.
        """
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=timeout)
        self.socket_path.unlink(missing_ok=True)

    def _log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> PodmanService:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


#: Debian's script that starts dockerd in rootlesskit's namespaces.
DOCKERD_ROOTLESS = Path("/usr/share/docker.io/contrib/dockerd-rootless.sh")


class RootlessDockerd(PodmanService):
    """
    A rootless Docker engine of :data:`TEST_USER` (``dockerd-rootless.sh``), for as long as needed.

    It runs without a network of its own (rootlesskit's host network, no port driver, no
    bridge, no iptables): the only setup that needs no ``/dev/net/tun`` for the user, which
    these machines keep root's. Containers then have a loopback only, which is all the UNIX
    transport needs. Its socket is ``$XDG_RUNTIME_DIR/docker.sock``, where Docker's client and
    our engine detection look for a rootless engine.
    """

    what = "rootless dockerd"

    def __init__(self, *, start_timeout: float = 60, user: RootlessUser | None = None) -> None:
        who = user or rootless_user()
        super().__init__(
            rootless=True,
            socket_path=who.runtime_dir / "docker.sock",
            start_timeout=start_timeout,
            user=who,
        )

    def _invocation(self) -> tuple[list[str], dict[str, str], Path | None]:
        if not DOCKERD_ROOTLESS.exists():
            raise EngineError(f"{DOCKERD_ROOTLESS} is missing: install docker.io and rootlesskit")
        assert self._user is not None
        env = rootless_env(self._user)
        env["DOCKERD_ROOTLESS_ROOTLESSKIT_NET"] = "host"
        env["DOCKERD_ROOTLESS_ROOTLESSKIT_PORT_DRIVER"] = "none"
        argv = [str(DOCKERD_ROOTLESS), "--iptables=false", "--ip6tables=false", "--bridge=none"]
        return as_user_argv(self._user, argv), env, self._user.home

    def docker(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run a ``docker`` command against this engine (as root, through its socket)."""
        return subprocess.run(
            ["docker", *args],
            env={**os.environ, "DOCKER_HOST": self.url},
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )

    def load(self, image: str) -> None:
        """Copy `image` from the rootful engine (``docker save`` into ``docker load``)."""
        if self.docker("image", "inspect", image).returncode == 0:
            ours = self.docker("image", "inspect", "--format", "{{.Id}}", image).stdout.strip()
            if ours.removeprefix("sha256:") == docker_image_id(image):
                return
        with subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE) as save:
            loaded = subprocess.run(
                ["docker", "load", "--quiet"],
                stdin=save.stdout,
                env={**os.environ, "DOCKER_HOST": self.url},
                capture_output=True,
                text=True,
                check=False,
                timeout=300,
            )
        if save.returncode != 0 or loaded.returncode != 0:
            raise EngineError(f"copying {image} into rootless Docker failed: {loaded.stderr}")


#: The pure-Python packages another user's ``/usr/bin/python3`` needs to run the library.
LIBRARY_PACKAGES = ("x11passthrough", "attr", "attrs", "Xlib", "six")


def copy_library(directory: Path) -> Path:
    """
    Copy the library and its dependencies, as this process imports them, into `directory`.

    Everything is made readable by every user, so that another user's ``/usr/bin/python3``
    runs the code under test with ``PYTHONPATH=directory`` (this checkout and the test
    virtual environment may sit where that user cannot read).

    Returns:
        `directory`.
    """
    import importlib.util

    directory.mkdir(parents=True, exist_ok=True)
    for name in LIBRARY_PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise EngineError(f"cannot find the package {name} to copy for another user")
        origin = Path(spec.origin)
        if origin.name == "__init__.py":
            shutil.copytree(
                origin.parent,
                directory / name,
                ignore=shutil.ignore_patterns("__pycache__"),
                dirs_exist_ok=True,
            )
        else:
            shutil.copy2(origin, directory / origin.name)
    for path in [directory, *directory.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return directory
