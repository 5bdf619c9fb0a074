"""
The command line's commands: ``run``, ``args`` and ``doctor``, once the options are read.

Strictly private. Exit status: ``run`` passes the container command's own on (128+N when
signal N ended it); 125 for our errors (``docker run``'s, as a container's own 2 is common);
``doctor`` 0 only when a container would get a working display, else 1; ``args`` 128+N for
the signal that ended it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pwd
import re
import shlex
import subprocess
import sys
import tempfile

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import _child
from ._args import DockerRunArgs
from ._display._locator import DisplayLocator
from ._display._owner import trusted_uids
from ._doctor import diagnose
from ._passthrough import X11Passthrough
from ._transport import EngineChoice
from ._wrapped import Wrapped
from ._xvfb import Xvfb
from .exceptions import ConfigurationError, X11PassthroughError


logger = logging.getLogger("x11passthrough")

#: Exit status for our own errors (as for bad usage, ``_cli.ERROR_STATUS``): ``docker run``'s.
ERROR_STATUS = 125
_PROG = "x11passthrough"
_SCREEN = re.compile(r"(\d+)x(\d+)(?:x(\d+))?")


def engine_of(command: Sequence[str]) -> EngineChoice:
    """
    Return the engine a wrapped command runs on: ``podman`` for Podman, else ``auto``.

    A ``docker`` command may reach Podman too (podman-docker), which detection tells; only
    a ``podman`` command names its engine for sure.
    """
    for word in command:
        name = os.path.basename(word)
        if name in ("docker", "podman", "nerdctl"):
            return "podman" if name == "podman" else "auto"
    return "auto"


# The library's messages name its keyword options; the command line has flags.
_FLAG_NAMES = ("display", "xauthority", "auth", "bind", "allow", "host_dir", "transport", "engine")
#: Library phrases that have a command-line equivalent, replaced whole.
_PHRASES = [
    (
        re.compile(r"X11Passthrough\(display=':0'\)"),
        "--display :0 (or --xvfb for a private X server)",
    ),
    (
        re.compile(r"DisplayLocator\(trusted_owners=\.\.\.\) with its uid as locator=\.\.\."),
        "--trust-owner with that user's name or uid",
    ),
]
#: ``name=value`` of a keyword option that is also a flag.
_KEYWORD = re.compile(rf"\b({'|'.join(_FLAG_NAMES)})=(?:'([^']*)'|(\.\.\.)|([^\s,;)]+))")


def speak(message: str) -> str:
    """Rewrite a library message in the command line's words (``bind=...`` -> ``--bind ...``)."""
    for pattern, words in _PHRASES:
        message = pattern.sub(words, message)

    def flag(match: re.Match[str]) -> str:
        value = match.group(2) if match.group(2) is not None else match.group(3) or match.group(4)
        return f"--{match.group(1).replace('_', '-')} {value}"

    return _KEYWORD.sub(flag, message)


def execute(opts: argparse.Namespace) -> int:
    """Run the command `opts` (the parsed command line) names; return the exit status."""
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(opts.verbose, 2)]
    logging.basicConfig(level=level, format=f"{_PROG}: %(message)s")
    try:
        return _main(opts)
    except X11PassthroughError as e:
        return _error(str(e))
    except KeyboardInterrupt:
        return 130


def _error(message: str) -> int:
    print(f"{_PROG}: error: {speak(message)}", file=sys.stderr)
    return ERROR_STATUS


def _main(opts: argparse.Namespace) -> int:
    wrapped = _wrapped(opts)
    if opts.xvfb and opts.display:
        raise ConfigurationError("--xvfb starts a display of its own: leave out --display")
    no_display = not opts.xvfb and not opts.display and not os.environ.get("DISPLAY")
    if no_display and opts.command != "doctor":  # doctor reports it as its first step
        raise ConfigurationError(
            "DISPLAY is not set and no display was given: pass --display :0, or --xvfb to "
            "start a private X server"
        )
    options = _options(opts, wrapped)
    _check_conflicts(opts, wrapped)
    xvfb = _xvfb(opts) if opts.xvfb else None
    try:
        if xvfb is not None:
            xvfb.start()
            options["display"], options["xauthority"] = xvfb.display, str(xvfb.xauthority)
        if opts.command == "doctor":
            return _doctor(opts, options)
        if wrapped is not None:
            with X11Passthrough(**options) as args:
                return _run(wrapped, args, opts.stop_timeout)
        with _child.caught_signals() as wait, X11Passthrough(**options) as args:
            return _hold(opts, args, wait)
    finally:
        if xvfb is not None:
            xvfb.close()


def _wrapped(opts: argparse.Namespace) -> Wrapped | None:
    if opts.command != "run":
        return None
    command = opts.argv[1:] if opts.argv[:1] == ["--"] else opts.argv
    if not command:
        raise ConfigurationError("nothing to run: give a container command after '--'")
    wrapped = Wrapped.parse(command)
    if wrapped.dropped:
        logger.warning(
            "left out of the command: %s (the lent display sets DISPLAY and XAUTHORITY and "
            "mounts its own socket; these would beat it)",
            ", ".join(repr(d) for d in wrapped.dropped),
        )
    return wrapped


def _options(opts: argparse.Namespace, wrapped: Wrapped | None) -> dict[str, Any]:
    engine = opts.engine or (engine_of(wrapped.argv) if wrapped is not None else "auto")
    options: dict[str, Any] = {
        "display": opts.display,
        "xauthority": opts.xauthority,
        "auth": opts.auth,
        "bind": opts.bind,
        "allow": opts.allow,
        "host_dir": opts.host_dir,
        "transport": opts.transport,
        "engine": engine,
    }
    if opts.trust_owner:
        options["locator"] = DisplayLocator(
            trusted_owners=trusted_uids() | {_uid(user) for user in opts.trust_owner}
        )
    if wrapped is not None and wrapped.hostname:
        # The user's own name: an entry for it, for clients that look their cookie up by it.
        options["container_hostname"] = wrapped.hostname
    return options


def _uid(user: str) -> int:
    """Return the uid of `user` (a user name or a number) for ``--trust-owner``."""
    if user.isdigit():
        return int(user)
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        raise ConfigurationError(
            f"--trust-owner {user!r}: no such user on this host; give a user name or a uid"
        ) from None


def _check_conflicts(opts: argparse.Namespace, wrapped: Wrapped | None) -> None:
    """Raise if the wrapped command cannot get the display as asked."""
    if wrapped is None:
        return
    if wrapped.network == "none" and opts.transport == "tcp":
        raise ConfigurationError(
            "the container has no network (--network none), so it cannot reach the relay on "
            "TCP: leave out --transport tcp (the UNIX transport needs no network)"
        )
    if opts.auth == "forward" and wrapped.user is not None:
        uid = wrapped.user.partition(":")[0]
        if uid not in ("0", "root", str(os.geteuid())):
            raise ConfigurationError(
                f"--auth forward keeps your real cookie in a file only root and uid "
                f"{os.geteuid()} can read, and the container runs as --user {wrapped.user}: "
                "use --auth substitute (the default), whose file any user can read"
            )
    if wrapped.create:
        logger.warning(
            "'create' makes a container that starts later, when this display is no longer "
            "lent: use 'run', or 'x11passthrough args' to keep the display while it runs"
        )


def _xvfb(opts: argparse.Namespace) -> Xvfb:
    width, height, depth = 1280, 1024, 24
    if opts.xvfb_screen:
        match = _SCREEN.fullmatch(opts.xvfb_screen)
        if match is None:
            raise ConfigurationError(
                f"--xvfb-screen {opts.xvfb_screen!r} is not WIDTHxHEIGHT or "
                "WIDTHxHEIGHTxDEPTH, e.g. 1920x1080x24"
            )
        width, height = int(match[1]), int(match[2])
        depth = int(match[3]) if match[3] else depth
    return Xvfb(width=width, height=height, depth=depth)


def _run(wrapped: Wrapped, args: DockerRunArgs, stop_timeout: float) -> int:
    arguments = list(args)
    if wrapped.hostname and args.hostname == wrapped.hostname:
        at = arguments.index("--hostname")
        del arguments[at : at + 2]  # the command names it already
    if args.display.startswith("tcp/") and wrapped.network == "none":
        raise X11PassthroughError(
            "the container has no network (--network none) and this engine is reached over "
            "TCP (an engine in a VM): give it a network, or run it on an engine on this host"
        )
    if wrapped.detach and not wrapped.create:
        return _child.run_detached(
            wrapped.splice(arguments), wrapped.prefix, stop_timeout=stop_timeout
        )
    if not wrapped.prefix or wrapped.create or "--cidfile" in wrapped.argv:
        return _child.run(wrapped.splice(arguments), stop_timeout=stop_timeout)
    with tempfile.TemporaryDirectory(prefix="x11passthrough-cid-") as tmp:
        cidfile = Path(tmp) / "cid"
        # The container's id, to kill it when a second signal shows that its process 1
        # ignores them (an X client as process 1 has no handler for SIGINT or SIGTERM), or
        # when it outlives the grace period after SIGTERM (as `docker stop` does).
        argv = wrapped.splice(["--cidfile", str(cidfile), *arguments])

        def kill() -> bool:
            try:
                container = cidfile.read_text().strip()
            except OSError:
                return False  # not created yet: the engine's client is killed instead
            subprocess.run(
                [*wrapped.prefix, "kill", container],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                check=False,
            )
            return True

        def on_repeat() -> None:
            logger.warning(
                "the container ignores signals (its process 1 has no handler; `docker run "
                "--init` adds one): killing it"
            )
            kill()

        return _child.run(argv, on_repeat=on_repeat, stop_timeout=stop_timeout, stop=kill)


def _hold(opts: argparse.Namespace, args: DockerRunArgs, wait: Callable[[], int]) -> int:
    if opts.format == "json":
        text = json.dumps(args.docker_py(), indent=2)
    elif opts.format == "compose":
        text = compose_file(args, opts.service)
    elif opts.format == "env":
        text = env_lines(args)
    else:
        text = shlex.join(args)
    print(text, flush=True)
    print(
        f"{_PROG}: display {args.display} is lent until Ctrl-C (or SIGTERM)",
        file=sys.stderr,
        flush=True,
    )
    return 128 + wait()


def compose_file(args: DockerRunArgs, service: str) -> str:
    """Return a complete Compose override file (YAML) giving `service` the display."""
    q = json.dumps  # JSON strings are YAML double-quoted scalars
    fragment = args.compose()
    lines = ["services:", f"  {q(service)}:"]
    lines.append("    environment:")
    lines += [f"      {q(k)}: {q(v)}" for k, v in fragment["environment"].items()]
    if fragment["volumes"]:
        lines.append("    volumes:")
        for volume in fragment["volumes"]:
            lines.append(f"      - type: {q(volume['type'])}")
            lines.append(f"        source: {q(volume['source'])}")
            lines.append(f"        target: {q(volume['target'])}")
            lines.append(f"        read_only: {'true' if volume['read_only'] else 'false'}")
    if fragment.get("extra_hosts"):
        lines.append("    extra_hosts:")
        lines += [f"      - {q(h)}" for h in fragment["extra_hosts"]]
    if fragment.get("hostname"):
        lines.append(f"    hostname: {q(fragment['hostname'])}")
    return "\n".join(lines)


def env_lines(args: DockerRunArgs) -> str:
    """Return shell assignments: the pieces, and all docker-run options in one variable."""
    values = {
        "X11PASSTHROUGH_DISPLAY": args.display,
        "X11PASSTHROUGH_XAUTHORITY": str(args.xauthority or ""),
        "X11PASSTHROUGH_CONTAINER_XAUTHORITY": str(args.container_xauthority),
        "X11PASSTHROUGH_SOCKET": str(args.socket or ""),
        "X11PASSTHROUGH_CONTAINER_SOCKET": str(args.container_socket or ""),
        "X11PASSTHROUGH_ARGS": shlex.join(args),
    }
    return "\n".join(f"export {k}={shlex.quote(v)}" for k, v in values.items())


def _doctor(opts: argparse.Namespace, options: dict[str, Any]) -> int:
    extra = opts.engine_options[1:] if opts.engine_options[:1] == ["--"] else opts.engine_options
    if extra and opts.image is None:
        raise ConfigurationError(
            f"{shlex.join(extra)!r}: options for the probe container need --image IMAGE"
        )
    ok = diagnose(options, out=sys.stdout, image=opts.image, engine_options=extra, speak=speak)
    return 0 if ok else 1
