"""
Matching: which entry an X client picks for a display (libXau) and a connection (libxcb).

Import the public names from :mod:`x11passthrough.xauth`.
"""

from __future__ import annotations

import ipaddress
import os
import socket

from collections.abc import Iterable, Sequence
from typing import Any

from .._validate import shown
from .._x11.wire import MIT_MAGIC_COOKIE_1
from ..exceptions import XauthorityError
from .format import Family, XauthEntry, name_bytes, number_bytes


def peer_family_address(
    sock_or_peer: socket.socket | tuple[int, Any], *, hostname: str | bytes | None = None
) -> tuple[Family, bytes]:
    """
    Return the family and address an X client looks up for a connection (libxcb's rules).

    * A UNIX socket, or a TCP peer ``127.0.0.1`` (exactly, not all of 127/8) or ``::1``:
      :attr:`Family.LOCAL` with this host's name.
    * Another IPv4 peer, or an IPv4-mapped IPv6 peer (``::ffff:a.b.c.d``): :attr:`Family.INTERNET`
      with the 4 address bytes (``::ffff:127.0.0.1`` is local, as above).
    * Another IPv6 peer: :attr:`Family.INTERNET6` with the 16 address bytes.

    Args:
        sock_or_peer: A connected ``socket.socket`` (its family and ``getpeername()`` are
            used), or a pair ``(address_family, peer)`` such as
            ``(socket.AF_INET, ("192.0.2.7", 6000))``, where ``peer`` is what
            ``getpeername()`` returns (or just the address string).
        hostname: The host name for :attr:`Family.LOCAL`; by default ``socket.gethostname()``
            encoded with the filesystem encoding, i.e. the same bytes libxcb and xauth get
            from ``gethostname(2)``.

    Returns:
        ``(family, address)``.

    Raises:
        XauthorityError: When the socket is not connected, its family is not AF_UNIX,
            AF_INET or AF_INET6 (libxcb sends no auth then), or the peer address is invalid.
    """
    address_family: int
    if isinstance(sock_or_peer, socket.socket):
        address_family = sock_or_peer.family
        try:
            peer: Any = sock_or_peer.getpeername()
        except OSError as exc:
            raise XauthorityError(
                f"cannot pick an Xauthority entry for socket {sock_or_peer!r}: "
                f"getpeername() failed ({exc.strerror}); pass a connected socket"
            ) from exc
    else:
        try:
            address_family, peer = sock_or_peer
        except (TypeError, ValueError):
            raise XauthorityError(
                f"expected a connected socket or a pair (address_family, peer), not "
                f"{sock_or_peer!r}"
            ) from None
    host = peer[0] if isinstance(peer, tuple) else peer
    if address_family in (socket.AF_INET, socket.AF_INET6):
        try:
            ip = ipaddress.ip_address(host.partition("%")[0])
        except (ValueError, AttributeError, TypeError):
            raise XauthorityError(
                f"cannot pick an Xauthority entry: peer address {host!r} is not an IP address"
            ) from None
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        loopback = ipaddress.ip_address("127.0.0.1" if ip.version == 4 else "::1")
        if ip != loopback:
            family = Family.INTERNET if ip.version == 4 else Family.INTERNET6
            return family, ip.packed
    elif address_family != socket.AF_UNIX:
        raise XauthorityError(
            f"cannot pick an Xauthority entry for address family {address_family!r}: X "
            "clients authenticate only AF_UNIX, AF_INET and AF_INET6 connections"
        )
    if hostname is None:
        hostname = socket.gethostname()
    if isinstance(hostname, str):
        hostname = os.fsencode(hostname)
    return Family.LOCAL, hostname


def check_query(family: object, address: object, number: object) -> None:
    """Reject query values that could never equal an entry's field (a likely mistake)."""
    if family is not None and (isinstance(family, bool) or not isinstance(family, int)):
        raise XauthorityError(f"the family must be an int (a Family), not {type(family).__name__}")
    if address is not None and not isinstance(address, bytes):
        hint = "; encode it first, e.g. with .encode()" if isinstance(address, str) else ""
        raise XauthorityError(f"the address must be bytes, not {type(address).__name__}{hint}")
    if number is not None and (
        isinstance(number, bool) or not isinstance(number, (int, str, bytes))
    ):
        raise XauthorityError(
            f"the display number must be an int, str or bytes, not {type(number).__name__}"
        )


def best_entry(
    entries: Iterable[XauthEntry],
    family: int,
    address: bytes,
    number: int | str | bytes,
    names: Sequence[str | bytes] = (MIT_MAGIC_COOKIE_1,),
) -> XauthEntry | None:
    """
    Return the entry libXau's ``XauGetBestAuthByAddr`` picks among `entries`, or None.

    See :meth:`x11passthrough.xauth.Xauthority.find` for the rules.

    Raises:
        XauthorityError: An argument has the wrong type.
    """
    check_query(family, address, number)
    wanted = number_bytes(number)
    if isinstance(names, (str, bytes)):
        raise XauthorityError(
            f"names must be a sequence of auth names, e.g. ({MIT_MAGIC_COOKIE_1!r},), "
            f"not the single {type(names).__name__} {shown(names)}"
        )
    rank: dict[bytes, int] = {}
    for index, name in enumerate(names):
        rank.setdefault(name_bytes(name), index)
    wild = Family.WILD
    any_address = family == wild
    best: XauthEntry | None = None
    best_rank = len(names)
    for entry in entries:
        entry_family = entry.family
        if not (
            any_address
            or entry_family == wild
            or (entry_family == family and entry.address == address)
        ):
            continue
        if wanted and entry.number and entry.number != wanted:
            continue
        if best_rank == 0:
            return entry
        entry_rank = rank.get(entry.name, best_rank)
        if entry_rank < best_rank:
            best = entry
            best_rank = entry_rank
            if entry_rank == 0:
                break
    return best
