"""
The options of a passthrough: validated once, at construction, into typed values.

Strictly private: the options are documented on :class:`~x11passthrough.X11Passthrough`.
"""

from __future__ import annotations

import os
import re

from pathlib import Path, PurePosixPath
from typing import Literal, get_args

import attrs

from . import _validate
from ._display._name import DisplayName
from ._transport import EngineChoice, Transport
from .exceptions import ConfigurationError


#: How containers authenticate: see :class:`~x11passthrough.X11Passthrough` and the security
#: page. ``"substitute"`` (default), ``"untrusted"`` or ``"forward"``.
AuthMode = Literal["substitute", "untrusted", "forward"]

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"(?=.{{1,253}}\Z){_LABEL}(?:\.{_LABEL})*")


def _display(value: object) -> DisplayName | None:
    if value is None or isinstance(value, DisplayName):
        return value
    if isinstance(value, str):
        return DisplayName.parse(value)
    raise ConfigurationError(
        f"display={value!r} must be a DISPLAY value such as ':0', a DisplayName, or None "
        "for $DISPLAY"
    )


def _xauthority(value: object) -> str | None:
    """None: libXau's default file; "" (as libXau reads ``XAUTHORITY=""``): no file."""
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)):
        raise ConfigurationError(
            f"xauthority={value!r} must be a path (str or os.PathLike), or None for libXau's "
            "default ($XAUTHORITY, else ~/.Xauthority)"
        )
    text = os.fspath(value)
    if not isinstance(text, str) or "\0" in text:
        raise ConfigurationError(f"xauthority={value!r} must be a str path without NUL bytes")
    return text


def _auth(value: object) -> AuthMode:
    modes: tuple[AuthMode, ...] = get_args(AuthMode)
    for mode in modes:
        if value == mode:
            return mode
    raise ConfigurationError(
        f"auth={value!r} is not an auth mode; use 'substitute' (default), 'untrusted' or 'forward'"
    )


def _transport(value: object) -> Transport:
    choices: tuple[Transport, ...] = get_args(Transport)
    for choice in choices:
        if value == choice:
            return choice
    raise ConfigurationError(
        f"transport={value!r} is not a transport; use 'auto' (default), 'unix' (a socket "
        "bind-mounted into the container) or 'tcp'"
    )


def _engine(value: object) -> EngineChoice:
    choices: tuple[EngineChoice, ...] = get_args(EngineChoice)
    for choice in choices:
        if value == choice:
            return choice
    raise ConfigurationError(
        f"engine={value!r} is not an engine; use 'auto' (default), 'docker', 'podman' or "
        "'desktop' (an engine in a VM: Docker Desktop, podman machine, Colima ...)"
    )


def _host_alias(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _HOSTNAME.fullmatch(value):
        raise ConfigurationError(
            f"host_alias={value!r} must be a host name such as 'host.docker.internal'"
        )
    return value


def _gateway(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or any(c in value for c in " \t\n:,="):
        raise ConfigurationError(
            f"gateway={value!r} must be 'host-gateway' or an IP address for --add-host"
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
        raise ConfigurationError(
            f"container_hostname={value!r} must be a host name of 1 to 63 characters, or None"
        )
    return value


def _host_dir(value: object) -> Path | None:
    return None if value is None else _validate.directory(value, name="host_dir")


def _display_range(value: object) -> range | tuple[int, ...]:
    numbers = _validate.display_numbers(value)
    lowest = min(numbers[0], numbers[-1]) if isinstance(numbers, range) else min(numbers)
    if lowest < 1:
        raise ConfigurationError(
            f"display_range={value!r} must not hold display 0 (the usual local display); pass "
            "e.g. range(50, 300)"
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
    """The validated options of a passthrough (see X11Passthrough). Strictly private."""

    display: DisplayName | None = attrs.field(converter=_display)
    xauthority: str | None = attrs.field(converter=_xauthority)
    auth: AuthMode = attrs.field(converter=_auth)
    transport: Transport = attrs.field(converter=_transport)
    engine: EngineChoice = attrs.field(converter=_engine)
    host_alias: str | None = attrs.field(converter=_host_alias)
    gateway: str | None = attrs.field(converter=_gateway)
    bind: tuple[_validate.IPAddress, ...] | None = attrs.field(converter=_bind)
    allow: tuple[_validate.IPNetwork, ...] | None = attrs.field(converter=_allow)
    container_xauthority: PurePosixPath = attrs.field(converter=_container_xauthority)
    container_hostname: str | None = attrs.field(converter=_container_hostname)
    host_dir: Path | None = attrs.field(converter=_host_dir)
    display_range: range | tuple[int, ...] = attrs.field(converter=_display_range)
    untrusted_timeout: int = attrs.field(converter=_untrusted_timeout)
    connect_timeout: float = attrs.field(converter=_connect_timeout)
    setup_timeout: float = attrs.field(converter=_setup_timeout)
    stall_timeout: float = attrs.field(converter=_stall_timeout)
