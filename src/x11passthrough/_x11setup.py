"""
The X11 connection-setup message: parse, rewrite and answer it.

Strictly private.

An X11 client opens every connection with a *setup request*: a 12-byte prefix (byte-order byte,
protocol version, the lengths ``n`` and ``d`` of the authorization protocol name and data),
then the name and the data, each padded to a multiple of 4 bytes. All integers use the byte
order the client declared in its first byte. The server answers with a *setup reply* whose
status is Failed (0), Success (1) or Authenticate (2).

The relay checks this first message with a :class:`CookieGate`: it accepts only the
per-session fake cookie, swaps in the real cookie (or no authorization at all), and answers
every other client with a readable "Failed" reply instead of a silent close.

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
import hmac
import logging
import struct

import attrs

from .exceptions import X11SetupError


__all__ = [
    "BIG_ENDIAN_ORDERS",
    "LITTLE_ENDIAN_ORDERS",
    "MAX_AUTH_DATA_LENGTH",
    "MAX_AUTH_NAME_LENGTH",
    "MAX_SETUP_SIZE",
    "MIT_MAGIC_COOKIE_1",
    "Accept",
    "CookieGate",
    "Reject",
    "SetupReply",
    "SetupRequest",
    "SetupStatus",
    "encode_setup_request",
    "failed_reply",
    "parse_setup_reply",
]

logger = logging.getLogger("x11passthrough")

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
_NOT_LOCAL = {ord("l"): ord("r"), ord("B"): ord("R")}


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


def _hidden(value: bytes) -> str:
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
    auth_data: bytes = attrs.field(default=b"", validator=_validate_data, repr=_hidden)

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


@attrs.frozen
class Accept:
    """
    Verdict of a setup filter: send `forward` upstream, then relay bytes unchanged.

    Attributes:
        forward: Replaces every byte received so far: the rewritten setup request followed by
            the bytes the client sent after it, unchanged. Not shown in the repr (it carries
            the real cookie).
    """

    forward: bytes = attrs.field(repr=False)


@attrs.frozen
class Reject:
    """
    Verdict of a setup filter: send `reply` (an X11 "Failed" reply) to the client, close.

    Attributes:
        reason: Why, readable; the same text the reply carries (fit for logs: no secrets).
        reply: The encoded "Failed" reply, in the client's byte order.
    """

    reason: str
    reply: bytes = attrs.field(repr=False)


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


_REASON_PREFIX = "x11passthrough: "
_WRONG_COOKIE = _REASON_PREFIX + "wrong authorization cookie"
_NO_AUTH = (
    _REASON_PREFIX + "no authorization: this display needs the session cookie (set XAUTHORITY)"
)
_INTERNAL = _REASON_PREFIX + "internal error while checking the setup message"
_SHOWN_NAME_MAX = 40


def _show_name(name: bytes) -> str:
    """Quote an untrusted protocol name for a reason text: printable ASCII, bounded."""
    text = "".join(chr(b) if 0x20 <= b < 0x7F and b != 0x27 else f"\\x{b:02x}" for b in name)
    if len(text) > _SHOWN_NAME_MAX:
        text = text[:_SHOWN_NAME_MAX] + "..."
    return f"'{text}'"


def _validate_cookie_pair(name: bytes, data: bytes, *, what: str, required: bool) -> None:
    """Check a configured name/data pair (never shows the data)."""
    if not isinstance(name, bytes) or not isinstance(data, bytes):
        raise X11SetupError(f"{what} name and data must be bytes")
    if required and not (name and data):
        raise X11SetupError(f"{what} name and data must not be empty")
    if not name and data:
        raise X11SetupError(f"{what} data given without a protocol name")
    if len(name) > MAX_AUTH_NAME_LENGTH or len(data) > MAX_AUTH_DATA_LENGTH:
        raise X11SetupError(
            f"{what} is too long: name of {len(name)} bytes (limit {MAX_AUTH_NAME_LENGTH}), "
            f"data of {len(data)} bytes (limit {MAX_AUTH_DATA_LENGTH})"
        )


@attrs.frozen(kw_only=True)
class CookieGate:
    """
    The relay's setup filter: admit only the session's fake cookie and swap in the real one.

    Call it with every byte the client has sent so far (from the start of the connection)
    until it returns a verdict. It never raises: any problem becomes a :class:`Reject` whose
    reply is a readable X11 "Failed" reply in the client's byte order, so X clients print the
    reason (e.g. ``x11passthrough: wrong authorization cookie``) instead of "connection
    broken". A verdict is reached at the latest after :data:`MAX_SETUP_SIZE` bytes.

    Cookies are compared with :func:`hmac.compare_digest`, name and data both always, so the
    time taken depends only on what the client sent. Neither the repr nor the str shows a
    cookie.

    Attributes:
        expected_data: The per-session fake cookie clients must present.
        replacement_name: Authorization protocol name sent to the real server; empty (with
            empty `replacement_data`) to send no authorization, for servers that need none.
        replacement_data: The real cookie sent to the server; empty for no authorization.
        expected_name: The authorization protocol clients must use.
        rewrite_byte_order: Rewrite the client's ``l``/``B`` to ``r``/``R``. X.Org >= 1.14
            then marks the client as not local, so clients behind the relay (which cannot pass
            file descriptors or share memory with the server) are not offered MIT-SHM or DRI.
            Off by default because older servers and other proxies (OpenSSH's X11 forwarding)
            close the connection on ``r``/``R`` without a reply.

    Raises:
        X11SetupError: A name or cookie is empty where it must not be, or too long.
    """

    expected_data: bytes = attrs.field(repr=_hidden)
    replacement_name: bytes
    replacement_data: bytes = attrs.field(repr=_hidden)
    expected_name: bytes = MIT_MAGIC_COOKIE_1
    rewrite_byte_order: bool = False

    def __attrs_post_init__(self) -> None:
        _validate_cookie_pair(
            self.expected_name, self.expected_data, what="expected cookie", required=True
        )
        _validate_cookie_pair(
            self.replacement_name,
            self.replacement_data,
            what="replacement cookie",
            required=False,
        )

    def __call__(self, data: bytes) -> Accept | Reject | None:
        """
        Judge the client's first bytes.

        Args:
            data: Every byte the client sent so far, from the start of the connection.

        Returns:
            ``None`` while the setup request is incomplete; :class:`Accept` whose `forward`
            is the rewritten request followed by the bytes after it, unchanged; or
            :class:`Reject` with a "Failed" reply for the client.
        """
        order = 0x6C
        try:
            if data:
                order = data[0]
            return self._judge(data)
        except X11SetupError as exc:
            return self._reject(f"{_REASON_PREFIX}{exc}", order)
        except Exception:  # the gate must fail closed, never crash the relay
            logger.exception("unexpected error while checking an X11 setup message")
            return self._reject(_INTERNAL, order)

    def _judge(self, data: bytes) -> Accept | Reject | None:
        request = SetupRequest.parse(data)
        if request is None:
            return None
        name_ok = hmac.compare_digest(self.expected_name, request.auth_name)
        data_ok = hmac.compare_digest(self.expected_data, request.auth_data)
        if name_ok & data_ok:
            rewritten = request.with_auth(self.replacement_name, self.replacement_data)
            if self.rewrite_byte_order:
                new_order = _NOT_LOCAL.get(rewritten.byte_order, rewritten.byte_order)
                rewritten = attrs.evolve(rewritten, byte_order=new_order)
            return Accept(rewritten.encode() + bytes(data[request.size :]))
        if not request.auth_name and not request.auth_data:
            return self._reject(_NO_AUTH, request.byte_order)
        if not name_ok:
            expected = _show_name(self.expected_name)
            shown = _show_name(request.auth_name)
            return self._reject(
                f"{_REASON_PREFIX}unsupported authorization protocol {shown} "
                f"(only {expected} is accepted)",
                request.byte_order,
            )
        return self._reject(_WRONG_COOKIE, request.byte_order)

    @staticmethod
    def _reject(reason: str, byte_order: int) -> Reject:
        return Reject(reason, failed_reply(reason, byte_order))
