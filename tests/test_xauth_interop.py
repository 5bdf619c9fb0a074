"""Interoperation with the real xauth(1): files it writes, files we write, merge and remove."""

from __future__ import annotations

import random
import shutil
import subprocess

from collections.abc import Iterable
from pathlib import Path

import pytest

from x11passthrough.xauth import (
    MIT_MAGIC_COOKIE_1,
    Family,
    XauthEntry,
    Xauthority,
    peer_family_address,
)

from infra.ci import require_executables


MIT = MIT_MAGIC_COOKIE_1
XDM = b"XDM-AUTHORIZATION-1"


@pytest.fixture(autouse=True)
def _needs_xauth() -> None:
    require_executables("xauth")


def xauth(path: Path, *args: str, stdin: str | None = None, ignore_locks: bool = False) -> str:
    """Run ``xauth -f PATH ARGS`` and return its standard output."""
    command = ["xauth", *(["-i"] if ignore_locks else []), "-f", str(path), *args]
    result = subprocess.run(
        command, input=stdin, capture_output=True, text=True, check=True, timeout=60
    )
    return result.stdout


def nlist_line(entry: XauthEntry) -> str:
    """Format an entry like xauth's ``nlist`` (and ``nmerge`` input): lowercase hex fields."""
    fields = [f"{entry.family:04x}"]
    for value in (
        entry.address,
        entry.number,
        entry.name,
        entry.data,
    ):
        fields += [f"{len(value):04x}", value.hex()]
    return " ".join(fields)


def parse_nlist(text: str) -> list[XauthEntry]:
    """Parse ``xauth nlist`` output: family, then (length, hex) for the four fields."""
    entries = []
    for line in text.splitlines():
        family, *rest = line.split(" ")
        assert len(rest) == 8, line
        values = []
        for length, hex_value in zip(rest[0::2], rest[1::2], strict=True):
            value = bytes.fromhex(hex_value)
            assert len(value) == int(length, 16), line
            values.append(value)
        address, number, name, data = values
        entries.append(XauthEntry(int(family, 16), address, number, name, data))
    return entries


def nmerge(path: Path, entries: Iterable[XauthEntry]) -> None:
    """Merge entries into a file with ``xauth nmerge -``."""
    xauth(path, "nmerge", "-", stdin="".join(nlist_line(e) + "\n" for e in entries))


def xauth_order(entries: Iterable[XauthEntry]) -> list[XauthEntry]:
    """
    The order xauth 1.1 leaves after add/merge: it sorts the list (stably) so entries with an
    empty number and then FamilyWild entries come last, and writes MIT-MAGIC-COOKIE-1 first.
    """
    return sorted(entries, key=lambda e: (e.name != MIT, e.family == Family.WILD, e.number == b""))


def mit_first(entries: Iterable[XauthEntry]) -> list[XauthEntry]:
    """The order xauth writes a file in when it does not merge (e.g. after remove)."""
    return sorted(entries, key=lambda e: e.name != MIT)


def random_entries(rng: random.Random, count: int) -> list[XauthEntry]:
    families = [*Family, 0x1234, 300]
    entries = []
    for _ in range(count):
        family = rng.choice(families)
        size = {Family.INTERNET: 4, Family.INTERNET6: 16}.get(family, rng.randrange(0, 20))
        entries.append(
            XauthEntry(
                family,
                rng.randbytes(size),
                rng.choice(["", "0", "1", "12", str(rng.randrange(10_000))]),
                rng.choice([MIT, MIT, XDM, "FOO-1", "SUN-DES-1", ""]),
                rng.randbytes(rng.choice([0, 1, 8, 16, 16, 40])),
            )
        )
    return entries


HOSTNAME = peer_family_address((1, ""))[1]  # AF_UNIX: FamilyLocal with gethostname()


def test_nlist_formatting_matches_xauth(tmp_path: Path) -> None:
    path = tmp_path / "auth"
    entries = random_entries(random.Random(1), 30)
    Xauthority(entries).save(path)
    assert xauth(path, "nlist") == "".join(nlist_line(e) + "\n" for e in entries)


def test_files_written_by_xauth_load_like_nlist(tmp_path: Path) -> None:
    path = tmp_path / "auth"
    cookie = "000102030405060708090a0b0c0d0e0f"
    xauth(path, "add", ":5", ".", cookie)
    xauth(path, "add", ":6", "FOO-1", "abcdef")
    xauth(path, "add", "10.1.2.3:4", XDM.decode(), "00112233445566778899aabbccddeeff")
    xauth(path, "add", "[2001:db8::7]:2", MIT.decode(), "ff")
    xauth(path, "add", "unix:9.3", ".", cookie)
    nmerge(
        path,
        [
            XauthEntry(Family.WILD, b"", "3", "FOO-1", b"\xab\xcd"),
            XauthEntry(Family.WILD, HOSTNAME, "", MIT, bytes(16)),
            XauthEntry(Family.LOCAL, b"otherhost", "", MIT, b"\x01" * 16),
            XauthEntry(Family.SERVER_INTERPRETED, b"localuser\0me", "1", MIT, b"\x02"),
            XauthEntry(0x1234, b"\x00\xff", "77", "X-UNKNOWN", b""),
            XauthEntry(Family.KRB5_PRINCIPAL, b"me@EXAMPLE.ORG", "0", "MIT-KERBEROS-5", b"k"),
        ],
    )
    listed = parse_nlist(xauth(path, "nlist"))
    loaded = Xauthority.load(path)
    assert list(loaded) == listed
    assert len(loaded) == 11
    assert loaded.dumps() == path.read_bytes()
    local5 = loaded.find(Family.LOCAL, HOSTNAME, "5")
    assert local5 is not None
    assert local5.data == bytes.fromhex(cookie)
    assert loaded.find(Family.LOCAL, HOSTNAME, 9) is not None
    inet = loaded.find(Family.INTERNET, bytes([10, 1, 2, 3]), "4", names=(XDM,))
    assert inet is not None
    assert inet.name == XDM
    six = loaded.find(Family.INTERNET6, bytes.fromhex("20010db8" + "00" * 11 + "07"), "2")
    assert six is not None
    assert six.data == b"\xff"
    assert {type(e.family) for e in loaded} == {Family, int}


def test_files_written_by_us_list_identically(tmp_path: Path) -> None:
    rng = random.Random(7)
    for round_number in range(5):
        path = tmp_path / f"auth{round_number}"
        auth = Xauthority(random_entries(rng, 40))
        auth.save(path)
        assert parse_nlist(xauth(path, "nlist")) == list(auth)


def test_bytes_identical_to_xauth_nmerge(tmp_path: Path) -> None:
    rng = random.Random(11)
    for round_number in range(5):
        entries = random_entries(rng, 30)
        theirs = tmp_path / f"theirs{round_number}"
        ours = tmp_path / f"ours{round_number}"
        nmerge(theirs, entries)
        Xauthority(xauth_order(entries)).save(ours)
        assert ours.read_bytes() == theirs.read_bytes()
        assert Xauthority.load(theirs).dumps() == theirs.read_bytes()


def test_merge_matches_xauth_nmerge(tmp_path: Path) -> None:
    rng = random.Random(3)
    pool = [
        (Family.LOCAL, HOSTNAME, "0"),
        (Family.LOCAL, HOSTNAME, "1"),
        (Family.LOCAL, HOSTNAME, ""),
        (Family.LOCAL, b"other", "0"),
        (Family.WILD, b"", "0"),
        (Family.WILD, HOSTNAME, "0"),
        (Family.WILD, b"", ""),
        (Family.INTERNET, bytes([10, 0, 0, 1]), "0"),
        (Family.INTERNET6, bytes(15) + b"\x01", "1"),
    ]

    def pick(count: int) -> list[XauthEntry]:
        return [
            XauthEntry(*rng.choice(pool), rng.choice([MIT, MIT, XDM, "FOO-1"]), rng.randbytes(16))
            for _ in range(count)
        ]

    for round_number in range(12):
        base = pick(rng.randrange(1, 8))
        new = pick(rng.randrange(1, 6))
        path = tmp_path / f"auth{round_number}"
        Xauthority(base).save(path)
        nmerge(path, new)
        expected = xauth_order(Xauthority(base).merge(new))
        assert path.read_bytes() == Xauthority(expected).dumps(), round_number


def test_add_replaces_like_merge(tmp_path: Path) -> None:
    path = tmp_path / "auth"
    first = XauthEntry(Family.LOCAL, HOSTNAME, "4", MIT, b"\x01" * 16)
    other = XauthEntry(Family.LOCAL, HOSTNAME, "5", MIT, b"\x02" * 16)
    Xauthority([first, other]).save(path)
    xauth(path, "add", ":4", ".", "03" * 16)
    replacement = XauthEntry(Family.LOCAL, HOSTNAME, "4", MIT, b"\x03" * 16)
    assert list(Xauthority.load(path)) == [replacement, other]
    assert Xauthority([first, other]).merge([replacement]) == Xauthority.load(path)


def test_remove_matches_xauth_for_specific_entries(tmp_path: Path) -> None:
    rng = random.Random(5)
    entries = [
        XauthEntry(family, address, number, name, rng.randbytes(16))
        for family, address in [
            (Family.LOCAL, HOSTNAME),
            (Family.INTERNET, bytes([10, 1, 2, 3])),
            (Family.LOCAL, b"otherhost"),
        ]
        for number in ("1", "2", "3")
        for name in (MIT, XDM)
    ]
    rng.shuffle(entries)
    auth = Xauthority(entries)
    cases = [
        (":2", {"family": Family.LOCAL, "address": HOSTNAME, "number": "2"}),
        ("10.1.2.3:3", {"family": Family.INTERNET, "address": bytes([10, 1, 2, 3]), "number": 3}),
        ("otherhost/unix:1", {"family": Family.LOCAL, "address": b"otherhost", "number": "1"}),
    ]
    for display, fields in cases:
        path = tmp_path / "auth"
        auth.save(path)
        xauth(path, "remove", display)
        ours = auth.remove(**fields)  # type: ignore[arg-type]
        assert len(ours) == len(auth) - 2
        assert path.read_bytes() == Xauthority(mit_first(ours)).dumps(), display


def test_xauth_reads_files_we_merged_and_saved(tmp_path: Path) -> None:
    """A full cycle: xauth writes, we merge and save, xauth merges again, we read."""
    path = tmp_path / "auth"
    xauth(path, "add", ":1", ".", "11" * 16)
    ours = XauthEntry(Family.WILD, b"", "2", MIT, b"\x22" * 16)
    Xauthority.update(path, lambda auth: auth.merge([ours]))
    xauth(path, "add", ":3", ".", "33" * 16)
    copy = tmp_path / "copy"
    shutil.copyfile(path, copy)
    listed = parse_nlist(xauth(copy, "nlist"))
    assert list(Xauthority.load(path)) == listed
    assert [(e.family, e.number) for e in listed] == [
        (Family.LOCAL, b"1"),
        (Family.LOCAL, b"3"),
        (Family.WILD, b"2"),
    ]
