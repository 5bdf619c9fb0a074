"""
The same through the Docker SDK for Python (``pip install docker``).

Usage: ``python examples/docker_sdk.py IMAGE [COMMAND...]``.
"""

from __future__ import annotations

import sys

import docker

from x11passthrough import X11Passthrough


def main() -> int:
    image, command = sys.argv[1], sys.argv[2:] or ["xdpyinfo"]
    client = docker.from_env()
    with X11Passthrough() as args:
        output = client.containers.run(image, command, remove=True, **args.docker_py())
    sys.stdout.write(output.decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
