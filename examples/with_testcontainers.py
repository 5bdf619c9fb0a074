"""
The same through testcontainers (``pip install testcontainers``): a ``DockerContainer``.

Usage: ``python examples/with_testcontainers.py IMAGE [COMMAND...]``. Where testcontainers'
reaper image (Ryuk) cannot be pulled, set ``TESTCONTAINERS_RYUK_DISABLED=true``.
"""

from __future__ import annotations

import sys

from testcontainers.core.container import DockerContainer

from x11passthrough import X11Passthrough


def main() -> int:
    image, command = sys.argv[1], sys.argv[2:] or ["xdpyinfo"]
    with X11Passthrough() as args:
        container = args.apply_to(DockerContainer(image).with_command(command))
        with container:  # stopped and removed on the way out, inside the passthrough
            status = container.get_wrapped_container().wait(timeout=120)
            stdout, stderr = container.get_logs()
    sys.stdout.write(stdout.decode())
    sys.stderr.write(stderr.decode())
    return int(status["StatusCode"])


if __name__ == "__main__":
    sys.exit(main())
