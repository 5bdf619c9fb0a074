"""
DockerRunArgs: one value, spelled as docker-run argv, Docker SDK kwargs, Compose keys, and the
settings of a testcontainers DockerContainer.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import attrs
import pytest

from testcontainers.core.container import DockerContainer

from x11passthrough import DockerRunArgs, Transport, X11Passthrough

from infra.xvfb import XServer


#: A DockerContainer made with a fixed API version does not ask an engine for one: its
#: settings can be checked without Docker.
OFFLINE = {"version": "1.41"}


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
    assert args.mounts == (
        ("/run/user/1000/x11pt-abc/Xauthority", "/tmp/.x11passthrough.xauth", True),
    )
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


def test_apply_to_a_testcontainers_container(args: DockerRunArgs) -> None:
    """
    apply_to() sets the arguments through DockerContainer's own methods.

    The caller's environment, volumes and keyword arguments are kept; the host aliases merge
    with the caller's own.
    """
    container = (
        DockerContainer("my-image", docker_client_kw=OFFLINE)
        .with_env("LANG", "C.UTF-8")
        .with_volume_mapping("/srv/data", "/data", "ro")
        .with_kwargs(mem_limit="512m", extra_hosts={"db": "10.1.2.3"})
    )
    assert args.apply_to(container) is container
    assert container.env == {
        "LANG": "C.UTF-8",
        "DISPLAY": "host.docker.internal:57",
        "XAUTHORITY": "/tmp/.x11passthrough.xauth",
    }
    assert container.volumes == {
        "/srv/data": {"bind": "/data", "mode": "ro"},
        "/run/user/1000/x11pt-abc/Xauthority": {
            "bind": "/tmp/.x11passthrough.xauth",
            "mode": "ro",
        },
    }
    assert container._kwargs == {
        "mem_limit": "512m",
        "extra_hosts": {"db": "10.1.2.3", "host.docker.internal": "host-gateway"},
        "hostname": "x11passthrough",
    }


def test_apply_to_with_the_unix_transport_leaves_the_keyword_arguments() -> None:
    """On the UNIX transport: the socket mounted read-write, no host alias, no with_kwargs."""
    args = DockerRunArgs(
        display=":52",
        xauthority=Path("/tmp/x11pt/Xauthority"),
        socket=Path("/tmp/x11pt/X11-unix/X52"),
        container_socket=PurePosixPath("/tmp/.X11-unix/X52"),
    )
    container = args.apply_to(
        DockerContainer("my-image", docker_client_kw=OFFLINE).with_kwargs(mem_limit="1g")
    )
    assert container.volumes == {
        "/tmp/x11pt/X11-unix/X52": {"bind": "/tmp/.X11-unix/X52", "mode": "rw"},
        "/tmp/x11pt/Xauthority": {"bind": "/tmp/.x11passthrough.xauth", "mode": "ro"},
    }
    assert container._kwargs == {"mem_limit": "1g"}


@pytest.fixture(name="no_ryuk")
def _no_ryuk(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    Start testcontainers without its reaper container (Ryuk), whose image is on a registry
    the test machines cannot reach: TESTCONTAINERS_RYUK_DISABLED=true, as the how-to says.

    testcontainers reads the variable when it is first imported; it is set in its config too.
    """
    from testcontainers.core.config import testcontainers_config

    monkeypatch.setenv("TESTCONTAINERS_RYUK_DISABLED", "true")
    monkeypatch.setattr(testcontainers_config, "ryuk_disabled", True)


@pytest.mark.e2e
@pytest.mark.usefixtures("no_ryuk")
@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_a_testcontainers_container_reaches_the_display(
    xvfb: XServer, x11_image: str, transport: Transport
) -> None:
    """
    A real container started by testcontainers with apply_to() runs xdpyinfo on the display.

    Over TCP the host alias goes through with_kwargs, merged with the caller's own arguments.
    The obvious ``with_kwargs(**args.docker_py())`` fails, as the how-to says.
    """
    with X11Passthrough(xvfb.display, xvfb.xauthority, transport=transport) as args:
        obvious = DockerContainer(x11_image).with_kwargs(**args.docker_py())
        with pytest.raises(TypeError, match="multiple values for keyword argument 'environment'"):
            obvious.start()
        container = (
            DockerContainer(x11_image)
            .with_command(["sh", "-c", 'echo "LANG=$LANG"; xdpyinfo'])
            .with_env("LANG", "C.UTF-8")
            .with_kwargs(labels={"org.x11passthrough.test": "testcontainers"})
        )
        with args.apply_to(container):
            status = container.get_wrapped_container().wait(timeout=120)
            stdout, stderr = container.get_logs()
            labels = container.get_wrapped_container().labels
    assert status["StatusCode"] == 0, stderr.decode()
    out = stdout.decode()
    assert out.startswith("LANG=C.UTF-8\n")
    assert "vendor string:    The X.Org Foundation" in out
    assert labels["org.x11passthrough.test"] == "testcontainers"
