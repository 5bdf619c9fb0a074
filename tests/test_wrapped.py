"""Reading the command `x11passthrough run` wraps: where the arguments go, what it asks for."""

from __future__ import annotations

import pytest

from x11passthrough._wrapped import Wrapped
from x11passthrough.exceptions import X11PassthroughError


X = ["--env", "DISPLAY=:5"]


@pytest.mark.parametrize(
    ("command", "spliced", "prefix"),
    [
        ("docker run --rm img app", "docker run X --rm img app", "docker"),
        ("podman run img", "podman run X img", "podman"),
        ("nerdctl run img", "nerdctl run X img", "nerdctl"),
        ("docker container run img", "docker container run X img", "docker"),
        ("podman container create img", "podman container create X img", "podman"),
        ("sudo docker run img", "sudo docker run X img", "sudo docker"),
        ("sudo -E docker run img", "sudo -E docker run X img", "sudo -E docker"),
        ("env A=1 docker run img", "env A=1 docker run X img", "env A=1 docker"),
        (
            "/usr/bin/docker --context ci run img",
            "/usr/bin/docker --context ci run X img",
            "/usr/bin/docker --context ci",
        ),
        (
            "podman --log-level info create img",
            "podman --log-level info create X img",
            "podman --log-level info",
        ),
        ("sh -c x {x11} y", "sh -c x X y", ""),
        ("docker run {x11} img", "docker run X img", "docker"),
    ],
)
def test_the_arguments_go_after_run(command: str, spliced: str, prefix: str) -> None:
    wrapped = Wrapped.parse(command.split())
    assert wrapped.splice(X) == spliced.replace("X", " ".join(X)).split()
    assert " ".join(wrapped.prefix) == prefix


@pytest.mark.parametrize("command", ["sh -c true", "docker ps -a run", "docker image ls"])
def test_no_place_for_the_arguments_is_an_error(command: str) -> None:
    with pytest.raises(X11PassthroughError, match=r"cannot tell where.*\{x11\}"):
        Wrapped.parse(command.split())


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ("--rm -d", {"detach": True}),
        ("-dit", {"detach": True}),
        ("--detach=true", {"detach": True}),
        ("--detach=false", {}),
        ("-it --network none", {"network": "none"}),
        ("--net=host", {"network": "host"}),
        ("-u 1000:1000", {"user": "1000:1000"}),
        ("-u1000", {"user": "1000"}),
        ("--user=nobody", {"user": "nobody"}),
        ("-h box --hostname=mine", {"hostname": "mine"}),
        ("-e A=1 -v /a:/b --name x --hostname h", {"hostname": "h"}),
    ],
)
def test_the_options_that_matter_are_read(options: str, expected: dict[str, object]) -> None:
    wrapped = Wrapped.parse(["docker", "run", *options.split(), "img", "-d", "--user", "x"])
    found = {
        k: v
        for k in ("detach", "network", "user", "hostname")
        if (v := getattr(wrapped, k)) not in (None, False)
    }
    assert found == expected


def test_options_of_the_command_in_the_container_are_not_read() -> None:
    wrapped = Wrapped.parse(["docker", "run", "img", "app", "--network", "none", "-d"])
    assert (wrapped.detach, wrapped.network) == (False, None)


def test_create_is_told_apart() -> None:
    assert Wrapped.parse(["docker", "create", "img"]).create
    assert not Wrapped.parse(["docker", "run", "img"]).create


@pytest.mark.parametrize(
    ("options", "dropped"),
    [
        (
            "-e DISPLAY=:0 -v /tmp/.X11-unix:/tmp/.X11-unix",
            ["-e DISPLAY=:0", "-v /tmp/.X11-unix:/tmp/.X11-unix"],
        ),
        (
            "--env DISPLAY --volume=/tmp/.X11-unix:/tmp/.X11-unix:ro",
            ["--env DISPLAY", "--volume=/tmp/.X11-unix:/tmp/.X11-unix:ro"],
        ),
        ("-eDISPLAY=:1 --env=XAUTHORITY=/x", ["-eDISPLAY=:1", "--env=XAUTHORITY=/x"]),
        ("-v /tmp/.X11-unix/X0:/tmp/.X11-unix/X0", ["-v /tmp/.X11-unix/X0:/tmp/.X11-unix/X0"]),
        (
            "--mount type=bind,source=/tmp/.X11-unix,target=/tmp/.X11-unix/",
            ["--mount type=bind,source=/tmp/.X11-unix,target=/tmp/.X11-unix/"],
        ),
        ("-e DISPLAYX=1 -v /tmp/.X11-unix:/host-x11 -e A=1", []),
    ],
)
def test_the_usual_recipe_is_dropped(options: str, dropped: list[str]) -> None:
    """`-e DISPLAY=... -v /tmp/.X11-unix:...` would beat the lent display: dropped, named."""
    command = ["docker", "run", "--rm", *options.split(), "img", "-e", "DISPLAY=:9"]
    wrapped = Wrapped.parse(command)
    assert wrapped.dropped == dropped
    spliced = wrapped.splice(X)
    assert spliced[:4] == ["docker", "run", *X]
    assert spliced[-3:] == ["img", "-e", "DISPLAY=:9"]  # the command in the container keeps it
    removed = [word for option in dropped for word in option.split()]
    assert len(spliced) == len(command) + len(X) - len(removed)
    assert all(word not in spliced[4:-3] for word in removed)


def test_a_leftover_in_a_cluster_is_named() -> None:
    with pytest.raises(X11PassthroughError, match=r"'DISPLAY=:0'.*drop it"):
        Wrapped.parse(["docker", "run", "-ite", "DISPLAY=:0", "img"])


@pytest.mark.parametrize(
    "command", ["docker compose run app", "docker-compose run --rm app", "podman-compose up"]
)
def test_compose_is_pointed_to_args(command: str) -> None:
    with pytest.raises(X11PassthroughError, match=r"x11passthrough args --format compose"):
        Wrapped.parse(command.split())
