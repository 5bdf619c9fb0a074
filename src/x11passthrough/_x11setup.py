"""
The X11 connection-setup message: parse, rewrite and answer it.

Strictly private.
"""

from __future__ import annotations

import struct

import attrs


#: Byte-order bytes a client may send first: MSB first (``B``), LSB first (``l``), and the
#: X.Org >= 1.14 "not local" variants ``R`` and ``r``.
BIG_ENDIAN_ORDERS = frozenset(b"BR")
LITTLE_ENDIAN_ORDERS = frozenset(b"lr")


@attrs.frozen
class Accept:
    """Verdict of a setup filter: send `forward` upstream, then relay bytes unchanged."""

    forward: bytes = attrs.field(repr=False)


@attrs.frozen
class Reject:
    """Verdict of a setup filter: send `reply` (an X11 "Failed" reply) to the client, close."""

    reason: str
    reply: bytes = attrs.field(repr=False)


def failed_reply(reason: str, byte_order: int = 0x6C) -> bytes:
    """
    Encode an X11 "Failed" connection-setup reply carrying `reason`.

    `byte_order` is the client's first byte; an unknown value answers little-endian.
    """
    text = reason.encode("ascii", "replace")[:255]
    pad = -len(text) % 4
    fmt = ">" if byte_order in BIG_ENDIAN_ORDERS else "<"
    header = struct.pack(fmt + "BBHHH", 0, len(text), 11, 0, (len(text) + pad) // 4)
    return header + text + b"\0" * pad
