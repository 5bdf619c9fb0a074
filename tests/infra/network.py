"""
The network around the tests: free ports, interface addresses, listeners, and network
namespaces joined to the host by veth pairs (stand-ins for containers).

Everything here stays on this machine: loopback, docker0 and veth pairs made here.
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import secrets
import socket
import subprocess

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .ci import E2ESetupError, run_checked
from .processes import pid_alive
from .xvfb import STATE_DIR


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on `host` right now (another process may take it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def interface_ipv4(interface: str) -> str:
    """
    Return the first IPv4 address of a network interface of this machine.

    Args:
        interface: The interface name, e.g. ``docker0``.

    Returns:
        The address as a dotted quad.

    Raises:
        E2ESetupError: The interface does not exist or has no IPv4 address.
    """
    done = run_checked(
        ["ip", "-j", "-4", "addr", "show", "dev", interface], what="reading addresses"
    )
    for link in json.loads(done.stdout or "[]"):
        for info in link.get("addr_info", []):
            if info.get("family") == "inet":
                return str(info["local"])
    msg = f"interface {interface!r} has no IPv4 address"
    raise E2ESetupError(msg)


NETNS_PREFIX = "x11pt-"
#: The private range the veth pairs take their /30 from (used only inside this machine).
NETNS_RANGE = "10.213.0.0/16"


@dataclass
class NetNamespace:
    """A network namespace joined to the host by a veth pair in a private /30."""

    name: str
    host_interface: str
    ns_interface: str
    host_address: str
    ns_address: str
    owner_record: Path = field(repr=False)

    def run(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        timeout: float = 60,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """
        Run a command inside the namespace (``ip netns exec``) and wait for it.

        Args:
            argv: The command.
            env: Its environment (this process's when None).
            timeout: Seconds before the command is killed (raises ``TimeoutExpired``).
            input: Text for its standard input.

        Returns:
            The finished process, with text stdout and stderr; never raises for an exit code.
        """
        return subprocess.run(
            ["ip", "netns", "exec", self.name, *argv],
            env=dict(env) if env is not None else None,
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            check=False,
        )

    def delete(self) -> None:
        """Delete the namespace and the veth pair (idempotent)."""
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, check=False)
        subprocess.run(
            ["ip", "link", "del", self.host_interface], capture_output=True, check=False
        )
        self.owner_record.unlink(missing_ok=True)


def free_private_subnet(within: str, prefix: int) -> ipaddress.IPv4Network:
    """
    Pick a random subnet of `within` that overlaps no IPv4 address of this machine.

    Args:
        within: The range to pick from, e.g. ``10.213.0.0/16`` (keep it private).
        prefix: The prefix length of the subnet, e.g. 30.

    Returns:
        The subnet.

    Raises:
        E2ESetupError: 100 random picks all overlapped.
    """
    done = run_checked(["ip", "-j", "-4", "addr", "show"], what="listing addresses")
    used = [
        ipaddress.ip_interface(f"{info['local']}/{info['prefixlen']}").network
        for link in json.loads(done.stdout or "[]")
        for info in link.get("addr_info", [])
    ]
    parent = ipaddress.IPv4Network(within)
    choices = list(parent.subnets(new_prefix=prefix)) if prefix - parent.prefixlen <= 16 else []
    rng = random.Random(secrets.randbits(64))
    for _ in range(100):
        subnet = rng.choice(choices)
        if not any(subnet.overlaps(n) for n in used):
            return subnet
    msg = f"no free /{prefix} in {within}"
    raise E2ESetupError(msg)


def reap_stale_netns() -> list[str]:
    """
    Delete namespaces (and their veths) that killed test runs left behind.

    Returns:
        The names of the deleted namespaces.
    """
    reaped = []
    for record in STATE_DIR.glob(f"netns-{NETNS_PREFIX}*.owner") if STATE_DIR.is_dir() else ():
        try:
            owner, host_interface = record.read_text().split()
        except (OSError, ValueError):
            record.unlink(missing_ok=True)
            continue
        if owner.isdigit() and pid_alive(int(owner)):
            continue
        name = record.name.removeprefix("netns-").removesuffix(".owner")
        NetNamespace(name, host_interface, "", "", "", record).delete()
        reaped.append(name)
    return reaped


def create_netns() -> NetNamespace:
    """
    Create a network namespace connected to the host by a veth pair.

    The pair gets a free /30 of 10.213.0.0/16: the host side the first address, the namespace
    side the second. The namespace's loopback is up. Needs root and iproute2.

    Returns:
        The namespace; call :meth:`NetNamespace.delete` when done.

    Raises:
        E2ESetupError: A command failed (nothing is left behind).
    """
    subnet = free_private_subnet(NETNS_RANGE, 30)
    host_ip, ns_ip = (str(a) for a in subnet.hosts())
    token = secrets.token_hex(4)
    name = f"{NETNS_PREFIX}{token}"
    STATE_DIR.mkdir(mode=0o700, exist_ok=True)
    record = STATE_DIR / f"netns-{name}.owner"
    ns = NetNamespace(name, f"x11h{token}", f"x11n{token}", host_ip, ns_ip, record)
    record.write_text(f"{os.getpid()} {ns.host_interface}\n")
    veth = ["type", "veth", "peer", "name", ns.ns_interface, "netns", name]
    steps = [
        ["ip", "netns", "add", name],
        ["ip", "link", "add", ns.host_interface, *veth],
        ["ip", "addr", "add", f"{host_ip}/30", "dev", ns.host_interface],
        ["ip", "link", "set", ns.host_interface, "up"],
        ["ip", "-n", name, "addr", "add", f"{ns_ip}/30", "dev", ns.ns_interface],
        ["ip", "-n", name, "link", "set", ns.ns_interface, "up"],
        ["ip", "-n", name, "link", "set", "lo", "up"],
    ]
    try:
        for step in steps:
            run_checked(step, what="creating a network namespace")
    except BaseException:
        ns.delete()
        raise
    return ns


def tcp_listeners(port: int) -> list[str]:
    """
    Return the local addresses that TCP sockets listen on for `port` (from ``ss``).

    Args:
        port: The port number.

    Returns:
        Addresses such as ``127.0.0.1`` or ``0.0.0.0`` (IPv6 ones in brackets).
    """
    done = run_checked(["ss", "-Hltn", f"sport = :{port}"], what="listing listeners")
    addresses = []
    for line in done.stdout.splitlines():
        fields = line.split()
        if len(fields) >= 4:
            addresses.append(fields[3].rsplit(":", 1)[0])
    return addresses
