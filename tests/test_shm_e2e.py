"""
MIT-SHM for real containers (issue 19's security acceptance): granted only with the host's IPC
namespace, and then only for the segments the container's user may attach.

The probe (``tests/data/x11_shm_probe.py``, standard library only) runs in the test image; the
segments are made on the host by the test (root), in the X server's IPC namespace.
"""

from __future__ import annotations

import json
import subprocess

from collections.abc import Callable

import pytest

from x11passthrough import X11Passthrough

from infra.ci import require_executables
from infra.images import IMAGE_USER_UID
from infra.shm import BAD_ACCESS, PROBE
from infra.xvfb import XServer


pytestmark = pytest.mark.e2e
RANGE = range(900, 940)


def probe(
    image: str, args: list[str], ids: list[int], options: tuple[str, ...] = ()
) -> dict[str, object]:
    require_executables("docker")
    command = ["python3", "-I", "-c", PROBE.read_text(), "", "", *map(str, ids)]
    done = subprocess.run(
        ["docker", "run", "--rm", *options, *args, image, *command],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


def test_a_container_user_cannot_make_the_server_attach_a_root_segment(
    xvfb: XServer, x11_image: str, segments: Callable[[int], int]
) -> None:
    """``--ipc host`` and ``--user 1000``: a root-owned 0600 segment is BadAccess, as directly."""
    private, shared = segments(0o600), segments(0o606)
    with X11Passthrough(
        xvfb.display, xvfb.xauthority, transport="unix", display_range=RANGE, shm=True
    ) as args:
        assert "--ipc" in list(args)
        found = probe(x11_image, list(args), [private, shared], ("--user", str(IMAGE_USER_UID)))
    assert found["uid"] == IMAGE_USER_UID
    assert found["shm"] is True
    assert found["attach"] == {str(private): BAD_ACCESS, str(shared): 0}


def test_a_root_container_with_the_hosts_ipc_attaches_as_root_does(
    xvfb: XServer, x11_image: str, segments: Callable[[int], int]
) -> None:
    private = segments(0o600)
    with X11Passthrough(
        xvfb.display, xvfb.xauthority, transport="unix", display_range=RANGE, shm=True
    ) as args:
        found = probe(x11_image, list(args), [private])
    assert found["uid"] == 0
    assert found["attach"] == {str(private): 0}


@pytest.mark.parametrize(
    ("shm", "ipc"), [("auto", ()), (True, ("--ipc", "private")), (False, ("--ipc", "host"))]
)
def test_mit_shm_only_with_the_hosts_ipc_namespace_and_shm_allowed(
    xvfb: XServer, x11_image: str, shm: object, ipc: tuple[str, ...]
) -> None:
    """No --ipc host (or --ipc private after shm=True's, which wins), or shm=False: no MIT-SHM."""
    with X11Passthrough(
        xvfb.display,
        xvfb.xauthority,
        transport="unix",
        display_range=RANGE,
        shm=shm,  # type: ignore[arg-type]
    ) as args:
        found = probe(x11_image, [*args, *ipc], [])
    assert found["shm"] is False
