"""
What this host's network interfaces are: every address, IPv4 and IPv6, and its network.

Linux (and other systems with ``getifaddrs(3)``): read through ctypes from
the C library, no subprocess.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import ipaddress
import socket

from collections.abc import Iterable

import attrs


IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@attrs.frozen
class Address:
    """One address of an interface of this host."""

    interface: str
    address: IPInterface


class _IfAddrs(ctypes.Structure):
    pass


_IfAddrs._fields_ = [
    ("ifa_next", ctypes.POINTER(_IfAddrs)),
    ("ifa_name", ctypes.c_char_p),
    ("ifa_flags", ctypes.c_uint),
    ("ifa_addr", ctypes.c_void_p),
    ("ifa_netmask", ctypes.c_void_p),
    ("ifa_ifu", ctypes.c_void_p),
    ("ifa_data", ctypes.c_void_p),
]

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.getifaddrs.argtypes = [ctypes.POINTER(ctypes.POINTER(_IfAddrs))]
_libc.freeifaddrs.argtypes = [ctypes.POINTER(_IfAddrs)]


def _ip(sockaddr: int | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """Decode a ``struct sockaddr *`` of family AF_INET or AF_INET6."""
    if not sockaddr:
        return None
    family = ctypes.c_ushort.from_address(sockaddr).value
    if family == socket.AF_INET:
        return ipaddress.IPv4Address(ctypes.string_at(sockaddr + 4, 4))
    if family == socket.AF_INET6:
        return ipaddress.IPv6Address(ctypes.string_at(sockaddr + 8, 16))
    return None


def addresses() -> list[Address]:
    """Return every IPv4 and IPv6 address of this host's interfaces, with its prefix."""
    head = ctypes.POINTER(_IfAddrs)()
    if _libc.getifaddrs(ctypes.byref(head)) != 0:
        return []
    found: list[Address] = []
    try:
        node = head
        while node:
            entry = node.contents
            ip = _ip(entry.ifa_addr)
            mask = _ip(entry.ifa_netmask)
            if ip is not None and mask is not None and ip.version == mask.version:
                prefix = bin(int(mask)).count("1")
                name = (entry.ifa_name or b"").decode(errors="replace")
                found.append(Address(name, ipaddress.ip_interface(f"{ip}/{prefix}")))
            node = entry.ifa_next
    finally:
        _libc.freeifaddrs(head)
    return found


def interface_addresses(name: str) -> list[IPInterface]:
    """Return the addresses of interface `name` (empty when it has none or does not exist)."""
    return [a.address for a in addresses() if a.interface == name]


def docker_gateway() -> str | None:
    """Return the docker0 IPv4 address (what ``host-gateway`` resolves to), or None."""
    for address in interface_addresses("docker0"):
        if address.version == 4:
            return str(address.ip)
    return None


def networks_for(
    bound: Iterable[ipaddress.IPv4Address | ipaddress.IPv6Address],
) -> list[IPNetwork]:
    """
    Return the client networks a relay bound on `bound` admits by itself.

    These are the networks of the interfaces that own a bound address (a wildcard adds none),
    every address of this host as a single-address network (processes of this host and
    ``--network host`` containers connect from those), and the loopback networks.
    """
    wanted = set(bound)
    nets: list[IPNetwork] = [
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    ]
    for entry in addresses():
        if entry.address.ip in wanted:
            nets.append(entry.address.network)
        nets.append(ipaddress.ip_network(entry.address.ip))
    return list(dict.fromkeys(nets))
