"""
Where the engine is, read as its own clients read it (the real docker and podman CLIs write the
contexts and connections), and the refusals that need no second host: TCP to another host, a
malformed or password-holding URL, an SSH server that does not answer.
"""

from __future__ import annotations

import json
import shutil
import subprocess

from pathlib import Path

import pytest

from x11passthrough import X11Passthrough, _destination, _engine
from x11passthrough.exceptions import ConfigurationError, RemoteEngineError

from infra.ci import require_executables
from infra.network import free_port
from infra.xvfb import XServer


def cli_writes(argv: list[str], env: dict[str, str]) -> None:
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode == 0, done.stderr


@pytest.fixture(name="docker_env")
def _docker_env(tmp_path: Path) -> dict[str, str]:
    """An environment with a private Docker configuration directory and no DOCKER_HOST."""
    require_executables("docker")
    return {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "DOCKER_CONFIG": str(tmp_path / "d")}


def test_docker_host_names_the_engine() -> None:
    found = _engine.docker_address({"DOCKER_HOST": "ssh://me@far.example:2200", "HOME": "/"})
    assert found == _engine.EngineAddress(url="ssh://me@far.example:2200", source="DOCKER_HOST")
    assert found.reach == "ssh"
    assert _engine.docker_address({"HOME": "/nonexistent"}) is None


def test_the_current_docker_context_names_the_engine(docker_env: dict[str, str]) -> None:
    cli_writes(["docker", "context", "create", "far", "--docker", "host=ssh://me@far"], docker_env)
    assert _engine.docker_address(docker_env) is None  # created, not used yet
    cli_writes(["docker", "context", "use", "far"], docker_env)
    found = _engine.docker_address(docker_env)
    assert found is not None
    assert (found.url, found.source) == ("ssh://me@far", "the Docker context 'far'")
    # DOCKER_CONTEXT names another context; DOCKER_HOST overrides both.
    assert _engine.docker_address({**docker_env, "DOCKER_CONTEXT": "default"}) is None
    with_host = _engine.docker_address({**docker_env, "DOCKER_HOST": "unix:///run/d.sock"})
    assert with_host is not None
    assert with_host.reach == "local"


def test_docker_context_env_picks_a_context(docker_env: dict[str, str]) -> None:
    cli_writes(
        ["docker", "context", "create", "ci", "--docker", "host=tcp://192.0.2.7:2376"], docker_env
    )
    found = _engine.docker_address({**docker_env, "DOCKER_CONTEXT": "ci"})
    assert found is not None
    assert found.url == "tcp://192.0.2.7:2376"
    assert found.reach == "tcp"


@pytest.mark.parametrize(
    ("url", "reach"),
    [
        ("ssh://root@10.0.0.5", "ssh"),
        ("ssh://localhost:2222", "ssh"),
        ("tcp://192.0.2.1:2376", "tcp"),
        ("https://192.0.2.1:2376", "tcp"),
        ("tcp://[2001:db8::1]:2376", "tcp"),
        ("tcp://127.0.0.1:2375", "tcp-local"),
        ("tcp://localhost:2375", "tcp-local"),
        ("tcp://[::1]:2375", "tcp-local"),
        ("unix:///var/run/docker.sock", "local"),
        ("npipe:////./pipe/docker_engine", "local"),
    ],
)
def test_reach_tells_this_host_from_another(url: str, reach: str) -> None:
    assert _engine.EngineAddress(url=url, source="DOCKER_HOST").reach == reach


@pytest.fixture(name="podman_env")
def _podman_env(tmp_path: Path) -> dict[str, str]:
    """A private Podman configuration (``CONTAINERS_CONF``, so the system's stays untouched)."""
    require_executables("podman")
    conf = tmp_path / "containers.conf"
    conf.touch()
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "CONTAINERS_CONF": str(conf),
    }


def test_podman_is_local_unless_told(podman_env: dict[str, str]) -> None:
    assert _engine.podman_address(podman_env) is None
    found = _engine.podman_address({**podman_env, "CONTAINER_HOST": "ssh://me@far/run/p.sock"})
    assert found is not None
    assert (found.url, found.source, found.reach) == (
        "ssh://me@far/run/p.sock",
        "CONTAINER_HOST",
        "ssh",
    )


def test_podman_connections_written_by_podman(podman_env: dict[str, str], tmp_path: Path) -> None:
    key = tmp_path / "key"
    for name, url in (("far", "ssh://me@far:2200/run/p.sock"), ("near", "ssh://me@near/p.sock")):
        cli_writes(
            ["podman", "system", "connection", "add", "--identity", str(key), name, url],
            podman_env,
        )
    # The first connection added is the default one; --remote uses it.
    assert _engine.podman_address(podman_env) is None
    found = _engine.podman_address(podman_env, remote=True)
    assert found is not None
    assert (found.url, found.identity) == ("ssh://me@far:2200/run/p.sock", str(key))
    named = _engine.podman_address({**podman_env, "CONTAINER_CONNECTION": "near"})
    assert named is not None
    assert named.source == "the Podman connection 'near'"
    assert _engine.podman_address(podman_env, connection="near") == named
    where = _destination.SshDestination.parse(found)
    assert where.ssh_options() == ["-p", "2200", "-l", "me", "-i", str(key)]


def test_podman5_connections_file(tmp_path: Path) -> None:
    config = tmp_path / "containers"
    config.mkdir()
    (config / "podman-connections.json").write_text(
        json.dumps(
            {
                "Connection": {
                    "Default": "box",
                    "Connections": {
                        "box": {"URI": "ssh://core@box:22/run/p.sock", "Identity": ""}
                    },
                },
                "Farm": {},
            }
        )
    )
    env = {"XDG_CONFIG_HOME": str(tmp_path), "CONTAINERS_CONF": str(tmp_path / "none.conf")}
    found = _engine.podman_address(env, remote=True)
    assert found is not None
    assert (found.url, found.identity) == ("ssh://core@box:22/run/p.sock", None)


@pytest.mark.parametrize(
    ("url", "host", "user", "port"),
    [
        ("ssh://far", "far", None, None),
        ("ssh://me@far.example:2222", "far.example", "me", 2222),
        ("ssh://me@[2001:db8::5]:22/var/run/docker.sock", "2001:db8::5", "me", 22),
        ("SSH://root@10.0.0.5", "10.0.0.5", "root", None),
    ],
)
def test_ssh_urls_are_read(url: str, host: str, user: str | None, port: int | None) -> None:
    where = _destination.SshDestination.parse(_engine.EngineAddress(url=url, source="DOCKER_HOST"))
    assert (where.host, where.user, where.port) == (host, user, port)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ssh://me:secret@far", "password"),
        ("ssh://", "not an SSH engine URL"),
        ("ssh://far:99999", "not an SSH engine URL"),
        ("ssh://-oProxyCommand=x", "is not a host name"),
        ("ssh://-x@far", "is not a user name"),
    ],
)
def test_bad_ssh_urls_are_refused(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as caught:
        _destination.SshDestination.parse(_engine.EngineAddress(url=url, source="DOCKER_HOST"))
    assert "secret" not in str(caught.value)


def test_a_tcp_engine_on_another_host_is_refused_naming_ssh() -> None:
    env = {"DOCKER_HOST": "tcp://192.0.2.1:2376", "HOME": "/nonexistent"}
    with pytest.raises(RemoteEngineError) as caught:
        _destination.destination("auto", "auto", environ=env)
    assert "DOCKER_HOST=ssh://USER@192.0.2.1" in str(caught.value)
    podman = {"CONTAINER_HOST": "tcp://192.0.2.1:8080", "HOME": "/nonexistent"}
    with pytest.raises(RemoteEngineError, match=r"CONTAINER_HOST=ssh://USER@192\.0\.2\.1"):
        _destination.destination("podman", "auto", environ=podman)


@pytest.mark.parametrize(
    "env",
    [
        {"DOCKER_HOST": "tcp://127.0.0.1:2375"},
        {"DOCKER_HOST": "unix:///run/docker.sock"},
        {},
    ],
)
def test_engines_on_this_host_are_not_remote(env: dict[str, str]) -> None:
    assert (
        _destination.destination("auto", "auto", environ={"HOME": "/nonexistent", **env}) is None
    )


def test_the_desktop_engine_stays_a_vm() -> None:
    env = {"DOCKER_HOST": "ssh://me@far", "HOME": "/nonexistent"}
    assert _destination.destination("desktop", "auto", environ=env) is None
    assert _destination.destination("auto", "auto", environ=env) is not None


def test_an_ssh_server_that_does_not_answer_is_a_clear_error(
    xvfb: XServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    ssh = shutil.which("ssh")
    if ssh is None:
        require_executables("ssh")
        return
    # An ssh that reads no user configuration, as a user's would not matter here.
    wrapper = tmp_path / "bin" / "ssh"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\nexec {ssh} -F /dev/null "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{wrapper.parent}:/usr/bin:/bin")
    monkeypatch.setenv("DOCKER_HOST", f"ssh://nobody@127.0.0.1:{free_port()}")
    monkeypatch.delenv("DOCKER_CONTEXT", raising=False)
    with pytest.raises(RemoteEngineError) as caught:
        X11Passthrough(xvfb.display, xvfb.xauthority, display_range=range(850, 900)).start()
    message = str(caught.value)
    assert "cannot reach the engine's host nobody@127.0.0.1" in message
    assert "Connection refused" in message
    assert xvfb.cookie.hex() not in message


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        (["docker", "-H", "ssh://me@far"], {"DOCKER_HOST": "ssh://me@far"}),
        (["sudo", "docker", "--host=ssh://me@far"], {"DOCKER_HOST": "ssh://me@far"}),
        (["docker", "--context", "far"], {"DOCKER_CONTEXT": "far", "DOCKER_HOST": None}),
        (["docker", "-c", "far"], {"DOCKER_CONTEXT": "far", "DOCKER_HOST": None}),
        (["docker"], {}),
        (["nerdctl", "-H", "x"], {}),
        (
            ["podman", "--url", "ssh://me@far/p.sock"],
            {"CONTAINER_HOST": "ssh://me@far/p.sock", "CONTAINER_CONNECTION": None},
        ),
        (
            ["podman", "--connection=far", "--identity", "/k"],
            {"CONTAINER_CONNECTION": "far", "CONTAINER_HOST": None, "CONTAINER_SSHKEY": "/k"},
        ),
        (["podman", "--log-level", "debug"], {}),
    ],
)
def test_the_wrapped_commands_engine_options(prefix: list[str], expected: dict[str, str]) -> None:
    assert _destination.command_environ(prefix, {"HOME": "/nonexistent"}) == expected


def test_podman_remote_means_the_default_connection(podman_env: dict[str, str]) -> None:
    assert _destination.command_environ(["podman", "--remote"], podman_env) == {}
    cli_writes(["podman", "system", "connection", "add", "far", "ssh://me@far/p.sock"], podman_env)
    assert _destination.command_environ(["podman", "-r"], podman_env) == {
        "CONTAINER_CONNECTION": "far"
    }
    env = {**podman_env, "CONTAINER_CONNECTION": "far"}
    found = _engine.podman_address(env)
    assert found is not None
    listed = subprocess.run(
        ["podman", "system", "connection", "list", "--format", "json"],
        env=podman_env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert found.url == json.loads(listed.stdout)[0]["URI"]  # as Podman wrote it


def test_container_sshkey_is_the_identity() -> None:
    env = {"CONTAINER_HOST": "ssh://me@far/p.sock", "CONTAINER_SSHKEY": "/keys/far"}
    found = _engine.podman_address(env)
    assert found is not None
    assert found.identity == "/keys/far"
