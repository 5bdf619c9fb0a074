"""
The options of a passthrough: validated once, at construction, into typed values.

The options are documented on :class:`~x11passthrough.X11Passthrough`. Each is converted on
its own (:mod:`._validate`), then the checks between options run, so that every mistake the
options alone show is raised at construction, naming the option.
"""

from __future__ import annotations

import os
import re

from pathlib import Path, PurePosixPath
from typing import Literal, get_args

import attrs

from . import _validate
from ._args import DEFAULT_CONTAINER_XAUTHORITY
from ._display._name import DisplayName
from ._display._reserve import DEFAULT_DISPLAY_RANGE
from .exceptions import ConfigurationError, Mention


#: How containers authenticate: see :class:`~x11passthrough.X11Passthrough` and the security
#: page. ``"substitute"`` (default), ``"untrusted"`` or ``"forward"``.
AuthMode = Literal["substitute", "untrusted", "forward"]
#: How containers reach the relay: ``"unix"`` (a bind-mounted socket), ``"tcp"``, or
#: ``"auto"`` (chosen by the engine: UNIX where it shares this host's kernel).
Transport = Literal["auto", "unix", "tcp"]
#: Which engine runs the containers: ``"docker"`` (Docker Engine), ``"podman"``,
#: ``"desktop"`` (an engine in a VM: Docker Desktop, podman machine, Colima, Lima, OrbStack),
#: or ``"auto"`` (asked over its API socket).
EngineChoice = Literal["auto", "docker", "podman", "desktop"]
#: Shared memory (MIT-SHM): ``"auto"`` (default), True (also ``--ipc host``) or False.
ShmChoice = Literal["auto", True, False]

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"(?=.{{1,253}}\Z){_LABEL}(?:\.{_LABEL})*")


def _display(value: object) -> DisplayName | None:
    if value is None or isinstance(value, DisplayName):
        return value
    if isinstance(value, str):
        return DisplayName.parse(value)
    raise _validate.bad(
        "display",
        value,
        " must be a DISPLAY value such as ':0', a DisplayName, or None for $DISPLAY",
    )


def _xauthority(value: object) -> str | None:
    """None: libXau's default file; "" (as libXau reads ``XAUTHORITY=""``): no file."""
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)):
        raise _validate.bad(
            "xauthority",
            value,
            " must be a path (str or os.PathLike), or None for libXau's default ($XAUTHORITY, "
            "else ~/.Xauthority)",
        )
    text = os.fspath(value)
    if not isinstance(text, str) or "\0" in text:
        raise _validate.bad("xauthority", value, " must be a str path without NUL bytes")
    return text


def auth_mode(value: object) -> AuthMode:
    use = "'substitute' (default), 'untrusted' or 'forward'"
    return _validate.choice(value, "auth", get_args(AuthMode), f"an auth mode; use {use}")


def transport_choice(value: object) -> Transport:
    use = "'auto' (default), 'unix' (a socket bind-mounted into the container) or 'tcp'"
    return _validate.choice(value, "transport", get_args(Transport), f"a transport; use {use}")


def shm_choice(value: object) -> ShmChoice:
    if value == "auto" or value is True or value is False:
        return value
    raise _validate.bad(
        "shm",
        value,
        " is not a shared-memory choice; use 'auto' (default: where the container already "
        "shares the X server's IPC namespace), True (also give it --ipc host) or False (never)",
    )


def engine_choice(value: object) -> EngineChoice:
    use = "'auto' (default), 'docker', 'podman' or 'desktop' (an engine in a VM: Docker Desktop"
    use += ", podman machine, Colima ...)"
    return _validate.choice(value, "engine", get_args(EngineChoice), f"an engine; use {use}")


def _host_alias(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _HOSTNAME.fullmatch(value):
        raise _validate.bad(
            "host_alias", value, " must be a host name such as 'host.docker.internal'"
        )
    return value


def _gateway(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or any(c in value for c in " \t\n:,="):
        raise _validate.bad(
            "gateway", value, " must be 'host-gateway' or an IP address for --add-host"
        )
    return value


def _bind(value: object) -> tuple[_validate.IPAddress, ...] | None:
    return None if value is None else _validate.bind_addresses(value)


def _allow(value: object) -> tuple[_validate.IPNetwork, ...] | None:
    return None if value is None else _validate.networks(value)


def _container_xauthority(value: object) -> PurePosixPath:
    return _validate.container_path(value, name="container_xauthority")


def _container_hostname(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 63 or not _HOSTNAME.fullmatch(value):
        raise _validate.bad(
            "container_hostname", value, " must be a host name of 1 to 63 characters, or None"
        )
    return value


def _host_dir(value: object) -> Path | None:
    return None if value is None else _validate.directory(value, name="host_dir")


def _display_range(value: object) -> range | tuple[int, ...]:
    numbers = _validate.display_numbers(value)
    lowest = min(numbers[0], numbers[-1]) if isinstance(numbers, range) else min(numbers)
    if lowest < 1:
        raise _validate.bad(
            "display_range",
            value,
            " must not hold display 0 (the usual local display)",
            hint=("pass e.g. range(50, 300)",),
        )
    return numbers


def _untrusted_timeout(value: object) -> int:
    return _validate.count(value, name="untrusted_timeout", minimum=1)


def _connect_timeout(value: object) -> float:
    return _validate.seconds(value, name="connect_timeout")


def _setup_timeout(value: object) -> float:
    return _validate.seconds(value, name="setup_timeout")


def _stall_timeout(value: object) -> float:
    return _validate.seconds(value, name="stall_timeout", allow_zero=True)


@attrs.frozen(kw_only=True)
class Options:
    """
    The validated options of a passthrough (see X11Passthrough), with its defaults.

    Raises:
        ConfigurationError: An option is invalid, alone or together with another.
    """

    display: DisplayName | None = attrs.field(default=None, converter=_display)
    xauthority: str | None = attrs.field(default=None, converter=_xauthority)
    auth: AuthMode = attrs.field(default="substitute", converter=auth_mode)
    transport: Transport = attrs.field(default="auto", converter=transport_choice)
    engine: EngineChoice = attrs.field(default="auto", converter=engine_choice)
    host_alias: str | None = attrs.field(default=None, converter=_host_alias)
    gateway: str | None = attrs.field(default=None, converter=_gateway)
    bind: tuple[_validate.IPAddress, ...] | None = attrs.field(default=None, converter=_bind)
    allow: tuple[_validate.IPNetwork, ...] | None = attrs.field(default=None, converter=_allow)
    container_xauthority: PurePosixPath = attrs.field(
        default=DEFAULT_CONTAINER_XAUTHORITY, converter=_container_xauthority
    )
    container_hostname: str | None = attrs.field(default=None, converter=_container_hostname)
    host_dir: Path | None = attrs.field(default=None, converter=_host_dir)
    display_range: range | tuple[int, ...] = attrs.field(
        default=DEFAULT_DISPLAY_RANGE, converter=_display_range
    )
    untrusted_timeout: int = attrs.field(default=5, converter=_untrusted_timeout)
    connect_timeout: float = attrs.field(default=2.0, converter=_connect_timeout)
    setup_timeout: float = attrs.field(default=10.0, converter=_setup_timeout)
    stall_timeout: float = attrs.field(default=0.5, converter=_stall_timeout)
    shm: ShmChoice = attrs.field(default="auto", converter=shm_choice)

    def __attrs_post_init__(self) -> None:
        if self.transport == "unix" and self.bind is not None:
            shown = [str(a) for a in self.bind]
            raise ConfigurationError(
                Mention("bind", shown),
                " is for the TCP transport; the UNIX transport listens on no address",
                option="bind",
                value=shown,
                hint=("pass ", Mention("transport", "tcp"), " (or leave it 'auto')"),
            )
        if self.transport == "unix" and self.allow is not None:
            raise unix_has_no_allow(self.allow)


def unix_has_no_allow(allow: tuple[_validate.IPNetwork, ...]) -> ConfigurationError:
    """Return the error for `allow` on the UNIX transport, which has no TCP clients."""
    shown = [str(n) for n in allow]
    return ConfigurationError(
        Mention("allow", shown),
        " filters the relay's TCP clients, and the UNIX transport has none: only containers "
        "given the mounted socket reach it",
        option="allow",
        value=shown,
        hint=("pass ", Mention("transport", "tcp"), " to filter by address, or leave it out"),
    )
