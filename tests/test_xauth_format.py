"""Xauthority file format: entries, parsing, round trips, damaged data, paths and loading."""

from __future__ import annotations

import logging
import os
import random
import re
import struct
import tempfile

from pathlib import Path

import attrs
import pytest

from hypothesis import given, settings
from hypothesis import strategies as st

from x11passthrough.exceptions import XauthorityError
from x11passthrough.xauth import MIT_MAGIC_COOKIE_1, Family, XauthEntry, Xauthority, default_path

from infra.processes import run_forked


COOKIE = bytes.fromhex("c0ffee00deadbeef0123456789abcdef")


def record(family: int, address: bytes, number: bytes, name: bytes, data: bytes) -> bytes:
    """Encode one record the way libXau's XauWriteAuth does (independent of the code)."""
    out = struct.pack(">H", family)
    for field in (address, number, name, data):
        out += struct.pack(">H", len(field)) + field
    return out


SAMPLE_RECORDS = [
    record(256, b"myhost", b"0", b"MIT-MAGIC-COOKIE-1", COOKIE),
    record(0, bytes([10, 1, 2, 3]), b"12", b"XDM-AUTHORIZATION-1", bytes(range(16))),
    record(65535, b"", b"", b"MIT-MAGIC-COOKIE-1", b"\x01" * 16),
    record(6, bytes(15) + b"\x01", b"3", b"MIT-MAGIC-COOKIE-1", b""),
]
SAMPLE = b"".join(SAMPLE_RECORDS)


# Family ---------------------------------------------------------------------------------


def test_family_has_all_ten_libxau_values() -> None:
    assert {member.name: member.value for member in Family} == {
        "INTERNET": 0,
        "DECNET": 1,
        "CHAOS": 2,
        "SERVER_INTERPRETED": 5,
        "INTERNET6": 6,
        "LOCAL_HOST": 252,
        "KRB5_PRINCIPAL": 253,
        "NETNAME": 254,
        "LOCAL": 256,
        "WILD": 65535,
    }


def test_unknown_family_is_kept_as_int() -> None:
    data = record(0x1234, b"a", b"1", b"N", b"d")
    auth = Xauthority.loads(data)
    assert auth[0].family == 0x1234
    assert type(auth[0].family) is int
    assert auth.dumps() == data
    assert type(XauthEntry(77, b"", "", "", b"").family) is int
    assert XauthEntry(256, b"", "", "", b"").family is Family.LOCAL


# XauthEntry -----------------------------------------------------------------------------


def test_entry_known_bytes_from_real_xauth() -> None:
    """The x11rb test vector, made with `xauth -f F add :1 bar deadbeef` on host ZweiLED."""
    data = bytes.fromhex("0100 0007 5a7765694c4544 0001 31 0003 626172 0004 deadbeef")
    auth = Xauthority.loads(data)
    assert list(auth) == [
        XauthEntry(Family.LOCAL, b"ZweiLED", "1", "bar", bytes.fromhex("deadbeef"))
    ]
    assert auth.dumps() == data


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"family": -1}, "family"),
        ({"family": 65536}, "family"),
        ({"family": "256"}, "family"),
        ({"family": True}, "family"),
        ({"address": "myhost"}, "address"),
        ({"address": b"x" * 65536}, "address"),
        ({"number": -1}, "number"),
        ({"number": 1.5}, "number"),
        ({"number": "\u0660"}, "number"),
        ({"number": "1" * 65536}, "number"),
        ({"name": 7}, "name"),
        ({"name": "MIT-\u2603"}, "name"),
        ({"name": "N" * 65536}, "name"),
        ({"data": COOKIE.hex()}, "data"),
        ({"data": bytearray(COOKIE)}, "data"),
        ({"data": b"\0" * 65536}, "data"),
    ],
)
def test_entry_rejects_bad_fields_naming_the_field(kwargs: dict[str, object], field: str) -> None:
    fields: dict[str, object] = {
        "family": Family.LOCAL,
        "address": b"host",
        "number": "0",
        "name": MIT_MAGIC_COOKIE_1,
        "data": COOKIE,
    }
    fields.update(kwargs)
    with pytest.raises(XauthorityError, match=f"XauthEntry.{field} "):
        XauthEntry(**fields)  # type: ignore[arg-type]


def test_entry_limits_are_inclusive() -> None:
    entry = XauthEntry(65535, b"a" * 65535, "1" * 65535, "\xff" * 65535, b"d" * 65535)
    assert Xauthority.loads(Xauthority([entry]).dumps()) == Xauthority([entry])


def test_evolve_validates_too() -> None:
    entry = XauthEntry(Family.LOCAL, b"host", "0", MIT_MAGIC_COOKIE_1, COOKIE)
    assert attrs.evolve(entry, number="7").number == b"7"
    with pytest.raises(XauthorityError, match=r"XauthEntry\.address"):
        attrs.evolve(entry, address="host")  # type: ignore[arg-type]


def test_entry_is_frozen_and_hashable() -> None:
    entry = XauthEntry(Family.LOCAL, b"host", "0", MIT_MAGIC_COOKIE_1, COOKIE)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        entry.data = b""  # type: ignore[misc]
    assert len({entry, XauthEntry(256, b"host", "0", MIT_MAGIC_COOKIE_1, COOKIE)}) == 1


def _secret_forms(cookie: bytes) -> list[str]:
    return [cookie.hex(), cookie.hex().upper(), repr(cookie), str(cookie), str(list(cookie))]


def test_no_secret_in_reprs() -> None:
    entry = XauthEntry(Family.LOCAL, b"host", "0", MIT_MAGIC_COOKIE_1, COOKIE)
    auth = Xauthority([entry, XauthEntry(Family.WILD, b"", "", "N", COOKIE)])
    shown = [repr(entry), str(entry), repr(auth), str(auth), repr(auth[:1]), repr(list(auth))]
    for text in shown:
        for secret in _secret_forms(COOKIE):
            assert secret not in text
    assert "data=<16 bytes hidden>" in repr(entry)
    assert "host" in repr(entry)


def test_no_secret_in_logs_or_errors(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="x11passthrough")
    path = tmp_path / "auth"
    entry = XauthEntry(Family.LOCAL, b"host", "0", MIT_MAGIC_COOKIE_1, COOKIE)
    Xauthority([entry]).save(path)
    Xauthority.load(path)
    Xauthority.update(path, lambda auth: auth.merge([attrs.evolve(entry, number="1")]))
    damaged = Xauthority([entry]).dumps()[:-3]
    path.write_bytes(damaged)
    assert len(Xauthority.load(path)) == 0
    with pytest.raises(XauthorityError) as info:
        Xauthority.loads(damaged)
    texts = [record.getMessage() for record in caplog.records] + [str(info.value)]
    assert any("damaged" in text for text in texts)
    for text in texts:
        for secret in _secret_forms(COOKIE) + _secret_forms(COOKIE[:13]):
            assert secret not in text


# Parsing and round trips ----------------------------------------------------------------


def test_sample_round_trip_and_fields() -> None:
    auth = Xauthority.loads(SAMPLE)
    assert auth.dumps() == SAMPLE
    assert [(e.family, e.number, e.name, len(e.data)) for e in auth] == [
        (Family.LOCAL, b"0", b"MIT-MAGIC-COOKIE-1", 16),
        (Family.INTERNET, b"12", b"XDM-AUTHORIZATION-1", 16),
        (Family.WILD, b"", b"MIT-MAGIC-COOKIE-1", 16),
        (Family.INTERNET6, b"3", b"MIT-MAGIC-COOKIE-1", 0),
    ]
    assert auth[0].data == COOKIE
    assert auth[1].address == bytes([10, 1, 2, 3])


def test_empty_data_has_no_entries() -> None:
    assert len(Xauthority.loads(b"")) == 0
    assert Xauthority.loads(b"").dumps() == b""
    assert Xauthority().dumps() == b""


def test_loads_accepts_bytes_like_and_rejects_text() -> None:
    assert Xauthority.loads(bytearray(SAMPLE)) == Xauthority.loads(SAMPLE)
    assert Xauthority.loads(memoryview(SAMPLE)) == Xauthority.loads(SAMPLE)
    with pytest.raises(XauthorityError, match="must be bytes, not str"):
        Xauthority.loads(SAMPLE.hex())  # type: ignore[arg-type]


def test_non_ascii_and_invalid_utf8_round_trip_as_bytes() -> None:
    data = record(256, b"h\xc3\xa9", b"\xff\x00", b"\xc3\x28-NAME\x80", b"\xfe")
    auth = Xauthority.loads(data)
    assert auth[0].number == b"\xff\x00"
    assert auth[0].name == b"\xc3(-NAME\x80"
    assert auth.dumps() == data
    # A str name is stored as Latin-1: every character up to U+00FF is one byte.
    same = XauthEntry(256, b"h\xc3\xa9", "0", "\xc3(-NAME\x80", b"\xfe")
    assert Xauthority([same]).dumps() == record(
        256, b"h\xc3\xa9", b"0", b"\xc3(-NAME\x80", b"\xfe"
    )


def test_sequence_behaviour() -> None:
    auth = Xauthority.loads(SAMPLE)
    assert len(auth) == 4
    assert auth[-1] == auth.entries[3]
    assert isinstance(auth[1:3], Xauthority)
    assert auth[1:3].entries == auth.entries[1:3]
    assert auth[0] in auth
    assert auth.index(auth[2]) == 2
    assert list(reversed(auth)) == list(auth.entries[::-1])
    assert bool(Xauthority()) is False
    assert Xauthority(list(auth)) == auth
    with pytest.raises(XauthorityError, match="entry 1 is a str"):
        Xauthority([auth[0], "x"])  # type: ignore[list-item]


def _record_starts(records: list[bytes]) -> list[int]:
    starts = [0]
    for item in records:
        starts.append(starts[-1] + len(item))
    return starts


def _numbers_in(message: str) -> set[int]:
    return {int(n) for n in re.findall(r"[0-9]+", message)}


def test_every_truncation_names_the_record_and_only_safe_numbers() -> None:
    """A cut anywhere names the damaged record; the only numbers are its index and the size."""
    starts = _record_starts(SAMPLE_RECORDS)
    for cut in range(len(SAMPLE)):
        if cut in starts:
            assert len(Xauthority.loads(SAMPLE[:cut])) == starts.index(cut)
            continue
        index = max(i for i, start in enumerate(starts) if start < cut)
        with pytest.raises(XauthorityError) as info:
            Xauthority.loads(SAMPLE[:cut])
        message = str(info.value)
        assert f"record {index} is cut short or garbled" in message
        assert _numbers_in(message) <= {index, cut}


def _damage_of(data: bytes) -> str | None:
    try:
        Xauthority.loads(data)
    except XauthorityError as exc:
        return str(exc)
    return None


def test_damage_never_quotes_a_number_read_from_the_data() -> None:
    """
    A damaged length makes the parser read cookie bytes as lengths; no such number is shown.

    Every single-byte change to a length field of the sample is tried: the message may hold
    the damaged record's index and the data's size, nothing read from the data.
    """
    starts = _record_starts(SAMPLE_RECORDS)
    tried = 0
    for start, size in zip(starts, map(len, SAMPLE_RECORDS), strict=False):
        for offset in range(start, start + size):
            for value in (0x00, 0x01, 0x7F, 0xFF):
                data = bytearray(SAMPLE)
                data[offset] = value
                message = _damage_of(bytes(data))
                if message is None:
                    continue
                found = re.search(r"record ([0-9]+) is", message)
                assert found is not None, message
                assert _numbers_in(message) <= {int(found[1]), len(data)}
                tried += 1
    assert tried > 50


entries_strategy = st.lists(
    st.builds(
        XauthEntry,
        family=st.one_of(st.sampled_from(list(Family)), st.integers(0, 65535)),
        address=st.binary(max_size=40),
        number=st.text(st.characters(max_codepoint=127), max_size=6),
        name=st.text(st.characters(max_codepoint=255), max_size=24),
        data=st.binary(max_size=40),
    ),
    max_size=12,
)


@given(entries_strategy)
def test_property_entries_round_trip(entries: list[XauthEntry]) -> None:
    auth = Xauthority(entries)
    data = auth.dumps()
    again = Xauthority.loads(data)
    assert again == auth
    assert again.dumps() == data


records_strategy = st.lists(
    st.tuples(
        st.integers(0, 65535),
        st.binary(max_size=30),
        st.binary(max_size=6),
        st.binary(max_size=30),
        st.binary(max_size=30),
    ),
    max_size=10,
)


@given(records_strategy)
def test_property_any_wellformed_bytes_round_trip_exactly(
    records: list[tuple[int, bytes, bytes, bytes, bytes]],
) -> None:
    data = b"".join(record(*fields) for fields in records)
    auth = Xauthority.loads(data)
    assert len(auth) == len(records)
    assert auth.dumps() == data
    for entry, (family, address, number, name, secret) in zip(auth, records, strict=True):
        assert (entry.family, entry.address, entry.data) == (family, address, secret)
        assert entry.number == number
        assert entry.name == name


def _check_parse(data: bytes) -> None:
    """Only XauthorityError may escape; whatever parses must round-trip exactly."""
    try:
        auth = Xauthority.loads(data)
    except XauthorityError as exc:
        message = str(exc)
    else:
        assert auth.dumps() == data
        return
    assert "record" in message
    assert "damaged" in message


@settings(max_examples=500)
@given(st.binary(max_size=300))
def test_fuzz_hypothesis_random_bytes(data: bytes) -> None:
    _check_parse(data)


@given(records_strategy, st.data())
def test_fuzz_hypothesis_mutated_files(
    records: list[tuple[int, bytes, bytes, bytes, bytes]], draw: st.DataObject
) -> None:
    data = bytearray(b"".join(record(*fields) for fields in records))
    for _ in range(draw.draw(st.integers(1, 4))):
        action = draw.draw(st.sampled_from(["flip", "cut", "insert", "delete"]))
        position = draw.draw(st.integers(0, len(data)))
        if action == "flip" and position < len(data):
            data[position] ^= draw.draw(st.integers(1, 255))
        elif action == "cut":
            del data[position:]
        elif action == "insert":
            data[position:position] = draw.draw(st.binary(min_size=1, max_size=4))
        else:
            del data[position : position + 1]
    _check_parse(bytes(data))


def test_fuzz_seeded_loop_of_random_and_mutated_inputs() -> None:
    rng = random.Random(20240607)
    checked = 0
    for _ in range(6000):
        _check_parse(rng.randbytes(rng.randrange(0, 120)))
        checked += 1
    for _ in range(6000):
        data = bytearray(SAMPLE)
        for _ in range(rng.randrange(1, 4)):
            position = rng.randrange(len(data) + 1)
            choice = rng.randrange(4)
            if choice == 0 and position < len(data):
                data[position] = rng.randrange(256)
            elif choice == 1:
                del data[position:]
            elif choice == 2:
                data[position:position] = rng.randbytes(rng.randrange(1, 5))
            else:
                del data[position : position + rng.randrange(1, 5)]
        _check_parse(bytes(data))
        checked += 1
    assert checked >= 10_000


# default_path ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"XAUTHORITY": "/run/user/1000/gdm/Xauthority", "HOME": "/home/a"}, None),
        ({"XAUTHORITY": "", "HOME": "/home/a"}, ""),
        ({"HOME": "/home/a"}, "/home/a/.Xauthority"),
        ({"HOME": "/home/a/"}, "/home/a//.Xauthority"),
        ({"HOME": "/"}, "/.Xauthority"),
        ({"HOME": ""}, "/.Xauthority"),
        ({"HOME": "relative"}, "relative/.Xauthority"),
    ],
)
def test_default_path_follows_libxau(environ: dict[str, str], expected: str | None) -> None:
    wanted = environ["XAUTHORITY"] if expected is None else expected
    assert default_path(environ=environ) == wanted


def test_default_path_without_home_or_xauthority() -> None:
    with pytest.raises(XauthorityError, match="neither XAUTHORITY nor HOME is set"):
        default_path(environ={"USER": "a"})


def test_default_path_reads_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XAUTHORITY", "/tmp/some-auth")
    assert default_path() == "/tmp/some-auth"
    monkeypatch.delenv("XAUTHORITY")
    monkeypatch.setenv("HOME", "/home/x")
    assert default_path() == "/home/x/.Xauthority"


# load -----------------------------------------------------------------------------------


def test_load_default_uses_xauthority(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "auth"
    path.write_bytes(SAMPLE)
    monkeypatch.setenv("XAUTHORITY", str(path))
    assert Xauthority.load() == Xauthority.loads(SAMPLE)


def test_load_default_uses_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".Xauthority").write_bytes(SAMPLE)
    monkeypatch.delenv("XAUTHORITY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert Xauthority.load() == Xauthority.loads(SAMPLE)


def test_load_empty_xauthority_means_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / ".Xauthority").write_bytes(SAMPLE)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XAUTHORITY", "")
    caplog.set_level(logging.DEBUG, logger="x11passthrough")
    assert len(Xauthority.load()) == 0
    assert "XAUTHORITY=''" in caplog.text


def test_load_without_home_or_xauthority(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XAUTHORITY", raising=False)
    monkeypatch.delenv("HOME", raising=False)
    with pytest.raises(XauthorityError, match="neither XAUTHORITY nor HOME"):
        Xauthority.load()


def test_load_missing_file_is_empty(tmp_path: Path) -> None:
    assert len(Xauthority.load(tmp_path / "absent")) == 0
    assert len(Xauthority.load(str(tmp_path / "absent"))) == 0


def test_load_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(XauthorityError, match=f"{tmp_path}.*XAUTHORITY"):
        Xauthority.load(tmp_path)


def test_load_keeps_the_records_before_damage_like_libxau(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """libXau uses the intact records of a damaged file; so does load(), with a warning."""
    path = tmp_path / "auth"
    path.write_bytes(SAMPLE[:-5])
    caplog.set_level(logging.WARNING, logger="x11passthrough")
    assert Xauthority.load(path) == Xauthority.loads(b"".join(SAMPLE_RECORDS[:3]))
    assert f"{path}: the Xauthority data" in caplog.text
    assert "record 3 is cut short" in caplog.text


def _load_error_as(path: Path, uid: int | None) -> str:
    """Load `path` in a forked child, as `uid` if given; return the XauthorityError text."""

    def load() -> str:
        try:
            Xauthority.load(path)
        except XauthorityError as exc:
            return str(exc)
        return "loaded without error"

    return run_forked(load, uid=uid)


def test_load_unreadable_file_says_what_to_do() -> None:
    """Permission denied, for real: as an unprivileged user (root drops to nobody for this)."""
    with tempfile.TemporaryDirectory(dir="/tmp") as directory:
        os.chmod(directory, 0o755)  # noqa: S103 - nobody must reach the file
        path = Path(directory) / "auth"
        path.write_bytes(SAMPLE)
        os.chmod(path, 0o000)
        message = _load_error_as(path, 65534 if os.geteuid() == 0 else None)
    assert f"cannot read the Xauthority file {path}: permission denied" in message
    assert "chmod" in message
