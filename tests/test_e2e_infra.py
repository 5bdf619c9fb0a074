"""The end-to-end infrastructure itself: Docker engine and image, netns, sshd X11 forwarding."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from infra.ci import require, require_executables
from infra.docker import (
    START_DOCKERD,
    docker_gateway_address,
    run_container,
    start_dockerd,
    stop_dockerd,
    write_client_xauthority,
)
from infra.images import (
    IMAGE_INPUTS_LABEL,
    IMAGE_USER_UID,
    build_x11_image,
    collect_image_inputs,
    missing_image_tools,
)
from infra.network import NetNamespace, free_private_subnet, tcp_listeners
from infra.sshd import Sshd
from infra.xvfb import XServer


if TYPE_CHECKING:
    import docker


HOSTNAME = "x11pt"


def _xauth_list(path: Path) -> str:
    done = subprocess.run(
        ["xauth", "-f", str(path), "nlist"], capture_output=True, text=True, check=True
    )
    return done.stdout


# ---------------------------------------------------------------------------------------------
# Helpers that need no Docker


def test_client_xauthority_has_wild_and_local_entries(xvfb_tcp: XServer, tmp_path: Path) -> None:
    """The file holds a FamilyWild and a FamilyLocal entry, mode 0600; libxcb accepts it."""
    require_executables("xauth", "xdpyinfo")
    path = write_client_xauthority(
        tmp_path / "client.xauth",
        number=xvfb_tcp.number,
        cookie=xvfb_tcp.cookie,
        local_hostnames=[HOSTNAME],
    )
    assert path.stat().st_mode & 0o777 == 0o600
    lines = _xauth_list(path).splitlines()
    number = str(xvfb_tcp.number).encode().hex()
    assert sorted(line.split()[0] for line in lines) == ["0100", "ffff"]
    assert all(f" {number} " in line and line.endswith(xvfb_tcp.cookie.hex()) for line in lines)
    assert any(HOSTNAME.encode().hex() in line for line in lines)
    # Over TCP the Wild entry is what a libxcb client on this host can use.
    env = xvfb_tcp.env(DISPLAY=f"127.0.0.1:{xvfb_tcp.number}", XAUTHORITY=str(path))
    done = subprocess.run(["xdpyinfo"], env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def test_client_xauthority_needs_an_entry(tmp_path: Path) -> None:
    """Asking for no entry at all is a clear error, and no file is written."""
    with pytest.raises(ValueError, match="wild=True or at least one"):
        write_client_xauthority(tmp_path / "x", number=1, cookie=b"0" * 16, wild=False)
    assert not (tmp_path / "x").exists()


def test_image_inputs_cover_libraries_and_follow_the_probe() -> None:
    """The image lists the loader, libc, python-xlib and the probe; the hash follows inputs."""
    missing = missing_image_tools()
    require("the image's programs", not missing, ", ".join(missing))
    inputs = collect_image_inputs()
    names = set(inputs.entries)
    assert {"/usr/bin/xdpyinfo", "/usr/bin/xauth", "/usr/local/bin/xlib-probe"} <= names
    assert "/usr/lib/python3/dist-packages/Xlib/display.py" in names
    assert "/usr/lib/python3/dist-packages/six.py" in names
    assert any(name.endswith("/libc.so.6") for name in names)
    assert any("ld-linux" in name for name in names)
    assert any(name.endswith("/libX11.so.6") for name in names)
    sh = [e for n, e in inputs.entries.items() if n.endswith("/bin/sh")]
    assert [e.link for e in sh] == ["busybox"]
    assert inputs.entries["/tmp"].mode == 0o1777
    again = collect_image_inputs()
    assert again.digest == inputs.digest
    assert collect_image_inputs(probe_script="#!/bin/sh\n").digest != inputs.digest


def test_stop_dockerd_leaves_other_processes_alone() -> None:
    """stop_dockerd only stops a dockerd: a reused pid of another program survives."""
    with subprocess.Popen(["sleep", "30"]) as other:
        try:
            stop_dockerd(other.pid, timeout=1)
            assert other.poll() is None
        finally:
            other.kill()


# ---------------------------------------------------------------------------------------------
# Docker


@pytest.mark.e2e
def test_start_dockerd_prints_nothing_when_an_engine_answers(
    docker_client: docker.DockerClient,
) -> None:
    """With an engine up, the script starts nothing and prints no pid."""
    assert docker_client.ping()
    done = subprocess.run(
        ["bash", str(START_DOCKERD)], capture_output=True, text=True, check=False, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""


@pytest.mark.e2e
def test_start_dockerd_starts_an_engine_and_stop_dockerd_stops_it() -> None:
    """The script starts dockerd, prints its pid, starts no second one; stop_dockerd ends it.

    A private engine (own socket, directories, no bridge, no iptables) keeps the machine's
    default engine, which other tests use, untouched.
    """
    import docker

    require("root (to start dockerd)", os.geteuid() == 0, "run the e2e tests as root")
    require("dockerd", shutil.which("dockerd") is not None, "install docker.io")
    # A private engine with --bridge none would delete docker0, so it gets a bridge of its own.
    subnet = free_private_subnet("10.214.0.0/16", 24)
    gateway = str(next(subnet.hosts()))
    bridge = f"x11ptb{secrets.token_hex(4)}"
    # Short: containerd's socket under --exec-root must fit a unix socket path.
    workdir = Path(tempfile.mkdtemp(prefix="x11pt-d", dir="/tmp"))
    try:
        subprocess.run(["ip", "link", "add", bridge, "type", "bridge"], check=True)
        subprocess.run(["ip", "addr", "add", f"{gateway}/24", "dev", bridge], check=True)
        (workdir / "daemon.json").write_text("{}")
        socket_url = f"unix://{workdir}/docker.sock"
        args = [
            f"-H {socket_url} --config-file {workdir}/daemon.json",
            f"--pidfile {workdir}/docker.pid --data-root {workdir}/data",
            f"--exec-root {workdir}/exec --bridge {bridge}",
            "--iptables=false --ip6tables=false --ip-masq=false",
        ]
        env = dict(os.environ, DOCKER_HOST=socket_url, DOCKERD_ARGS=" ".join(args))
        env["DOCKERD_LOG"] = str(workdir / "dockerd.log")
        pid = start_dockerd(env=env)
        assert pid is not None
        try:
            assert Path(f"/proc/{pid}/comm").read_text().strip() == "dockerd"
            client = docker.DockerClient(base_url=socket_url, timeout=30)
            with contextlib.closing(client):
                assert client.ping()
                assert docker_gateway_address(client) == gateway
            assert start_dockerd(env=env) is None
        finally:
            stop_dockerd(pid)
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()
        assert not (workdir / "docker.sock").exists()
    finally:
        subprocess.run(["ip", "link", "del", bridge], capture_output=True, check=False)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.mark.e2e
def test_image_is_cached_by_its_inputs(docker_client: docker.DockerClient, x11_image: str) -> None:
    """The image carries the inputs hash; building again reuses it instead of importing."""
    image = docker_client.images.get(x11_image)
    assert image.labels[IMAGE_INPUTS_LABEL] == collect_image_inputs().digest
    assert build_x11_image(tag=x11_image) == x11_image
    assert docker_client.images.get(x11_image).id == image.id


@pytest.mark.e2e
def test_image_has_a_shell_users_and_python(
    docker_client: docker.DockerClient, x11_image: str
) -> None:
    """busybox is /bin/sh, uid 1000 is ``user``, /tmp is 1777, Debian's python3 runs."""
    script = "id -un; stat -c %a /tmp; python3 -c 'import Xlib.display, sys; print(sys.prefix)'"
    result = run_container(
        docker_client, x11_image, ["/bin/sh", "-c", script], user=str(IMAGE_USER_UID)
    )
    assert result.exit_code == 0, result
    assert result.stdout.split() == ["user", "1777", "/usr"]


@pytest.mark.e2e
def test_container_clients_reach_xvfb_through_the_gateway(
    docker_client: docker.DockerClient,
    x11_image: str,
    docker_gateway: str,
    xvfb_factory: Callable[..., XServer],
    tmp_path: Path,
) -> None:
    """xdpyinfo (FamilyWild) and xlib-probe (FamilyLocal x11pt) talk to Xvfb via docker0."""
    xvfb = xvfb_factory(tcp=True)
    auth = write_client_xauthority(
        tmp_path / "container.xauth",
        number=xvfb.number,
        cookie=xvfb.cookie,
        local_hostnames=[HOSTNAME],
    )
    display = f"{docker_gateway}:{xvfb.number}"
    options = {
        "environment": {"DISPLAY": display, "XAUTHORITY": "/run/x11.xauth"},
        "mounts": {auth: "/run/x11.xauth"},
        "hostname": HOSTNAME,
    }
    result = run_container(docker_client, x11_image, ["xdpyinfo"], **options)  # type: ignore[arg-type]
    assert result.exit_code == 0, result
    assert f"name of display:    {display}" in result.stdout
    assert "1024x768 pixels" in result.stdout
    probe = run_container(docker_client, x11_image, ["xlib-probe"], **options)  # type: ignore[arg-type]
    assert probe.exit_code == 0, probe
    assert probe.stdout.startswith("screen 1024x768 vendor "), probe


@pytest.mark.e2e
def test_python_xlib_in_the_image_ignores_family_wild(
    docker_client: docker.DockerClient,
    x11_image: str,
    docker_gateway: str,
    xvfb_tcp: XServer,
    tmp_path: Path,
) -> None:
    """With only a FamilyWild entry xdpyinfo connects but xlib-probe is refused and says so."""
    auth = write_client_xauthority(
        tmp_path / "wild.xauth", number=xvfb_tcp.number, cookie=xvfb_tcp.cookie
    )
    env = {"DISPLAY": f"{docker_gateway}:{xvfb_tcp.number}", "XAUTHORITY": "/a"}
    mounts: dict[str | Path, str] = {auth: "/a"}
    ok = run_container(docker_client, x11_image, ["xdpyinfo"], environment=env, mounts=mounts)
    assert ok.exit_code == 0, ok
    probe = run_container(
        docker_client, x11_image, ["xlib-probe"], environment=env, mounts=mounts, hostname=HOSTNAME
    )
    assert probe.exit_code == 1, probe
    assert probe.stderr.startswith("xlib-probe: DisplayConnectionError"), probe


@pytest.mark.e2e
def test_container_with_a_wrong_cookie_is_refused(
    docker_client: docker.DockerClient,
    x11_image: str,
    docker_gateway: str,
    xvfb_tcp: XServer,
    tmp_path: Path,
) -> None:
    """The gateway path really checks the cookie: a wrong one fails both clients."""
    auth = write_client_xauthority(
        tmp_path / "wrong.xauth",
        number=xvfb_tcp.number,
        cookie=bytes(16),
        local_hostnames=[HOSTNAME],
    )
    env = {"DISPLAY": f"{docker_gateway}:{xvfb_tcp.number}", "XAUTHORITY": "/a"}
    for argv in (["xdpyinfo"], ["xlib-probe"]):
        result = run_container(
            docker_client, x11_image, argv, environment=env, mounts={auth: "/a"}, hostname=HOSTNAME
        )
        assert result.exit_code != 0, result


# ---------------------------------------------------------------------------------------------
# Network namespaces


def _accept_once(server: socket.socket, received: list[bytes]) -> None:
    conn, _ = server.accept()
    with conn:
        received.append(conn.recv(64))


def _connect_from(ns: NetNamespace, address: str, port: int) -> subprocess.CompletedProcess[str]:
    code = (
        "import socket, sys\n"
        f"s = socket.create_connection(({address!r}, {port}), timeout=5)\n"
        "s.sendall(b'hello from netns'); s.close()\n"
    )
    return ns.run([sys.executable, "-c", code], timeout=30)


@pytest.mark.e2e
def test_netns_reaches_the_host_veth_address_only(
    netns: Callable[[], NetNamespace],
) -> None:
    """A listener on the host veth address is reachable from the namespace; loopback is not."""
    ns = netns()
    assert ns.host_address != ns.ns_address
    with socket.socket() as server, socket.socket() as loopback:
        server.bind((ns.host_address, 0))
        server.listen(1)
        loopback.bind(("127.0.0.1", 0))
        loopback.listen(1)
        received: list[bytes] = []
        thread = threading.Thread(target=_accept_once, args=(server, received))
        thread.start()
        done = _connect_from(ns, ns.host_address, server.getsockname()[1])
        thread.join(10)
        assert done.returncode == 0, done.stderr
        assert received == [b"hello from netns"]
        refused = _connect_from(ns, "127.0.0.1", loopback.getsockname()[1])
        assert refused.returncode != 0
        assert "ConnectionRefusedError" in refused.stderr


@pytest.mark.e2e
def test_netns_client_reaches_xvfb_over_tcp(
    netns: Callable[[], NetNamespace], xvfb_tcp: XServer, tmp_path: Path
) -> None:
    """xdpyinfo in the namespace reaches the Xvfb at <host veth address>:N with a Wild entry."""
    require_executables("xdpyinfo")
    ns = netns()
    auth = write_client_xauthority(
        tmp_path / "ns.xauth", number=xvfb_tcp.number, cookie=xvfb_tcp.cookie
    )
    display = f"{ns.host_address}:{xvfb_tcp.number}"
    done = ns.run(["xdpyinfo"], env=xvfb_tcp.env(DISPLAY=display, XAUTHORITY=str(auth)))
    assert done.returncode == 0, done.stderr
    assert f"name of display:    {display}" in done.stdout


@pytest.mark.e2e
def test_netns_delete_removes_namespace_and_veth(netns: Callable[[], NetNamespace]) -> None:
    """Deleting a namespace removes it and its host veth; deleting twice is harmless."""
    ns = netns()
    ns.delete()
    ns.delete()
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    assert ns.name not in names.stdout
    link = subprocess.run(
        ["ip", "link", "show", ns.host_interface], capture_output=True, check=False
    )
    assert link.returncode != 0


# ---------------------------------------------------------------------------------------------
# sshd X11 forwarding


@pytest.mark.e2e
def test_ssh_forwarded_display_reaches_xvfb(sshd_x11: Sshd, xvfb: XServer) -> None:
    """ssh -Y forwards to localhost:N (127.0.0.1:6000+N) with a fake cookie in a temp file."""
    require_executables("xdpyinfo")
    root_xauthority = Path(os.path.expanduser("~/.Xauthority"))
    before = root_xauthority.stat() if root_xauthority.exists() else None
    with sshd_x11.ssh_session(xvfb) as forwarded:
        assert forwarded.display.startswith("localhost:")
        assert forwarded.number >= 10
        assert tcp_listeners(forwarded.tcp_port) == ["127.0.0.1"]
        assert forwarded.xauthority.parent == sshd_x11.workdir
        entries = _xauth_list(forwarded.xauthority)
        assert xvfb.cookie.hex() not in entries  # sshd only ever sees the fake cookie
        for display in (forwarded.display, f"127.0.0.1:{forwarded.number}"):
            env = forwarded.env(DISPLAY=display)
            done = subprocess.run(
                ["xdpyinfo"], env=env, capture_output=True, text=True, check=False
            )
            assert done.returncode == 0, done.stderr
            assert "1024x768 pixels" in done.stdout
    after = root_xauthority.stat() if root_xauthority.exists() else None
    assert (before is None) == (after is None)
    if before is not None and after is not None:
        assert before.st_mtime_ns == after.st_mtime_ns


@pytest.mark.e2e
@pytest.mark.parametrize("trusted", [True, False], ids=["ssh-Y", "ssh-X"])
def test_ssh_remote_command_runs_an_x_client(
    sshd_x11: Sshd, xvfb: XServer, *, trusted: bool
) -> None:
    """A one-shot remote command gets a forwarded DISPLAY and its X client works."""
    require_executables("xdpyinfo")
    done = sshd_x11.run(xvfb, 'echo "D=$DISPLAY"; xdpyinfo | grep dimensions', trusted=trusted)
    assert done.returncode == 0, done.stderr
    assert "D=localhost:" in done.stdout
    assert "1024x768 pixels" in done.stdout


@pytest.mark.e2e
def test_ssh_forwarding_refuses_a_client_without_the_fake_cookie(
    sshd_x11: Sshd, xvfb: XServer, tmp_path: Path
) -> None:
    """The forwarded display is not open: a client with no cookie is rejected."""
    require_executables("xdpyinfo")
    with sshd_x11.ssh_session(xvfb) as forwarded:
        env = forwarded.env(XAUTHORITY=str(tmp_path / "none"))
        done = subprocess.run(["xdpyinfo"], env=env, capture_output=True, text=True, check=False)
        assert done.returncode != 0
