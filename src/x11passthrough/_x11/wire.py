"""
The X11 connection-setup message: parse, encode and answer it. The one home of the wire format.

An X11 client opens every connection with a *setup request*: a 12-byte prefix (byte-order byte,
protocol version, the lengths ``n`` and ``d`` of the authorization protocol name and data),
then the name and the data, each padded to a multiple of 4 bytes. All integers use the byte
order the client declared in its first byte. The server answers with a *setup reply* whose
status is Failed (0), Success (1) or Authenticate (2).

Choices made here:

* **Size limit.** Real clients send short names (``MIT-MAGIC-COOKIE-1`` is 18 bytes) and short
  data (16 bytes for MIT-MAGIC-COOKIE-1, 24 for XDM-AUTHORIZATION-1). Names longer than
  :data:`MAX_AUTH_NAME_LENGTH` (64) bytes or data longer than :data:`MAX_AUTH_DATA_LENGTH`
  (1024) bytes are refused as soon as the 12-byte prefix shows them, so a setup message is
  never longer than :data:`MAX_SETUP_SIZE` (1100) bytes and a verdict is always reached by then.
* **Protocol version.** It is passed through unchanged: the X server answers a wrong version
  with its own readable "Protocol version mismatch" reply, and a future server may accept
  versions that this module does not know about.
* **Padding.** Pad bytes are not checked (the protocol calls them unused); re-encoded messages
  carry zero pads.
"""

from __future__ import annotations

import enum
import struct

import attrs

from ..exceptions import X11SetupError


#: Byte-order bytes a client may send first: MSB first (``B``), LSB first (``l``), and the
#: X.Org >= 1.14 "not local" variants ``R`` and ``r``.
BIG_ENDIAN_ORDERS = frozenset(b"BR")
LITTLE_ENDIAN_ORDERS = frozenset(b"lr")
_VALID_ORDERS = BIG_ENDIAN_ORDERS | LITTLE_ENDIAN_ORDERS

#: The only authorization protocol whose data can be checked and substituted.
MIT_MAGIC_COOKIE_1 = b"MIT-MAGIC-COOKIE-1"

#: Longest authorization protocol name accepted in a setup request, in bytes.
MAX_AUTH_NAME_LENGTH = 64
#: Longest authorization data accepted in a setup request, in bytes.
MAX_AUTH_DATA_LENGTH = 1024
#: Longest setup request accepted (prefix plus the padded name and data), in bytes.
MAX_SETUP_SIZE = 12 + MAX_AUTH_NAME_LENGTH + MAX_AUTH_DATA_LENGTH

_PREFIX_SIZE = 12
_REPLY_HEADER_SIZE = 8
_UINT16_MAX = 0xFFFF


def _pad4(length: int) -> int:
    """Return `length` rounded up to a multiple of 4."""
    return (length + 3) & ~3


def _struct_prefix(byte_order: int) -> str:
    """Return the :mod:`struct` byte-order character for a client byte-order byte."""
    return ">" if byte_order in BIG_ENDIAN_ORDERS else "<"


def _order_text(byte_order: int) -> str:
    """Describe a byte-order byte for messages, e.g. ``'l'`` or ``0x00``."""
    if byte_order in _VALID_ORDERS:
        return repr(chr(byte_order))
    return f"0x{byte_order:02x}"


def _check_byte_order(byte_order: int) -> None:
    """Raise :class:`X11SetupError` unless `byte_order` is ``l``, ``B``, ``r`` or ``R``."""
    if not isinstance(byte_order, int) or byte_order not in _VALID_ORDERS:
        shown = f"0x{byte_order:02x}" if isinstance(byte_order, int) else repr(byte_order)
        raise X11SetupError(
            f"invalid byte-order byte {shown} (an X11 client starts with 'l', 'B', 'r' or 'R')"
        )


def _check_lengths(name_length: int, data_length: int | None) -> None:
    """Raise :class:`X11SetupError` when an authorization length is above our limits."""
    if name_length > MAX_AUTH_NAME_LENGTH:
        raise X11SetupError(
            f"setup message too large: authorization protocol name of {name_length} bytes "
            f"(the limit is {MAX_AUTH_NAME_LENGTH})"
        )
    if data_length is not None and data_length > MAX_AUTH_DATA_LENGTH:
        raise X11SetupError(
            f"setup message too large: authorization data of {data_length} bytes "
            f"(the limit is {MAX_AUTH_DATA_LENGTH})"
        )


def _validate_byte_order(_instance: object, _attribute: object, value: int) -> None:
    _check_byte_order(value)


def _validate_version(_instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not isinstance(value, int) or not 0 <= value <= _UINT16_MAX:
        raise X11SetupError(
            f"invalid protocol {attribute.name} version {value!r}: must be 0..{_UINT16_MAX}"
        )


def _validate_name(_instance: object, _attribute: object, value: bytes) -> None:
    if not isinstance(value, bytes):
        raise X11SetupError(f"auth_name must be bytes, not {type(value).__name__}")
    _check_lengths(len(value), None)


def _validate_data(_instance: object, _attribute: object, value: bytes) -> None:
    if not isinstance(value, bytes):
        raise X11SetupError(f"auth_data must be bytes, not {type(value).__name__}")
    _check_lengths(0, len(value))


def secret_repr(value: bytes) -> str:
    """Show a secret by its length only."""
    return f"<{len(value)} bytes hidden>"


@attrs.frozen
class SetupRequest:
    """
    An X11 connection-setup request (client to server).

    Construction checks the same limits as :meth:`parse`, so every instance encodes to at most
    :data:`MAX_SETUP_SIZE` bytes. The repr never shows `auth_data`.

    Attributes:
        byte_order: The client's first byte: ``ord("l")``/``ord("r")`` (LSB first) or
            ``ord("B")``/``ord("R")`` (MSB first); ``r``/``R`` mark a forwarded client as not
            local on X.Org >= 1.14.
        major: Protocol major version (11 for every real client).
        minor: Protocol minor version (0 for every real client).
        auth_name: Authorization protocol name, e.g. ``b"MIT-MAGIC-COOKIE-1"``; empty for none.
        auth_data: Authorization data (the cookie); empty for none.

    Raises:
        X11SetupError: A field is out of range (see :meth:`parse`).
    """

    byte_order: int = attrs.field(validator=_validate_byte_order, repr=_order_text)
    major: int = attrs.field(default=11, validator=_validate_version)
    minor: int = attrs.field(default=0, validator=_validate_version)
    auth_name: bytes = attrs.field(default=b"", validator=_validate_name)
    auth_data: bytes = attrs.field(default=b"", validator=_validate_data, repr=secret_repr)

    @property
    def size(self) -> int:
        """Total length of the encoded request in bytes, pads included."""
        return _PREFIX_SIZE + _pad4(len(self.auth_name)) + _pad4(len(self.auth_data))

    @classmethod
    def parse(cls, data: bytes) -> SetupRequest | None:
        """
        Parse the setup request at the start of `data`.

        Bytes after the request are ignored; :attr:`size` tells where it ends. Errors are
        raised as early as the bytes allow: a bad first byte with one byte in, an oversized
        name with 8 bytes in, oversized data with 10 bytes in. The protocol version is not
        judged (the server answers it) and pad bytes are not checked.

        Args:
            data: The bytes the client sent so far, from the start of the connection.

        Returns:
            The request, or ``None`` when more bytes are needed to complete it.

        Raises:
            X11SetupError: The first byte is not a byte-order byte, or the name is longer than
                :data:`MAX_AUTH_NAME_LENGTH` or the data longer than
                :data:`MAX_AUTH_DATA_LENGTH` bytes.
        """
        if not data:
            return None
        byte_order = data[0]
        _check_byte_order(byte_order)
        fmt = _struct_prefix(byte_order)
        if len(data) < 8:
            return None
        (name_length,) = struct.unpack_from(fmt + "H", data, 6)
        _check_lengths(name_length, None)
        if len(data) < 10:
            return None
        (data_length,) = struct.unpack_from(fmt + "H", data, 8)
        _check_lengths(name_length, data_length)
        data_start = _PREFIX_SIZE + _pad4(name_length)
        size = data_start + _pad4(data_length)
        if len(data) < size:
            return None
        major, minor = struct.unpack_from(fmt + "HH", data, 2)
        return cls(
            byte_order,
            major,
            minor,
            bytes(data[_PREFIX_SIZE : _PREFIX_SIZE + name_length]),
            bytes(data[data_start : data_start + data_length]),
        )

    def encode(self) -> bytes:
        """
        Encode the request in its own byte order, with zero pads.

        Returns:
            Exactly :attr:`size` bytes.
        """
        name, data = self.auth_name, self.auth_data
        prefix = struct.pack(
            _struct_prefix(self.byte_order) + "BxHHHH2x",
            self.byte_order,
            self.major,
            self.minor,
            len(name),
            len(data),
        )
        return b"".join((prefix, name, bytes(-len(name) % 4), data, bytes(-len(data) % 4)))

    def with_auth(self, name: bytes, data: bytes) -> SetupRequest:
        """
        Return a copy carrying another authorization.

        Args:
            name: The authorization protocol name; empty for none.
            data: The authorization data; empty for none.

        Returns:
            The new request; byte order and version are unchanged.

        Raises:
            X11SetupError: `name` or `data` is longer than the limits.
        """
        return attrs.evolve(self, auth_name=name, auth_data=data)


def encode_setup_request(
    byte_order: int,
    auth_name: bytes,
    auth_data: bytes,
    *,
    major: int = 11,
    minor: int = 0,
) -> bytes:
    """
    Encode an X11 setup request, as a client would send it.

    Args:
        byte_order: ``ord("l")``, ``ord("B")``, ``ord("r")`` or ``ord("R")``.
        auth_name: Authorization protocol name; empty for none.
        auth_data: Authorization data; empty for none.
        major: Protocol major version.
        minor: Protocol minor version.

    Returns:
        The encoded request.

    Raises:
        X11SetupError: A value is out of range (see :class:`SetupRequest`).
    """
    return SetupRequest(byte_order, major, minor, auth_name, auth_data).encode()


class SetupStatus(enum.IntEnum):
    """Status byte of an X11 setup reply."""

    FAILED = 0
    SUCCESS = 1
    AUTHENTICATE = 2


@attrs.frozen
class SetupReply:
    """
    The parts of an X11 setup reply (server to client) that this library needs.

    Attributes:
        status: Failed, Success or Authenticate.
        major: Protocol major version the server speaks (unused in Authenticate replies).
        minor: Protocol minor version the server speaks (unused in Authenticate replies).
        reason: The server's reason text for Failed and Authenticate, as sent (X.Org ends
            some reasons with a newline); empty for Success.
        size: Total length of the reply in bytes.
    """

    status: SetupStatus
    major: int
    minor: int
    reason: str
    size: int


def parse_setup_reply(data: bytes, *, byte_order: int = 0x6C) -> SetupReply | None:
    """
    Parse the setup reply at the start of `data`.

    Args:
        data: The bytes the server sent so far.
        byte_order: The byte-order byte of the request the reply answers; ``r``/``R`` count
            as ``l``/``B``.

    Returns:
        The reply, or ``None`` when more bytes are needed to complete it.

    Raises:
        X11SetupError: `byte_order` is invalid, the status byte is unknown (not an X server?),
            or a Failed reply's reason is longer than the reply.
    """
    _check_byte_order(byte_order)
    if len(data) < _REPLY_HEADER_SIZE:
        return None
    status_byte, reason_length, major, minor, words = struct.unpack_from(
        _struct_prefix(byte_order) + "BBHHH", data
    )
    try:
        status = SetupStatus(status_byte)
    except ValueError:
        raise X11SetupError(
            f"unknown X11 setup reply status {status_byte} (expected 0 Failed, 1 Success or "
            "2 Authenticate): is the other end an X server?"
        ) from None
    size = _REPLY_HEADER_SIZE + 4 * words
    if len(data) < size:
        return None
    body = bytes(data[_REPLY_HEADER_SIZE:size])
    reason = ""
    if status is SetupStatus.FAILED:
        if reason_length > len(body):
            raise X11SetupError(
                f"malformed X11 setup reply: reason of {reason_length} bytes in a reply "
                f"of {size} bytes"
            )
        reason = body[:reason_length].decode("latin-1")
    elif status is SetupStatus.AUTHENTICATE:
        reason = body.rstrip(b"\0").decode("latin-1")
    return SetupReply(status, major, minor, reason, size)


def failed_reply(reason: str, byte_order: int = 0x6C) -> bytes:
    """
    Encode an X11 "Failed" connection-setup reply carrying `reason`.

    X clients show the reason to the user: libX11 prints it on stderr, python-xlib puts it in
    ``DisplayConnectionError``.

    Args:
        reason: The text; non-ASCII characters become ``?`` and it is cut to 255 bytes (the
            protocol's limit).
        byte_order: The client's first byte (``r``/``R`` count as ``l``/``B``); an unknown
            value answers little-endian.

    Returns:
        The encoded reply: 8-byte header, then the reason padded to 4 bytes.
    """
    text = reason.encode("ascii", "replace")[:255]
    pad = -len(text) % 4
    fmt = ">" if byte_order in BIG_ENDIAN_ORDERS else "<"
    header = struct.pack(fmt + "BBHHH", 0, len(text), 11, 0, (len(text) + pad) // 4)
    return header + text + b"\0" * pad
