"""
A real Debian bookworm test image for the app matrix of X clients.

:func:`build_distro_image` makes the image with ``debootstrap --variant=minbase`` through the
Debian mirror this machine's apt uses, installs the X clients of :data:`PACKAGES` with
``chroot DIR apt-get install --no-install-recommends``, adds the user ``user`` (uid 1000) and
imports the tree with ``tar -C DIR -c . | docker import - TAG``.

The image is labelled :data:`INPUTS_LABEL` with a hash of the package list and
:data:`FORMAT_VERSION`; a build is skipped while an image with the tag carries the same hash.
A lock file (:func:`infra.images.build_lock`) serialises builds of concurrent processes. The
build tree lives in a temporary directory under ``/var/tmp`` and is removed afterwards (after
every mount inside it has been taken down, so a failed build never deletes through a bind
mount).

The caller installs the host tools (``debootstrap``, ``docker.io``); a missing one raises
:class:`DistroBuildError` naming the package. Building needs root (debootstrap, chroot, mount).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shlex
import shutil
import subprocess
import tempfile
import time

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .ci import E2ESetupError
from .images import build_lock, reuse_cached


logger = logging.getLogger("x11passthrough")

#: Bumped whenever the build steps change in a way that changes the image.
FORMAT_VERSION = 1
#: The tag :func:`build_distro_image` gives its image by default.
DEFAULT_TAG = "x11passthrough-distro:bookworm"
#: The image label holding the hash of the build inputs (the cache key).
INPUTS_LABEL = "org.x11passthrough.distro.inputs"
#: The Debian release the image is made of.
SUITE = "bookworm"
#: The component the image takes its packages from.
COMPONENT = "main"
#: What ``chroot DIR apt-get install --no-install-recommends`` installs after debootstrap.
PACKAGES: tuple[str, ...] = (
    "x11-apps",  # xeyes, x11perf
    "x11-utils",  # xdpyinfo, xwininfo, xprop (x11-xserver-utils is left out: it pulls in cpp)
    "xauth",
    "python3-tk",  # a Tk window from python3 -c
    "python3-xlib",
    "gtk-3-examples",  # gtk3-demo (zenity would pull in WebKitGTK)
    "qtbase5-examples",  # Qt 5 widget examples, smaller than python3-pyqt5
    "mesa-utils",  # glxgears, glxinfo
    "libgl1-mesa-dri",  # llvmpipe: direct software GL (drisw) without a GPU
    "fonts-dejavu-core",
)
#: The unprivileged user of the image.
IMAGE_USER = "user"
IMAGE_USER_UID = 1000
#: Where builds take place.
BUILD_PARENT = Path("/var/tmp")
#: Where apt's sources are read from on this machine.
APT_SOURCES_LIST = Path("/etc/apt/sources.list")
APT_SOURCES_DIR = Path("/etc/apt/sources.list.d")

#: The PATH used for the tools run on the host and inside the chroot.
_SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: Host programs the build runs, and the Debian package that ships each.
_HOST_TOOLS: Mapping[str, str] = {
    "debootstrap": "debootstrap",
    "docker": "docker.io",
    "chroot": "coreutils",
    "tar": "tar",
    "mount": "mount",
    "umount": "mount",
}
_DEBOOTSTRAP_TIMEOUT = 1200.0
_APT_TIMEOUT = 1800.0
_IMPORT_TIMEOUT = 900.0


class DistroBuildError(E2ESetupError):
    """The distribution test image could not be built."""


@dataclass(frozen=True)
class AptSource:
    """One enabled ``deb`` source of apt: a URI with its suites and components."""

    uri: str
    suites: tuple[str, ...]
    components: tuple[str, ...]


def _parse_one_line_sources(text: str) -> list[AptSource]:
    """Parse the one-line format (``deb [options] URI SUITE COMPONENT...``)."""
    found: list[AptSource] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        words = line.split()
        if words[0] != "deb":
            continue
        words = words[1:]
        if words and words[0].startswith("["):
            while words and not words[0].endswith("]"):
                words = words[1:]
            words = words[1:]
        if len(words) >= 2:
            found.append(AptSource(words[0], (words[1],), tuple(words[2:])))
    return found


def _parse_deb822_sources(text: str) -> list[AptSource]:
    """Parse the deb822 format (``Types:``/``URIs:``/``Suites:``/``Components:`` stanzas)."""
    found: list[AptSource] = []
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        key = ""
        for raw in stanza.splitlines():
            if raw.startswith("#") or not raw.strip():
                continue
            if raw[0] in " \t" and key:
                fields[key] += " " + raw.strip()
                continue
            key, _, value = raw.partition(":")
            key = key.strip().lower()
            fields[key] = value.strip()
        if "deb" not in fields.get("types", "").split():
            continue
        if fields.get("enabled", "yes").lower() == "no":
            continue
        suites = tuple(fields.get("suites", "").split())
        components = tuple(fields.get("components", "").split())
        found.extend(AptSource(uri, suites, components) for uri in fields.get("uris", "").split())
    return found


def read_apt_sources(
    sources_list: Path = APT_SOURCES_LIST, sources_dir: Path = APT_SOURCES_DIR
) -> list[AptSource]:
    """
    Read the ``deb`` sources that apt uses on this machine.

    Only the files apt reads are considered: ``sources.list`` and ``sources.list.d/*.list`` in
    the one-line format, ``sources.list.d/*.sources`` in the deb822 format.

    Args:
        sources_list: The main one-line sources file.
        sources_dir: The directory of further sources files.

    Returns:
        The enabled ``deb`` sources, in the order apt reads them.
    """
    found: list[AptSource] = []
    if sources_list.is_file():
        found += _parse_one_line_sources(sources_list.read_text())
    if sources_dir.is_dir():
        for path in sorted(sources_dir.iterdir()):
            if path.suffix == ".list" and path.is_file():
                found += _parse_one_line_sources(path.read_text())
            elif path.suffix == ".sources" and path.is_file():
                found += _parse_deb822_sources(path.read_text())
    return found


def debian_mirror(sources: Iterable[AptSource], suite: str = SUITE) -> str:
    """
    Return the URI of the first apt source that serves `suite` itself.

    Args:
        sources: The sources apt uses (see :func:`read_apt_sources`).
        suite: The release to look for.

    Returns:
        The mirror URI, e.g. ``http://deb.debian.org/debian``.

    Raises:
        DistroBuildError: No source serves `suite`.
    """
    for source in sources:
        if suite in source.suites and source.uri.startswith(("http://", "https://", "file:")):
            return source.uri
    raise DistroBuildError(
        f"no apt source of this machine serves {suite!r}: add one to {APT_SOURCES_LIST} "
        f"or {APT_SOURCES_DIR}"
    )


def chroot_sources_list(sources: Iterable[AptSource], suite: str = SUITE) -> str:
    """
    Return a one-line ``sources.list`` for the image: this machine's sources of `suite`.

    Every source whose suite is `suite` or ``suite-*`` (updates, security) is kept, limited to
    :data:`COMPONENT`, so the image gets the same package versions as this machine's mirror.

    Args:
        sources: The sources apt uses (see :func:`read_apt_sources`).
        suite: The release of the image.

    Returns:
        The file's text.
    """
    lines: list[str] = []
    for source in sources:
        for name in source.suites:
            if (name == suite or name.startswith(f"{suite}-")) and COMPONENT in source.components:
                line = f"deb {source.uri} {name} {COMPONENT}"
                if line not in lines:
                    lines.append(line)
    return "".join(f"{line}\n" for line in lines)


def inputs_digest(packages: Sequence[str] = PACKAGES) -> str:
    """
    Return the cache key of the image: a hash of the package list and the build format.

    Args:
        packages: The packages installed after debootstrap.

    Returns:
        A SHA-256 hex digest.
    """
    inputs = {
        "format": FORMAT_VERSION,
        "suite": SUITE,
        "variant": "minbase",
        "component": COMPONENT,
        "packages": sorted(packages),
        "user": [IMAGE_USER, IMAGE_USER_UID],
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def _find_tool(name: str) -> str:
    """Return the path of a host tool, or raise naming the package that ships it."""
    path = shutil.which(name, path=f"{os.environ.get('PATH', '')}:{_SYSTEM_PATH}")
    if path is None:
        package = _HOST_TOOLS.get(name, name)
        raise DistroBuildError(
            f"cannot build the distro image: `{name}` not found "
            f"(install the {package} package: apt-get install {package})"
        )
    return path


def _run(
    argv: Sequence[str],
    *,
    what: str,
    timeout: float,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a build step; raise :class:`DistroBuildError` with its output when it fails."""
    logger.debug("distro image: %s: %s", what, shlex.join(argv))
    try:
        done = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=timeout,
            env=dict(env) if env is not None else None,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise DistroBuildError(
            f"{what} timed out after {timeout:.0f} s: {shlex.join(argv)}"
        ) from exc
    if done.returncode != 0:
        output = (done.stderr.strip() or done.stdout.strip())[-3000:]
        msg = f"{what} failed: `{shlex.join(argv)}` exited {done.returncode}: {output}"
        raise DistroBuildError(msg)
    return done


def _chroot_env() -> dict[str, str]:
    """Return the environment for commands run inside the build tree."""
    return {
        "PATH": _SYSTEM_PATH,
        "HOME": "/root",
        "LC_ALL": "C",
        "DEBIAN_FRONTEND": "noninteractive",
        "DEBCONF_NONINTERACTIVE_SEEN": "true",
    }


def _decode_mount_path(field: str) -> str:
    r"""Undo the octal escapes (``\040`` for a blank) of a ``/proc/self/mountinfo`` path."""
    out = bytearray()
    raw = field.encode()
    i = 0
    while i < len(raw):
        if raw[i] == ord("\\") and i + 3 < len(raw) and raw[i + 1 : i + 4].isdigit():
            out.append(int(raw[i + 1 : i + 4], 8))
            i += 4
        else:
            out.append(raw[i])
            i += 1
    return out.decode(errors="surrogateescape")


def _mounts_under(root: Path) -> list[Path]:
    """Return the mount points at or below `root`, deepest first."""
    prefix = str(root.resolve())
    points: list[Path] = []
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            fields = line.split()
            if len(fields) < 5:
                continue
            point = _decode_mount_path(fields[4])
            if point == prefix or point.startswith(prefix + "/"):
                points.append(Path(point))
    return sorted(set(points), key=lambda p: len(p.parts), reverse=True)


def _unmount_all(root: Path) -> None:
    """Unmount everything mounted at or below `root`; raise if something stays mounted."""
    for _attempt in range(3):
        points = _mounts_under(root)
        if not points:
            return
        for point in points:
            done = subprocess.run(
                ["umount", str(point)], capture_output=True, text=True, check=False
            )
            if done.returncode != 0:
                subprocess.run(["umount", "--lazy", str(point)], capture_output=True, check=False)
    left = _mounts_under(root)
    if left:
        raise DistroBuildError(
            f"cannot unmount {', '.join(map(str, left))}; leaving {root} in place"
        )


@contextlib.contextmanager
def _build_tree() -> Iterator[Path]:
    """Yield a fresh temporary directory under :data:`BUILD_PARENT`; remove it afterwards."""
    BUILD_PARENT.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="x11pt-distro-", dir=BUILD_PARENT))
    try:
        yield tmp
    finally:
        # Never delete through a mount: a leftover /proc or /dev bind would be emptied too.
        _unmount_all(tmp)
        shutil.rmtree(tmp, ignore_errors=True)


def _debootstrap(rootfs: Path, mirror: str) -> None:
    """Make a minbase bookworm tree in `rootfs` from `mirror`."""
    argv = [
        _find_tool("debootstrap"),
        "--variant=minbase",
        f"--components={COMPONENT}",
        SUITE,
        str(rootfs),
        mirror,
    ]
    try:
        _run(argv, what="debootstrap", timeout=_DEBOOTSTRAP_TIMEOUT, env=_chroot_env())
    except DistroBuildError as exc:
        log = rootfs / "debootstrap" / "debootstrap.log"
        if log.is_file():
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
            raise DistroBuildError(f"{exc}\n--- {log} (tail) ---\n{tail}") from exc
        raise


def _configure_tree(rootfs: Path, sources: Sequence[AptSource]) -> None:
    """Point apt at this machine's mirrors and keep services from starting in the chroot."""
    sources_list = chroot_sources_list(sources)
    if sources_list:
        (rootfs / "etc/apt/sources.list").write_text(sources_list)
    (rootfs / "etc/apt/apt.conf.d/90x11passthrough").write_text(
        'APT::Install-Recommends "false";\n'
        'APT::Install-Suggests "false";\n'
        'Acquire::Languages "none";\n'
    )
    policy = rootfs / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)


def _install_packages(rootfs: Path, packages: Sequence[str]) -> None:
    """Run ``apt-get update`` and ``apt-get install`` of `packages` inside `rootfs`."""
    chroot = _find_tool("chroot")
    env = _chroot_env()
    proc = rootfs / "proc"
    _run(["mount", "-t", "proc", "proc", str(proc)], what="mounting /proc", timeout=60)
    try:
        _run(
            [chroot, str(rootfs), "apt-get", "update"],
            what="apt-get update in the image",
            timeout=_APT_TIMEOUT,
            env=env,
        )
        _run(
            [
                chroot,
                str(rootfs),
                "apt-get",
                "install",
                "-y",
                "--no-install-recommends",
                *packages,
            ],
            what="apt-get install in the image",
            timeout=_APT_TIMEOUT,
            env=env,
        )
        _run(
            [
                chroot,
                str(rootfs),
                "useradd",
                "--uid",
                str(IMAGE_USER_UID),
                "--user-group",
                "--create-home",
                "--shell",
                "/bin/bash",
                IMAGE_USER,
            ],
            what=f"adding the user {IMAGE_USER}",
            timeout=60,
            env=env,
        )
        _run([chroot, str(rootfs), "apt-get", "clean"], what="apt-get clean", timeout=120, env=env)
    finally:
        _unmount_all(proc)


def _finish_tree(rootfs: Path) -> None:
    """Drop what only the build needed and what describes the build host, not the image."""
    (rootfs / "usr/sbin/policy-rc.d").unlink(missing_ok=True)
    for directory in ("var/lib/apt/lists", "var/cache/apt/archives", "var/log/apt"):
        for path in (rootfs / directory).glob("*"):
            if path.is_file() or path.is_symlink():
                path.unlink()
    for directory in ("usr/share/doc", "usr/share/man", "usr/share/info"):
        shutil.rmtree(rootfs / directory, ignore_errors=True)
        (rootfs / directory).mkdir(parents=True, exist_ok=True)
    # debootstrap copies the build host's name and resolver; Docker supplies its own at run
    # time, so the image carries neutral ones and nothing of the machine that built it.
    (rootfs / "etc/hostname").write_text("localhost\n")
    (rootfs / "etc/hosts").write_text("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n")
    (rootfs / "etc/resolv.conf").write_text("")
    (rootfs / "etc/machine-id").write_text("")
    x11_unix = rootfs / "tmp/.X11-unix"
    x11_unix.mkdir(parents=True, exist_ok=True)
    x11_unix.chmod(0o1777)


def _import_tree(rootfs: Path, tag: str, digest: str) -> None:
    """Import `rootfs` as the image `tag` with ``tar -C rootfs -c . | docker import - tag``."""
    changes = [
        f"LABEL {INPUTS_LABEL}={digest}",
        f'ENV PATH="{_SYSTEM_PATH}"',
        "ENV LANG=C.UTF-8",
        'CMD ["/bin/bash"]',
    ]
    docker_argv = [_find_tool("docker"), "import"]
    for change in changes:
        docker_argv += ["--change", change]
    docker_argv += ["-", tag]
    tar_argv = [_find_tool("tar"), "-C", str(rootfs), "--numeric-owner", "-c", "."]
    with subprocess.Popen(
        tar_argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
    ) as tar:
        if tar.stdout is None:  # pragma: no cover - guaranteed by stdout=PIPE
            raise DistroBuildError("tar has no output pipe")
        try:
            imported = subprocess.run(
                docker_argv,
                stdin=tar.stdout,
                capture_output=True,
                text=True,
                timeout=_IMPORT_TIMEOUT,
                check=False,
            )
        finally:
            tar.stdout.close()
        tar_err = tar.stderr.read().decode(errors="replace") if tar.stderr else ""
        tar_rc = tar.wait(timeout=60)
    if tar_rc != 0:
        raise DistroBuildError(f"tar of the image tree exited {tar_rc}: {tar_err.strip()[-2000:]}")
    if imported.returncode != 0:
        output = (imported.stderr.strip() or imported.stdout.strip())[-2000:]
        raise DistroBuildError(f"docker import exited {imported.returncode}: {output}")


def build_distro_image(
    *, tag: str = DEFAULT_TAG, packages: Sequence[str] = PACKAGES, force: bool = False
) -> str:
    """
    Build (or reuse) the Debian bookworm app-matrix image.

    Steps: ``debootstrap --variant=minbase bookworm`` from this machine's Debian mirror (read
    from apt's sources), this machine's ``bookworm*`` sources as the image's
    ``sources.list``, ``apt-get install --no-install-recommends`` of `packages`, the
    user ``user`` (uid 1000, group ``user``, home ``/home/user``), neutral ``/etc/hostname``,
    ``/etc/hosts`` and ``/etc/resolv.conf`` (Docker mounts its own), then
    ``tar -C DIR -c . | docker import - TAG`` with the label :data:`INPUTS_LABEL`.

    The build is skipped when `tag` already carries the label value of :func:`inputs_digest`;
    another image with that label is re-tagged instead of rebuilt. Builds of concurrent
    processes are serialised with :func:`infra.images.build_lock`. Needs root and, on a
    fresh machine, a few minutes and the network path to the mirror.

    Args:
        tag: The tag to give the image.
        packages: What to install after debootstrap (the benchmarks add their applications
            to :data:`PACKAGES`); part of the cache key.
        force: Build even when an image with the same inputs exists.

    Returns:
        `tag`.

    Raises:
        DistroBuildError: A host tool is missing (the message names its package), the process
            is not root, or a build step failed (the message holds the step's output).
    """
    for tool in ("docker", "debootstrap", "chroot", "tar", "mount", "umount"):
        _find_tool(tool)
    digest = inputs_digest(packages)
    with build_lock("distro-build.lock"):
        if not force and reuse_cached(tag, INPUTS_LABEL, digest):
            return tag
        if os.geteuid() != 0:
            raise DistroBuildError("building the distro image needs root (debootstrap, chroot)")
        sources = read_apt_sources()
        mirror = debian_mirror(sources)
        started = time.monotonic()
        with _build_tree() as tmp:
            rootfs = tmp / "rootfs"
            rootfs.mkdir()
            logger.info("distro image: debootstrap %s from %s", SUITE, mirror)
            _debootstrap(rootfs, mirror)
            _unmount_all(rootfs)
            _configure_tree(rootfs, sources)
            logger.info("distro image: installing %d packages", len(packages))
            _install_packages(rootfs, packages)
            _unmount_all(rootfs)
            _finish_tree(rootfs)
            logger.info("distro image: importing as %s", tag)
            _import_tree(rootfs, tag, digest)
        logger.info(
            "built distro image %s (%s) in %.0f s", tag, digest[:12], time.monotonic() - started
        )
        return tag
