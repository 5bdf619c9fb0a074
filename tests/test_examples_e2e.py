"""Every example in examples/ runs for real: a container on the test display."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from pathlib import Path

import pytest

from infra.ci import require, require_executables
from infra.xvfb import XServer


pytestmark = pytest.mark.e2e
EXAMPLES = sorted((Path(__file__).parents[1] / "examples").glob("*.py"))
COMPOSE_EXAMPLE = Path(__file__).parents[1] / "examples" / "compose"
PYTEST_EXAMPLE = Path(__file__).parents[1] / "examples" / "pytest"


def test_every_example_is_tested() -> None:
    assert {p.name for p in EXAMPLES} == {
        "async_passthrough.py",
        "briefcase_style.py",
        "docker_sdk.py",
        "run_in_container.py",
        "with_testcontainers.py",
    }
    assert {p.name for p in COMPOSE_EXAMPLE.iterdir()} == {"compose.yaml", "run.sh"}
    assert {p.name for p in PYTEST_EXAMPLE.glob("*.py")} == {"test_gui_in_container.py"}


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_example_runs_xdpyinfo_in_a_container(
    example: Path, xvfb: XServer, x11_image: str
) -> None:
    result = subprocess.run(
        [sys.executable, str(example), x11_image, "xdpyinfo"],
        # testcontainers' reaper image (Ryuk) is on a registry the test machines cannot reach.
        env=xvfb.env(TESTCONTAINERS_RYUK_DISABLED="true"),
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "vendor string:    The X.Org Foundation" in result.stdout


def test_the_compose_example_runs_xdpyinfo_in_a_service(xvfb: XServer, x11_image: str) -> None:
    """examples/compose/run.sh: docker-compose with the override file `args` prints."""
    require_executables("docker-compose")
    # The x11passthrough command of this environment (a venv's, or nox's), first on PATH.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    require(
        "the x11passthrough command",
        shutil.which("x11passthrough", path=path) is not None,
        "install the package",
    )
    result = subprocess.run(
        ["bash", str(COMPOSE_EXAMPLE / "run.sh")],
        env=xvfb.env(IMAGE=x11_image, PATH=path),
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "vendor string:    The X.Org Foundation" in result.stdout


def test_the_pytest_example_passes_on_a_private_xvfb_per_worker(x11_image: str) -> None:
    """examples/pytest as its docstring says: no DISPLAY, ``--x11passthrough-xvfb``, 2 workers."""
    env = {k: v for k, v in os.environ.items() if k not in {"DISPLAY", "XAUTHORITY"}}
    env["IMAGE"] = x11_image
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-n",
            "2",
            "--x11passthrough-xvfb",
            "--rootdir",
            str(PYTEST_EXAMPLE),
            str(PYTEST_EXAMPLE),
        ],
        cwd=PYTEST_EXAMPLE,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "2 passed" in result.stdout
