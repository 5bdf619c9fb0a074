"""
A test suite's GUI test in a container, with the x11passthrough pytest fixtures.

Run it with ``pytest --x11passthrough-xvfb examples/pytest`` on a host without a display (or
with ``DISPLAY`` set); ``IMAGE`` names an image with xdpyinfo (default:
``x11passthrough-test:latest``, the test suite's image).
"""

from __future__ import annotations

import os
import subprocess

from x11passthrough import DockerRunArgs


IMAGE = os.environ.get("IMAGE", "x11passthrough-test:latest")


def test_the_app_reaches_the_display(x11passthrough: DockerRunArgs) -> None:
    result = subprocess.run(
        ["docker", "run", "--rm", *x11passthrough, IMAGE, "xdpyinfo"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "X.Org" in result.stdout


def test_as_another_user_without_network(x11passthrough: DockerRunArgs) -> None:
    argv = ["docker", "run", "--rm", "--user", "1000:1000", "--network", "none"]
    result = subprocess.run([*argv, *x11passthrough, IMAGE, "xdpyinfo"], check=False)
    assert result.returncode == 0
