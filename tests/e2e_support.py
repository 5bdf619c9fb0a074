"""
End-to-end test support: a Docker engine, a minimal X client image, network namespaces, sshd.

Everything here talks only to this machine: loopback, the docker0 bridge, and veth pairs that
:func:`create_netns` makes itself. The pytest fixtures that wrap these helpers live in
``e2e_fixtures.py``; this module has no fixtures, so the helpers can be used from scripts too.

Pieces:

- :func:`start_dockerd` / :func:`stop_dockerd` / :func:`docker_engine_answers`: a Docker engine,
  started with ``scripts/start-dockerd`` when none answers.
- :func:`build_x11_image`: a tiny image made with ``docker import`` from files of this machine
  (xdpyinfo, xeyes, xauth, Debian's python3 with python-xlib, busybox as ``/bin/sh``, and every
  shared library they load), cached by a hash of its inputs.
- :func:`write_client_xauthority`: an authority file for clients that reach an X server from
  another host name or address (FamilyWild for libxcb, FamilyLocal for python-xlib).
- :func:`run_container`: run a command in a throw-away container and collect its output.
- :func:`create_netns`: a network namespace joined to the host by a veth pair
  (:func:`free_private_subnet` picks its addresses).
- :func:`tcp_listeners`: the addresses a TCP port is listened on.
- :class:`Sshd`: a real sshd on a loopback port with X11 forwarding, and
  :meth:`Sshd.ssh_session` to hold a forwarded display open.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import json
import logging
import os
import pwd
import random
import re
import secrets
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import tarfile
import tempfile
import time

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

from support import STATE_DIR, XServer, _set_pdeathsig, client_env


if TYPE_CHECKING:
    import docker


logger = logging.getLogger("x11passthrough")

ROOT = Path(__file__).resolve().parents[1]
START_DOCKERD = ROOT / "scripts" / "start-dockerd"

MIT_MAGIC_COOKIE = b"MIT-MAGIC-COOKIE-1"

#: The tag :func:`build_x11_image` gives its image by default.
IMAGE_TAG = "x11passthrough-test:latest"
#: The image label holding the hash of the image's inputs (the build cache key).
IMAGE_INPUTS_LABEL = "org.x11passthrough.test-image.inputs"
#: Containers started by :func:`run_container` carry the pid of the test process here.
CONTAINER_OWNER_LABEL = "org.x11passthrough.test-owner"
#: The unprivileged user of the image.
IMAGE_USER = "user"
IMAGE_USER_UID = 1000
#: The interpreter copied into the image: Debian's, whose stdlib lives in /usr/lib/python3.X.
SYSTEM_PYTHON = Path("/usr/bin/python3")
#: Where Debian's python3 finds distribution packages.
IMAGE_DIST_PACKAGES = "/usr/lib/python3/dist-packages"
#: X clients copied into the image; the optional ones are left out when missing.
IMAGE_PROGRAMS = ("/usr/bin/xdpyinfo", "/usr/bin/xauth")
IMAGE_OPTIONAL_PROGRAMS = ("/usr/bin/xeyes",)
BUSYBOX = Path("/bin/busybox")
#: Busybox applets linked into the image's /usr/bin for debugging containers by hand.
BUSYBOX_APPLETS = ("sh", "ls", "cat", "env", "id", "sleep", "echo", "true", "false", "ps", "wc")
#: Standard library parts the image does not need.
STDLIB_EXCLUDES = frozenset(
    {"test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "pydoc_data", "venv"}
)
#: Bump when the builder changes in a way the input hash cannot see.
IMAGE_FORMAT = "3"

PROBE_SCRIPT = '''\
#!/usr/bin/python3
"""Connect to $DISPLAY with python-xlib and print the screen size and the vendor."""

import sys


def main() -> int:
    try:
        from Xlib import display

        dpy = display.Display()
        try:
            screen = dpy.screen()
            size = f"{screen.width_in_pixels}x{screen.height_in_pixels}"
            print(f"screen {size} vendor {dpy.display.info.vendor}")
        finally:
            dpy.close()
    except Exception as error:  # noqa: BLE001 - a probe reports every failure the same way
        print(f"xlib-probe: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    return 0


sys.exit(main())
'''

_USER_ID = f"{IMAGE_USER_UID}:{IMAGE_USER_UID}"
PASSWD = f"""\
root:x:0:0:root:/root:/bin/sh
{IMAGE_USER}:x:{_USER_ID}:x11passthrough test user:/home/{IMAGE_USER}:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
"""

GROUP = f"""\
root:x:0:
{IMAGE_USER}:x:{IMAGE_USER_UID}:
nogroup:x:65534:
"""


class E2ESetupError(RuntimeError):
    """A piece of end-to-end test infrastructure could not be set up."""


def _run(
    argv: Sequence[str],
    *,
    what: str,
    stdin_text: str | None = None,
    timeout: float = 120,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a setup command; raise :class:`E2ESetupError` with its output when it fails."""
    done = subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        input=stdin_text,
        timeout=timeout,
        env=dict(env) if env is not None else None,
        check=False,
    )
    if done.returncode != 0:
        output = (done.stderr or done.stdout).strip()[-2000:]
        msg = f"{what} failed: `{shlex.join(argv)}` exited {done.returncode}: {output}"
        raise E2ESetupError(msg)
    return done


def _process_gone(pid: int) -> bool:
    """Return True when `pid` no longer runs (a zombie counts as gone)."""
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return status.rsplit(")", 1)[-1].split()[0] in {"Z", "X"}


def _pid_alive(pid: int) -> bool:
    return not _process_gone(pid)


# ----------------------------------------------------------------------------------------------
# Docker engine


def docker_engine_answers() -> bool:
    """Return True when a Docker engine answers ``docker info`` (``DOCKER_HOST`` or default)."""
    if shutil.which("docker") is None:
        return False
    try:
        done = subprocess.run(["docker", "info"], capture_output=True, timeout=15, check=False)
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


def start_dockerd(
    *, script: Path = START_DOCKERD, env: Mapping[str, str] | None = None
) -> int | None:
    """
    Start a Docker engine with ``scripts/start-dockerd`` unless one answers already.

    Args:
        script: The start script (prints the pid it started, or nothing).
        env: The script's environment (this process's when None); ``DOCKER_HOST``,
            ``DOCKERD_ARGS`` and ``DOCKERD_LOG`` select a private engine.

    Returns:
        The pid of the dockerd this call started, or None when an engine was already answering.

    Raises:
        E2ESetupError: The script failed (its stderr says why, e.g. dockerd exited).
    """
    done = _run(["bash", str(script)], what="starting dockerd", timeout=60, env=env)
    out = done.stdout.strip()
    if not out:
        return None
    try:
        return int(out.splitlines()[-1])
    except ValueError:
        msg = f"{script} printed {out!r}, expected the pid of the dockerd it started"
        raise E2ESetupError(msg) from None


def stop_dockerd(pid: int, *, timeout: float = 30) -> None:
    """
    Stop the dockerd with this pid (one that :func:`start_dockerd` started) and wait for it.

    Does nothing when the process is gone or is no longer a dockerd (its pid was reused).

    Args:
        pid: The pid :func:`start_dockerd` returned.
        timeout: Seconds to wait after SIGTERM before SIGKILL.
    """
    try:
        name = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return
    if name != "dockerd":
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while not _process_gone(pid):
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            break
        time.sleep(0.05)


def docker_gateway_address(client: docker.DockerClient) -> str:
    """
    Return the IPv4 address of the host on Docker's default bridge (``host-gateway``).

    Reads the gateway from ``docker network inspect bridge``; engines that leave it out there get
    it from the address of the bridge interface (``docker0``).

    Args:
        client: A client of the engine.

    Returns:
        The address as a dotted quad, e.g. ``172.17.0.1``.

    Raises:
        E2ESetupError: Neither source names an IPv4 address.
    """
    attrs = client.networks.get("bridge").attrs
    for config in (attrs.get("IPAM") or {}).get("Config") or []:
        gateway = config.get("Gateway", "")
        with contextlib.suppress(ValueError):
            if gateway and ipaddress.ip_address(gateway).version == 4:
                return str(gateway)
    interface = (attrs.get("Options") or {}).get("com.docker.network.bridge.name", "docker0")
    return interface_ipv4(interface)


def interface_ipv4(interface: str) -> str:
    """
    Return the first IPv4 address of a network interface of this machine.

    Args:
        interface: The interface name, e.g. ``docker0``.

    Returns:
        The address as a dotted quad.

    Raises:
        E2ESetupError: The interface does not exist or has no IPv4 address.
    """
    done = _run(["ip", "-j", "-4", "addr", "show", "dev", interface], what="reading addresses")
    for link in json.loads(done.stdout or "[]"):
        for info in link.get("addr_info", []):
            if info.get("family") == "inet":
                return str(info["local"])
    msg = f"interface {interface!r} has no IPv4 address"
    raise E2ESetupError(msg)


def remove_stale_containers(client: docker.DockerClient) -> list[str]:
    """
    Remove containers that :func:`run_container` left behind in killed test runs.

    Args:
        client: A client of the engine.

    Returns:
        The ids of the removed containers.
    """
    removed = []
    for container in client.containers.list(all=True, filters={"label": CONTAINER_OWNER_LABEL}):
        owner = str(container.labels.get(CONTAINER_OWNER_LABEL, ""))
        if owner.isdigit() and _pid_alive(int(owner)):
            continue
        with contextlib.suppress(Exception):
            container.remove(force=True)
            removed.append(str(container.id))
    return removed


@dataclass(frozen=True)
class ContainerResult:
    """What a command in a container did."""

    exit_code: int
    stdout: str
    stderr: str

    def __str__(self) -> str:
        return f"exit {self.exit_code}\n--- stdout\n{self.stdout}--- stderr\n{self.stderr}"


def run_container(
    client: docker.DockerClient,
    image: str,
    argv: Sequence[str],
    *,
    environment: Mapping[str, str] | None = None,
    mounts: Mapping[str | Path, str] | None = None,
    hostname: str | None = None,
    user: str | None = None,
    extra_hosts: Mapping[str, str] | None = None,
    network_mode: str | None = None,
    timeout: float = 60,
) -> ContainerResult:
    """
    Run a command in a new container, wait for it and remove the container.

    Args:
        client: A client of the engine.
        image: The image tag or id.
        argv: The command.
        environment: Environment variables of the command.
        mounts: Host path -> container path, each mounted read-only.
        hostname: The container's host name (what ``gethostname()`` returns inside).
        user: ``uid`` or ``uid:gid`` to run as.
        extra_hosts: Host name -> address lines for the container's /etc/hosts
            (the address may be ``host-gateway``).
        network_mode: A Docker network mode; the default bridge when None.
        timeout: Seconds to wait for the command before killing it.

    Returns:
        The exit code and the output streams (never raises for a non-zero exit).

    Raises:
        E2ESetupError: The command did not finish within `timeout`.
    """
    volumes = {
        str(host): {"bind": inside, "mode": "ro"} for host, inside in (mounts or {}).items()
    }
    container = client.containers.create(
        image,
        list(argv),
        environment=dict(environment or {}),
        volumes=volumes,
        hostname=hostname,
        user=user,
        extra_hosts=dict(extra_hosts or {}),
        network_mode=network_mode,
        labels={CONTAINER_OWNER_LABEL: str(os.getpid())},
        detach=True,
    )
    try:
        container.start()
        try:
            status = container.wait(timeout=timeout)
        except Exception as error:  # requests' ReadTimeout and friends
            container.kill()
            msg = f"`{shlex.join(argv)}` in {image} did not finish within {timeout} s"
            raise E2ESetupError(msg) from error
        stdout = container.logs(stdout=True, stderr=False).decode(errors="replace")
        stderr = container.logs(stdout=False, stderr=True).decode(errors="replace")
        return ContainerResult(int(status["StatusCode"]), stdout, stderr)
    finally:
        container.remove(force=True)


# ----------------------------------------------------------------------------------------------
# Authority files


def write_client_xauthority(
    path: Path,
    *,
    number: int,
    cookie: bytes,
    wild: bool = True,
    local_hostnames: Iterable[str] = (),
    uid: int | None = None,
) -> Path:
    """
    Write an authority file for clients of display `number` that run elsewhere, with real xauth.

    libxcb (xdpyinfo, xauth, Xlib programs) looks up a TCP peer other than 127.0.0.1 as
    FamilyInternet and accepts a FamilyWild entry for it. python-xlib looks up every ``host:N``
    display as FamilyLocal with its own ``gethostname()`` and never matches FamilyWild, so a
    container that runs python-xlib needs a FamilyLocal entry for the container's host name.

    Args:
        path: The file to write (merged into when it exists); created with mode 0600.
        number: The display number the entries are for.
        cookie: The MIT-MAGIC-COOKIE-1 data.
        wild: Add a FamilyWild entry (any address).
        local_hostnames: Add a FamilyLocal entry for each of these host names.
        uid: Give the file to this user (for a container user other than root).

    Returns:
        `path`.

    Raises:
        E2ESetupError: xauth failed.
    """
    name = MIT_MAGIC_COOKIE.hex()
    num = str(number).encode().hex()
    rest = f"{len(str(number)):04x} {num} {len(MIT_MAGIC_COOKIE):04x} {name} "
    rest += f"{len(cookie):04x} {cookie.hex()}"
    lines = []
    if wild:
        lines.append(f"ffff 0000  {rest}")
    for host in local_hostnames:
        encoded = host.encode()
        lines.append(f"0100 {len(encoded):04x} {encoded.hex()} {rest}")
    if not lines:
        msg = "write_client_xauthority needs wild=True or at least one local host name"
        raise ValueError(msg)
    old_umask = os.umask(0o077)
    try:
        _run(
            ["xauth", "-f", str(path), "nmerge", "-"],
            what="writing an authority file",
            stdin_text="\n".join(lines) + "\n",
        )
    finally:
        os.umask(old_umask)
    path.chmod(0o600)
    if uid is not None:
        os.chown(path, uid, -1)
    return path


# ----------------------------------------------------------------------------------------------
# The X client image


@dataclass(frozen=True)
class _Entry:
    """One member of the image tarball."""

    kind: str  # "file", "dir", "symlink"
    source: Path | None = None  # for "file": the host file to copy
    data: bytes | None = None  # for "file": literal contents instead of `source`
    link: str = ""  # for "symlink"
    mode: int = 0o755
    uid: int = 0

    def fingerprint(self, name: str) -> str:
        """Describe this entry for the input hash (sizes and mtimes, not contents, of files)."""
        if self.kind == "file" and self.source is not None:
            st = self.source.stat()
            return f"{name} file {self.source} {st.st_size} {st.st_mtime_ns} {self.mode:o}"
        if self.kind == "file":
            digest = hashlib.sha256(self.data or b"").hexdigest()
            return f"{name} data {digest} {self.mode:o} {self.uid}"
        return f"{name} {self.kind} {self.link} {self.mode:o} {self.uid}"


@dataclass
class ImageInputs:
    """The files of the test image, in tar order, and the hash that identifies them."""

    entries: dict[str, _Entry] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        """A SHA-256 over the builder format, every member's name, kind, size and mtime."""
        h = hashlib.sha256(f"x11passthrough-test-image {IMAGE_FORMAT}\n".encode())
        for name, entry in self.entries.items():
            h.update(entry.fingerprint(name).encode() + b"\n")
        return h.hexdigest()

    def add(self, name: str, entry: _Entry) -> None:
        """Add a member unless one of that name exists."""
        self.entries.setdefault(name, entry)

    def add_dirs(self, name: str) -> None:
        """Add the directories leading to `name` (an image path) that are still missing."""
        parent = os.path.dirname(name)
        if parent in ("/", "") or parent in self.entries:
            return
        if os.path.lexists(parent):
            self.add_host_path(parent)
        else:
            self.add_dirs(parent)
            self.add(parent, _Entry("dir", mode=0o755))

    def add_host_path(self, path: str) -> None:
        """
        Copy a host path into the image at the same path, keeping every symlink on the way.

        ``/lib/x86_64-linux-gnu/libc.so.6`` on a merged-/usr system becomes the symlink ``/lib ->
        usr/lib`` plus the file under ``/usr/lib``, so programs find it under both names, as on
        the host. A symlinked file brings its target along.
        """
        path = os.path.normpath(path)
        if path == "/":
            return
        parent = os.path.dirname(path)
        self.add_host_path(parent)
        location = os.path.join(os.path.realpath(parent), os.path.basename(path))
        if location in self.entries:
            return
        st = os.lstat(location)
        if stat.S_ISLNK(st.st_mode):
            target = os.readlink(location)
            self.add(location, _Entry("symlink", link=target))
            self.add_host_path(os.path.join(os.path.dirname(location), target))
        elif stat.S_ISDIR(st.st_mode):
            self.add(location, _Entry("dir", mode=stat.S_IMODE(st.st_mode)))
        elif stat.S_ISREG(st.st_mode):
            self.add(
                location, _Entry("file", source=Path(location), mode=stat.S_IMODE(st.st_mode))
            )
        else:
            msg = f"cannot copy {location} into the image: not a file, directory or symlink"
            raise E2ESetupError(msg)

    def add_tree(self, host_dir: Path, image_dir: str, *, exclude: frozenset[str]) -> None:
        """Copy a directory tree (host symlinks included) to another place in the image."""
        self.add_dirs(image_dir + "/x")
        self.add(image_dir, _Entry("dir", mode=0o755))
        for child in sorted(host_dir.iterdir()):
            if child.name in exclude:
                continue
            name = f"{image_dir}/{child.name}"
            if child.is_symlink():
                self.add(name, _Entry("symlink", link=os.readlink(child)))
            elif child.is_dir():
                self.add_tree(child, name, exclude=exclude)
            elif child.is_file():
                self.add(
                    name, _Entry("file", source=child, mode=stat.S_IMODE(child.stat().st_mode))
                )


def _ldd_dependencies(binaries: Sequence[str]) -> list[str]:
    """Return every shared object (loader included) that `binaries` load, as ldd names them."""
    if not binaries:
        return []
    done = subprocess.run(["ldd", *binaries], capture_output=True, text=True, check=False)
    deps: list[str] = []
    missing = []
    for line in done.stdout.splitlines():
        if "=> not found" in line:
            missing.append(line.strip())
            continue
        match = re.search(r"=>\s+(/\S+)\s+\(", line) or re.match(r"\s+(/\S+)\s+\(", line)
        if match and match.group(1) not in deps:
            deps.append(match.group(1))
    if missing:
        msg = f"ldd finds no library for: {', '.join(missing)}; install the package providing it"
        raise E2ESetupError(msg)
    if not deps and done.returncode != 0:
        raise E2ESetupError(f"ldd failed: {done.stderr.strip()}")
    return deps


def _system_python_paths(python: Path) -> tuple[str, str]:
    """Return (stdlib directory, lib-dynload directory) of the system interpreter."""
    code = "import sys, sysconfig; print(sysconfig.get_paths()['stdlib']); print(sys.version)"
    done = _run([str(python), "-I", "-c", code], what="asking the system python3 for its stdlib")
    stdlib = done.stdout.splitlines()[0].strip()
    return stdlib, f"{stdlib}/lib-dynload"


def missing_image_tools() -> list[str]:
    """Return the programs this machine lacks to put into the test image (empty: none)."""
    need = [*IMAGE_PROGRAMS, str(SYSTEM_PYTHON), str(BUSYBOX)]
    missing = [path for path in need if not os.access(path, os.X_OK)]
    missing += [name for name in ("ldd",) if shutil.which(name) is None]
    return missing


def collect_image_inputs(*, probe_script: str = PROBE_SCRIPT) -> ImageInputs:
    """
    List every member of the test image (without reading file contents).

    Args:
        probe_script: The text of ``/usr/local/bin/xlib-probe``.

    Returns:
        The members and their hash.

    Raises:
        E2ESetupError: A program, library or python-xlib is missing on this machine.
    """
    import Xlib

    missing = missing_image_tools()
    if missing:
        msg = f"cannot build the test image, missing: {', '.join(missing)}"
        raise E2ESetupError(msg)
    inputs = ImageInputs()
    for name in ("/etc", "/tmp", "/root", "/home", f"/home/{IMAGE_USER}", "/usr", "/usr/local"):
        inputs.add(name, _Entry("dir", mode=0o755))
    inputs.entries["/tmp"] = _Entry("dir", mode=0o1777)
    inputs.entries["/root"] = _Entry("dir", mode=0o700)
    inputs.entries[f"/home/{IMAGE_USER}"] = _Entry("dir", mode=0o755, uid=IMAGE_USER_UID)
    inputs.add("/etc/passwd", _Entry("file", data=PASSWD.encode(), mode=0o644))
    inputs.add("/etc/group", _Entry("file", data=GROUP.encode(), mode=0o644))

    programs = list(IMAGE_PROGRAMS)
    programs += [p for p in IMAGE_OPTIONAL_PROGRAMS if os.access(p, os.X_OK)]
    programs.append(str(SYSTEM_PYTHON))
    stdlib, dynload = _system_python_paths(SYSTEM_PYTHON)
    extensions = sorted(str(p) for p in Path(dynload).glob("*.so"))
    for path in [*programs, *_ldd_dependencies(programs + extensions)]:
        inputs.add_host_path(path)
    inputs.add_tree(Path(stdlib), stdlib, exclude=STDLIB_EXCLUDES | {"site-packages"})
    # Debian's stdlib symlinks sitecustomize.py and _sysconfigdata into /etc and /usr/lib.
    for name, entry in list(inputs.entries.items()):
        if entry.kind == "symlink" and name.startswith(stdlib + "/"):
            target = os.path.normpath(os.path.join(os.path.dirname(name), entry.link))
            if os.path.lexists(target):
                inputs.add_host_path(target)

    xlib_dir = Path(Xlib.__file__).parent
    inputs.add_tree(xlib_dir, f"{IMAGE_DIST_PACKAGES}/Xlib", exclude=frozenset({"__pycache__"}))
    try:  # python-xlib 0.33 imports six; a later release may not
        import six  # type: ignore[import-untyped]
    except ImportError:  # pragma: no cover - depends on the python-xlib release
        pass
    else:
        six_file = Path(six.__file__)
        inputs.add(f"{IMAGE_DIST_PACKAGES}/six.py", _Entry("file", source=six_file, mode=0o644))

    inputs.add_host_path(str(BUSYBOX))
    busybox_dir = os.path.realpath(os.path.dirname(BUSYBOX))
    for applet in BUSYBOX_APPLETS:
        name = f"{busybox_dir}/{applet}"
        if applet == "sh" or name not in inputs.entries:
            inputs.entries[name] = _Entry("symlink", link=os.path.basename(BUSYBOX))
    inputs.add("/usr/local/bin", _Entry("dir", mode=0o755))
    probe = _Entry("file", data=probe_script.encode(), mode=0o755)
    inputs.add("/usr/local/bin/xlib-probe", probe)
    return inputs


def _write_tar(inputs: ImageInputs, out: IO[bytes]) -> None:
    """Write the image members as an uncompressed tarball (all owned by root unless noted)."""
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for name, entry in inputs.entries.items():
            info = tarfile.TarInfo(name.lstrip("/"))
            info.uid = info.gid = entry.uid
            info.mode = entry.mode
            info.mtime = 0
            if entry.kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif entry.kind == "symlink":
                info.type = tarfile.SYMTYPE
                info.linkname = entry.link
                info.mode = 0o777
                tar.addfile(info)
            elif entry.source is not None:
                info.size = entry.source.stat().st_size
                with entry.source.open("rb") as src:
                    tar.addfile(info, src)
            else:
                data = entry.data or b""
                info.size = len(data)
                tar.addfile(info, _BytesReader(data))


class _BytesReader:
    """A minimal file object over bytes (tarfile only calls read)."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._pos = 0

    def read(self, size: int = -1) -> bytes:
        end = len(self._data) if size < 0 else self._pos + size
        chunk = bytes(self._data[self._pos : end])
        self._pos += len(chunk)
        return chunk


def _image_label(reference: str) -> str | None:
    """Return the inputs label of a local image, or None when there is no such image."""
    done = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{json .Config.Labels}}", reference],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        return None
    labels = json.loads(done.stdout.strip() or "null") or {}
    return labels.get(IMAGE_INPUTS_LABEL)


@contextlib.contextmanager
def _build_lock() -> Iterator[None]:
    """Serialise image builds of concurrent test processes."""
    STATE_DIR.mkdir(mode=0o700, exist_ok=True)
    with (STATE_DIR / "image-build.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def build_x11_image(*, tag: str = IMAGE_TAG, force: bool = False) -> str:
    """
    Build (or reuse) the X client test image with ``docker import``.

    The image holds xdpyinfo, xauth, xeyes (when installed), Debian's ``/usr/bin/python3`` with
    its stdlib and python-xlib (copied from the running interpreter's site-packages), the probe
    ``/usr/local/bin/xlib-probe``, busybox as ``/bin/sh``, every shared library these load,
    ``/etc/passwd`` and ``/etc/group`` with root and ``user`` (uid 1000), and ``/tmp`` (1777).
    It is labelled with a hash of its inputs; an image with the same hash is reused.

    Args:
        tag: The tag to give the image.
        force: Build even when an image with the same inputs exists.

    Returns:
        `tag`.

    Raises:
        E2ESetupError: A tool or file is missing, or docker import failed.
    """
    if shutil.which("docker") is None:
        raise E2ESetupError("cannot build the test image: no `docker` program on PATH")
    with _build_lock():
        inputs = collect_image_inputs()
        digest = inputs.digest
        if not force:
            if _image_label(tag) == digest:
                logger.debug("test image %s is up to date (%s)", tag, digest[:12])
                return tag
            done = subprocess.run(
                ["docker", "images", "-q", "--filter", f"label={IMAGE_INPUTS_LABEL}={digest}"],
                capture_output=True,
                text=True,
                check=False,
            )
            found = done.stdout.split()
            if done.returncode == 0 and found:
                _run(["docker", "tag", found[0], tag], what="tagging the cached test image")
                return tag
        with tempfile.TemporaryDirectory(prefix="x11pt-image-") as tmp:
            tarball = Path(tmp) / "rootfs.tar"
            with tarball.open("wb") as out:
                _write_tar(inputs, out)
            changes = [
                f"LABEL {IMAGE_INPUTS_LABEL}={digest}",
                'ENV PATH="/usr/local/bin:/usr/bin:/bin"',
                'CMD ["/bin/sh"]',
            ]
            argv = ["docker", "import"]
            for change in changes:
                argv += ["--change", change]
            _run([*argv, str(tarball), tag], what="importing the test image", timeout=300)
        logger.info("built test image %s (%s)", tag, digest[:12])
        return tag


# ----------------------------------------------------------------------------------------------
# Network namespaces


NETNS_PREFIX = "x11pt-"
#: The private range the veth pairs take their /30 from (used only inside this machine).
NETNS_RANGE = "10.213.0.0/16"


@dataclass
class NetNamespace:
    """A network namespace joined to the host by a veth pair in a private /30."""

    name: str
    host_interface: str
    ns_interface: str
    host_address: str
    ns_address: str
    owner_record: Path = field(repr=False)

    def run(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        timeout: float = 60,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """
        Run a command inside the namespace (``ip netns exec``) and wait for it.

        Args:
            argv: The command.
            env: Its environment (this process's when None).
            timeout: Seconds before the command is killed (raises ``TimeoutExpired``).
            input: Text for its standard input.

        Returns:
            The finished process, with text stdout and stderr; never raises for an exit code.
        """
        return subprocess.run(
            ["ip", "netns", "exec", self.name, *argv],
            env=dict(env) if env is not None else None,
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            check=False,
        )

    def delete(self) -> None:
        """Delete the namespace and the veth pair (idempotent)."""
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, check=False)
        subprocess.run(
            ["ip", "link", "del", self.host_interface], capture_output=True, check=False
        )
        self.owner_record.unlink(missing_ok=True)


def free_private_subnet(within: str, prefix: int) -> ipaddress.IPv4Network:
    """
    Pick a random subnet of `within` that overlaps no IPv4 address of this machine.

    Args:
        within: The range to pick from, e.g. ``10.213.0.0/16`` (keep it private).
        prefix: The prefix length of the subnet, e.g. 30.

    Returns:
        The subnet.

    Raises:
        E2ESetupError: 100 random picks all overlapped.
    """
    done = _run(["ip", "-j", "-4", "addr", "show"], what="listing addresses")
    used = [
        ipaddress.ip_interface(f"{info['local']}/{info['prefixlen']}").network
        for link in json.loads(done.stdout or "[]")
        for info in link.get("addr_info", [])
    ]
    parent = ipaddress.IPv4Network(within)
    choices = list(parent.subnets(new_prefix=prefix)) if prefix - parent.prefixlen <= 16 else []
    rng = random.Random(secrets.randbits(64))
    for _ in range(100):
        subnet = rng.choice(choices)
        if not any(subnet.overlaps(n) for n in used):
            return subnet
    msg = f"no free /{prefix} in {within}"
    raise E2ESetupError(msg)


def reap_stale_netns() -> list[str]:
    """
    Delete namespaces (and their veths) that killed test runs left behind.

    Returns:
        The names of the deleted namespaces.
    """
    reaped = []
    for record in STATE_DIR.glob(f"netns-{NETNS_PREFIX}*.owner") if STATE_DIR.is_dir() else ():
        try:
            owner, host_interface = record.read_text().split()
        except (OSError, ValueError):
            record.unlink(missing_ok=True)
            continue
        if owner.isdigit() and _pid_alive(int(owner)):
            continue
        name = record.name.removeprefix("netns-").removesuffix(".owner")
        NetNamespace(name, host_interface, "", "", "", record).delete()
        reaped.append(name)
    return reaped


def create_netns() -> NetNamespace:
    """
    Create a network namespace connected to the host by a veth pair.

    The pair gets a free /30 of 10.213.0.0/16: the host side the first address, the namespace
    side the second. The namespace's loopback is up. Needs root and iproute2.

    Returns:
        The namespace; call :meth:`NetNamespace.delete` when done.

    Raises:
        E2ESetupError: A command failed (nothing is left behind).
    """
    subnet = free_private_subnet(NETNS_RANGE, 30)
    host_ip, ns_ip = (str(a) for a in subnet.hosts())
    token = secrets.token_hex(4)
    name = f"{NETNS_PREFIX}{token}"
    STATE_DIR.mkdir(mode=0o700, exist_ok=True)
    record = STATE_DIR / f"netns-{name}.owner"
    ns = NetNamespace(name, f"x11h{token}", f"x11n{token}", host_ip, ns_ip, record)
    record.write_text(f"{os.getpid()} {ns.host_interface}\n")
    veth = ["type", "veth", "peer", "name", ns.ns_interface, "netns", name]
    steps = [
        ["ip", "netns", "add", name],
        ["ip", "link", "add", ns.host_interface, *veth],
        ["ip", "addr", "add", f"{host_ip}/30", "dev", ns.host_interface],
        ["ip", "link", "set", ns.host_interface, "up"],
        ["ip", "-n", name, "addr", "add", f"{ns_ip}/30", "dev", ns.ns_interface],
        ["ip", "-n", name, "link", "set", ns.ns_interface, "up"],
        ["ip", "-n", name, "link", "set", "lo", "up"],
    ]
    try:
        for step in steps:
            _run(step, what="creating a network namespace")
    except BaseException:
        ns.delete()
        raise
    return ns


# ----------------------------------------------------------------------------------------------
# sshd with X11 forwarding


SSHD = Path("/usr/sbin/sshd")


def _free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class ForwardedDisplay:
    """A display that an ``ssh -X``/``-Y`` session forwards, as the remote side sees it."""

    display: str  # e.g. "localhost:10.0"
    xauthority: Path  # the file sshd's xauth wrote the (fake) cookie into
    ssh_pid: int

    @property
    def number(self) -> int:
        """The display number N (the forwarding listens on TCP 6000+N)."""
        return int(self.display.rsplit(":", 1)[1].split(".")[0])

    @property
    def tcp_port(self) -> int:
        """The TCP port sshd listens on for this display."""
        return 6000 + self.number

    def env(self, **extra: str) -> dict[str, str]:
        """Return an environment for an X client of the forwarded display."""
        return client_env(self.display, self.xauthority, **extra)


@dataclass
class Sshd:
    """
    A private sshd on a loopback port that forwards X11 (``X11UseLocalhost yes``).

    sshd writes each session's fake cookie with ``xauth`` into the file named by the session's
    XAUTHORITY, which the client sends (``SetEnv``, accepted by ``AcceptEnv XAUTHORITY``), so
    no session touches the login user's ``~/.Xauthority``. ``PermitUserRC no`` keeps
    ``~/.ssh/rc`` out of the way; a system-wide ``/etc/ssh/sshrc`` would replace the xauth step,
    so :func:`start_sshd` refuses to run when one exists.
    """

    port: int
    workdir: Path
    process: subprocess.Popen[bytes]
    user: str
    _sessions: int = 0

    @property
    def client_key(self) -> Path:
        """The private key the ssh client logs in with."""
        return self.workdir / "client_key"

    def ssh_argv(
        self, xserver: XServer | None, *, trusted: bool = True, xauthority: Path | None = None
    ) -> list[str]:
        """
        Return an ssh command line for this server (append the remote command).

        Args:
            xserver: The local display to forward (None: no X11 forwarding).
            trusted: ``-Y`` (trusted) or ``-X`` (untrusted, through the SECURITY extension).
            xauthority: Where the remote side's xauth writes the fake cookie.

        Returns:
            The argument list, without the remote command.
        """
        argv = ["ssh", "-F", "/dev/null", "-T", "-p", str(self.port), "-i", str(self.client_key)]
        for option in (
            "IdentitiesOnly=yes",
            "BatchMode=yes",
            "StrictHostKeyChecking=no",
            "UserKnownHostsFile=/dev/null",
            "GlobalKnownHostsFile=/dev/null",
            "LogLevel=ERROR",
            "ExitOnForwardFailure=yes",
        ):
            argv += ["-o", option]
        if xserver is not None:
            argv.append("-Y" if trusted else "-X")
        if xauthority is not None:
            argv += ["-o", f"SetEnv=XAUTHORITY={xauthority}"]
        argv.append(f"{self.user}@127.0.0.1")
        return argv

    def _next_xauthority(self) -> Path:
        self._sessions += 1
        return self.workdir / f"session-{self._sessions}.xauth"

    def run(
        self, xserver: XServer, command: str, *, trusted: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """
        Run a remote shell command in an X11-forwarding ssh session and wait for it.

        Args:
            xserver: The local display to forward.
            command: The remote command (a shell command line).
            trusted: ``ssh -Y`` when True, ``ssh -X`` when False.
            timeout: Seconds before the session is killed (raises ``TimeoutExpired``).

        Returns:
            The finished ssh client process with text output.
        """
        argv = self.ssh_argv(xserver, trusted=trusted, xauthority=self._next_xauthority())
        return subprocess.run(
            [*argv, command],
            env=xserver.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )

    @contextlib.contextmanager
    def ssh_session(self, xserver: XServer, *, trusted: bool = True) -> Iterator[ForwardedDisplay]:
        """
        Hold an X11-forwarding ssh session open and yield its forwarded display.

        The remote command prints DISPLAY and XAUTHORITY and then waits for its input to
        close, which ends the session when the block exits.

        Args:
            xserver: The local display the session forwards (the ssh client uses its env).
            trusted: ``ssh -Y`` when True, ``ssh -X`` when False.

        Yields:
            The forwarded display (``localhost:N.0``) and the file with its fake cookie.

        Raises:
            E2ESetupError: The session did not report a forwarded display.
        """
        xauthority = self._next_xauthority()
        remote = 'echo "DISPLAY=$DISPLAY"; echo "XAUTHORITY=$XAUTHORITY"; exec cat >/dev/null'
        argv = [*self.ssh_argv(xserver, trusted=trusted, xauthority=xauthority), remote]
        with tempfile.TemporaryFile() as errors:
            process = subprocess.Popen(
                argv,
                env=xserver.env(),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=errors,
                preexec_fn=_set_pdeathsig,  # noqa: PLW1509 - only prctl, safe before exec
            )
            try:
                reported = _read_reported(process, ("DISPLAY", "XAUTHORITY"), timeout=30)
                if not reported.get("DISPLAY"):
                    errors.seek(0)
                    text = errors.read().decode(errors="replace").strip()
                    msg = f"ssh reported no forwarded DISPLAY ({reported}); ssh said: {text}"
                    raise E2ESetupError(msg)
                yield ForwardedDisplay(
                    reported["DISPLAY"], Path(reported["XAUTHORITY"]), process.pid
                )
            finally:
                _end_session(process)

    def stop(self) -> None:
        """Stop sshd and remove its files."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        shutil.rmtree(self.workdir, ignore_errors=True)


def _read_reported(
    process: subprocess.Popen[bytes], names: Sequence[str], *, timeout: float
) -> dict[str, str]:
    """Read ``NAME=value`` lines from the process's stdout until all `names` were seen."""
    assert process.stdout is not None
    reported: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    fd = process.stdout.fileno()
    os.set_blocking(fd, False)
    buffer = b""
    while not all(n in reported for n in names) and time.monotonic() < deadline:
        try:
            chunk = os.read(fd, 4096)
        except BlockingIOError:
            if process.poll() is not None:
                break
            time.sleep(0.01)
            continue
        if not chunk:
            break
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            key, sep, value = line.decode(errors="replace").partition("=")
            if sep:
                reported[key] = value
    return reported


def _end_session(process: subprocess.Popen[bytes]) -> None:
    """Close the session's input (the remote ``cat`` ends), then wait; kill if it lingers."""
    if process.stdin is not None:
        with contextlib.suppress(OSError):
            process.stdin.close()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)
    if process.stdout is not None:
        process.stdout.close()


def start_sshd(workdir: Path) -> Sshd:
    """
    Start a private sshd on a free loopback port with X11 forwarding; wait until it answers.

    Host and client keys are generated into `workdir` (0700), the client key is its only
    authorized key, and the login user is the current one (root in CI). Needs root, because sshd
    must switch to the login user and requires its privilege separation directory.

    Args:
        workdir: A fresh directory for the configuration, keys, log and session authority files.

    Returns:
        The running server; call :meth:`Sshd.stop` when done.

    Raises:
        E2ESetupError: sshd would not start, or ``/etc/ssh/sshrc`` exists (it would take over
            the xauth step from sshd).
    """
    if Path("/etc/ssh/sshrc").exists():
        msg = "/etc/ssh/sshrc exists: sshd would run it instead of xauth; move it away to test"
        raise E2ESetupError(msg)
    workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
    workdir.chmod(0o700)
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    for key in ("host_key", "client_key"):
        _run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", key, "-f", str(workdir / key)],
            what="generating an ssh key",
        )
    (workdir / "authorized_keys").write_bytes((workdir / "client_key.pub").read_bytes())
    user = pwd.getpwuid(os.getuid()).pw_name
    last_error = ""
    for _ in range(5):
        port = _free_loopback_port()
        config = workdir / "sshd_config"
        config.write_text(_sshd_config(workdir, port))
        log = workdir / "sshd.log"
        with log.open("wb") as log_file:
            process = subprocess.Popen(
                [str(SSHD), "-D", "-e", "-f", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                preexec_fn=_set_pdeathsig,  # noqa: PLW1509 - only prctl, safe before exec
            )
        if _wait_ssh_banner(port, process):
            return Sshd(port, workdir, process, user)
        process.kill()
        process.wait()
        last_error = log.read_text(errors="replace")[-2000:]
    msg = f"sshd did not start: {last_error}"
    raise E2ESetupError(msg)


def _sshd_config(workdir: Path, port: int) -> str:
    return f"""\
Port {port}
ListenAddress 127.0.0.1
AddressFamily inet
HostKey {workdir / "host_key"}
AuthorizedKeysFile {workdir / "authorized_keys"}
PidFile none
UsePAM no
PermitRootLogin yes
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
StrictModes no
PermitUserRC no
X11Forwarding yes
X11UseLocalhost yes
X11DisplayOffset 10
XAuthLocation /usr/bin/xauth
AcceptEnv XAUTHORITY
PrintMotd no
PrintLastLog no
LogLevel INFO
"""


def _wait_ssh_banner(port: int, process: subprocess.Popen[bytes], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                if s.recv(64).startswith(b"SSH-"):
                    return True
        except OSError:
            time.sleep(0.02)
    return False


def tcp_listeners(port: int) -> list[str]:
    """
    Return the local addresses that TCP sockets listen on for `port` (from ``ss``).

    Args:
        port: The port number.

    Returns:
        Addresses such as ``127.0.0.1`` or ``0.0.0.0`` (IPv6 ones in brackets).
    """
    done = _run(["ss", "-Hltn", f"sport = :{port}"], what="listing listeners")
    addresses = []
    for line in done.stdout.splitlines():
        fields = line.split()
        if len(fields) >= 4:
            addresses.append(fields[3].rsplit(":", 1)[0])
    return addresses
