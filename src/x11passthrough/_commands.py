"""
The command line's commands: ``run``, ``args`` and ``doctor``, once the options are read.

Exit status: ``run`` passes the container command's own on (128+N when
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

import attrs

from . import _child, _destination
from ._args import DockerRunArgs, compose_file, env_lines
from ._display._locator import DisplayLocator
from ._display._owner import trusted_uids
from ._doctor import diagnose
from ._options import (
    AuthMode,
    EngineChoice,
    ShmChoice,
    Transport,
    auth_mode,
    engine_choice,
    shm_choice,
    transport_choice,
)
from ._passthrough import X11Passthrough
from ._wrapped import Wrapped
from ._xvfb import Xvfb
from .exceptions import ANY, ConfigurationError, Mention, X11PassthroughError, keyword


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


#: The keyword options that are also flags (``host_dir`` is ``--host-dir``).
_FLAGS = frozenset(
    ("display", "xauthority", "auth", "bind", "allow", "host_dir", "transport", "engine", "shm")
)


def flag(mention: Mention) -> str:
    """Spell an option a message names as the command line's flag (``--bind 127.0.0.1``)."""
    if mention.option == "trusted_owners":
        return "--trust-owner with that user's name or uid"
    if mention.option == "shm" and isinstance(mention.value, bool):
        mention = Mention("shm", "yes" if mention.value else "no")
    if mention.option not in _FLAGS:
        return keyword(mention)
    name = f"--{mention.option.replace('_', '-')}"
    if mention.value is ANY:
        return f"{name} ..."
    if isinstance(mention.value, (list, tuple)):
        return " ".join(f"{name} {value}" for value in mention.value) or name
    if mention.option == "display":
        return f"{name} {mention.value} (or --xvfb for a private X server)"
    return f"{name} {mention.value}"


def execute(opts: argparse.Namespace) -> int:
    """Run the command `opts` (the parsed command line) names; return the exit status."""
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(opts.verbose, 2)]
    logging.basicConfig(level=level, format=f"{_PROG}: %(message)s")
    try:
        return _main(opts)
    except X11PassthroughError as e:
        return _error(e.explain(flag))
    except KeyboardInterrupt:
        return 130


def _error(message: str) -> int:
    print(f"{_PROG}: error: {message}", file=sys.stderr)
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
    if wrapped is not None:
        # `docker -H ssh://... run`, `podman --remote run`: the engine the command names.
        for name, value in _destination.command_environ(wrapped.prefix).items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    xvfb = _xvfb(opts) if opts.xvfb else None
    try:
        if xvfb is not None:
            xvfb.start()
            options = attrs.evolve(options, display=xvfb.display, xauthority=str(xvfb.xauthority))
        if opts.command == "doctor":
            return _doctor(opts, options)
        if wrapped is not None:
            with options.passthrough() as args:
                return _run(wrapped, args, opts.stop_timeout)
        with _child.caught_signals() as wait, options.passthrough() as args:
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


@attrs.frozen(kw_only=True)
class CommandOptions:
    """What the command line asks of the passthrough: its flags, typed."""

    display: str | None = None
    xauthority: str | None = None
    auth: AuthMode = attrs.field(default="substitute", converter=auth_mode)
    transport: Transport = attrs.field(default="auto", converter=transport_choice)
    engine: EngineChoice = attrs.field(default="auto", converter=engine_choice)
    bind: tuple[str, ...] | None = None
    allow: tuple[str, ...] | None = None
    host_dir: str | None = None
    shm: ShmChoice = attrs.field(default="auto", converter=shm_choice)
    container_hostname: str | None = None
    locator: DisplayLocator | None = None

    def passthrough(self) -> X11Passthrough:
        """Return the passthrough these options make (not started)."""
        return X11Passthrough(
            self.display,
            self.xauthority,
            auth=self.auth,
            transport=self.transport,
            engine=self.engine,
            bind=self.bind,
            allow=self.allow,
            host_dir=self.host_dir,
            shm=self.shm,
            container_hostname=self.container_hostname,
            locator=self.locator,
        )


def _options(opts: argparse.Namespace, wrapped: Wrapped | None) -> CommandOptions:
    locator = None
    if opts.trust_owner:
        locator = DisplayLocator(
            trusted_owners=trusted_uids() | {_uid(user) for user in opts.trust_owner}
        )
    return CommandOptions(
        display=opts.display,
        xauthority=opts.xauthority,
        auth=opts.auth,
        transport=opts.transport,
        engine=opts.engine or (engine_of(wrapped.argv) if wrapped is not None else "auto"),
        bind=None if opts.bind is None else tuple(opts.bind),
        allow=None if opts.allow is None else tuple(opts.allow),
        host_dir=opts.host_dir,
        shm={"auto": "auto", "yes": True, "no": False}[opts.shm],
        # The user's own name: an entry for it, for clients that look their cookie up by it.
        container_hostname=wrapped.hostname if wrapped is not None else None,
        locator=locator,
    )


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


def _doctor(opts: argparse.Namespace, options: CommandOptions) -> int:
    extra = opts.engine_options[1:] if opts.engine_options[:1] == ["--"] else opts.engine_options
    if extra and opts.image is None:
        raise ConfigurationError(
            f"{shlex.join(extra)!r}: options for the probe container need --image IMAGE"
        )
    ok = diagnose(
        options.passthrough,
        out=sys.stdout,
        image=opts.image,
        engine_options=extra,
        spell=flag,
    )
    return 0 if ok else 1
