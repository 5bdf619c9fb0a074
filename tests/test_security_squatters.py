"""
Another local user squats an X endpoint: the real cookie must never reach it.

The squatter is a real process of the second local user ``x11pt``. On a desktop the X server
does not listen on TCP, so anyone may bind ``127.0.0.1:6000+N`` (or the abstract socket) first.
"""

from __future__ import annotations

import socket
import struct
import subprocess

from collections.abc import Iterator

import pytest

from x11passthrough import X11Passthrough
from x11passthrough.display import DisplayLocator, Endpoint
from x11passthrough.exceptions import DisplayOwnerError
from x11passthrough.xauth import Xauthority

from infra.cli import cli
from infra.processes import wait_until
from infra.users import OTHER_USER, Squatter, free_display, other_user
from infra.xvfb import XServer


RANGE = range(1200, 1300)
MIT = b"MIT-MAGIC-COOKIE-1"


@pytest.fixture(name="squatters")
def _squatters() -> Iterator[list[Squatter]]:
    made: list[Squatter] = []
    yield made
    for squatter in made:
        squatter.close()


def squat(squatters: list[Squatter], kind: str, address: str) -> Squatter:
    squatter = Squatter(kind, address)
    squatters.append(squatter)
    return squatter


def passthrough(server: XServer, display: str | None = None, **options: object) -> X11Passthrough:
    options.setdefault("bind", ["127.0.0.1"])
    options.setdefault("display_range", RANGE)
    return X11Passthrough(display or server.display, server.xauthority, **options)  # type: ignore[arg-type]


def setup_request(cookie: bytes) -> bytes:
    return struct.pack("<BxHHHH2x", 0x6C, 11, 0, len(MIT), len(cookie)) + MIT + b"\0\0" + cookie


def session_client(args_display: str, args_file: object) -> bytes:
    """Connect to the relay with the session cookie and return the server's first 8 bytes."""
    assert args_file is not None
    cookie = Xauthority.load(args_file)[0].data  # type: ignore[arg-type]
    port = 6000 + int(args_display.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(setup_request(cookie))
        data = b""
        while len(data) < 8:
            chunk = s.recv(8 - len(data))
            if not chunk:
                break
            data += chunk
        reason = b""
        if data[:1] == b"\0" and len(data) == 8:
            reason = s.recv(data[1] + 4)[: data[1]]
    return data + reason


def test_a_tcp_squatter_next_to_a_socket_server_gets_nothing(
    xvfb: XServer, squatters: list[Squatter]
) -> None:
    """:N with the server on its socket only: the squatter on 6000+N is never contacted."""
    squatter = squat(squatters, "tcp", f"127.0.0.1:{xvfb.tcp_port}")
    with passthrough(xvfb) as args:
        assert session_client(args.display, args.xauthority)[0] == 1  # Success
    report = squatter.report()
    assert (report.connections, report.received) == (0, b"")


@pytest.mark.parametrize("kind", ["tcp", "abstract"])
def test_only_a_squatter_answers_and_no_cookie_is_sent(
    xvfb: XServer, squatters: list[Squatter], kind: str
) -> None:
    """With nothing of ours at :N, a squatter's endpoint is refused, naming it and its owner."""
    number = free_display()
    address = f"127.0.0.1:{6000 + number}" if kind == "tcp" else f"/tmp/.X11-unix/X{number}"
    squatter = squat(squatters, kind, address)
    with pytest.raises(DisplayOwnerError) as info:
        passthrough(xvfb, f":{number}").start()
    message = str(info.value)
    endpoint = f"tcp:localhost:{6000 + number}" if kind == "tcp" else f"abstract:@{address}"
    assert endpoint in message
    assert f"uid {squatter.uid} ({OTHER_USER})" in message
    report = squatter.report()
    assert report.connections == 1
    assert report.received == b""


def test_an_explicit_tcp_display_owned_by_another_user_is_refused(
    xvfb: XServer, squatters: list[Squatter]
) -> None:
    """localhost:N is TCP only; a listener of another user there gets no cookie."""
    number = free_display()
    squatter = squat(squatters, "tcp", f"127.0.0.1:{6000 + number}")
    with pytest.raises(DisplayOwnerError, match=f"uid {squatter.uid}"):
        passthrough(xvfb, f"127.0.0.1:{number}").start()
    assert squatter.report().received == b""


def test_trusted_owners_admits_a_shared_server(xvfb: XServer, squatters: list[Squatter]) -> None:
    """A user who shares an X server on purpose is trusted only when named."""
    user = other_user()
    number = free_display()
    squat(squatters, "tcp", f"127.0.0.1:{6000 + number}")
    locator = DisplayLocator(trusted_owners={0, user.pw_uid})
    assert locator.locate(f"127.0.0.1:{number}") == Endpoint.tcp("127.0.0.1", 6000 + number)


def test_every_relay_connection_is_checked(xvfb_tcp: XServer, squatters: list[Squatter]) -> None:
    """A squatter who takes the port after start gets no cookie: the client is refused."""
    with passthrough(xvfb_tcp, f"localhost:{xvfb_tcp.number}") as args:
        assert session_client(args.display, args.xauthority)[0] == 1
        xvfb_tcp.stop()
        squatter = squat(squatters, "tcp", f"127.0.0.1:{xvfb_tcp.tcp_port}")
        reply = session_client(args.display, args.xauthority)
        assert reply[0] == 0  # Failed
        assert f"uid {squatter.uid} ({OTHER_USER})".encode() in reply
        report = squatter.report()
    assert report.received == b""
    assert report.connections >= 1
    assert args.display  # the passthrough stayed up; only that client was refused


CONTAINER_SQUATTER = """
import socket, sys
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", int(sys.argv[1])))
listener.listen(8)
print("listening", flush=True)
while True:
    client, _ = listener.accept()
    print("accepted", flush=True)
    while data := client.recv(65536):
        print("received", len(data), flush=True)
    client.close()
"""


@pytest.mark.e2e
def test_a_host_network_container_squatting_the_port_gets_no_cookie(
    xvfb: XServer, x11_image: str
) -> None:
    """uid 65534 in a --network host container binds 6000+N first: refused, nothing sent."""
    number = free_display()
    name = f"x11pt-squat-{number}"
    started = subprocess.run(
        [
            *("docker", "run", "-d", "--rm", "--name", name, "--network", "host"),
            *("--user", "65534:65534", x11_image, "python3", "-c", CONTAINER_SQUATTER),
            str(6000 + number),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert started.stdout.strip()
    try:
        wait_until(
            lambda: "listening" in container_log(name), "the squatter to listen", timeout=30
        )
        with pytest.raises(DisplayOwnerError, match=r"belongs to uid 65534"):
            passthrough(xvfb, f"localhost:{number}").start()
        log = container_log(name)
        assert "accepted" in log
        assert "received" not in log
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False)


def container_log(name: str) -> str:
    done = subprocess.run(["docker", "logs", name], capture_output=True, text=True, check=False)
    return done.stdout + done.stderr


def test_the_command_line_names_trust_owner_and_follows_it(
    xvfb: XServer, squatters: list[Squatter]
) -> None:
    """The refusal speaks CLI; ``--trust-owner USER`` admits that user's endpoint, only it."""
    number = free_display()
    squatter = squat(squatters, "tcp", f"127.0.0.1:{6000 + number}")
    display = f"127.0.0.1:{number}"
    refused = cli("--display", display, "--xauthority", str(xvfb.xauthority), "doctor")
    assert refused.returncode == 1
    report = " ".join(refused.stdout.split())  # doctor wraps its lines
    assert f"uid {squatter.uid} ({OTHER_USER})" in report
    assert "--trust-owner with that user's name or uid" in report
    assert "DisplayLocator" not in refused.stdout
    assert squatter.report().received == b""

    trusted_squatter = squat(squatters, "tcp", f"127.0.0.1:{6000 + number}")
    trusted = cli(
        *("--display", display, "--xauthority", str(xvfb.xauthority)),
        *("--trust-owner", OTHER_USER, "doctor"),
    )
    assert f"ok    display    {display} is tcp:127.0.0.1:{6000 + number}" in trusted.stdout
    assert f"owned by {OTHER_USER}" in " ".join(trusted.stdout.split())
    assert trusted.returncode == 1  # a squatter is no X server: the cookie step fails
    assert trusted_squatter.report().connections >= 1

    unknown = cli("--display", display, "--trust-owner", "no-such-user-x", "doctor")
    assert unknown.returncode == 125
    assert "--trust-owner 'no-such-user-x': no such user" in unknown.stderr
