"""
OpenGL through the passthrough, as docs/explanation.md ("OpenGL and the GPU") tells users of
rocker's ``--x11 --nvidia`` and x11docker's ``--gpu``: the words match the program.

The page names the extensions the relay hides, and quotes ``glxinfo -B`` from a container of
the distro image: software rendering by default, and indirect rendering refused by an X server
without ``+iglx``. The quotes are checked against real runs on a real Xvfb.
"""

from __future__ import annotations

import re
import subprocess

from pathlib import Path

import pytest

from x11passthrough import X11Passthrough
from x11passthrough._x11.requests import HIDDEN_EXTENSIONS

from infra.xvfb import XServer


EXPLANATION = Path(__file__).parents[1] / "docs" / "explanation.md"


def section() -> str:
    """The page's section "OpenGL and the GPU"."""
    text = EXPLANATION.read_text()
    start = text.index("\n## OpenGL and the GPU\n")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def quoted_blocks() -> list[list[str]]:
    """The section's ```text blocks, as stripped lines."""
    blocks = re.findall(r"```text\n(.*?)```", section(), re.DOTALL)
    return [[line.strip() for line in block.splitlines() if line.strip()] for block in blocks]


def test_the_page_names_what_the_relay_hides() -> None:
    """It names rocker and x11docker's GPU options and exactly the hidden extensions."""
    text = section()
    assert "`--x11 --nvidia`" in text
    assert "`--gpu`" in text
    named = set(re.findall(r"\b(DRI3|DRI2|MIT-SHM|GLX|Present)\b", text))
    # DRI2 is named as untested, not as hidden.
    assert named - {"DRI2"} == {name.decode() for name in HIDDEN_EXTENSIONS}
    assert len(quoted_blocks()) == 2


@pytest.mark.e2e
def test_glxinfo_in_a_container_says_what_the_page_quotes(
    xvfb: XServer, distro_image: str
) -> None:
    """Software rendering by default; LIBGL_ALWAYS_INDIRECT=1 refused without ``+iglx``."""
    software, indirect = quoted_blocks()
    with X11Passthrough(xvfb.display, xvfb.xauthority) as args:
        runs = [
            subprocess.run(
                ["docker", "run", "--rm", *args, *extra, distro_image, "glxinfo", "-B"],
                capture_output=True,
                text=True,
                check=False,
                timeout=120,
            )
            for extra in ([], ["--env", "LIBGL_ALWAYS_INDIRECT=1"])
        ]
    assert runs[0].returncode == 0, runs[0].stderr
    lines = {line.strip() for line in runs[0].stdout.splitlines()}
    assert set(software) <= lines, runs[0].stdout
    assert runs[1].returncode != 0
    lines = {line.strip() for line in runs[1].stderr.splitlines()}
    assert set(indirect) <= lines, runs[1].stderr
