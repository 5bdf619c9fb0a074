"""
Who owns an X endpoint: the uid behind a connected socket, before any cookie goes there.

A local endpoint can be squatted: nothing owns ``127.0.0.1:6000+N`` on a desktop whose X server
does not listen on TCP, and anyone may bind an abstract socket name first. So before a cookie
is sent, the listener's owner must be root or the current user:

* UNIX and abstract sockets: ``SO_PEERCRED`` on the connected socket gives the listener's uid.
* TCP: the kernel's tables of this network namespace (``/proc/net/tcp``, ``/proc/net/tcp6``)
  list each listening socket's local address, port and owner uid. A peer that no listener of
  this machine matches is a remote host, which the user named on purpose (``otherhost:0``); a
  loopback peer without a matching listener cannot be checked and is refused.
"""

from __future__ import annotations

import ipaddress
import os
import pwd
import socket
import struct

from collections.abc import Collection

from ._endpoint import Endpoint


_LISTEN = "0A"
_TABLES = {socket.AF_INET: "/proc/net/tcp", socket.AF_INET6: "/proc/net/tcp6"}
_UNSPECIFIED = (ipaddress.IPv4Address("0.0.0.0"), ipaddress.IPv6Address("::"))


def trusted_uids() -> frozenset[int]:
    """
    Return the owners an X endpoint may have by default: root and the current user.

    Under ``sudo`` (root, with ``SUDO_UID`` set) the user who ran sudo counts too: it is their
    display that root is asked to lend.
    """
    uids = {0, os.geteuid()}
    sudo_uid = os.environ.get("SUDO_UID", "")
    if os.geteuid() == 0 and sudo_uid.isdigit():
        uids.add(int(sudo_uid))
    return frozenset(uids)


def _user(uid: int) -> str:
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def _address(text: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    """Decode ``ADDR:PORT`` of /proc/net/tcp{,6}: the address in host-order 32-bit words."""
    hex_address, hex_port = text.split(":")
    raw = bytes.fromhex(hex_address)
    words = struct.unpack(f"={len(raw) // 4}I", raw)
    packed = struct.pack(f">{len(words)}I", *words)
    return ipaddress.ip_address(packed), int(hex_port, 16)


def listener_uid(address: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> int | None:
    """
    Return the uid of the socket of this machine that listens for `address`, `port`, or None.

    An exact address wins over a wildcard (``0.0.0.0``, ``::``); an IPv4 address also matches
    an IPv6 wildcard listener, which accepts IPv4 connections too.
    """
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    exact: int | None = None
    wildcard: int | None = None
    for family, table in _TABLES.items():
        try:
            with open(table) as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 8 or fields[3] != _LISTEN:
                continue
            local, local_port = _address(fields[1])
            if local_port != port:
                continue
            if isinstance(local, ipaddress.IPv6Address) and local.ipv4_mapped is not None:
                local = local.ipv4_mapped
            uid = int(fields[7])
            if local == address:
                exact = uid
            elif local in _UNSPECIFIED and (
                local.version == address.version or family == socket.AF_INET6
            ):
                wildcard = uid if wildcard is None else wildcard
    return exact if exact is not None else wildcard


def owner_uid(sock: socket.socket) -> int | None:
    """
    Return the uid that owns the listener `sock` is connected to, or None for a remote host.

    Raises:
        OSError: The socket is not connected.
    """
    if sock.family == socket.AF_UNIX:
        credentials = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
        _pid, uid, _gid = struct.unpack("3i", credentials)
        return int(uid)
    host, port = sock.getpeername()[:2]
    address = ipaddress.ip_address(host.partition("%")[0])
    return listener_uid(address, port)


def ownership_problem(
    sock: socket.socket, endpoint: Endpoint, trusted: Collection[int] | None = None
) -> str | None:
    """
    Return why no cookie may go to the listener `sock` is connected to, or None when it may.

    Args:
        sock: A connected socket to `endpoint`.
        endpoint: Where it was connected, for the message.
        trusted: The uids that may own the endpoint; root and the current user by default.
    """
    allowed = trusted_uids() if trusted is None else trusted
    try:
        uid = owner_uid(sock)
    except OSError as e:
        return f"cannot tell who listens on {endpoint}: {e.strerror or e}"
    if uid is None:
        if sock.family != socket.AF_UNIX:
            host = ipaddress.ip_address(sock.getpeername()[0].partition("%")[0])
            if host.is_loopback:
                return f"cannot tell who listens on {endpoint}: no listener of this machine"
        return None
    if uid in allowed:
        return None
    owners = ", ".join(_user(u) for u in sorted(allowed))
    return (
        f"{endpoint} belongs to {_user(uid)}, not to {owners}: another user may be "
        "squatting the display, so no cookie is sent there"
    )
