"""
Who the relay's listeners admit, and how other local users cannot deny them to the containers.

The other user is the real second local user (``x11pt``, :mod:`infra.users`); the display is a
real Xvfb; clients perform real X11 connection setups. What each listener admits:

* the mounted socket (in a 0700 directory, reached only through the bind mount): any client
  with the session cookie, and any client with no authorization at all, on purpose (the socket
  itself is the capability; python-xlib finds no entry under a host name it cannot know);
* the abstract socket (any local user can connect): the session cookie only, and with
  ``auth="forward"`` on a display that needs no cookie, only the user's own uids;
* TCP: the session cookie only, from the allowed networks; ``auth="forward"`` without a
  cookie is refused at start.
"""

from __future__ import annotations

import json
import logging
import resource
import socket
import statistics
import struct
import subprocess
import sys
import textwrap
import threading
import time

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from x11passthrough import DockerRunArgs, X11Passthrough
from x11passthrough.display import DisplayLocator
from x11passthrough.exceptions import ConfigurationError, NoFreeDisplayError
from x11passthrough.xauth import Xauthority

from infra.ci import require_executables
from infra.network import NetNamespace
from infra.processes import run_forked, wait_until
from infra.users import AbstractHolder, Flooder, other_user
from infra.xvfb import XServer


RANGE = range(1760, 1800)
#: A user who owns no process of the tests (cannot read other processes' descriptors).
NOBODY = 65534
MIT = b"MIT-MAGIC-COOKIE-1"
TESTS = Path(__file__).resolve().parent
#: Real clients measured while a flood runs, and how many must succeed.
CLIENTS = 20
NEEDED = 19


def setup_message(cookie: bytes | None) -> bytes:
    name, data = (MIT, cookie) if cookie is not None else (b"", b"")
    message = struct.pack("<BxHHHH2x", 0x6C, 11, 0, len(name), len(data))
    return message + name + bytes(-len(name) % 4) + data + bytes(-len(data) % 4)


def unix_setup(address: str, cookie: bytes | None) -> tuple[int, float, str]:
    """
    Run one X11 setup on a UNIX socket (a path, or an abstract name with a leading NUL).

    Returns:
        ``(status, seconds, reason)``: 1 for Success, 0 for Failed (with its reason), -1 for
        a broken connection (with the error).
    """
    started = time.monotonic()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            # A blocking connect, as libxcb's: it waits while the listener's backlog is full.
            sock.connect(address)
            sock.settimeout(30)
            sock.sendall(setup_message(cookie))
            head = sock.recv(8, socket.MSG_WAITALL)
            if len(head) < 8:
                return -1, time.monotonic() - started, f"closed after {len(head)} bytes"
            reason = sock.recv(head[1], socket.MSG_WAITALL) if head[0] == 0 else b""
    except OSError as exc:
        return -1, time.monotonic() - started, repr(exc)
    return head[0], time.monotonic() - started, reason.decode(errors="replace")


def abstract_address(args: DockerRunArgs) -> str:
    return f"\0/tmp/.X11-unix/X{args.display.rsplit(':', 1)[1]}"


def session_cookie(args: DockerRunArgs) -> bytes:
    assert args.xauthority is not None
    return Xauthority.load(args.xauthority)[0].data


@pytest.fixture(name="no_cookie")
def _no_cookie(tmp_path: Path) -> Path:
    empty = tmp_path / "empty.xauth"
    empty.write_bytes(b"")
    return empty


# -- what each listener admits -------------------------------------------------------------------


def test_what_each_unix_listener_admits(xvfb: XServer) -> None:
    """
    The mounted socket admits the session cookie or none at all (it is the capability); the
    abstract socket, which any local user reaches, the session cookie only. A wrong cookie is
    refused on both.
    """
    with X11Passthrough(
        xvfb.display, xvfb.xauthority, transport="unix", display_range=RANGE
    ) as args:
        assert args.socket is not None
        mounted, abstract = str(args.socket), abstract_address(args)
        cookie = session_cookie(args)
        wrong = bytes(b ^ 1 for b in cookie)
        refused = (0, "x11passthrough: wrong authorization cookie")
        assert unix_setup(mounted, cookie)[0] == 1
        assert unix_setup(mounted, None)[0] == 1
        assert unix_setup(mounted, wrong)[::2] == refused
        assert unix_setup(abstract, cookie)[0] == 1
        status, _, reason = unix_setup(abstract, None)
        assert status == 0
        assert reason.startswith("x11passthrough: no authorization")
        assert unix_setup(abstract, wrong)[::2] == refused


# -- item 2: forward mode and other local users -------------------------------------------------


def test_forward_mode_without_a_cookie_admits_only_the_users_uids_on_the_abstract_socket(
    open_xvfb: XServer, no_cookie: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Another local user gets "Failed" on the abstract socket; the user and the mount pass."""
    other = other_user()
    caplog.set_level(logging.WARNING, logger="x11passthrough")
    with X11Passthrough(
        open_xvfb.display, no_cookie, auth="forward", transport="unix", display_range=RANGE
    ) as args:
        abstract = abstract_address(args)

        def as_other_user() -> str:
            return json.dumps(unix_setup(abstract, None))

        status, _, reason = json.loads(run_forked(as_other_user, uid=other.pw_uid))
        assert status == 0, reason
        assert f"local uid {other.pw_uid}" in reason
        assert "not admitted" in reason
        assert unix_setup(abstract, None)[0] == 1  # root: this process's own user
        assert args.socket is not None
        assert unix_setup(str(args.socket), None)[0] == 1  # the containers' mounted socket
    assert f"relay refused local uid {other.pw_uid}" in caplog.text


def test_forward_mode_without_a_cookie_refuses_tcp_at_start(
    open_xvfb: XServer, no_cookie: Path
) -> None:
    """TCP cannot tell who connects: a display with no cookie is not lent on it in forward mode."""
    before = {t for t in threading.enumerate() if "x11passthrough" in t.name}
    free = [number for number in RANGE if not _listening(6000 + number)]
    passthrough = X11Passthrough(
        open_xvfb.display, no_cookie, auth="forward", bind=["127.0.0.1"], display_range=RANGE
    )
    with pytest.raises(ConfigurationError) as info:
        passthrough.start()
    message = str(info.value)
    assert "auth='forward' on transport='tcp'" in message
    assert "every local user" in message
    assert "auth='substitute'" in message
    assert {t for t in threading.enumerate() if "x11passthrough" in t.name} <= before
    # Nothing is left listening (ports that others used before the start are theirs).
    assert not [number for number in free if _listening(6000 + number)]


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("options", "admitted"),
    [
        ((), True),
        (("--user", "1000:1000"), True),
        (("--network", "host"), True),
        (("--network", "host", "--user", "1000:1000"), False),
    ],
    ids=str,
)
def test_forward_mode_without_a_cookie_with_real_containers(
    open_xvfb: XServer, no_cookie: Path, x11_image: str, options: tuple[str, ...], admitted: bool
) -> None:
    """
    The mounted socket serves every container user; on the host's network, libxcb tries the
    abstract socket first, which admits root (this user) and refuses uid 1000, another user.
    """
    require_executables("docker")
    with X11Passthrough(
        open_xvfb.display, no_cookie, auth="forward", transport="unix", display_range=RANGE
    ) as args:
        done = subprocess.run(
            ["docker", "run", "--rm", *options, *args, x11_image, "xdpyinfo"],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
    if admitted:
        assert done.returncode == 0, done.stderr[-2000:]
        assert "X.Org" in done.stdout
    else:
        assert done.returncode != 0
        assert "local uid 1000" in done.stderr
        assert "is not admitted here" in done.stderr


# -- item 3: floods by other local users and by other containers ----------------------------------


def served_during(flood: Flooder, args: DockerRunArgs, *, flooding: str, client: str) -> None:
    """
    Run :data:`CLIENTS` setups on the mounted socket while `flood` runs, then stop the flood.

    Prints what the flood (`flooding`) did and how the measured clients (`client`) fared;
    asserts that :data:`NEEDED` of them set up, the p90 under a second.
    """
    try:
        results = [unix_setup(str(args.socket), session_cookie(args)) for _ in range(CLIENTS)]
    finally:
        report = flood.report()
    times = [seconds for _, seconds, _ in results]
    failures = [reason for status, _, reason in results if status != 1]
    served, p90 = CLIENTS - len(failures), statistics.quantiles(times, n=10)[-1]
    print(
        f"{flooding}: opened {report.opened}, held at most {report.held}; {client}: "
        f"{served}/{CLIENTS} served, p90 {p90 * 1000:.0f} ms; failures {failures[:3]}"
    )
    assert served >= NEEDED, failures
    assert p90 < 1.0


@pytest.mark.parametrize("processes", [1, 4])
def test_another_users_flood_on_the_abstract_socket_leaves_the_mounted_socket_served(
    xvfb: XServer, processes: int
) -> None:
    """The second user holds 400 idle connections per process on @X<M>; containers still set up."""
    with X11Passthrough(
        xvfb.display, xvfb.xauthority, transport="unix", display_range=RANGE
    ) as args:
        assert args.socket is not None
        flood = Flooder("abstract", abstract_address(args)[1:], count=400, processes=processes)
        served_during(
            flood,
            args,
            flooding=f"abstract-socket flood by uid {flood.uid} in {processes} process(es)",
            client="mounted socket",
        )


def test_one_containers_flood_on_the_mounted_socket_leaves_another_served(xvfb: XServer) -> None:
    """Processes of the same uid (root, as containers) flood; another process still sets up."""
    with X11Passthrough(
        xvfb.display, xvfb.xauthority, transport="unix", display_range=RANGE
    ) as args:
        assert args.socket is not None
        flood = Flooder("unix", str(args.socket), count=400, processes=4, user=False)
        served_during(
            flood,
            args,
            flooding=f"mounted-socket flood by {len(flood.pids)} processes of uid {flood.uid}",
            client="another process",
        )


CONTAINER_SETUP = textwrap.dedent(
    """
    import json, os, socket, struct, time
    path = "/tmp/.X11-unix/X" + os.environ["DISPLAY"].rsplit(":", 1)[1]
    with open(os.environ["XAUTHORITY"], "rb") as f:
        data = f.read()
    fields, at = [], 2
    for _ in range(4):
        size = struct.unpack(">H", data[at:at + 2])[0]
        fields.append(data[at + 2:at + 2 + size])
        at += 2 + size
    name, cookie = fields[2], fields[3]
    message = struct.pack("<BxHHHH2x", 0x6C, 11, 0, len(name), len(cookie))
    message += name + bytes(-len(name) % 4) + cookie + bytes(-len(cookie) % 4)
    started = time.monotonic()
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(30)
            sock.connect(path)
            sock.sendall(message)
            head = sock.recv(8, socket.MSG_WAITALL)
        status = head[0] if len(head) == 8 else -1
    except OSError as exc:
        status = repr(exc)
    print(json.dumps({"status": status, "seconds": time.monotonic() - started}))
    """
)


@pytest.mark.e2e
def test_containers_set_up_while_another_user_floods_the_abstract_socket(
    xvfb: XServer, x11_image: str
) -> None:
    """Twenty real containers on the mounted socket, while the second user floods @X<M>."""
    require_executables("docker")
    with X11Passthrough(
        xvfb.display, xvfb.xauthority, transport="unix", display_range=RANGE
    ) as args:
        flood = Flooder("abstract", abstract_address(args)[1:], count=400, processes=4)
        results: list[dict[str, Any]] = []
        try:
            for _ in range(CLIENTS):
                done = subprocess.run(
                    ["docker", "run", "--rm", *args, x11_image, "python3", "-c", CONTAINER_SETUP],
                    capture_output=True,
                    text=True,
                    check=False,
                    timeout=120,
                )
                lines = done.stdout.strip().splitlines()
                results.append(json.loads(lines[-1]) if lines else {"status": done.stderr})
        finally:
            report = flood.report()
    served = sum(1 for r in results if r["status"] == 1)
    times = [float(r["seconds"]) for r in results if "seconds" in r]
    p90 = statistics.quantiles(times, n=10)[-1] if len(times) >= 2 else float("inf")
    print(
        f"containers: {served}/{CLIENTS} set up, p90 {p90 * 1000:.0f} ms, while uid "
        f"{flood.uid} flooded (opened {report.opened}); failures "
        f"{[r['status'] for r in results if r['status'] != 1][:3]}"
    )
    assert served >= NEEDED, results
    assert p90 < 1.0


# -- item 7: warnings of floods from many addresses --------------------------------------------


@pytest.fixture(name="many_descriptors")
def _many_descriptors() -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 8192)), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_flood_from_2000_addresses_logs_a_few_lines(
    xvfb: XServer, many_descriptors: None, caplog: pytest.LogCaptureFixture
) -> None:
    """Idle connections from 2,000 loopback addresses: at most a few warnings, not one each."""
    caplog.set_level(logging.WARNING, logger="x11passthrough")
    clients: list[socket.socket] = []
    passthrough = X11Passthrough(
        xvfb.display, xvfb.xauthority, bind=["127.0.0.1"], display_range=RANGE
    )
    try:
        args = passthrough.start()
        port = 6000 + int(args.display.rsplit(":", 1)[1])
        for i in range(2000):
            sock = socket.socket()
            clients.append(sock)
            sock.bind((f"127.0.{1 + i // 250}.{1 + i % 250}", 0))
            sock.connect(("127.0.0.1", port))
        wait_until(
            lambda: passthrough.stats.rejected + passthrough.stats.connections_open >= 2000,
            "the relay to take or refuse every connection",
            timeout=60,
        )
    finally:
        for sock in clients:
            sock.close()
        passthrough.close()
    lines = [r for r in caplog.records if r.levelno >= logging.WARNING]
    print(f"{len(lines)} warning lines for 2000 source addresses")
    assert 1 <= len(lines) <= 6, [r.getMessage() for r in lines[:10]]


def test_the_table_of_warned_sources_stays_bounded() -> None:
    """However many sources warn, the limiter remembers at most its burst."""
    from x11passthrough._relay.admission import WARN_BURST, WarnLimiter

    limiter = WarnLimiter()
    allowed = [limiter.allow(f"10.0.{i // 256}.{i % 256}") for i in range(10_000)]
    assert sum(1 for a in allowed if a is not None) == WARN_BURST
    assert limiter.remembered <= WARN_BURST


# -- item 8: a squatter on the abstract names ----------------------------------------------------


SQUATTED_START = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, sys.argv[3])
    from infra.users import AbstractHolder
    from x11passthrough import X11Passthrough
    with AbstractHolder(range(50, 300)) as holder:
        try:
            with X11Passthrough(sys.argv[1], sys.argv[2], transport="unix") as args:
                print(json.dumps({"held": len(holder.held), "display": args.display}))
        except Exception as exc:
            print(json.dumps({"held": len(holder.held), "error": repr(exc)}))
    """
)


def test_a_squatter_on_the_default_range_does_not_stop_a_start(
    xvfb: XServer, netns: object
) -> None:
    """The second user holds @/tmp/.X11-unix/X50..X299; a start with the defaults still works."""
    other_user()
    ns: NetNamespace = netns()  # type: ignore[operator]
    # A network namespace of its own: abstract names are per namespace, so the squatter does
    # not disturb anything else on this machine.
    done = ns.run(
        [sys.executable, "-c", SQUATTED_START, xvfb.display, str(xvfb.xauthority), str(TESTS)],
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(result)
    assert result["held"] == 250
    assert "error" not in result, result["error"]
    assert int(result["display"].rsplit(":", 1)[1]) >= 300


def test_when_every_number_is_squatted_the_error_names_the_holder(xvfb: XServer) -> None:
    """Every abstract name of the range is held by the second user: the error says by whom."""
    numbers = range(RANGE.stop - 10, RANGE.stop)
    with AbstractHolder(numbers) as holder:
        assert holder.held == list(numbers)
        started = time.monotonic()
        with pytest.raises(NoFreeDisplayError) as info:
            X11Passthrough(
                xvfb.display, xvfb.xauthority, transport="unix", display_range=numbers
            ).start()
        took = time.monotonic() - started
        # A user who cannot see the holder's descriptors learns that someone holds them.

        def as_nobody() -> str:
            try:
                DisplayLocator().reserve(range=numbers)
            except NoFreeDisplayError as exc:
                return str(exc)
            return "reserved"

        unseen = run_forked(as_nobody, uid=NOBODY)
    message = str(info.value)
    print(f"{message} ({took:.2f} s)")
    user = other_user()
    assert f"10 by uid {holder.uid} ({user.pw_name}, pid {holder.pid})" in message
    assert "10 by another process (its owner is not visible to this user)" in unseen, unseen
