"""Every example in examples/ runs for real: a container on the test display."""

from __future__ import annotations

import subprocess
import sys

from pathlib import Path

import pytest

from infra.xvfb import XServer


pytestmark = pytest.mark.e2e
EXAMPLES = sorted((Path(__file__).parents[1] / "examples").glob("*.py"))


def test_every_example_is_tested() -> None:
    assert {p.name for p in EXAMPLES} == {
        "async_passthrough.py",
        "briefcase_style.py",
        "docker_sdk.py",
        "run_in_container.py",
    }


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_example_runs_xdpyinfo_in_a_container(
    example: Path, xvfb: XServer, x11_image: str
) -> None:
    result = subprocess.run(
        [sys.executable, str(example), x11_image, "xdpyinfo"],
        env=xvfb.env(),
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "vendor string:    The X.Org Foundation" in result.stdout
