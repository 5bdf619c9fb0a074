"""Choosing, merging and removing Xauthority entries: libXau, libxcb and xauth rules."""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess

from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from x11passthrough.exceptions import XauthorityError
from x11passthrough.xauth import (
    MIT_MAGIC_COOKIE_1,
    Family,
    XauthEntry,
    Xauthority,
    peer_family_address,
)

from infra.ci import require, require_executables
from infra.xvfb import XServer


MIT = MIT_MAGIC_COOKIE_1
XDM = b"XDM-AUTHORIZATION-1"
HOST = b"host"
OTHER = b"other"
HOSTNAME = os.fsencode(socket.gethostname())


def entry(
    family: int, address: bytes, number: str, name: str | bytes = MIT, tag: int = 0
) -> XauthEntry:
    """An entry whose data identifies it (`tag`)."""
    return XauthEntry(family, address, number, name, bytes([tag]) * 16)


L, W, I4 = Family.LOCAL, Family.WILD, Family.INTERNET

# Each case: entries, query (family, address, number, names), index of the expected entry.
# Derived from XauGetBestAuthByAddr: (1) WILD on either side or equal family and address;
# (2) empty number on either side or equal numbers; (3) name in names (any name if names is
# empty); lowest index in names wins, then the first in the file; stop at names[0].
FIND_CASES: list[
    tuple[str, list[XauthEntry], tuple[int, bytes, str | int, tuple[str | bytes, ...]], int | None]
] = [
    ("exact match", [entry(L, HOST, "0")], (L, HOST, "0", (MIT,)), 0),
    ("other address", [entry(L, OTHER, "0")], (L, HOST, "0", (MIT,)), None),
    ("other family, same address", [entry(I4, HOST, "0")], (L, HOST, "0", (MIT,)), None),
    ("empty entry address", [entry(L, b"", "0")], (L, HOST, "0", (MIT,)), None),
    ("address is a prefix", [entry(L, b"hos", "0")], (L, HOST, "0", (MIT,)), None),
    ("entry family wild", [entry(W, OTHER, "0")], (L, HOST, "0", (MIT,)), 0),
    ("query family wild", [entry(L, OTHER, "0")], (W, b"x", "0", (MIT,)), 0),
    ("query wild, entry of unknown family", [entry(77, b"?", "0")], (W, b"", "0", (MIT,)), 0),
    ("entry number empty", [entry(L, HOST, "")], (L, HOST, "5", (MIT,)), 0),
    ("query number empty", [entry(L, HOST, "7")], (L, HOST, "", (MIT,)), 0),
    ("number differs", [entry(L, HOST, "1")], (L, HOST, "0", (MIT,)), None),
    ("0 is not 00", [entry(L, HOST, "00")], (L, HOST, "0", (MIT,)), None),
    ("int number", [entry(L, HOST, "10")], (L, HOST, 10, (MIT,)), 0),
    ("wild family still needs the number", [entry(W, HOST, "1")], (L, HOST, "0", (MIT,)), None),
    ("name not wanted", [entry(L, HOST, "0", "FOO-1")], (L, HOST, "0", (MIT,)), None),
    ("names=() takes any name", [entry(L, HOST, "0", "FOO-1")], (L, HOST, "0", ()), 0),
    (
        "names=() takes the first match",
        [entry(L, OTHER, "0"), entry(L, HOST, "0", "FOO-1"), entry(L, HOST, "0")],
        (L, HOST, "0", ()),
        1,
    ),
    (
        "first in file wins: wild before specific",
        [entry(W, OTHER, "0"), entry(L, HOST, "0")],
        (L, HOST, "0", (MIT,)),
        0,
    ),
    (
        "first in file wins: empty number before specific",
        [entry(L, HOST, ""), entry(L, HOST, "0")],
        (L, HOST, "0", (MIT,)),
        0,
    ),
    (
        "first in file wins: two identical keys",
        [entry(L, HOST, "0", tag=1), entry(L, HOST, "0", tag=2)],
        (L, HOST, "0", (MIT,)),
        0,
    ),
    (
        "preferred name later in the file wins",
        [entry(L, HOST, "0", MIT), entry(L, HOST, "0", XDM)],
        (L, HOST, "0", (XDM, MIT)),
        1,
    ),
    (
        "preferred name earlier in the file wins",
        [entry(L, HOST, "0", XDM), entry(L, HOST, "0", MIT)],
        (L, HOST, "0", (XDM, MIT)),
        0,
    ),
    (
        "first of the less preferred name when the preferred is absent",
        [entry(L, HOST, "0", MIT, 1), entry(W, b"", "", MIT, 2), entry(L, HOST, "0", "N")],
        (L, HOST, "0", (XDM, MIT)),
        0,
    ),
    (
        "stop at names[0]: a later names[1] match does not replace it",
        [entry(W, b"", "0", MIT), entry(L, HOST, "0", XDM)],
        (L, HOST, "0", (MIT, XDM)),
        0,
    ),
    (
        "a later names[0] match replaces an earlier names[1] match",
        [entry(L, HOST, "", XDM), entry(L, HOST, "0", "N"), entry(W, OTHER, "0", MIT)],
        (L, HOST, "0", (MIT, XDM)),
        2,
    ),
    (
        "a name listed twice keeps its first rank",
        [entry(L, HOST, "0", MIT), entry(L, HOST, "0", XDM)],
        (L, HOST, "0", (MIT, XDM, MIT)),
        0,
    ),
    (
        "non-matching entries are skipped before the preferred one",
        [entry(I4, HOST, "0", XDM), entry(L, HOST, "1", XDM), entry(L, HOST, "0", MIT)],
        (L, HOST, "0", (XDM, MIT)),
        2,
    ),
    ("nothing at all", [], (L, HOST, "0", (MIT,)), None),
]


@pytest.mark.parametrize(
    ("entries", "query", "expected"),
    [case[1:] for case in FIND_CASES],
    ids=[case[0] for case in FIND_CASES],
)
def test_find_follows_libxau(
    entries: list[XauthEntry],
    query: tuple[int, bytes, str | int, tuple[str | bytes, ...]],
    expected: int | None,
) -> None:
    family, address, number, names = query
    found = Xauthority(entries).find(family, address, number, names=names)
    if expected is None:
        assert found is None
    else:
        assert found is entries[expected]


def test_find_default_names_is_mit_only() -> None:
    auth = Xauthority([entry(L, HOST, "0", XDM), entry(L, HOST, "0", MIT)])
    assert auth.find(L, HOST, "0") is auth[1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((L, "host", "0"), "address must be bytes, not str; encode it first"),
        ((L, HOST, 0.0), "display number must be an int, str or bytes, not float"),
        (("256", HOST, "0"), "family must be an int"),
        ((L, HOST, "0", MIT), "names must be a sequence of auth names"),
    ],
)
def test_find_rejects_wrong_types(args: tuple[object, ...], message: str) -> None:
    auth = Xauthority([entry(L, HOST, "0")])
    family, address, number, *names = args
    kwargs = {"names": names[0]} if names else {}
    with pytest.raises(XauthorityError, match=message):
        auth.find(family, address, number, **kwargs)  # type: ignore[arg-type]


# peer_family_address / for_connection with real sockets -----------------------------


@contextlib.contextmanager
def tcp_pair(family: socket.AddressFamily, listen: str, connect: str) -> Iterator[socket.socket]:
    """Yield a client socket connected to a listener on `listen`, from address `connect`."""
    with socket.socket(family, socket.SOCK_STREAM) as server:
        if family == socket.AF_INET6:
            server.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        try:
            server.bind((listen, 0))
        except OSError as exc:
            require(f"a bindable {listen} address", False, str(exc))
        server.listen()
        port = server.getsockname()[1]
        with socket.socket(family, socket.SOCK_STREAM) as client:
            client.connect((connect, port))
            accepted, _ = server.accept()
            with accepted:
                yield client


def test_unix_socket_is_local_with_hostname() -> None:
    left, right = socket.socketpair(socket.AF_UNIX)
    with left, right:
        assert peer_family_address(left) == (Family.LOCAL, HOSTNAME)
        assert peer_family_address(left, hostname="box") == (Family.LOCAL, b"box")
        assert peer_family_address(left, hostname=b"b\xffx") == (Family.LOCAL, b"b\xffx")


@pytest.mark.parametrize(
    ("family", "listen", "connect", "expected"),
    [
        (socket.AF_INET, "127.0.0.1", "127.0.0.1", (Family.LOCAL, HOSTNAME)),
        (socket.AF_INET, "127.0.0.2", "127.0.0.2", (Family.INTERNET, bytes([127, 0, 0, 2]))),
        (socket.AF_INET6, "::1", "::1", (Family.LOCAL, HOSTNAME)),
        (socket.AF_INET6, "::", "::ffff:127.0.0.1", (Family.LOCAL, HOSTNAME)),
        (socket.AF_INET6, "::", "::ffff:127.0.0.2", (Family.INTERNET, bytes([127, 0, 0, 2]))),
    ],
)
def test_tcp_peers_follow_libxcb(
    family: socket.AddressFamily, listen: str, connect: str, expected: tuple[Family, bytes]
) -> None:
    with tcp_pair(family, listen, connect) as client:
        assert peer_family_address(client) == expected


@pytest.mark.parametrize(
    ("peer", "expected"),
    [
        ((socket.AF_INET, ("192.0.2.7", 6000)), (Family.INTERNET, bytes([192, 0, 2, 7]))),
        ((socket.AF_INET, "192.0.2.7"), (Family.INTERNET, bytes([192, 0, 2, 7]))),
        ((socket.AF_INET, "127.0.0.1"), (Family.LOCAL, HOSTNAME)),
        ((socket.AF_INET, "127.1.0.1"), (Family.INTERNET, bytes([127, 1, 0, 1]))),
        (
            (socket.AF_INET6, ("2001:db8::5", 6000, 0, 0)),
            (Family.INTERNET6, bytes.fromhex("20010db8000000000000000000000005")),
        ),
        (
            (socket.AF_INET6, ("fe80::1%lo", 6000, 0, 1)),
            (Family.INTERNET6, bytes.fromhex("fe800000000000000000000000000001")),
        ),
        ((socket.AF_INET6, "::ffff:10.1.2.3"), (Family.INTERNET, bytes([10, 1, 2, 3]))),
        ((socket.AF_INET6, "::127.0.0.1"), (Family.INTERNET6, bytes(12) + bytes([127, 0, 0, 1]))),
        ((socket.AF_UNIX, "/tmp/.X11-unix/X0"), (Family.LOCAL, HOSTNAME)),
        ((socket.AF_UNIX, ""), (Family.LOCAL, HOSTNAME)),
    ],
)
def test_explicit_peers(peer: tuple[int, object], expected: tuple[Family, bytes]) -> None:
    assert peer_family_address(peer) == expected


def test_peer_errors() -> None:
    with socket.socket() as unconnected, pytest.raises(XauthorityError, match="getpeername"):
        peer_family_address(unconnected)
    with pytest.raises(XauthorityError, match="AF_UNIX, AF_INET and AF_INET6"):
        peer_family_address((socket.AF_NETLINK, (0, 0)))
    with pytest.raises(XauthorityError, match="a pair"):
        peer_family_address("127.0.0.1")  # type: ignore[arg-type]
    with pytest.raises(XauthorityError, match="not an IP address"):
        peer_family_address((socket.AF_INET, ("my.host", 6000)))


def test_for_connection_picks_by_peer() -> None:
    local = entry(L, HOSTNAME, "3", tag=1)
    inet = entry(I4, bytes([127, 0, 0, 2]), "3", tag=2)
    auth = Xauthority([inet, local, entry(W, b"", "", "OTHER", tag=3)])
    left, right = socket.socketpair(socket.AF_UNIX)
    with left, right:
        assert auth.for_connection(left, 3) is local
        assert auth.for_connection(left, "4") is None
        assert auth.for_connection(left, 3, hostname="elsewhere") is None
        assert auth.for_connection(left, 4, names=()) is auth[2]
    with tcp_pair(socket.AF_INET, "127.0.0.2", "127.0.0.2") as client:
        assert auth.for_connection(client, 3) is inet
    assert auth.for_connection((socket.AF_INET, "127.0.0.1"), 3) is local


# What libxcb really sends ------------------------------------------------------------


def _connects(server: XServer, display: str, auth_file: Path) -> bool:
    result = subprocess.run(
        ["xdpyinfo", "-queryExtensions"],
        env=server.env(DISPLAY=display, XAUTHORITY=str(auth_file)),
        capture_output=True,
        check=False,
        timeout=30,
    )
    return result.returncode == 0


@contextlib.contextmanager
def _connection(server: XServer, transport: str) -> Iterator[socket.socket]:
    if transport == "unix":
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(server.unix_path)
            yield sock
        return
    with socket.create_connection((transport, server.tcp_port)) as sock:
        yield sock


@pytest.mark.parametrize("transport", ["unix", "127.0.0.1", "127.0.0.2"])
def test_for_connection_agrees_with_libxcb(
    xvfb_tcp: XServer, tmp_path: Path, transport: str
) -> None:
    """
    For each candidate entry, give only it the right cookie: a real client (xdpyinfo, via
    libxcb and libXau) gets in exactly when our choice is that candidate.
    """
    require_executables("xdpyinfo")
    server = xvfb_tcp
    number = str(server.number)
    display = f":{number}" if transport == "unix" else f"{transport}:{number}"
    with _connection(server, transport) as sock:
        family, address = peer_family_address(sock)
        candidates = [
            ("empty number", XauthEntry(family, address, "", MIT, b"")),
            ("wild", XauthEntry(Family.WILD, b"elsewhere", number, MIT, b"")),
            ("exact", XauthEntry(family, address, number, MIT, b"")),
            ("other name", XauthEntry(family, address, number, "FOO-1", b"")),
            ("other address", XauthEntry(Family.INTERNET6, bytes(16), number, MIT, b"")),
            ("padded number", XauthEntry(family, address, "0" + number, MIT, b"")),
        ]
        orders = [[4, 3, 2, 0, 1, 5], [5, 1, 0, 3, 2, 4], [3, 0, 2, 1, 4, 5]]
        picks = set()
        for order in orders:
            for right in order:
                entries = [
                    attrs.evolve(
                        candidates[i][1],
                        data=server.cookie if i == right else secrets.token_bytes(16),
                    )
                    for i in order
                ]
                auth = Xauthority(entries)
                chosen = auth.for_connection(sock, server.number, names=(XDM, MIT))
                ours = chosen is not None and chosen.data == server.cookie
                path = tmp_path / f"auth-{transport}"
                auth.save(path)
                assert _connects(server, display, path) == ours, (
                    f"order {[candidates[i][0] for i in order]}: right cookie on "
                    f"{candidates[right][0]!r}, we chose {chosen!r}"
                )
                if ours:
                    picks.add(candidates[right][0])
    assert picks == {"exact", "wild", "empty number"}


# merge and remove --------------------------------------------------------------------


def test_merge_replaces_in_place_and_appends() -> None:
    a = entry(L, HOST, "0", MIT, 1)
    b = entry(L, HOST, "1", MIT, 2)
    c = entry(W, HOST, "0", MIT, 3)
    auth = Xauthority([a, b, c])
    new_a = entry(L, HOST, "0", MIT, 9)
    others = [
        entry(L, HOST, "0", XDM, 4),  # other name
        entry(L, HOST, "", MIT, 5),  # other (empty) number
        entry(I4, HOST, "0", MIT, 6),  # other family
        entry(W, OTHER, "0", MIT, 7),  # wild, other address
    ]
    merged = auth.merge([new_a, *others])
    assert list(merged) == [new_a, b, c, *others]
    assert list(auth) == [a, b, c]
    assert merged.merge([]) == merged


def test_merge_collapses_duplicates_among_new_entries() -> None:
    first = entry(L, HOST, "0", MIT, 1)
    second = entry(L, HOST, "0", MIT, 2)
    assert list(Xauthority().merge([first, second])) == [second]
    assert list(Xauthority([entry(W, b"", "", MIT)]).merge([first, second]))[1:] == [second]


def test_merge_rejects_non_entries() -> None:
    with pytest.raises(XauthorityError, match="can only merge XauthEntry objects, not tuple"):
        Xauthority().merge([(256, b"", "", "", b"")])  # type: ignore[list-item]


def test_remove_rejects_wrong_types() -> None:
    auth = Xauthority([entry(L, HOST, "0")])
    with pytest.raises(XauthorityError, match="address must be bytes, not str"):
        auth.remove(address="host")  # type: ignore[arg-type]
    with pytest.raises(XauthorityError, match="family must be an int"):
        auth.remove(family="LOCAL")  # type: ignore[arg-type]


def test_remove_exact_fields() -> None:
    entries = [
        entry(L, HOST, "5", MIT, 1),
        entry(L, HOST, "5", XDM, 2),
        entry(L, HOST, "6", MIT, 3),
        entry(W, HOST, "5", MIT, 4),
        entry(L, HOST, "", MIT, 5),
        entry(I4, b"\x01\x02\x03\x04", "5", MIT, 6),
    ]
    auth = Xauthority(entries)
    by_display = auth.remove(family=L, address=HOST, number="5")
    assert list(by_display) == [entries[i] for i in (2, 3, 4, 5)]
    assert auth.remove(family=L, address=HOST, number=5) == by_display
    assert list(auth.remove(name=XDM)) == [e for e in entries if e.name != XDM]
    assert list(auth.remove(number="")) == [e for e in entries if e.number]
    assert list(auth.remove(family=W)) == [e for e in entries if e.family != W]
    assert list(auth.remove(number="5", name=MIT)) == [entries[i] for i in (1, 2, 4)]
    assert len(auth.remove()) == 0
    assert list(auth) == entries
