"""DockerRunArgs: one value, spelled as docker-run argv, Docker SDK kwargs and Compose keys."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import attrs
import pytest

from x11passthrough import DockerRunArgs


@pytest.fixture(name="args")
def _args() -> DockerRunArgs:
    return DockerRunArgs(
        display="host.docker.internal:57",
        xauthority=Path("/run/user/1000/x11pt-abc/Xauthority"),
        container_xauthority=PurePosixPath("/tmp/.x11passthrough.xauth"),
        extra_hosts={"host.docker.internal": "host-gateway"},
        hostname="x11passthrough",
    )


def test_iterates_as_docker_run_argv(args: DockerRunArgs) -> None:
    """The argv carries the host alias, hostname, DISPLAY, XAUTHORITY and a read-only mount."""
    assert [*args] == [
        "--add-host",
        "host.docker.internal:host-gateway",
        "--hostname",
        "x11passthrough",
        "--env",
        "DISPLAY=host.docker.internal:57",
        "--env",
        "XAUTHORITY=/tmp/.x11passthrough.xauth",
        "--volume",
        "/run/user/1000/x11pt-abc/Xauthority:/tmp/.x11passthrough.xauth:ro",
    ]


def test_parts(args: DockerRunArgs) -> None:
    """The parts are read-only mappings of the same values."""
    assert dict(args.environment) == {
        "DISPLAY": "host.docker.internal:57",
        "XAUTHORITY": "/tmp/.x11passthrough.xauth",
    }
    assert dict(args.volumes) == {
        "/run/user/1000/x11pt-abc/Xauthority": "/tmp/.x11passthrough.xauth"
    }
    assert dict(args.extra_hosts) == {"host.docker.internal": "host-gateway"}
    with pytest.raises(TypeError):
        args.environment["DISPLAY"] = "x"  # type: ignore[index]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        args.display = "x"  # type: ignore[misc]


def test_docker_py(args: DockerRunArgs) -> None:
    """docker_py() gives containers.run() keyword arguments."""
    assert args.docker_py() == {
        "environment": {
            "DISPLAY": "host.docker.internal:57",
            "XAUTHORITY": "/tmp/.x11passthrough.xauth",
        },
        "extra_hosts": {"host.docker.internal": "host-gateway"},
        "volumes": {
            "/run/user/1000/x11pt-abc/Xauthority": {
                "bind": "/tmp/.x11passthrough.xauth",
                "mode": "ro",
            }
        },
        "hostname": "x11passthrough",
    }


def test_compose(args: DockerRunArgs) -> None:
    """compose() gives the keys of a Compose service."""
    assert args.compose() == {
        "environment": {
            "DISPLAY": "host.docker.internal:57",
            "XAUTHORITY": "/tmp/.x11passthrough.xauth",
        },
        "extra_hosts": ["host.docker.internal:host-gateway"],
        "volumes": [
            {
                "type": "bind",
                "source": "/run/user/1000/x11pt-abc/Xauthority",
                "target": "/tmp/.x11passthrough.xauth",
                "read_only": True,
            }
        ],
        "hostname": "x11passthrough",
    }


def test_without_cookie_or_hostname() -> None:
    """A display that needs no cookie gets no XAUTHORITY and no mount; no hostname is pinned."""
    args = DockerRunArgs(display="host.docker.internal:3", xauthority=None)
    assert [*args] == ["--env", "DISPLAY=host.docker.internal:3"]
    assert args.docker_py() == {
        "environment": {"DISPLAY": "host.docker.internal:3"},
        "extra_hosts": {},
        "volumes": {},
    }


def test_equal_and_hashable(args: DockerRunArgs) -> None:
    """Two equal values compare equal and can be hashed."""
    same = attrs.evolve(args)
    assert same == args
    assert hash(same) == hash(args)
