"""DisplayName parsing and the Endpoint value type (no X server needed)."""

from __future__ import annotations

import os
import socket

from pathlib import Path

import pytest

from hypothesis import given
from hypothesis import strategies as st

from x11passthrough.display import MAX_DISPLAY_NUMBER, DisplayLocator, DisplayName, Endpoint
from x11passthrough.exceptions import (
    BindError,
    ConfigurationError,
    DisplayError,
    DisplayNameError,
)


XQUARTZ = "/private/tmp/com.apple.launchd.AbC/org.xquartz:0"


def _d(
    number: int,
    *,
    protocol: str | None = None,
    host: str | None = None,
    screen: int = 0,
    path: str | None = None,
) -> DisplayName:
    return DisplayName(protocol=protocol, host=host, number=number, screen=screen, path=path)


ACCEPTED = [
    (":0", _d(0), ":0"),
    (":0.1", _d(0, screen=1), ":0.1"),
    (":0.0", _d(0), ":0"),
    (":007", _d(7), ":7"),
    ("unix:0", _d(0, host="unix"), "unix:0"),
    ("localhost:10.0", _d(10, host="localhost"), "localhost:10"),
    ("127.0.0.1:10", _d(10, host="127.0.0.1"), "127.0.0.1:10"),
    ("myhost.example:3", _d(3, host="myhost.example"), "myhost.example:3"),
    ("my_host-1:3.2", _d(3, host="my_host-1", screen=2), "my_host-1:3.2"),
    ("tcp/host:0", _d(0, protocol="tcp", host="host"), "tcp/host:0"),
    ("inet/host:1", _d(1, protocol="inet", host="host"), "inet/host:1"),
    ("inet6/[::1]:1", _d(1, protocol="inet6", host="::1"), "inet6/[::1]:1"),
    ("unix/:0", _d(0, protocol="unix"), "unix/:0"),
    ("local/:5", _d(5, protocol="local"), "local/:5"),
    ("host/unix:0", _d(0, protocol="unix", host="host"), "unix/host:0"),
    ("unix/host:0", _d(0, protocol="unix", host="host"), "unix/host:0"),
    ("[::1]:0", _d(0, host="::1"), "[::1]:0"),
    ("::1:0", _d(0, host="::1"), "[::1]:0"),
    ("::1:0.2", _d(0, host="::1", screen=2), "[::1]:0.2"),
    ("[fe80::1%eth0]:4", _d(4, host="fe80::1%eth0"), "[fe80::1%eth0]:4"),
    ("::ffff:10.0.0.1:9", _d(9, host="::ffff:10.0.0.1"), "[::ffff:10.0.0.1]:9"),
    (XQUARTZ, _d(0, protocol="unix", path=XQUARTZ), XQUARTZ),
    (XQUARTZ + ".1", _d(0, protocol="unix", path=XQUARTZ, screen=1), XQUARTZ + ".1"),
    ("unix:" + XQUARTZ, _d(0, protocol="unix", path=XQUARTZ), XQUARTZ),
    ("/tmp/launch-x/:12", _d(12, protocol="unix", path="/tmp/launch-x/:12"), "/tmp/launch-x/:12"),
    ("/run/x11/socket", _d(0, protocol="unix", path="/run/x11/socket"), "/run/x11/socket"),
    (f":{MAX_DISPLAY_NUMBER}", _d(MAX_DISPLAY_NUMBER), f":{MAX_DISPLAY_NUMBER}"),
]


@pytest.mark.parametrize(("text", "expected", "canonical"), ACCEPTED)
def test_parse_accepts(text: str, expected: DisplayName, canonical: str) -> None:
    """Each accepted form gives the expected fields and canonical text, which parses back."""
    parsed = DisplayName.parse(text)
    assert parsed == expected
    assert str(parsed) == canonical
    assert DisplayName.parse(canonical) == parsed


REJECTED = [
    ("", "empty"),
    ("0", "no ':'"),
    (":", "missing"),
    (":x", "not N or N.S"),
    (":-1", "not N or N.S"),
    (":0.x", "not N or N.S"),
    (":0.", "not N or N.S"),
    (":0 ", "not N or N.S"),
    (" :0", "not a host name"),
    (":0\n", "control characters"),
    ("\x1b[31m:0", "control characters"),
    (":\x000", "control characters"),
    ("/tmp/x:0\t", "control characters"),
    (":1" + "0" * 1100, "longer than 1024"),
    (f":{MAX_DISPLAY_NUMBER + 1}", "between 0 and 59535"),
    (":0.70000", "screen number"),
    ("host", "no ':'"),
    ("myws::0", "DECnet"),
    ("tcp/:0", "needs a host"),
    ("tcp/unix:0", "needs a host"),
    ("foo/bar:0", "unknown protocol 'foo'"),
    ("TCP/host:0", "unknown protocol 'TCP'"),
    ("x/y/unix:0", "not a host name"),
    ("[host]:0", "not an IPv6 address"),
    ("[::1]", "needs its closing"),
    ("[::1", "needs its closing"),
    ("[::1]:", "missing"),
    ("1:2:3:0", "not a valid IPv6"),
    ("h@st:0", "not a host name"),
    ("unix:x", "not N or N.S"),
    ("/tmp/x:99999", "between 0 and 59535"),
]


@pytest.mark.parametrize(("text", "why"), REJECTED)
def test_parse_rejects(text: str, why: str) -> None:
    """Bad values raise DisplayNameError naming the value, the reason and the valid forms."""
    with pytest.raises(DisplayNameError) as info:
        DisplayName.parse(text)
    message = str(info.value)
    assert why in message
    shown = repr(text) if len(text) <= 80 else repr(text[:60])
    assert shown in message
    assert "':0'" in message
    assert "localhost:10.0" in message
    assert isinstance(info.value, DisplayError)


@pytest.mark.parametrize("value", [None, b":0", 0, [":0"]])
def test_parse_rejects_non_strings(value: object) -> None:
    """A value that is not a str gives a DisplayNameError, not a TypeError from inside."""
    with pytest.raises(DisplayNameError, match="expected a str"):
        DisplayName.parse(value)  # type: ignore[arg-type]


def test_parse_long_value_is_shown_shortened() -> None:
    """An absurdly long value is cut short in the message, with its length."""
    with pytest.raises(DisplayNameError) as info:
        DisplayName.parse("h" * 5000 + ":0")
    assert "(5002 characters)" in str(info.value)
    assert len(str(info.value)) < 600


@pytest.mark.parametrize(
    ("text", "local"),
    [
        (":0", True),
        ("unix:0", True),
        ("unix/:0", True),
        ("local/:0", True),
        ("host/unix:0", True),
        (XQUARTZ, True),
        ("localhost:10", False),
        ("127.0.0.1:10", False),
        ("[::1]:0", False),
        ("tcp/localhost:0", False),
        ("remote.example:0", False),
    ],
)
def test_is_local(text: str, local: bool) -> None:
    """Local means a socket on this machine; localhost:N is a TCP display."""
    assert DisplayName.parse(text).is_local is local


def test_properties() -> None:
    """tcp_port and is_path describe the display."""
    assert DisplayName.parse("localhost:10.0").tcp_port == 6010
    assert DisplayName.parse(XQUARTZ).is_path
    assert not DisplayName.parse(":0").is_path


def test_display_name_is_frozen_and_hashable() -> None:
    """DisplayName is a value: immutable, equal by fields, usable as a dict key."""
    name = DisplayName.parse(":3.1")
    with pytest.raises(AttributeError):
        name.number = 4  # type: ignore[misc]
    assert {name: 1}[DisplayName.parse(":3.1")] == 1


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ({"number": -1}, "between 0 and"),
        ({"number": True}, "must be an int"),
        ({"number": 0, "screen": -2}, "screen number"),
        ({"number": 0, "protocol": "decnet"}, "protocol 'decnet'"),
        ({"number": 0, "protocol": "tcp"}, "needs a host"),
        ({"number": 0, "host": "a b"}, "not a host name"),
        ({"number": 0, "host": ""}, "not a host name"),
        ({"number": 0, "path": "/x:0"}, "protocol 'unix' and no host"),
        ({"number": 0, "protocol": "unix", "path": "rel:0"}, "not absolute"),
        ({"number": 3, "protocol": "unix", "path": "/x:0"}, "number after the path"),
        ({"number": 0, "protocol": "unix", "path": "/x", "screen": 1}, "ending in ':N'"),
        ({"number": 0, "protocol": "unix", "path": "/x:1.2"}, "must not end in ':N.S'"),
        ({"number": 0, "protocol": "unix", "path": "/x\n:0"}, "control characters"),
    ],
)
def test_constructor_rejects_impossible_fields(fields: dict[str, object], why: str) -> None:
    """Fields no DISPLAY value could produce are refused, so str() always parses back."""
    with pytest.raises(DisplayNameError, match=why):
        DisplayName(**fields)  # type: ignore[arg-type]


def test_from_environ() -> None:
    """from_environ reads DISPLAY and says clearly when it is missing or empty."""
    assert DisplayName.from_environ({"DISPLAY": ":4"}) == DisplayName.parse(":4")
    with pytest.raises(DisplayError, match="DISPLAY is not set"):
        DisplayName.from_environ({})
    with pytest.raises(DisplayError, match="DISPLAY is set but empty"):
        DisplayName.from_environ({"DISPLAY": ""})
    with pytest.raises(DisplayNameError, match="'garbage'"):
        DisplayName.from_environ({"DISPLAY": "garbage"})


# -- property tests ----------------------------------------------------------------------------

_numbers = st.integers(0, MAX_DISPLAY_NUMBER)
_screens = st.integers(0, 65535)
_HOST_START = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_"
_hostnames = st.tuples(st.sampled_from(_HOST_START), st.text(_HOST_START + ".-", max_size=40)).map(
    "".join
)
_ipv4 = st.ip_addresses(v=4).map(str)
_ipv6 = st.ip_addresses(v=6).map(str)
_scoped_ipv6 = st.tuples(_ipv6, st.text(_HOST_START + ".-", min_size=1, max_size=8)).map("%".join)
_remote_hosts = st.one_of(_hostnames, _ipv4, _ipv6, _scoped_ipv6).filter(lambda h: h != "unix")
_path_chars = st.characters(
    codec="utf-8", categories=("L", "N", "P", "S"), include_characters=" ", exclude_characters="/:"
)
_path_text = st.text(_path_chars, min_size=1, max_size=12)
# A colon inside a path is followed by a letter, so no part makes the path end in ':N' or
# ':N.S' (which would be a display number and screen, another value).
_colon_part = st.builds("{}:{}".format, _path_text, st.text("abcxyz", min_size=1, max_size=3))
_path_parts = st.lists(_path_text | _colon_part, min_size=1, max_size=5)


@st.composite
def display_names(draw: st.DrawFn) -> DisplayName:
    """Any DisplayName a DISPLAY value can produce."""
    kind = draw(st.sampled_from(["plain", "remote", "local", "path"]))
    screen = draw(_screens)
    if kind == "path":
        base = "/" + "/".join(draw(_path_parts))
        if draw(st.booleans()):
            number = draw(_numbers)
            return _d(number, protocol="unix", path=f"{base}:{number}", screen=screen)
        return _d(0, protocol="unix", path=base)
    number = draw(_numbers)
    if kind == "plain":
        return _d(number, host=draw(st.sampled_from([None, "unix"])), screen=screen)
    if kind == "remote":
        protocol = draw(st.sampled_from([None, "tcp", "inet", "inet6"]))
        return _d(number, protocol=protocol, host=draw(_remote_hosts), screen=screen)
    protocol = draw(st.sampled_from(["unix", "local"]))
    host = draw(st.one_of(st.none(), st.just("unix"), _remote_hosts))
    return _d(number, protocol=protocol, host=host, screen=screen)


@given(display_names())
def test_str_parses_back_to_an_equal_value(name: DisplayName) -> None:
    """parse(str(d)) == d for every DisplayName, and str() is a fixed point."""
    text = str(name)
    assert DisplayName.parse(text) == name
    assert str(DisplayName.parse(text)) == text


_tails = st.tuples(
    st.sampled_from(["", "0", "00"]),
    st.integers(0, 9999).map(str),
    st.sampled_from(["", ".0", ".1", ".12"]),
).map("".join)
_plain_hosts = st.one_of(_hostnames, _ipv4).filter(lambda h: h != "unix")

#: Valid DISPLAY strings in every spelling: prefixes, brackets, zeros, xauth's form, paths.
display_strings = st.one_of(
    _tails.map(":{}".format),
    st.tuples(st.sampled_from(["unix:", "unix/:", "local/:"]), _tails).map("".join),
    st.tuples(_plain_hosts, _tails).map(":".join),
    st.tuples(st.sampled_from(["tcp", "inet", "inet6", "unix"]), _hostnames, _tails).map(
        "{0[0]}/{0[1]}:{0[2]}".format
    ),
    st.tuples(_ipv6, _tails).map("[{0[0]}]:{0[1]}".format),
    st.tuples(_ipv6, _tails).map(":".join),
    st.tuples(_hostnames, _tails).map("{0[0]}/unix:{0[1]}".format),
    st.tuples(st.sampled_from(["", "unix:"]), _path_parts.map("/".join), _tails).map(
        "{0[0]}/{0[1]}:{0[2]}".format
    ),
)


@given(display_strings)
def test_valid_strings_round_trip(text: str) -> None:
    """Every valid spelling parses, and its canonical text parses back to the same value."""
    name = DisplayName.parse(text)
    assert DisplayName.parse(str(name)) == name
    assert str(DisplayName.parse(str(name))) == str(name)


@given(st.text(max_size=40) | st.text("abtcpunix/[]019:.%-", max_size=16))
def test_any_text_parses_or_fails_cleanly(text: str) -> None:
    """Arbitrary text either parses (and round-trips) or raises DisplayNameError."""
    try:
        name = DisplayName.parse(text)
    except DisplayNameError as e:
        message = str(e)
    else:
        assert DisplayName.parse(str(name)) == name
        return
    assert repr(text) in message


# -- Endpoint ----------------------------------------------------------------------------------


def test_endpoint_constructors_and_str() -> None:
    """The constructors fill the right fields; str() names the kind and address."""
    assert Endpoint.unix("/tmp/.X11-unix/X0") == Endpoint(kind="unix", path="/tmp/.X11-unix/X0")
    assert str(Endpoint.unix("/tmp/.X11-unix/X0")) == "unix:/tmp/.X11-unix/X0"
    assert str(Endpoint.abstract("/tmp/.X11-unix/X0")) == "abstract:@/tmp/.X11-unix/X0"
    assert str(Endpoint.tcp("localhost", 6010)) == "tcp:localhost:6010"
    assert str(Endpoint.tcp("::1", 6000)) == "tcp:[::1]:6000"
    assert Endpoint.tcp("h", 6001).address == ("h", 6001)
    assert Endpoint.abstract("/x").address == "\0/x"
    assert Endpoint.unix("/x").address == "/x"


@pytest.mark.parametrize(
    "fields",
    [
        {"kind": "tcp", "host": "h"},
        {"kind": "tcp", "host": "h", "port": 70000},
        {"kind": "tcp", "host": "", "port": 6000},
        {"kind": "tcp", "host": "h", "port": 6000, "path": "/x"},
        {"kind": "unix"},
        {"kind": "unix", "path": "/x", "port": 1},
        {"kind": "abstract", "path": "\0/x"},
        {"kind": "pipe", "path": "/x"},
    ],
)
def test_endpoint_rejects_inconsistent_fields(fields: dict[str, object]) -> None:
    """An endpoint whose fields do not fit its kind is refused at construction."""
    with pytest.raises(DisplayError, match="invalid endpoint"):
        Endpoint(**fields)  # type: ignore[arg-type]


def test_endpoint_connect_tcp_sets_nodelay_and_blocking() -> None:
    """A TCP connection comes back blocking, with TCP_NODELAY."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        with Endpoint.tcp("127.0.0.1", port).connect(1.0) as sock:
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            assert sock.gettimeout() is None
            peer, _ = server.accept()
            peer.close()


def test_endpoint_connect_unix_and_abstract(tmp_path: Path) -> None:
    """UNIX path and abstract endpoints reach their listeners."""
    path = str(tmp_path / "sock")
    abstract_name = f"/x11passthrough-test/{tmp_path.name}"
    with socket.socket(socket.AF_UNIX) as by_path, socket.socket(socket.AF_UNIX) as by_name:
        by_path.bind(path)
        by_path.listen()
        by_name.bind("\0" + abstract_name)
        by_name.listen()
        for endpoint, server in [
            (Endpoint.unix(path), by_path),
            (Endpoint.abstract(abstract_name), by_name),
        ]:
            with endpoint.connect(1.0) as sock:
                peer, _ = server.accept()
                with peer:
                    sock.sendall(b"ping")
                    assert peer.recv(4) == b"ping"


def test_endpoint_connect_failure_raises_oserror(tmp_path: Path) -> None:
    """A missing socket raises the OSError from connect (and leaks no socket)."""
    with pytest.raises(FileNotFoundError):
        Endpoint.unix(str(tmp_path / "missing")).connect(1.0)


def test_locator_options_are_validated(tmp_path: Path) -> None:
    """Relative directories and bad timeouts are refused with the option's name."""
    assert DisplayLocator(socket_dir=tmp_path).socket_dir == str(tmp_path)
    with pytest.raises(ConfigurationError, match="socket_dir='relative'"):
        DisplayLocator(socket_dir="relative")
    with pytest.raises(ConfigurationError, match="lock_dir"):
        DisplayLocator(lock_dir="tmp")
    for bad in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ConfigurationError, match="connect_timeout"):
            DisplayLocator(connect_timeout=bad)
    with pytest.raises(TypeError):
        DisplayLocator("/tmp")  # type: ignore[call-arg]


def test_under_sudo_the_invoking_users_display_is_trusted(monkeypatch: pytest.MonkeyPatch) -> None:
    """Root lending the display of the user who ran sudo trusts that user's endpoints."""
    from x11passthrough._display._owner import trusted_uids

    monkeypatch.setenv("SUDO_UID", "2000")
    expected = {0, 2000} if os.geteuid() == 0 else {0, os.geteuid()}
    assert trusted_uids() == expected
    monkeypatch.setenv("SUDO_UID", "not-a-number")
    assert trusted_uids() == {0, os.geteuid()}


def test_bind_errors_read_without_an_errno_prefix() -> None:
    error = BindError(99, "cannot listen on 10.88.0.1:6052: Cannot assign requested address")
    assert str(error) == "cannot listen on 10.88.0.1:6052: Cannot assign requested address"
    assert error.errno == 99
