"""
``doctor`` runs start()'s own steps: the same failures at the same step, the relay's own
endpoints, and the probe program it ships, run as an image's python3 would run it.
"""

from __future__ import annotations

import io
import subprocess
import sys

from collections.abc import Callable
from pathlib import Path

import pytest

from x11passthrough import X11Passthrough
from x11passthrough._doctor import _wrap, diagnose, probe_source
from x11passthrough._passthrough import relay_endpoints
from x11passthrough._probe import cookie_for, parse_display
from x11passthrough.exceptions import X11PassthroughError
from x11passthrough.xauth import Family, XauthEntry, Xauthority

from infra.users import free_display
from infra.xvfb import XServer


RANGE = range(700, 760)


def doctor(make: Callable[[], X11Passthrough]) -> tuple[list[list[str]], str]:
    """Run the diagnosis; return its lines as (status, step, text) word lists, and its text."""
    out = io.StringIO()
    diagnose(make, out=out)
    text = out.getvalue()
    return [line.split(maxsplit=2) for line in text.splitlines() if line[:1] != " "], text


@pytest.mark.parametrize("problem", ["dead display", "wrong cookie", "allow on unix"])
def test_doctor_fails_where_start_fails_with_start_s_message(
    xvfb: XServer, tmp_path: Path, problem: str
) -> None:
    """The same options make start() raise and doctor fail, at that step, with that message."""
    options: dict[str, object] = {"display_range": RANGE}
    if problem == "dead display":
        options["display"] = f":{free_display()}"
    else:
        options["display"] = xvfb.display
    if problem == "wrong cookie":
        wrong = tmp_path / "wrong.xauth"
        entry = XauthEntry(Family.WILD, b"", xvfb.number, b"MIT-MAGIC-COOKIE-1", b"\xcd" * 16)
        Xauthority([entry]).save(wrong)
        options["xauthority"] = wrong
    else:
        options["xauthority"] = xvfb.xauthority
    if problem == "allow on unix":
        # transport="auto" chooses UNIX for the engine on this host: known only at start().
        options["allow"] = ["10.0.0.0/8"]
        options["engine"] = "docker"

    def make() -> X11Passthrough:
        return X11Passthrough(**options)  # type: ignore[arg-type]

    with pytest.raises(X11PassthroughError) as raised:
        make().start()
    lines, text = doctor(make)
    failed = [line[:2] for line in lines if line[0] == "FAIL"]
    step = {"dead display": "display", "wrong cookie": "cookie", "allow on unix": "transport"}
    assert failed == [["FAIL", step[problem]]]
    assert _wrap(f"FAIL  {step[problem]:<10} ", str(raised.value)) in text


def test_doctor_reaches_the_relay_at_the_endpoints_start_opened(xvfb: XServer) -> None:
    """The relay step connects where the relay listens (structured endpoints, not files)."""
    started: list[X11Passthrough] = []

    def make() -> X11Passthrough:
        passthrough = X11Passthrough(
            xvfb.display, xvfb.xauthority, bind=["127.0.0.1"], display_range=RANGE
        )
        started.append(passthrough)
        return passthrough

    lines, text = doctor(make)
    assert [line[:2] for line in lines if line[0] == "FAIL"] == []
    words = " ".join(text.split())  # as the lines were wrapped
    number = int(words.split("DISPLAY=tcp/", 1)[1].split()[0].split(":")[-1].rstrip(";"))
    assert (
        f"ok relay a container's connection setup at 127.0.0.1:{6000 + number} succeeded" in words
    )
    assert relay_endpoints(started[0]) == ()  # closed again


def test_relay_endpoints_are_where_the_relay_listens(xvfb: XServer) -> None:
    """Each endpoint start() reports accepts a connection while it runs, and none after."""
    passthrough = X11Passthrough(xvfb.display, xvfb.xauthority, display_range=RANGE)
    with passthrough:
        endpoints = relay_endpoints(passthrough)
        assert sorted(e.kind for e in endpoints) == ["abstract", "unix"]
        for endpoint in endpoints:
            endpoint.connect(timeout=5).close()
    assert relay_endpoints(passthrough) == ()
    for endpoint in endpoints:
        with pytest.raises((ConnectionRefusedError, FileNotFoundError)):
            endpoint.connect(timeout=5).close()


# -- the probe ------------------------------------------------------------------------------


def test_probe_reads_displays_and_authority_files_as_xlib_does(tmp_path: Path) -> None:
    assert parse_display(":5") == ("", 5)
    assert parse_display("unix:7.0") == ("", 7)
    assert parse_display("tcp/host.docker.internal:51") == ("host.docker.internal", 51)
    entries = [
        XauthEntry(Family.WILD, b"", 4, b"MIT-MAGIC-COOKIE-1", b"a" * 16),
        XauthEntry(Family.LOCAL, b"box", 51, b"XDM-AUTHORIZATION-1", b"x" * 16),
        XauthEntry(Family.INTERNET, b"\x7f\0\0\1", 51, b"MIT-MAGIC-COOKIE-1", b"b" * 16),
    ]
    Xauthority(entries).save(tmp_path / "file")
    data = (tmp_path / "file").read_bytes()
    assert cookie_for(data, 51) == (b"MIT-MAGIC-COOKIE-1", b"b" * 16)
    assert cookie_for(data, 9) == (b"", b"")


def test_the_shipped_probe_runs_as_a_program_against_the_relay(
    xvfb: XServer, tmp_path: Path
) -> None:
    """The probe file, run by a bare python3 as in an image: it answers, or names the refusal."""
    probe = tmp_path / "probe.py"
    probe.write_text(probe_source())
    with X11Passthrough(
        xvfb.display, xvfb.xauthority, bind=["127.0.0.1"], display_range=RANGE
    ) as args:
        number = int(args.display.rsplit(":", 1)[1])
        env = {"DISPLAY": f"tcp/127.0.0.1:{number}", "XAUTHORITY": str(args.xauthority)}
        done = subprocess.run(
            [sys.executable, "-I", str(probe)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout == (
            "probe: The X.Org Foundation, screen 1024x768, MIT-SHM hidden, "
            f"display tcp/127.0.0.1:{number}\n"
        )
        refused = subprocess.run(
            [sys.executable, "-I", str(probe)],
            env={"DISPLAY": env["DISPLAY"]},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert refused.returncode == 1
        assert refused.stderr.startswith("x11passthrough probe: refused: ")
