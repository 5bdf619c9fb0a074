"""
The X client test image: a tiny image made with ``docker import`` from files of this machine
(xdpyinfo, xeyes, xauth, Debian's python3 with python-xlib, busybox as ``/bin/sh``, and every
shared library they load), cached by a hash of its inputs.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import stat
import subprocess
import tarfile
import tempfile

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from .ci import E2ESetupError, run_checked
from .xvfb import STATE_DIR


logger = logging.getLogger("x11passthrough")

#: The tag :func:`build_x11_image` gives its image by default.
IMAGE_TAG = "x11passthrough-test:latest"
#: The image label holding the hash of the image's inputs (the build cache key).
IMAGE_INPUTS_LABEL = "org.x11passthrough.test-image.inputs"
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
    done = run_checked(
        [str(python), "-I", "-c", code], what="asking the system python3 for its stdlib"
    )
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


def image_label(reference: str, label: str) -> str | None:
    """Return the value of `label` on a local image, or None (no such image or label)."""
    done = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{json .Config.Labels}}", reference],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        return None
    labels = json.loads(done.stdout.strip() or "null") or {}
    value = labels.get(label)
    return value if isinstance(value, str) else None


def reuse_cached(tag: str, label: str, digest: str) -> bool:
    """
    Point `tag` at a local image whose `label` is `digest`, if there is one.

    Returns:
        True when `tag` now names an image built from the same inputs (nothing to build).
    """
    if image_label(tag, label) == digest:
        logger.debug("image %s is up to date (%s)", tag, digest[:12])
        return True
    done = subprocess.run(
        ["docker", "images", "-q", "--filter", f"label={label}={digest}"],
        capture_output=True,
        text=True,
        check=False,
    )
    found = done.stdout.split()
    if done.returncode != 0 or not found:
        return False
    run_checked(["docker", "tag", found[0], tag], what=f"tagging the cached image as {tag}")
    return True


@contextlib.contextmanager
def build_lock(name: str = "image-build.lock") -> Iterator[None]:
    """Serialise image builds of concurrent test processes (a lock file in the state dir)."""
    STATE_DIR.mkdir(mode=0o700, exist_ok=True)
    with (STATE_DIR / name).open("a") as lock:
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
    with build_lock():
        inputs = collect_image_inputs()
        digest = inputs.digest
        if not force and reuse_cached(tag, IMAGE_INPUTS_LABEL, digest):
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
            run_checked([*argv, str(tarball), tag], what="importing the test image", timeout=300)
        logger.info("built test image %s (%s)", tag, digest[:12])
        return tag


def user_image(base: str, *, tag: str = "x11passthrough-test-user:latest") -> str:
    """
    Return an image like `base` whose default user is ``user`` (uid 1000): a ``USER`` line.

    Built with ``docker build`` from the local `base` (no registry), and rebuilt only when
    `base` changed.
    """
    done = run_checked(["docker", "image", "inspect", "--format", "{{.Id}}", base], what="base")
    base_id = done.stdout.strip()
    label = "org.x11passthrough.test-image.base"
    found = subprocess.run(
        ["docker", "images", "-q", "--filter", f"label={label}={base_id}", tag],
        capture_output=True,
        text=True,
        check=False,
    )
    if found.returncode == 0 and found.stdout.strip():
        return tag
    # Its own inputs label: inherited from `base`, it would make reuse_cached() hand this image
    # out as the root image.
    dockerfile = (
        f"FROM {base_id}\nLABEL {label}={base_id} {IMAGE_INPUTS_LABEL}=user-of-{base_id}\n"
        f"USER {_USER_ID}\n"
    )
    run_checked(
        ["docker", "build", "-q", "-t", tag, "-"],
        what="building the non-root test image",
        stdin_text=dockerfile,
        timeout=300,
    )
    return tag
