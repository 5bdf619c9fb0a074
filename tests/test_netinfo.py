"""The host's interfaces as _netinfo reads them (getifaddrs), checked against iproute2's view."""

from __future__ import annotations

import ipaddress
import json
import subprocess

from collections.abc import Callable

import pytest

from x11passthrough import _netinfo

from infra.ci import require_executables
from infra.network import NetNamespace


def ip_view() -> set[tuple[str, ipaddress.IPv4Interface | ipaddress.IPv6Interface]]:
    """Every address of every interface, as ``ip -j addr`` lists them."""
    require_executables("ip")
    done = subprocess.run(["ip", "-j", "addr"], capture_output=True, text=True, check=True)
    return {
        (link["ifname"], ipaddress.ip_interface(f"{info['local']}/{info['prefixlen']}"))
        for link in json.loads(done.stdout)
        for info in link.get("addr_info", [])
        if info.get("family") in {"inet", "inet6"}
    }


def test_addresses_match_iproute2() -> None:
    """Every IPv4 and IPv6 address of every interface, with its prefix."""
    assert {(a.interface, a.address) for a in _netinfo.addresses()} == ip_view()


def test_unknown_interface_has_no_address() -> None:
    assert _netinfo.interface_addresses("x11pt-none0") == []


def test_loopback_binds_admit_loopback_and_the_hosts_own_addresses() -> None:
    """A relay on 127.0.0.1 admits loopback clients and this host's own addresses."""
    networks = set(_netinfo.networks_for([ipaddress.ip_address("127.0.0.1")]))
    assert ipaddress.ip_network("127.0.0.0/8") in networks
    assert ipaddress.ip_network("::1/128") in networks
    for _, address in ip_view():
        assert ipaddress.ip_network(address.ip) in networks


def test_a_wildcard_bind_adds_no_network_of_its_own() -> None:
    networks = set(_netinfo.networks_for([ipaddress.ip_address("0.0.0.0")]))
    assert all(net.num_addresses == 1 or net.is_loopback for net in networks)


@pytest.mark.e2e
def test_a_veth_network_is_found_and_admitted(netns: Callable[[], NetNamespace]) -> None:
    """A relay bound to a veth address admits that veth's /30."""
    ns = netns()
    (iface,) = [a for a in _netinfo.interface_addresses(ns.host_interface) if a.version == 4]
    assert str(iface.ip) == ns.host_address
    assert iface.network.prefixlen == 30
    assert iface.network in _netinfo.networks_for([iface.ip])
    assert ipaddress.ip_address(ns.ns_address) in iface.network


@pytest.mark.e2e
def test_docker_gateway_is_the_docker0_address(docker_gateway: str) -> None:
    """What host-gateway resolves to, read without asking the engine."""
    assert _netinfo.docker_gateway() == docker_gateway
