"""
The command line's parser: run, args and doctor.

Lend the display to a container command, print the arguments, or explain a setup.
``--help`` must be quick, so this module imports only argparse; the
commands (and the library) are imported once the command line has been read
(:mod:`._commands`).

::

    x11passthrough run -- docker run --rm IMAGE xeyes
    x11passthrough run --xvfb -- docker run --rm IMAGE my-gui-test   # no display: a private one
    x11passthrough args --format compose --service app > x11.override.yml
    x11passthrough doctor --image IMAGE
    x11passthrough serve --name devbox       # lend it until stopped (see _serve_cli)

Exit status: ``run`` passes the container command's own on (128+N when signal N ended it);
125 for our errors and bad usage, as ``docker run`` does, so that a container's own 2 (a
pytest usage error, ``ls`` of a missing file) is not taken for ours; 130/143/129 when
SIGINT/SIGTERM/SIGHUP ended ``args``.
"""

from __future__ import annotations

import argparse
import sys

from collections.abc import Sequence
from typing import Any, NoReturn

from . import _serve_cli


_PROG = "x11passthrough"
#: Exit status for our own errors and bad usage: ``docker run``'s, not a container's usual 2.
ERROR_STATUS = 125
#: Seconds a container has to end after SIGTERM before it is killed (``docker stop``'s 10).
STOP_TIMEOUT = 10.0

_EXAMPLES = """\
examples:
  x11passthrough doctor
  x11passthrough run -- docker run --rm IMAGE xeyes
  x11passthrough run --xvfb -- docker run --rm IMAGE my-gui-test
  x11passthrough args --format compose > x11.override.yml   # lent until Ctrl-C
  # meanwhile: docker compose -f compose.yml -f x11.override.yml run app

exit status: run gives the command's own (128+N after signal N); 125 for
x11passthrough's own errors and bad usage, as docker run does."""
_RUN_EXAMPLES = """\
examples:
  x11passthrough run -- docker run --rm IMAGE xeyes
  x11passthrough run --xvfb -- podman run --rm IMAGE my-gui-test
  x11passthrough run -- sh -c 'echo "$@"' {x11}

Compose cannot be wrapped: use 'x11passthrough args --format compose'.
exit status: the command's own; 125 for x11passthrough's own errors."""


def _common(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """Add the options every subcommand takes (also accepted before the subcommand)."""
    default: Any = argparse.SUPPRESS if suppress else None
    group = parser.add_argument_group("display and relay")
    group.add_argument("--display", default=default, help="the host display (default: $DISPLAY)")
    group.add_argument(
        "--xauthority", default=default, help="the host authority file (default: libXau's)"
    )
    group.add_argument(
        "--xvfb",
        action="store_true",
        default=argparse.SUPPRESS if suppress else False,
        help="start a private Xvfb for the duration and lend it (hosts without a display)",
    )
    group.add_argument(
        "--xvfb-screen",
        default=default,
        metavar="WxH[xD]",
        help="screen of the private Xvfb (default: 1280x1024x24)",
    )
    group.add_argument(
        "--auth",
        choices=["substitute", "untrusted", "forward"],
        default=argparse.SUPPRESS if suppress else "substitute",
        help="how containers authenticate (default: substitute; see the security docs)",
    )
    group.add_argument(
        "--transport",
        choices=["auto", "unix", "tcp"],
        default=argparse.SUPPRESS if suppress else "auto",
        help="how containers reach the display (default: chosen by the engine)",
    )
    group.add_argument(
        "--engine",
        choices=["auto", "docker", "podman", "desktop"],
        default=default,
        help="the container engine (default: the wrapped command's, else asked over its API)",
    )
    group.add_argument(
        "--bind", action="append", default=default, help="relay address for TCP (repeatable)"
    )
    group.add_argument(
        "--allow", action="append", default=default, help="client network, CIDR (repeatable)"
    )
    group.add_argument(
        "--shm",
        choices=["auto", "yes", "no"],
        default=argparse.SUPPRESS if suppress else "auto",
        help="shared memory (MIT-SHM): auto (default) for containers that share the X "
        "server's IPC namespace; yes also runs them with --ipc host (a security decision: "
        "see the security docs); no never",
    )
    group.add_argument("--host-dir", default=default, help="where the session directory goes")
    group.add_argument(
        "--trust-owner",
        action="append",
        default=default,
        metavar="USER",
        help="also accept a display whose socket belongs to USER (name or uid; repeatable)",
    )
    group.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=argparse.SUPPRESS if suppress else 0,
        help="log more (-vv: debug)",
    )


class _Version(argparse.Action):
    """``--version``: the installed distribution's version (read only when asked)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_args: object, **_kwargs: object) -> None:
        from importlib.metadata import version  # noqa: PLC0415 - --help stays quick

        print(f"{_PROG} {version('x11passthrough')}", flush=True)  # stdout: v=$(... --version)
        parser.exit()


class _Parser(argparse.ArgumentParser):
    """A parser whose usage errors exit with :data:`ERROR_STATUS`, not argparse's 2."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(ERROR_STATUS, f"{self.prog}: error: {message}\n")


def _seconds(text: str) -> float:
    """``--stop-timeout``: a number of seconds, 0 or more."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < 1e6:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of seconds (0 or more), e.g. --stop-timeout 30"
        )
    return value


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=_PROG,
        description="Lend the host's X display to a container, safely and fast.",
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=_Version, help="print the version and exit")
    _common(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser(
        "run",
        help="run a container command with the display lent to it",
        description="Run a container command with the arguments spliced in after its "
        "'run' (or where {x11} stands), and lend the display until the container exits.",
        epilog=_RUN_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(run, suppress=True)
    run.add_argument(
        "--stop-timeout",
        type=_seconds,
        default=STOP_TIMEOUT,
        metavar="SECONDS",
        help="after SIGTERM, how long the container has to end before it is killed, as "
        "for docker stop (default: 10)",
    )
    run.add_argument("argv", nargs=argparse.REMAINDER, help="-- docker run ... (or {x11})")
    args = sub.add_parser(
        "args",
        help="print the arguments, and hold the display until Ctrl-C",
        description="Print what a container needs, and keep the display lent until Ctrl-C.",
    )
    _common(args, suppress=True)
    args.add_argument(
        "--format",
        choices=["cli", "json", "compose", "env", "devcontainer"],
        default="cli",
        help="cli: docker-run options; json: Docker SDK kwargs; compose: an override file; "
        "env: shell variables; devcontainer: devcontainer.json keys (with --name)",
    )
    args.add_argument(
        "--service", default="app", help="the Compose service of --format compose (default: app)"
    )
    _serve_cli.name_option(args, required=False)
    args.add_argument("--client", metavar="LABEL", help="with --name: LABEL's own seat")
    doctor = sub.add_parser(
        "doctor",
        help="check every step a container's display depends on",
        description="Check the display, the cookie, the engine, the transport and the relay, "
        "one line each; exit 0 only when a container would get a working display.",
    )
    _common(doctor, suppress=True)
    doctor.add_argument("--image", help="also run a probe container of IMAGE")
    doctor.add_argument(
        "engine_options",
        nargs=argparse.REMAINDER,
        metavar="-- OPTIONS",
        help="options for the probe's 'ENGINE run' (e.g. -- --runtime runsc)",
    )
    _serve_cli.add_serve(sub, lambda p: _common(p, suppress=True))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = _parser()
    opts = parser.parse_args(argv)
    if opts.command == "args" and opts.format == "devcontainer" and not opts.name:
        parser.error("--format devcontainer is for a served display: pass --name NAME")
    if opts.command == "serve" or getattr(opts, "name", None):
        return _serve_cli.execute(opts)
    from ._commands import execute  # noqa: PLC0415 - after parsing: --help stays quick

    return execute(opts)
