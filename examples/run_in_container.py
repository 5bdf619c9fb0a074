"""
Run an X client in a container on this host's display.

Usage: ``python examples/run_in_container.py IMAGE [COMMAND...]`` (default command: xeyes).
"""

from __future__ import annotations

import logging
import subprocess
import sys

from x11passthrough import X11Passthrough


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    image, command = sys.argv[1], sys.argv[2:] or ["xeyes"]
    logging.basicConfig(level=logging.INFO)
    with X11Passthrough() as args:
        return subprocess.call(["docker", "run", "--rm", *args, image, *command])


if __name__ == "__main__":
    sys.exit(main())
