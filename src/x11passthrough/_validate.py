"""
Converters for arguments that cross a public edge: one check each, one exception.

Every public constructor or method that takes one of these values
(:class:`~x11passthrough.X11Passthrough`, :class:`~x11passthrough.display.DisplayLocator`,
the relay options) converts it here once, into a typed value, and raises
:class:`~x11passthrough.exceptions.ConfigurationError` naming the value and a valid form.
Lower layers take the typed values and check nothing again.
"""

from __future__ import annotations

import ipaddress
import math
import os

from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import TypeVar

from .exceptions import ConfigurationError, Mention, Words


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: The highest display number whose TCP port (6000+N) still fits in 16 bits.
MAX_DISPLAY_NUMBER = 65535 - 6000

_BROADCAST = ipaddress.IPv4Address("255.255.255.255")

_Choice = TypeVar("_Choice", bound=str)


def shown(value: str | bytes, *, limit: int = 80) -> str:
    r"""
    Quote `value` for a message, cut short when long (never for secrets).

    The one way the package shows a value in an error, a log line or an X11 reply. Text (a
    user's option) is its ``repr``, the first 60 characters of a longer one. Bytes (often a
    peer's: an auth protocol name, an extension a client asked for) are printable ASCII in
    single quotes, every other byte (and the quote and backslash) as ``\xNN``, so no peer can
    forge a log line or put non-ASCII into a reply; at most `limit` of them, then ``...``.
    """
    if isinstance(value, bytes):
        text = "".join(
            chr(b) if 0x20 <= b < 0x7F and b not in b"'\\" else f"\\x{b:02x}" for b in value
        )
        return f"'{text[:limit]}...'" if len(text) > limit else f"'{text}'"
    if len(value) <= limit:
        return repr(value)
    return f"{value[:60]!r}... ({len(value)} characters)"


def bad(name: str, value: object, *words: str | Mention, hint: Words = ()) -> ConfigurationError:
    """Return the error for option `name`: ``name=value`` and then `words`."""
    return ConfigurationError(Mention(name, value), *words, option=name, value=value, hint=hint)


def about(name: str, value: object, *words: str | Mention, hint: Words = ()) -> ConfigurationError:
    """Return the error for option `name` whose message starts with `words` (not the value)."""
    return ConfigurationError(*words, option=name, value=value, hint=hint)


def choice(value: object, name: str, choices: tuple[_Choice, ...], what: str) -> _Choice:
    """
    Convert one of a ``Literal``'s values (`choices`, e.g. ``get_args(Transport)``).

    Raises:
        ConfigurationError: ``name=value is not {what}``.
    """
    for known in choices:
        if value == known:
            return known
    raise bad(name, value, f" is not {what}")


def _items(value: object, name: str, what: str, example: str) -> list[object]:
    """Return `value` as a list of items: one str or object, or an iterable of them."""
    if isinstance(value, (str, ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return [value]
    if isinstance(value, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return [value]
    if isinstance(value, (bytes, bytearray)) or not isinstance(value, Iterable):
        raise bad(
            name,
            value,
            f" is a {type(value).__name__}, not {what}; pass a string such as {example!r}, or "
            "a list of them",
        )
    return list(value)


def bind_addresses(value: object, *, name: str = "bind") -> tuple[IPAddress, ...]:
    """
    Convert addresses to listen on: one IP address or a list of them.

    Duplicates are dropped. Host names, multicast and broadcast addresses, an empty list and a
    wildcard together with specific addresses of its family are refused.

    Raises:
        ConfigurationError: The value is not such an address or list.
    """
    example = "172.17.0.1"
    found: list[IPAddress] = []
    for item in _items(value, name, "an IP address", example):
        if isinstance(item, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
            ip = item
        elif isinstance(item, str):
            try:
                ip = ipaddress.ip_address(item)
            except ValueError:
                raise about(
                    name,
                    value,
                    f"{name} address {item!r} is not an IP address; pass addresses of this "
                    f"host's interfaces, e.g. '127.0.0.1' or the docker0 address {example!r}",
                ) from None
        else:
            raise about(
                name,
                value,
                f"{name} entry {item!r} is a {type(item).__name__}, not an IP address string "
                f"such as {example!r}",
            )
        if ip.is_multicast or ip == _BROADCAST:
            kind = "multicast" if ip.is_multicast else "broadcast"
            raise about(
                name,
                value,
                f"{name} address {str(ip)!r} is a {kind} address, which a relay cannot listen "
                f"on; pass a unicast address of this host, e.g. {example!r}",
            )
        if ip not in found:
            found.append(ip)
    if not found:
        raise bad(
            name,
            value,
            " names no address",
            hint=("pass e.g. ", Mention(name, ("127.0.0.1",)), ", or None for the default"),
        )
    for wildcard in (ipaddress.IPv4Address("0.0.0.0"), ipaddress.IPv6Address("::")):
        same = [str(ip) for ip in found if ip.version == wildcard.version]
        if len(same) > 1 and wildcard in found:
            raise about(
                name,
                value,
                f"{name} addresses {same!r} overlap: {wildcard} already covers the others; "
                "pass either the wildcard or the specific addresses",
            )
    return tuple(found)


def networks(value: object, *, name: str = "allow") -> tuple[IPNetwork, ...]:
    """
    Convert client networks: one network (CIDR string or :mod:`ipaddress` object) or a list.

    Raises:
        ConfigurationError: The value is not such a network or list, or the list is empty.
    """
    example = "172.17.0.0/16"
    found: list[IPNetwork] = []
    for item in _items(value, name, "a network", example):
        if isinstance(item, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
            net = item
        elif isinstance(item, (str, ipaddress.IPv4Address, ipaddress.IPv6Address)):
            try:
                net = ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise about(
                    name,
                    value,
                    f"{name} entry {item!r} is not a network; use CIDR notation like {example!r}",
                ) from None
        else:
            raise about(
                name,
                value,
                f"{name} entry {item!r} is a {type(item).__name__}, not a network such as "
                f"{example!r}",
            )
        if net not in found:
            found.append(net)
    if not found:
        raise bad(
            name,
            value,
            " admits no client at all",
            hint=(
                "pass the networks to admit, e.g. ",
                Mention(name, [example]),
                ", or None for the default",
            ),
        )
    return tuple(found)


def display_numbers(value: object, *, name: str = "display_range") -> range | tuple[int, ...]:
    """
    Convert the display numbers to choose from: a non-empty ``range`` or list of numbers.

    Raises:
        ConfigurationError: The value is not that, or holds a number outside 0..59535.
    """
    if isinstance(value, range):
        numbers: range | tuple[int, ...] = value
    elif isinstance(value, Iterable) and not isinstance(value, (str, bytes)):
        numbers = tuple(value)
    else:
        raise bad(name, value, " is not a range of display numbers", hint=_A_RANGE)
    if not numbers:
        raise bad(name, value, " is empty", hint=_A_RANGE)
    ends = (numbers[0], numbers[-1]) if isinstance(numbers, range) else numbers
    for number in ends:
        if (
            isinstance(number, bool)
            or not isinstance(number, int)
            or not 0 <= number <= MAX_DISPLAY_NUMBER
        ):
            raise bad(
                name,
                value,
                f" holds {number!r}, not a display number from 0 to {MAX_DISPLAY_NUMBER} "
                "(port 6000+N must fit in 65535)",
                hint=_A_RANGE,
            )
    return numbers


_A_RANGE = ("pass e.g. range(50, 300)",)


def seconds(value: object, *, name: str, allow_zero: bool = False) -> float:
    """
    Convert a duration: a finite number of seconds, positive (or zero where allowed).

    Raises:
        ConfigurationError: The value is not such a number.
    """
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
        or (value == 0 and not allow_zero)
    ):
        what = "0 or a positive" if allow_zero else "a positive"
        raise bad(name, value, f" must be {what} number of seconds")
    return float(value)


def count(value: object, *, name: str, minimum: int = 1) -> int:
    """
    Convert a whole number of at least `minimum`.

    Raises:
        ConfigurationError: The value is not such a number.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise bad(name, value, f" must be a whole number >= {minimum}")
    return value


def directory(value: object, *, name: str) -> Path:
    """
    Convert a host directory given as a string or path-like.

    It must not contain ``:`` or ``,``, which ``docker run --volume`` and ``--mount`` treat as
    separators.

    Raises:
        ConfigurationError: The value is not a path, or holds a separator or a NUL byte.
    """
    path = _path(value, name=name)
    _check_mountable(str(path), name)
    return path


def container_path(value: object, *, name: str) -> PurePosixPath:
    """
    Convert an absolute path inside a container.

    Raises:
        ConfigurationError: The value is not an absolute path, or holds a separator.
    """
    text = os.fspath(value) if isinstance(value, (str, os.PathLike)) else None
    if not isinstance(text, str):
        raise bad(
            name, value, " must be an absolute path string, e.g. '/tmp/.x11passthrough.xauth'"
        )
    path = PurePosixPath(text)
    if not path.is_absolute():
        raise bad(name, str(path), " must be an absolute path")
    _check_mountable(str(path), name)
    return path


def _path(value: object, *, name: str) -> Path:
    if not isinstance(value, (str, os.PathLike)):
        raise bad(name, value, " must be a path (str or os.PathLike)")
    text = os.fspath(value)
    if not isinstance(text, str) or not text or "\0" in text:
        raise bad(name, value, " must be a non-empty path without NUL bytes")
    return Path(text)


def _check_mountable(text: str, name: str) -> None:
    for separator in (":", ","):
        if separator in text:
            raise bad(
                name,
                text,
                f" contains {separator!r}, which docker's --volume and --mount options read as "
                "a separator",
                hint=("choose a path without ':' and ','",),
            )
