"""
A packager's own container runner, as BeeWare Briefcase has one, given the display in one line.

Packagers keep the arguments of a ``docker run`` in their own shape (an ``env`` dict, a list of
``(host, container)`` mounts, a list of ``(name, address)`` hosts) and turn them into options in
one place. ``x11_passthrough(kwargs)`` below is all the X11 code such a tool needs: no socat, no
xauth, no display number to pick.

Usage: ``python examples/briefcase_style.py IMAGE [COMMAND...]`` (default command: xdpyinfo).
"""

from __future__ import annotations

import contextlib
import subprocess
import sys

from collections.abc import Iterator
from typing import Any

from x11passthrough import X11Passthrough


def dockerize_args(
    image: str,
    command: list[str],
    *,
    env: dict[str, str] | None = None,
    mounts: list[tuple[str, str]] | None = None,
    add_hosts: list[tuple[str, str]] | None = None,
) -> list[str]:
    """Turn a packager's keyword arguments into a ``docker run`` command line."""
    argv = ["docker", "run", "--rm"]
    for host, inside in mounts or []:
        argv += ["--volume", f"{host}:{inside}:z"]  # :z relabels for SELinux hosts
    for name, value in (env or {}).items():
        argv += ["--env", f"{name}={value}"]
    for name, address in add_hosts or []:
        argv += ["--add-host", f"{name}:{address}"]
    return [*argv, image, *command]


@contextlib.contextmanager
def x11_passthrough(kwargs: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Lend the host's display to the container these keyword arguments will start."""
    with X11Passthrough() as args:
        yield args.add_to(kwargs)


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    image, command = sys.argv[1], sys.argv[2:] or ["xdpyinfo"]
    kwargs: dict[str, Any] = {"env": {"LANG": "C.UTF-8"}, "mounts": [], "add_hosts": []}
    with x11_passthrough(kwargs) as ready:
        return subprocess.call(dockerize_args(image, command, **ready))


if __name__ == "__main__":
    sys.exit(main())
