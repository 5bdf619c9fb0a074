"""
Engines on another host, through OpenSSH, end to end: a second host in its own network and mount
namespaces (its own dockerd and sshd, see :mod:`infra.remote`), reached only as
``DOCKER_HOST=ssh://root@ADDRESS``; containers there draw on this host's Xvfb.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import tempfile
import threading

from collections.abc import Iterator
from pathlib import Path

import pytest

from x11passthrough import DockerRunArgs, X11Passthrough
from x11passthrough._commands import ERROR_STATUS
from x11passthrough.exceptions import ConfigurationError, RemoteEngineError

from infra.cli import cli, cli_process, display_options
from infra.network import tcp_listeners
from infra.processes import wait_until
from infra.remote import RemoteHost, RemoteSshd
from infra.xvfb import XServer


pytestmark = pytest.mark.e2e
RANGE = range(850, 900)
USERS = [pytest.param((), id="root"), pytest.param(("--user", "1000"), id="user-1000")]


def number(args: DockerRunArgs) -> int:
    return int(args.display.rsplit(":", 1)[1])


@pytest.fixture(name="remote")
def _remote(remote_host: RemoteHost, monkeypatch: pytest.MonkeyPatch) -> RemoteHost:
    """The remote host, with this process's environment pointing at its engine."""
    for name, value in remote_host.env().items():
        monkeypatch.setenv(name, value)
    for name in ("DOCKER_CONTEXT", "CONTAINER_HOST", "CONTAINER_CONNECTION"):
        monkeypatch.delenv(name, raising=False)
    return remote_host


def remote_docker_run(
    host: RemoteHost, args: DockerRunArgs | list[str], *command: str, options: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """``docker run --rm --network none`` on the remote engine, over SSH, as a user would."""
    return subprocess.run(
        ["docker", "run", "--rm", "--network", "none", *options, *args, host.image, *command],
        capture_output=True,
        text=True,
        check=False,
        timeout=180,
        env=host.env(),
    )


def lend(server: XServer, **options: object) -> X11Passthrough:
    options.setdefault("display_range", RANGE)
    return X11Passthrough(server.display, server.xauthority, **options)  # type: ignore[arg-type]


def session_dirs(host: RemoteHost) -> list[Path]:
    """The remote host's x11passthrough directories (as this host sees its /tmp)."""
    return sorted((host.root / "tmp").glob("x11passthrough-*"))


@pytest.mark.parametrize("user", USERS)
def test_containers_on_the_remote_engine_draw_on_the_local_display(
    xvfb: XServer, remote: RemoteHost, user: tuple[str, ...]
) -> None:
    with lend(xvfb) as args:
        assert args.socket is not None
        assert args.xauthority is not None
        # The container mounts the remote host's paths: none of them exists on this host.
        assert not args.socket.exists()
        assert not args.xauthority.exists()
        for client in ("xdpyinfo", "xlib-probe"):
            done = remote_docker_run(remote, args, client, options=user)
            assert done.returncode == 0, done.stderr
        assert (
            "vendor string:    The X.Org Foundation"
            in remote_docker_run(remote, args, "xdpyinfo", options=user).stdout
        )


def test_the_remote_files_are_private_and_go_with_the_passthrough(
    xvfb: XServer, remote: RemoteHost
) -> None:
    with lend(xvfb) as args:
        assert args.socket is not None
        assert args.xauthority is not None
        directory = remote.local_path(args.socket.parent)
        assert directory.parent == remote.root / "tmp"
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
        socket_mode = remote.local_path(args.socket).stat()
        assert stat.S_ISSOCK(socket_mode.st_mode)
        assert stat.S_IMODE(socket_mode.st_mode) == 0o666
        assert stat.S_IMODE(remote.local_path(args.xauthority).stat().st_mode) == 0o644
        # The remote file holds the session cookie, never the display's own.
        assert xvfb.cookie not in remote.local_path(args.xauthority).read_bytes()
        # Nothing listens on a network port for X on either side.
        port = 6000 + number(args)
        assert tcp_listeners(port) == []
        listening = remote.run(["ss", "-Hltn", f"sport = :{port}"]).stdout.decode()
        assert listening.strip() == ""
    wait_until(lambda: not directory.exists(), "the remote directory to be removed")
    assert session_dirs(remote) == []


def test_forward_mode_keeps_the_remote_file_private(xvfb: XServer, remote: RemoteHost) -> None:
    with lend(xvfb, auth="forward") as args:
        assert args.xauthority is not None
        assert stat.S_IMODE(remote.local_path(args.xauthority).stat().st_mode) == 0o600
        done = remote_docker_run(remote, args, "xdpyinfo")
        assert done.returncode == 0, done.stderr


def test_a_docker_context_names_the_remote_engine(
    xvfb: XServer, remote: RemoteHost, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "docker-config"
    env = remote.env(DOCKER_HOST="", DOCKER_CONFIG=str(config))
    for argv in (
        ["docker", "context", "create", "far", "--docker", f"host={remote.docker_host}"],
        ["docker", "context", "use", "far"],
    ):
        done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr
    monkeypatch.delenv("DOCKER_HOST")
    monkeypatch.setenv("DOCKER_CONFIG", str(config))
    with lend(xvfb) as args:
        done = subprocess.run(
            ["docker", "run", "--rm", "--network", "none", *args, remote.image, "xdpyinfo"],
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=180,
        )
        assert done.returncode == 0, done.stderr


@pytest.fixture(
    name="forbidding_sshd", params=["AllowStreamLocalForwarding no", "DisableForwarding yes"]
)
def _forbidding_sshd(
    request: pytest.FixtureRequest, remote: RemoteHost
) -> Iterator[tuple[RemoteSshd, str]]:
    option = str(request.param)
    server = remote.start_sshd(2222, option)
    try:
        yield server, option
    finally:
        remote.stop_sshd(server)


def test_a_server_that_forbids_forwarding_is_refused_clearly(
    xvfb: XServer,
    remote: RemoteHost,
    forbidding_sshd: tuple[RemoteSshd, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server, _option = forbidding_sshd
    monkeypatch.setenv("DOCKER_HOST", remote.url(server.port))
    passthrough = lend(xvfb)
    with pytest.raises(RemoteEngineError) as caught:
        passthrough.start()
    message = str(caught.value)
    assert "refused to forward a UNIX socket" in message
    assert "AllowStreamLocalForwarding" in message
    assert "DisableForwarding" in message
    # Nothing is left: no remote directory, no ssh watcher, no relay.
    wait_until(lambda: session_dirs(remote) == [], "the remote directory to be removed")
    assert not [t for t in threading.enumerate() if t.name.startswith("x11passthrough-ssh")]
    assert passthrough.stats.connections_total == 0


def test_an_unreachable_ssh_server_is_refused_clearly(
    xvfb: XServer, remote: RemoteHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", remote.url(2299))  # nothing listens there
    with pytest.raises(RemoteEngineError, match=r"cannot reach the engine's host .* over SSH"):
        lend(xvfb).start()


def test_no_shared_memory_through_the_ssh_forward(xvfb: XServer, remote: RemoteHost) -> None:
    """
    Behind the forward every client's peer is the local ssh (this host's IPC namespace).

    The relay must not take that for a container sharing the X server's memory: MIT-SHM stays
    hidden from the remote containers, and ``shm=True`` is refused at start.
    """
    with pytest.raises(ConfigurationError, match="engine on another host") as info:
        lend(xvfb, shm=True).start()
    assert info.value.option == "shm"
    with lend(xvfb) as args:
        done = remote_docker_run(remote, args, "xdpyinfo", "-queryExtensions")
    assert done.returncode == 0, done.stderr
    # xdpyinfo prints the opcode QueryExtension gave: 0 for an extension reported absent.
    assert re.search(r"BIG-REQUESTS\s+\(opcode: [1-9]", done.stdout), done.stdout
    assert re.search(r"MIT-SHM\s+\(opcode: 0\)", done.stdout), done.stdout


def test_transport_tcp_is_refused_for_a_remote_engine(xvfb: XServer, remote: RemoteHost) -> None:
    with pytest.raises(ConfigurationError, match="leave transport='auto'"):
        lend(xvfb, transport="tcp").start()


def test_a_dropped_connection_withdraws_the_display(
    xvfb: XServer, remote: RemoteHost, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="x11passthrough")
    passthrough = lend(xvfb)
    with passthrough as args:
        assert remote_docker_run(remote, args, "xdpyinfo").returncode == 0
        assert args.socket is not None
        directory = remote.local_path(args.socket.parent)
        assert remote.sshd.drop_connections()
        wait_until(
            lambda: "containers on the remote engine no longer reach the display" in caplog.text,
            "the dropped connection to be reported",
            timeout=60,
        )
        assert passthrough._remote is not None
        assert not passthrough._remote.alive
        # The remote host removed the directory when the connection went.
        wait_until(lambda: not directory.exists(), "the remote directory to be removed")
        done = remote_docker_run(remote, args, "xdpyinfo")
        assert done.returncode != 0
        # Docker's --volume made the missing source (as a directory) on the remote host.
        shutil.rmtree(directory, ignore_errors=True)
    assert "Traceback" not in caplog.text


# -- the command line ------------------------------------------------------------------------


def cli_run_xdpyinfo(
    server: XServer,
    host: RemoteHost,
    engine: list[str],
    options: tuple[str, ...],
    *,
    env: dict[str, str],
) -> subprocess.CompletedProcess[str]:
    """``x11passthrough run -- ENGINE run --rm --network none OPTIONS IMAGE xdpyinfo``."""
    return cli(
        *display_options(server),
        *("run", "--", *engine, "run", "--rm", "--network", "none", *options),
        *(host.image, "xdpyinfo"),
        env=env,
        timeout=240,
    )


@pytest.mark.parametrize("user", USERS)
def test_cli_run_lends_the_display_to_a_remote_container(
    xvfb: XServer, remote: RemoteHost, user: tuple[str, ...]
) -> None:
    done = cli_run_xdpyinfo(xvfb, remote, ["docker"], user, env=remote.env())
    assert done.returncode == 0, done.stderr
    assert "vendor string:    The X.Org Foundation" in done.stdout
    assert session_dirs(remote) == []


def test_cli_run_reads_the_engine_from_the_wrapped_command(
    xvfb: XServer, remote: RemoteHost, tmp_path: Path
) -> None:
    # No DOCKER_HOST: the command names the engine, with -H, or with --context.
    env = remote.env(DOCKER_HOST="", DOCKER_CONFIG=str(tmp_path / "docker-config"))
    create = ["docker", "context", "create", "far", "--docker", f"host={remote.docker_host}"]
    made = subprocess.run(create, env=env, capture_output=True, text=True, check=False)
    assert made.returncode == 0, made.stderr
    for engine in (["docker", "-H", remote.docker_host], ["docker", "--context", "far"]):
        done = cli_run_xdpyinfo(xvfb, remote, engine, (), env=env)
        assert done.returncode == 0, done.stderr
        assert "vendor string:    The X.Org Foundation" in done.stdout


def test_cli_args_holds_the_remote_display_and_says_when_the_connection_drops(
    xvfb: XServer, remote: RemoteHost
) -> None:
    with cli_process(*display_options(xvfb), "args", env=remote.env()) as process:
        assert process.stdout is not None
        assert process.stderr is not None
        line = process.stdout.readline()
        assert line, process.stderr.read()
        arguments = shlex.split(line)
        assert remote_docker_run(remote, arguments, "xdpyinfo").returncode == 0
        held = process.stderr.readline()
        assert "is lent until Ctrl-C" in held
        remote.sshd.drop_connections()
        said = process.stderr.readline()
        assert "the SSH connection to" in said
        assert "no longer reach the display" in said
        process.send_signal(signal.SIGINT)
        assert process.wait(60) == 130
    wait_until(lambda: session_dirs(remote) == [], "the remote directory to be removed")


def ssh_masters(address: str) -> list[int]:
    """The pids of ssh control masters (``ssh -M``) to `address`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if os.path.basename(argv[0]) == b"ssh" and b"-M" in argv and address.encode() in argv:
            found.append(int(entry.name))
    return found


def test_a_killed_passthrough_leaves_nothing_on_the_remote_host(
    xvfb: XServer, remote: RemoteHost
) -> None:
    with cli_process(
        *display_options(xvfb), "args", env=remote.env(), stderr=subprocess.DEVNULL
    ) as process:
        assert process.stdout is not None
        assert process.stdout.readline()
        assert len(session_dirs(remote)) == 1
        assert ssh_masters(remote.address)
        process.kill()
        process.wait(60)
    # Its end of the pipe closed: the remote script removes the directory, ssh ends.
    wait_until(lambda: session_dirs(remote) == [], "the remote directory to be removed")
    wait_until(lambda: not ssh_masters(remote.address), "the ssh connection to end", timeout=30)
    # The next start removes what the killed one left here: ssh's control directory.
    left = list(Path(tempfile.gettempdir()).glob(f"x11passthrough-ssh-{process.pid}-*"))
    assert len(left) == 1
    with lend(xvfb):
        assert not left[0].exists()


def test_cli_refuses_a_remote_tcp_engine_naming_ssh(xvfb: XServer, remote: RemoteHost) -> None:
    env = remote.env(DOCKER_HOST=f"tcp://{remote.address}:2376")
    done = cli(*display_options(xvfb), "args", env=env)
    assert done.returncode == ERROR_STATUS
    assert f"DOCKER_HOST=ssh://USER@{remote.address}" in done.stderr
    assert "Traceback" not in done.stderr
    assert os.environ.get("DOCKER_HOST") != env["DOCKER_HOST"]


def doctor_steps(output: str) -> dict[str, tuple[str, str]]:
    """Each step of a doctor report: its status and its text, wrapped lines joined."""
    steps: dict[str, tuple[str, str]] = {}
    step = ""
    for line in output.splitlines():
        if line and not line.startswith(" "):
            words = line.split(maxsplit=2)
            if len(words) == 3 and words[0] in ("ok", "warn", "FAIL"):
                step = words[1]
                steps[step] = (words[0], words[2])
                continue
            step = ""
        elif step and not line.strip().startswith("->"):
            status, text = steps[step]
            steps[step] = (status, f"{text} {line.strip()}")
        else:
            step = ""
    return steps


def test_cli_doctor_checks_the_remote_end_for_real(xvfb: XServer, remote: RemoteHost) -> None:
    done = cli(*display_options(xvfb), "doctor", "--image", remote.image, env=remote.env())
    assert done.returncode == 0, done.stdout + done.stderr
    steps = doctor_steps(done.stdout)
    assert steps["engine"][0] == "ok"
    assert f"on another host, root@{remote.address}" in steps["engine"][1]
    assert "unix over SSH" in steps["transport"][1]
    assert steps["container"][0] == "ok"
    assert "probe: The X.Org Foundation" in steps["container"][1]
    assert session_dirs(remote) == []


def test_cli_doctor_names_the_server_option_that_forbids_forwarding(
    xvfb: XServer, remote: RemoteHost, forbidding_sshd: tuple[RemoteSshd, str]
) -> None:
    server, _option = forbidding_sshd
    env = remote.env(DOCKER_HOST=remote.url(server.port))
    done = cli(*display_options(xvfb), "doctor", "--image", remote.image, env=env)
    assert done.returncode == 1
    failed = {
        k: text for k, (status, text) in doctor_steps(done.stdout).items() if status == "FAIL"
    }
    assert list(failed) == ["transport"], done.stdout
    assert "refused to forward a UNIX socket" in failed["transport"]
    assert "AllowStreamLocalForwarding" in failed["transport"]


def test_cli_doctor_fails_a_remote_tcp_engine(xvfb: XServer, remote: RemoteHost) -> None:
    env = remote.env(DOCKER_HOST=f"tcp://{remote.address}:2376")
    done = cli(*display_options(xvfb), "doctor", env=env)
    assert done.returncode == 1
    status, text = doctor_steps(done.stdout)["engine"]
    assert status == "FAIL"
    assert f"DOCKER_HOST=ssh://USER@{remote.address}" in text
