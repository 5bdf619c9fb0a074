"""
The images the container benchmarks run in, made by the test infrastructure.

Both are the debootstrapped Debian bookworm image of ``tests/infra/distro.py``, cached by the
hash of their package lists: the test image itself (x11perf, glxgears, xauth) for
``bench_realpath.py``, and the same image with the applications of ``bench_apps.py`` added.
"""

from __future__ import annotations

import sys

from pathlib import Path


# The test infrastructure is the package ``infra`` under tests/ (pytest's pythonpath).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from infra.distro import DEFAULT_TAG, PACKAGES, build_distro_image


#: What the application benchmark adds to the test image's packages.
APP_PACKAGES: tuple[str, ...] = (
    "python3-pyqt5",  # the Qt 5 repaint loop
    "python3-gi",  # the GTK 3 / cairo loop
    "python3-gi-cairo",
    "gir1.2-gtk-3.0",
    "mpv",  # --vo=x11 on a lavfi test clip
    "xterm",
)
APPS_TAG = "x11passthrough-bench-apps:bookworm"


def test_image() -> str:
    """Build (or reuse) the test infrastructure's Debian image; return its tag."""
    return build_distro_image(tag=DEFAULT_TAG)


def apps_image() -> str:
    """Build (or reuse) the Debian image with the benchmark's applications; return its tag."""
    return build_distro_image(tag=APPS_TAG, packages=(*PACKAGES, *APP_PACKAGES))


if __name__ == "__main__":
    print(apps_image() if sys.argv[1:] == ["apps"] else test_image())
