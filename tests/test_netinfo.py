"""The host's interfaces as _netinfo reads them (ioctl), checked against iproute2's view."""

from __future__ import annotations

import ipaddress
import json
import subprocess

from collections.abc import Callable

import pytest

from x11passthrough import _netinfo

from infra.ci import require_executables
from infra.network import NetNamespace


def ip_view() -> dict[str, ipaddress.IPv4Interface]:
    """The first IPv4 address of every interface, as ``ip -j -4 addr`` lists them."""
    require_executables("ip")
    done = subprocess.run(["ip", "-j", "-4", "addr"], capture_output=True, text=True, check=True)
    found = {}
    for link in json.loads(done.stdout):
        for info in link.get("addr_info", []):
            if info.get("family") == "inet" and link["ifname"] not in found:
                found[link["ifname"]] = ipaddress.IPv4Interface(
                    f"{info['local']}/{info['prefixlen']}"
                )
    return found


def test_interfaces_match_iproute2() -> None:
    """Every interface with an IPv4 address, with its address and netmask."""
    assert _netinfo.interfaces() == ip_view()


def test_unknown_interface_has_no_network() -> None:
    assert _netinfo.interface_network("x11pt-none0") is None


def test_loopback_binds_allow_loopback_clients() -> None:
    """A relay on 127.0.0.1 admits the loopback network (and the container bridges)."""
    networks = _netinfo.networks_for(["127.0.0.1"])
    assert ipaddress.ip_network("127.0.0.0/8") in networks
    bridges = {
        iface.network for name, iface in ip_view().items() if _netinfo.is_container_bridge(name)
    }
    assert set(networks) == {ipaddress.ip_network("127.0.0.0/8")} | bridges


@pytest.mark.parametrize(
    ("name", "bridge"),
    [
        ("docker0", True),
        ("br-3f2a", True),
        ("cni-podman0", True),
        ("podman1", True),
        ("eth0", False),
        ("lo", False),
        ("veth1", False),
        ("bridge0", False),
    ],
)
def test_container_bridge_names(name: str, bridge: bool) -> None:
    assert _netinfo.is_container_bridge(name) is bridge


@pytest.mark.e2e
def test_a_veth_network_is_found_and_allowed(netns: Callable[[], NetNamespace]) -> None:
    """A relay bound to a veth address admits exactly that veth's /30 besides the bridges."""
    ns = netns()
    iface = _netinfo.interfaces()[ns.host_interface]
    assert str(iface.ip) == ns.host_address
    assert iface.network.prefixlen == 30
    assert iface.network in _netinfo.networks_for([ns.host_address])
    assert ipaddress.ip_address(ns.ns_address) in iface.network


@pytest.mark.e2e
def test_docker_gateway_is_the_docker0_address(docker_gateway: str) -> None:
    """What host-gateway resolves to, read without asking the engine."""
    assert _netinfo.docker_gateway() == docker_gateway
