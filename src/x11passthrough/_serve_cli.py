"""
The command line of served displays: ``serve`` and ``args --name``.

Strictly private. The parser's part is :func:`add_serve` (argparse only, so ``--help`` stays
quick); :func:`execute` runs once the command line is read.

::

    x11passthrough serve --name devbox                 # serve until SIGTERM / Ctrl-C
    x11passthrough args --name devbox --format compose --service app > x11.override.yml
    x11passthrough serve --name devbox --mint web      # a cookie (and socket) for one container
    x11passthrough args --name devbox --client web --format devcontainer
    x11passthrough serve --name devbox --revoke web
    x11passthrough serve --name devbox --stop

Exit status: 0 when ``serve`` was stopped (SIGTERM, SIGINT, SIGHUP or ``--stop``) or a request
succeeded; 125 for our errors (as for the other commands).
"""

from __future__ import annotations

import argparse

from collections.abc import Callable
from typing import TYPE_CHECKING, Any


if TYPE_CHECKING:
    from ._served.display import ServedArgs

_PROG = "x11passthrough"
#: Seconds ``--stop`` waits for the serving process to let go of the name.
STOP_WAIT = 30.0


def add_serve(
    sub: Any, common: Callable[[argparse.ArgumentParser], None]
) -> argparse.ArgumentParser:
    """Add the ``serve`` subcommand to `sub` (an argparse subparsers object)."""
    serve: argparse.ArgumentParser = sub.add_parser(
        "serve",
        help="lend the display under a stable name until stopped (Compose, Dev Containers)",
        description="Lend the display under a stable name until stopped: containers started "
        "with `x11passthrough args --name NAME` reach it whenever they start, stop or "
        "restart, and across restarts of the X server. With --mint, --revoke, --list or "
        "--stop, ask the process that serves NAME instead.",
    )
    common(serve)
    name_option(serve, required=True)
    action = serve.add_mutually_exclusive_group()
    action.add_argument(
        "--mint", metavar="LABEL", help="give the container LABEL a cookie and socket of its own"
    )
    action.add_argument(
        "--revoke", metavar="LABEL", help="withdraw LABEL's cookie, socket and connections"
    )
    action.add_argument("--list", action="store_true", help="list the minted labels")
    action.add_argument("--stop", action="store_true", help="stop the process serving NAME")
    formats(serve)
    return serve


def name_option(parser: argparse.ArgumentParser, *, required: bool) -> None:
    """Add ``--name`` (and ``--hostname``) to `parser`."""
    parser.add_argument(
        "--name",
        required=required,
        default=None,
        help="the served display's name (serve --name NAME); "
        + ("required" if required else "print its arguments and exit, holding nothing"),
    )
    parser.add_argument(
        "--hostname",
        default=None,
        help="with --name: a container host name to add a cookie entry for (python-xlib)",
    )


def formats(parser: argparse.ArgumentParser) -> None:
    """Add ``--format`` and ``--service`` for --mint's output."""
    parser.add_argument(
        "--format",
        choices=["cli", "json", "compose", "env", "devcontainer"],
        default="cli",
        help="how --mint prints the container's arguments (default: cli)",
    )
    parser.add_argument("--service", default="app", help="the Compose service (default: app)")


def execute(opts: argparse.Namespace) -> int:
    """Run ``serve`` or ``args --name``; return the exit status."""
    import logging  # noqa: PLC0415 - --help stays quick
    import sys  # noqa: PLC0415

    from ._commands import ERROR_STATUS, flag  # noqa: PLC0415
    from .exceptions import X11PassthroughError  # noqa: PLC0415

    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(opts.verbose, 2)]
    logging.basicConfig(level=level, format=f"{_PROG}: %(message)s")
    try:
        if opts.command == "args":
            return _print_args(opts, getattr(opts, "client", None))
        return _serve(opts)
    except X11PassthroughError as e:
        print(f"{_PROG}: error: {e.explain(flag)}", file=sys.stderr)
        return ERROR_STATUS
    except KeyboardInterrupt:
        return 130


def _host_dir(opts: argparse.Namespace) -> str | None:
    return getattr(opts, "host_dir", None)


def _print_args(opts: argparse.Namespace, label: str | None) -> int:
    from ._served.display import served_args  # noqa: PLC0415

    args = served_args(
        opts.name, label=label, host_dir=_host_dir(opts), container_hostname=opts.hostname
    )
    print(render(args, opts.format, opts.service), flush=True)
    return 0


def render(args: ServedArgs, form: str, service: str) -> str:
    """Return `args` in the command line's format `form`."""
    import json  # noqa: PLC0415
    import shlex  # noqa: PLC0415

    from ._args import compose_file, env_lines  # noqa: PLC0415

    if form == "json":
        return json.dumps(args.docker_py(), indent=2)
    if form == "compose":
        return compose_file(args, service)
    if form == "env":
        return env_lines(args)
    if form == "devcontainer":
        return json.dumps(args.devcontainer(), indent=2)
    return shlex.join(args)


def _serve(opts: argparse.Namespace) -> int:
    from ._served import control  # noqa: PLC0415
    from ._served.place import Place  # noqa: PLC0415

    if opts.mint or opts.revoke or opts.list or opts.stop:
        from pathlib import Path  # noqa: PLC0415

        host_dir = _host_dir(opts)
        place = Place.of(opts.name, Path(host_dir) if host_dir else None)
        if opts.mint:
            control.request(place.control, opts.name, {"op": "mint", "label": opts.mint})
            return _print_args(opts, opts.mint)
        if opts.revoke:
            control.request(place.control, opts.name, {"op": "revoke", "label": opts.revoke})
            return 0
        if opts.list:
            answer = control.request(place.control, opts.name, {"op": "list"})
            for label in answer.get("clients", []):
                print(label)
            return 0
        return _stop(place)
    return _run_server(opts)


def _stop(place: Any) -> int:
    import time  # noqa: PLC0415

    from ._served import control  # noqa: PLC0415
    from .exceptions import ServeError  # noqa: PLC0415

    answer = control.request(place.control, place.name, {"op": "stop"})
    deadline = time.monotonic() + STOP_WAIT
    while place.holder() is not None:
        if time.monotonic() > deadline:
            raise ServeError(
                f"the served display {place.name!r} (process {answer.get('stopping')}) did "
                f"not stop within {STOP_WAIT:g} s"
            )
        time.sleep(0.05)
    return 0


def _run_server(opts: argparse.Namespace) -> int:
    import os  # noqa: PLC0415
    import signal  # noqa: PLC0415
    import socket  # noqa: PLC0415

    from ._served.display import ServedDisplay  # noqa: PLC0415

    served = ServedDisplay(
        opts.name,
        opts.display,
        opts.xauthority,
        host_dir=_host_dir(opts),
        container_hostname=opts.hostname,
    )
    stop = served.stop_requested

    def on_signal(_number: int, _frame: object) -> None:
        stop.set()

    previous = {
        s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    }
    try:
        with served as args:
            print(
                f"{_PROG}: serving {served.live.endpoint} as {args.display} under the name "
                f"{opts.name!r} until stopped; `{_PROG} args --name {opts.name} --format "
                "compose` prints what containers need",
                flush=True,
            )
            notify = os.environ.get("NOTIFY_SOCKET")
            if notify:  # systemd Type=notify
                address = "\0" + notify[1:] if notify.startswith("@") else notify
                with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                    sock.sendto(b"READY=1", address)
            while not stop.wait(3600):
                pass
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    return 0
