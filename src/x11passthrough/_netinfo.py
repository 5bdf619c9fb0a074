"""
What this host's network interfaces look like: where containers reach it, and from where.

Strictly private. Linux only; reads interface addresses with ioctl, no subprocess.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import socket
import struct


_SIOCGIFADDR = 0x8915
_SIOCGIFNETMASK = 0x891B


def interface_network(name: str) -> ipaddress.IPv4Interface | None:
    """Return the IPv4 address and network of interface `name`, or None if it has none."""
    packed = struct.pack("256s", name.encode()[:15])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            addr = fcntl.ioctl(s.fileno(), _SIOCGIFADDR, packed)[20:24]
            mask = fcntl.ioctl(s.fileno(), _SIOCGIFNETMASK, packed)[20:24]
        except OSError:
            return None
    return ipaddress.IPv4Interface(f"{socket.inet_ntoa(addr)}/{socket.inet_ntoa(mask)}")


def interfaces() -> dict[str, ipaddress.IPv4Interface]:
    """Return every interface that has an IPv4 address, by name."""
    found = {}
    with contextlib.suppress(OSError):
        for _, name in socket.if_nameindex():
            net = interface_network(name)
            if net is not None:
                found[name] = net
    return found


def is_container_bridge(name: str) -> bool:
    """Tell whether an interface is a Docker (or Podman) bridge: docker0, br-*, cni-*, podman*."""
    return name == "docker0" or name.startswith(("br-", "cni", "podman"))


def docker_gateway() -> str | None:
    """Return the docker0 address (what ``host-gateway`` resolves to), or None without one."""
    net = interface_network("docker0")
    return None if net is None else str(net.ip)


def networks_for(addresses: list[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """
    Return the client networks to allow for a relay bound on `addresses`.

    These are the networks of the interfaces that own the bound addresses, plus every container
    bridge network on the host. A wildcard address adds no network of its own.
    """
    nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for name, iface in interfaces().items():
        if str(iface.ip) in addresses or is_container_bridge(name):
            nets.append(iface.network)
    for address in addresses:
        ip = ipaddress.ip_address(address)
        if ip.is_loopback:
            nets.append(ipaddress.ip_network(f"{address}/{8 if ip.version == 4 else 128}", False))
    return list(dict.fromkeys(nets))
