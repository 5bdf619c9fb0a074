"""
The Xauthority record format, as libXau reads and writes it (``AuRead.c``, ``AuWrite.c``).

Import the public names from :mod:`x11passthrough.xauth`.

A file is a bare sequence of records; each is a big-endian 16-bit family followed by four
fields (address, number, name, data), each a big-endian 16-bit length and that many bytes.
Every field is kept as the raw bytes the file holds, as libXau and python-xlib keep them, so
any file round-trips byte for byte.
"""

from __future__ import annotations

import enum
import struct

from collections.abc import Iterable

import attrs

from .._validate import shown
from .._x11.wire import secret_repr
from ..exceptions import XauthorityError


#: Longest field the format can store (a 16-bit length).
MAX_FIELD = 0xFFFF


class Family(enum.IntEnum):
    """
    The address families an Xauthority entry can have (``X11/X.h`` and ``X11/Xauth.h``).

    Values 0 to 6 are the X protocol's host families; 252 and up exist only in authority
    files. Entries read from a file keep family values not listed here as plain ``int``.

    .. versionadded:: 0.1.0
    """

    #: IPv4; the address is the 4 bytes of the address in network order.
    INTERNET = 0
    #: DECnet (obsolete).
    DECNET = 1
    #: Chaosnet (obsolete).
    CHAOS = 2
    #: "Server interpreted" addresses such as ``localuser:alice`` (type, NUL, value).
    SERVER_INTERPRETED = 5
    #: IPv6; the address is the 16 bytes of the address.
    INTERNET6 = 6
    #: Local non-network authentication.
    LOCAL_HOST = 252
    #: A Kerberos 5 principal.
    KRB5_PRINCIPAL = 253
    #: A SUN-DES netname.
    NETNAME = 254
    #: A local (UNIX socket or loopback) connection; the address is the host name.
    LOCAL = 256
    #: Matches every address (the entry's address is ignored when matching).
    WILD = 65535


_FAMILIES: dict[int, Family] = {int(member): member for member in Family}


def to_family(value: int) -> Family | int:
    """Convert a family value: a :class:`Family` where libXau defines it, else the int."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise XauthorityError(
            f"XauthEntry.family must be an int (a Family), not {type(value).__name__}"
        )
    if not 0 <= value <= MAX_FIELD:
        raise XauthorityError(
            f"XauthEntry.family {value} is out of range: families are 16-bit values "
            "(0 to 65535); use a Family member such as Family.LOCAL"
        )
    return _FAMILIES.get(value, value)


def _check_bytes(_instance: object, attribute: attrs.Attribute[bytes], value: object) -> None:
    if not isinstance(value, bytes):
        hint = "; encode it first, e.g. with .encode()" if isinstance(value, str) else ""
        raise XauthorityError(
            f"XauthEntry.{attribute.name} must be bytes, not {type(value).__name__}{hint}"
        )
    if len(value) > MAX_FIELD:
        raise XauthorityError(
            f"XauthEntry.{attribute.name} is {len(value)} bytes long; the Xauthority format "
            f"stores at most {MAX_FIELD} bytes per field"
        )


def number_bytes(value: object, what: str = "the display number") -> bytes:
    """
    Convert a display number: an int, or its decimal digits as str or bytes; empty for any.

    Raises:
        XauthorityError: The value is not such a number; the message starts with `what`.
    """
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        if not value.isascii():
            raise XauthorityError(
                f"{what} {shown(value)} is not ASCII; it is the display number in decimal, "
                "e.g. '0', or '' for any display"
            )
        return value.encode("ascii")
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return str(value).encode("ascii")
    raise XauthorityError(f"{what} must be an int, str or bytes such as 0 or b'0', not {value!r}")


def name_bytes(value: object, what: str = "the auth name") -> bytes:
    """
    Convert an auth protocol name given as bytes, or as a str of characters up to U+00FF.

    Raises:
        XauthorityError: The value is neither, or has a character the format cannot store.
    """
    if isinstance(value, bytes):
        return value
    if not isinstance(value, str):
        raise XauthorityError(f"{what} must be bytes such as b'MIT-MAGIC-COOKIE-1', not {value!r}")
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        raise XauthorityError(
            f"{what} {shown(value)} has characters beyond U+00FF, which the Xauthority "
            "format cannot store; auth names are ASCII, e.g. b'MIT-MAGIC-COOKIE-1'"
        ) from None


def _entry_number(value: object) -> bytes:
    return number_bytes(value, "XauthEntry.number")


def _entry_name(value: object) -> bytes:
    return name_bytes(value, "XauthEntry.name")


@attrs.frozen
class XauthEntry:
    """
    One record of an Xauthority file.

    Every field but the family holds the record's raw bytes. For convenience the constructor
    also takes the number as an int or str (``0``, ``"0"``) and the name as a str; they are
    stored as bytes. The repr never shows :attr:`data`, only its length.

    Attributes:
        family: A :class:`Family`, or a plain ``int`` for a family value libXau does not
            define (kept as read from a file).
        address: The address bytes: the host name for :attr:`Family.LOCAL`, 4 or 16 raw
            address bytes for :attr:`Family.INTERNET` / :attr:`Family.INTERNET6`, anything
            (ignored when matching) for :attr:`Family.WILD`.
        number: The display number in decimal, e.g. ``b"0"``; ``b""`` matches every display.
        name: The auth protocol name, e.g. ``b"MIT-MAGIC-COOKIE-1"``.
        data: The secret (16 bytes for MIT-MAGIC-COOKIE-1). Never shown in reprs or logs.

    Raises:
        XauthorityError: When a field has the wrong type, is longer than 65535 bytes, the
            family is not a 16-bit value, the number is not ASCII, or the name has a character
            beyond U+00FF. The message names the field.

    .. versionadded:: 0.1.0
    """

    family: Family | int = attrs.field(converter=to_family)
    address: bytes = attrs.field(validator=_check_bytes)
    number: bytes = attrs.field(converter=_entry_number, validator=_check_bytes)
    name: bytes = attrs.field(converter=_entry_name, validator=_check_bytes)
    data: bytes = attrs.field(validator=_check_bytes, repr=secret_repr)


def damage_message(intact: int, size: int) -> str:
    """
    Describe damaged data by what is safe to say: no length or offset read from the data.

    After a damaged length, the parser reads cookie bytes as lengths; quoting those numbers
    would quote the cookie.
    """
    return (
        f"the Xauthority data ({size} bytes) is damaged: record {intact} is cut short or "
        f"garbled; the {intact} record(s) before it are intact (libXau and xauth use those "
        "and silently ignore the rest). Recreate the file, e.g. with xauth"
    )


def parse_prefix(data: bytes) -> tuple[tuple[XauthEntry, ...], bool]:
    """
    Parse the records of an Xauthority file as far as they are well-formed.

    Returns:
        The intact records, and whether anything after them was damaged (libXau's
        ``XauReadAuth`` stops at the first short record the same way).
    """
    entries: list[XauthEntry] = []
    append = entries.append
    size = len(data)
    pos = 0
    try:
        while pos < size:
            family = data[pos] << 8 | data[pos + 1]
            end = pos + 4 + (data[pos + 2] << 8 | data[pos + 3])
            address = data[pos + 4 : end]
            after = end + 2 + (data[end] << 8 | data[end + 1])
            number = data[end + 2 : after]
            end = after + 2 + (data[after] << 8 | data[after + 1])
            name = data[after + 2 : end]
            after = end + 2 + (data[end] << 8 | data[end + 1])
            if after > size:
                return tuple(entries), True
            append(XauthEntry(family, address, number, name, data[end + 2 : after]))
            pos = after
    except IndexError:
        return tuple(entries), True
    return tuple(entries), False


def parse(data: bytes) -> tuple[XauthEntry, ...]:
    """
    Parse the records of an Xauthority file, all of them.

    Raises:
        XauthorityError: The data is damaged (a record is cut short, or bytes trail).
    """
    entries, damaged = parse_prefix(data)
    if damaged:
        raise XauthorityError(damage_message(len(entries), len(data)))
    return entries


_pack_head = struct.Struct(">HH").pack
_pack_length = struct.Struct(">H").pack


def dump(entries: Iterable[XauthEntry]) -> bytes:
    """Return the bytes libXau's ``XauWriteAuth`` writes for each entry, concatenated."""
    parts: list[bytes] = []
    extend = parts.extend
    for entry in entries:
        extend(
            (
                _pack_head(entry.family, len(entry.address)),
                entry.address,
                _pack_length(len(entry.number)),
                entry.number,
                _pack_length(len(entry.name)),
                entry.name,
                _pack_length(len(entry.data)),
                entry.data,
            )
        )
    return b"".join(parts)
