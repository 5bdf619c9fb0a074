"""
The command line: run a container command with the host display lent to it.

Strictly private.

::

    x11passthrough run -- docker run --rm IMAGE xeyes
    x11passthrough args --format json      # print the arguments, hold until Ctrl-C
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys

from collections.abc import Sequence

from . import _child
from ._args import DockerRunArgs
from ._passthrough import X11Passthrough
from ._transport import EngineChoice
from .exceptions import X11PassthroughError


_ENGINES = {"docker", "podman", "nerdctl"}
_SUBCOMMANDS = {"run", "create"}
PLACEHOLDER = "{x11}"


def splice(command: Sequence[str], args: DockerRunArgs) -> list[str]:
    """
    Insert the container arguments into `command`.

    A ``{x11}`` token is replaced by them; otherwise they go right after the ``run`` or
    ``create`` of a ``docker``/``podman``/``nerdctl`` command.

    Raises:
        X11PassthroughError: There is no place for them.
    """
    command = list(command)
    extra = list(args)
    if PLACEHOLDER in command:
        i = command.index(PLACEHOLDER)
        return [*command[:i], *extra, *command[i + 1 :]]
    if command and os.path.basename(command[0]) in _ENGINES:
        for i, word in enumerate(command[1:], start=1):
            if word in _SUBCOMMANDS:
                return [*command[: i + 1], *extra, *command[i + 1 :]]
    raise X11PassthroughError(
        f"cannot tell where the container arguments go in {' '.join(command)!r}: use a "
        f"'docker run ...' command, or put {PLACEHOLDER} where they belong"
    )


def engine_of(command: Sequence[str]) -> EngineChoice:
    """
    Return the engine a wrapped command runs on: ``podman`` for Podman, else ``auto``.

    A ``docker`` command may reach Podman too (podman-docker), which detection tells; only
    a ``podman`` command names its engine for sure.
    """
    for word in command:
        name = os.path.basename(word)
        if name in _ENGINES:
            return "podman" if name == "podman" else "auto"
    return "auto"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="x11passthrough",
        description="Lend the host's X display to a container, safely and fast.",
    )
    parser.add_argument("--display", help="the host display (default: $DISPLAY)")
    parser.add_argument("--xauthority", help="the host authority file (default: libXau's)")
    parser.add_argument(
        "--auth",
        choices=["substitute", "untrusted", "forward"],
        default="substitute",
        help="how the container authenticates (default: substitute; see the security docs)",
    )
    parser.add_argument("--bind", action="append", help="address for the relay (repeatable)")
    parser.add_argument("--allow", action="append", help="client network, CIDR (repeatable)")
    parser.add_argument("--host-dir", help="directory for the session's authority file")
    parser.add_argument(
        "--transport",
        choices=["auto", "unix", "tcp"],
        default="auto",
        help="how containers reach the display (default: chosen by the engine)",
    )
    parser.add_argument(
        "--engine",
        choices=["auto", "docker", "podman", "desktop"],
        help="the container engine (default: the wrapped command's, else asked over its API)",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log more")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a command with the arguments spliced in")
    run.add_argument("argv", nargs=argparse.REMAINDER, help="-- docker run ... (or {x11})")
    args = sub.add_parser("args", help="print the arguments and hold the display until Ctrl-C")
    args.add_argument("--format", choices=["cli", "json", "compose"], default="cli")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = _parser()
    opts = parser.parse_args(argv)
    command: list[str] = []
    if opts.command == "run":
        command = opts.argv[1:] if opts.argv[:1] == ["--"] else opts.argv
        if not command:
            parser.error("nothing to run: give a command after '--'")
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(opts.verbose, 2)]
    logging.basicConfig(level=level, format="x11passthrough: %(message)s")
    try:
        passthrough = X11Passthrough(
            opts.display,
            opts.xauthority,
            auth=opts.auth,
            bind=opts.bind,
            allow=opts.allow,
            host_dir=opts.host_dir,
            transport=opts.transport,
            engine=opts.engine or engine_of(command),
        )
        if command:
            with passthrough as args:
                return _child.run(splice(command, args))
        with passthrough as args:
            if opts.format == "json":
                print(json.dumps(args.docker_py(), indent=2))
            elif opts.format == "compose":
                print(json.dumps(args.compose(), indent=2))
            else:
                print(shlex.join(args))
            sys.stdout.flush()
            return 128 + _child.wait_for_signal()
    except X11PassthroughError as e:
        print(f"x11passthrough: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0
