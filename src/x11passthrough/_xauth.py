"""
Read, match, merge and safely write Xauthority files, the way libXau and xauth(1) do.

Strictly private: import the public names from :mod:`x11passthrough`.

The file format, the matching rules and the lock protocol follow libXau (``AuRead.c``,
``AuWrite.c``, ``AuGetBest.c``, ``AuLock.c``, ``AuUnlock.c``, ``AuFileName.c``); the merge rule
follows xauth(1); the choice of entry for a connected socket follows libxcb
(``xcb_auth.c: get_authptr``).

Text fields: an entry's ``number`` and ``name`` are stored in the file as raw bytes. They are
decoded as **Latin-1**, which maps every byte to exactly one character and back, so any file
round-trips byte for byte (for the ASCII values every real program writes, Latin-1 and ASCII
agree). Latin-1 was chosen over UTF-8 with ``surrogateescape`` because a lone surrogate makes
``print`` and logging fail on a UTF-8 stream, and a number like ``"0"`` must compare equal to
what the user types.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import ipaddress
import logging
import os
import secrets
import socket
import struct
import time

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, overload

import attrs

from .exceptions import XauthorityError, XauthorityLockError


__all__ = [
    "MIT_MAGIC_COOKIE_1",
    "Family",
    "XauthEntry",
    "Xauthority",
    "default_path",
    "peer_family_address",
    "xauthority_lock",
]

_LOG = logging.getLogger("x11passthrough")

#: The name of the only auth protocol X servers commonly accept: a 16-byte shared secret.
MIT_MAGIC_COOKIE_1 = "MIT-MAGIC-COOKIE-1"

_MAX_FIELD = 0xFFFF
#: Default lock options, the ones xauth(1) uses: 10 tries, 2 s apart, stale after 600 s.
_LOCK_RETRIES = 10
_LOCK_WAIT = 2.0
_LOCK_DEAD = 600.0
#: How often a lock attempt may find its ``-c`` file removed under it before giving up.
_LOCK_ENOENT_LIMIT = 100
#: How many random temporary names :meth:`Xauthority.save` tries before giving up.
_TEMP_ATTEMPTS = 100


class Family(enum.IntEnum):
    """
    The address families an Xauthority entry can have (``X11/X.h`` and ``X11/Xauth.h``).

    Values 0 to 6 are the X protocol's host families; 252 and up exist only in authority
    files. Entries read from a file keep family values not listed here as plain ``int``.
    """

    #: IPv4; the address is the 4 bytes of the address in network order.
    INTERNET = 0
    #: DECnet (obsolete).
    DECNET = 1
    #: Chaosnet (obsolete).
    CHAOS = 2
    #: "Server interpreted" addresses such as ``localuser:alice`` (type, NUL, value).
    SERVER_INTERPRETED = 5
    #: IPv6; the address is the 16 bytes of the address.
    INTERNET6 = 6
    #: Local non-network authentication.
    LOCAL_HOST = 252
    #: A Kerberos 5 principal.
    KRB5_PRINCIPAL = 253
    #: A SUN-DES netname.
    NETNAME = 254
    #: A local (UNIX socket or loopback) connection; the address is the host name.
    LOCAL = 256
    #: Matches every address: the entry's address is ignored when matching.
    WILD = 65535


_FAMILIES: dict[int, Family] = {int(member): member for member in Family}


def _shown(value: str | bytes) -> str:
    """Return ``repr(value)``, cut short for absurdly long values (never used for data)."""
    if len(value) <= 80:
        return repr(value)
    return f"{value[:60]!r}... ({len(value)} long)"


def _to_family(value: int) -> Family | int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise XauthorityError(
            f"XauthEntry.family must be an int (a Family), not {type(value).__name__}"
        )
    if not 0 <= value <= _MAX_FIELD:
        raise XauthorityError(
            f"XauthEntry.family {value} is out of range: families are 16-bit values "
            "(0 to 65535); use a Family member such as Family.LOCAL"
        )
    return _FAMILIES.get(value, value)


def _check_bytes(_instance: object, attribute: attrs.Attribute[bytes], value: object) -> None:
    if not isinstance(value, bytes):
        hint = "; encode it first, e.g. with .encode()" if isinstance(value, str) else ""
        raise XauthorityError(
            f"XauthEntry.{attribute.name} must be bytes, not {type(value).__name__}{hint}"
        )
    if len(value) > _MAX_FIELD:
        raise XauthorityError(
            f"XauthEntry.{attribute.name} is {len(value)} bytes long; the Xauthority format "
            f"stores at most {_MAX_FIELD} bytes per field"
        )


def _check_text(_instance: object, attribute: attrs.Attribute[str], value: object) -> None:
    if not isinstance(value, str):
        raise XauthorityError(
            f"XauthEntry.{attribute.name} must be a str, not {type(value).__name__}"
        )
    if attribute.name == "number" and not value.isascii():
        raise XauthorityError(
            f"XauthEntry.number {_shown(value)} is not ASCII; it is the display number in "
            "decimal, e.g. '0', or '' for any display"
        )
    try:
        size = len(value.encode("latin-1"))
    except UnicodeEncodeError:
        raise XauthorityError(
            f"XauthEntry.{attribute.name} {_shown(value)} has characters beyond U+00FF, which "
            "the Xauthority format cannot store; auth names are ASCII, e.g. "
            f"{MIT_MAGIC_COOKIE_1!r}"
        ) from None
    if size > _MAX_FIELD:
        raise XauthorityError(
            f"XauthEntry.{attribute.name} is {size} characters long; the Xauthority format "
            f"stores at most {_MAX_FIELD} bytes per field"
        )


def _hidden(data: bytes) -> str:
    return f"<{len(data)} bytes hidden>"


@attrs.frozen
class XauthEntry:
    """
    One record of an Xauthority file.

    The repr never shows :attr:`data`, only its length. Entries read from a file are taken as
    they are (their ``number`` may then hold non-ASCII characters, which ``attrs.evolve``
    rejects like the constructor does).

    Attributes:
        family: A :class:`Family`, or a plain ``int`` for a family value libXau does not
            define (kept as read from a file).
        address: The address bytes: the host name for :attr:`Family.LOCAL`, 4 or 16 raw
            address bytes for :attr:`Family.INTERNET` / :attr:`Family.INTERNET6`, anything
            (ignored when matching) for :attr:`Family.WILD`.
        number: The display number in decimal, e.g. ``"0"``; ``""`` matches every display.
        name: The auth protocol name, e.g. ``"MIT-MAGIC-COOKIE-1"``.
        data: The secret (16 bytes for MIT-MAGIC-COOKIE-1). Never shown in reprs or logs.

    Raises:
        XauthorityError: When a field has the wrong type, is longer than 65535 bytes, the
            family is not a 16-bit value, the number is not ASCII, or the name has a character
            beyond U+00FF. The message names the field.
    """

    family: Family | int = attrs.field(converter=_to_family)
    address: bytes = attrs.field(validator=_check_bytes)
    number: str = attrs.field(validator=_check_text)
    name: str = attrs.field(validator=_check_text)
    data: bytes = attrs.field(validator=_check_bytes, repr=_hidden)


_new_object = object.__new__
_ENTRY_SETTERS: tuple[Callable[[object, object], None], ...] = tuple(
    vars(XauthEntry)[name].__set__ for name in ("family", "address", "number", "name", "data")
)


def _damage(data: bytes) -> XauthorityError:
    """Walk `data` carefully and describe where it stops being well-formed."""
    size = len(data)
    pos = 0
    index = 0
    while pos < size:
        start = pos
        steps: list[tuple[str, int | None]] = [("family", 2)]
        for field in ("address", "number", "name", "data"):
            steps += [(f"{field} length", 2), (field, None)]
        length = 0
        for what, need in steps:
            count = length if need is None else need
            if size - pos < count:
                fix = f", or cut it to its first {start} bytes" if start else ""
                return XauthorityError(
                    f"Xauthority data is truncated: record {index} (which starts at byte offset "
                    f"{start}) needs {count} bytes for its {what} at byte offset {pos}, but the "
                    f"data ends at byte offset {size}. The file is damaged (libXau would "
                    f"silently ignore record {index} and everything after it); recreate it "
                    f"(e.g. with xauth){fix}"
                )
            if need is not None and what != "family":
                length = data[pos] << 8 | data[pos + 1]
            pos += count
        index += 1
    return XauthorityError("Xauthority data is malformed")  # pragma: no cover - not reached


def _parse(data: bytes) -> tuple[XauthEntry, ...]:
    """
    Parse the records of an Xauthority file.

    The loop has no bounds checks: a record that runs past the end either raises IndexError
    when a length field is read, or leaves the position past the end; both are then described
    precisely by :func:`_damage`.
    """
    entries: list[XauthEntry] = []
    append = entries.append
    families = _FAMILIES.get
    new = _new_object
    set_family, set_address, set_number, set_name, set_data = _ENTRY_SETTERS
    size = len(data)
    pos = 0
    try:
        while pos < size:
            family = data[pos] << 8 | data[pos + 1]
            end = pos + 4 + (data[pos + 2] << 8 | data[pos + 3])
            address = data[pos + 4 : end]
            pos = end + 2 + (data[end] << 8 | data[end + 1])
            number = data[end + 2 : pos].decode("latin-1")
            end = pos + 2 + (data[pos] << 8 | data[pos + 1])
            name = data[pos + 2 : end].decode("latin-1")
            pos = end + 2 + (data[end] << 8 | data[end + 1])
            entry = new(XauthEntry)
            set_family(entry, families(family, family))
            set_address(entry, address)
            set_number(entry, number)
            set_name(entry, name)
            set_data(entry, data[end + 2 : pos])
            append(entry)
    except IndexError:
        raise _damage(data) from None
    if pos != size:
        raise _damage(data)
    return tuple(entries)


_pack_head = struct.Struct(">HH").pack
_pack_length = struct.Struct(">H").pack


def _dump(entries: Iterable[XauthEntry]) -> bytes:
    parts: list[bytes] = []
    extend = parts.extend
    for entry in entries:
        number = entry.number.encode("latin-1")
        name = entry.name.encode("latin-1")
        extend(
            (
                _pack_head(entry.family, len(entry.address)),
                entry.address,
                _pack_length(len(number)),
                number,
                _pack_length(len(name)),
                name,
                _pack_length(len(entry.data)),
                entry.data,
            )
        )
    return b"".join(parts)


def default_path(*, environ: Mapping[str, str] | None = None) -> str:
    """
    Return the Xauthority path X clients use, exactly as libXau's ``XauFileName`` does.

    ``$XAUTHORITY`` when it is set, **even to the empty string** (libXau then uses no
    authority file at all); otherwise ``$HOME/.Xauthority`` (``/.Xauthority`` when ``HOME``
    is ``/`` or empty). There is no fallback to the password database.

    Args:
        environ: The environment to read; ``os.environ`` when omitted.

    Returns:
        The path, possibly ``""``.

    Raises:
        XauthorityError: When neither ``XAUTHORITY`` nor ``HOME`` is set.
    """
    env = os.environ if environ is None else environ
    if "XAUTHORITY" in env:
        return env["XAUTHORITY"]
    home = env.get("HOME")
    if home is None:
        raise XauthorityError(
            "cannot find the Xauthority file: neither XAUTHORITY nor HOME is set; set "
            "XAUTHORITY to the file's path (or HOME to use $HOME/.Xauthority)"
        )
    if home == "/":
        return "/.Xauthority"
    return home + "/.Xauthority"


def _path_text(path: str | os.PathLike[str]) -> str:
    text = os.fspath(path)
    if not isinstance(text, str):
        raise XauthorityError(f"Xauthority paths must be str or PathLike[str], not {text!r}")
    return text


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


def _check_query(family: object, address: object, number: object) -> None:
    """Reject query values that could never equal an entry's field (a likely mistake)."""
    if family is not None and (isinstance(family, bool) or not isinstance(family, int)):
        raise XauthorityError(f"the family must be an int (a Family), not {type(family).__name__}")
    if address is not None and not isinstance(address, bytes):
        hint = "; encode it first, e.g. with .encode()" if isinstance(address, str) else ""
        raise XauthorityError(f"the address must be bytes, not {type(address).__name__}{hint}")
    if number is not None and (isinstance(number, bool) or not isinstance(number, (int, str))):
        raise XauthorityError(
            f"the display number must be an int or str, not {type(number).__name__}"
        )


def _to_tuple(entries: Iterable[XauthEntry]) -> tuple[XauthEntry, ...]:
    return tuple(entries)


def _same_display(a: XauthEntry, b: XauthEntry) -> bool:
    return a.family == b.family and a.address == b.address and a.number == b.number


@attrs.frozen
class Xauthority(Sequence[XauthEntry]):
    """
    The entries of an Xauthority file, as an immutable sequence.

    Build one with :meth:`load` (a file), :meth:`loads` (bytes) or from entries
    (``Xauthority([entry, ...])``). Changes return new objects: :meth:`merge`, :meth:`remove`.
    Write with :meth:`save`, or use :meth:`update` for a read-modify-write under the file's
    lock. Indexing with a slice returns an :class:`Xauthority`.

    Attributes:
        entries: The entries in file order.
    """

    entries: tuple[XauthEntry, ...] = attrs.field(default=(), converter=_to_tuple)

    @entries.validator
    def _check_entries(self, _attribute: attrs.Attribute[Any], value: tuple[Any, ...]) -> None:
        for index, entry in enumerate(value):
            if not isinstance(entry, XauthEntry):
                raise XauthorityError(
                    f"Xauthority entries must be XauthEntry objects; entry {index} is a "
                    f"{type(entry).__name__}"
                )

    @classmethod
    def _of(cls, entries: tuple[XauthEntry, ...]) -> Xauthority:
        """Build an instance from entries that are already checked."""
        instance = _new_object(cls)
        _set_entries(instance, entries)
        return instance

    # Sequence protocol -------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.entries)

    @overload
    def __getitem__(self, index: int) -> XauthEntry: ...

    @overload
    def __getitem__(self, index: slice) -> Xauthority: ...

    def __getitem__(self, index: int | slice) -> XauthEntry | Xauthority:
        if isinstance(index, slice):
            return self._of(self.entries[index])
        return self.entries[index]

    def __iter__(self) -> Iterator[XauthEntry]:
        return iter(self.entries)

    def __contains__(self, value: object) -> bool:
        return value in self.entries

    # Reading and writing -----------------------------------------------------------------

    @classmethod
    def loads(cls, data: bytes | bytearray | memoryview) -> Xauthority:
        """
        Parse the contents of an Xauthority file.

        ``Xauthority.loads(b).dumps() == b`` for every well-formed ``b``.

        Args:
            data: The file's bytes (an empty file has no entries).

        Returns:
            The entries.

        Raises:
            XauthorityError: When the data is truncated or has trailing garbage; the message
                names the record index and the byte offsets.
        """
        if not isinstance(data, bytes):
            if not isinstance(data, (bytearray, memoryview)):
                raise XauthorityError(f"Xauthority data must be bytes, not {type(data).__name__}")
            data = bytes(data)
        return cls._of(_parse(data))

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None) -> Xauthority:
        """
        Read an Xauthority file.

        Like libXau and xauth, a file that does not exist has no entries, and so does the
        empty path (``XAUTHORITY=""``, which makes libXau use no authority file).

        Args:
            path: The file; by default :func:`default_path`.

        Returns:
            The entries.

        Raises:
            XauthorityError: When the default path cannot be determined, the file cannot be
                read (e.g. permission denied, a directory), or its contents are malformed;
                the message names the path.
        """
        text = default_path() if path is None else _path_text(path)
        if not text:
            _LOG.debug("Xauthority path is empty (XAUTHORITY=''): no authority entries")
            return cls()
        try:
            with open(text, "rb") as file:
                data = file.read()
        except FileNotFoundError:
            _LOG.debug("Xauthority file %s does not exist: no authority entries", text)
            return cls()
        except PermissionError as exc:
            raise XauthorityError(
                f"cannot read the Xauthority file {text}: permission denied; it should belong "
                "to you with mode 0600 (fix with chown/chmod), or set XAUTHORITY to a file "
                "you can read"
            ) from exc
        except OSError as exc:
            raise XauthorityError(
                f"cannot read the Xauthority file {text}: {exc.strerror or exc}; set "
                "XAUTHORITY to the authority file itself"
            ) from exc
        try:
            result = cls.loads(data)
        except XauthorityError as exc:
            raise XauthorityError(f"{text}: {exc}") from None
        _LOG.debug("read %d Xauthority entries from %s", len(result), text)
        return result

    def dumps(self) -> bytes:
        """
        Return the file contents for these entries, in order.

        Returns:
            The bytes libXau's ``XauWriteAuth`` would write for each entry, concatenated.
        """
        return _dump(self.entries)

    def save(
        self,
        path: str | os.PathLike[str],
        *,
        lock: bool = True,
        lock_retries: int = _LOCK_RETRIES,
        lock_wait: float = _LOCK_WAIT,
        lock_dead: float = _LOCK_DEAD,
    ) -> None:
        """
        Write these entries to a file, atomically and under libXau's lock.

        Steps: take the lock (``PATH-c``, ``PATH-l``, see :func:`xauthority_lock`); create a
        temporary file with a random name in the same directory (``O_EXCL``, ``O_NOFOLLOW``,
        mode 0600; a name that exists, such as a planted symlink, is never opened but skipped
        for another one); write; ``fsync``; ``os.replace`` it over ``path``; ``fsync`` the
        directory; unlock. On any failure the temporary file is removed and the lock released,
        and ``path`` keeps its old contents.

        The new file is a regular file with mode 0600 owned by the caller: like xauth, a
        symlink at ``path`` is replaced rather than followed, and the old mode and owner are
        not kept. The entries are written in order (xauth would move MIT-MAGIC-COOKIE-1
        entries first).

        Args:
            path: The file to write.
            lock: Take the lock; pass False only while holding :func:`xauthority_lock` for
                the same path.
            lock_retries: How many times to try the lock.
            lock_wait: Seconds between tries.
            lock_dead: Age in seconds after which a lock is stale and broken (0 breaks any
                lock, like ``xauth -b``).

        Raises:
            XauthorityError: When the file cannot be written; the message names the path.
            XauthorityLockError: When the lock is still held by someone else after the
                retries.
        """
        text = _path_text(path)
        payload = self.dumps()
        if not lock:
            _write_atomically(text, payload)
        else:
            with xauthority_lock(text, retries=lock_retries, wait=lock_wait, dead=lock_dead):
                _write_atomically(text, payload)
        _LOG.debug("wrote %d Xauthority entries to %s", len(self), text)

    @classmethod
    def update(
        cls,
        path: str | os.PathLike[str],
        change: Callable[[Xauthority], Xauthority],
        *,
        lock_retries: int = _LOCK_RETRIES,
        lock_wait: float = _LOCK_WAIT,
        lock_dead: float = _LOCK_DEAD,
    ) -> Xauthority:
        """
        Read, change and write a file under one acquisition of its lock.

        This is the safe way to add or remove entries in a file other programs (xauth, sshd,
        display managers) may change at the same time. The file is only written when
        ``change`` returns different entries.

        Args:
            path: The file (a missing file starts empty).
            change: Gets the current entries, returns the new ones, e.g.
                ``lambda auth: auth.merge([entry])``.
            lock_retries: See :meth:`save`.
            lock_wait: See :meth:`save`.
            lock_dead: See :meth:`save`.

        Returns:
            The entries now in the file.

        Raises:
            XauthorityError: When reading or writing fails, or ``change`` does not return an
                :class:`Xauthority`.
            XauthorityLockError: When the lock cannot be taken.
        """
        text = _path_text(path)
        with xauthority_lock(text, retries=lock_retries, wait=lock_wait, dead=lock_dead):
            current = cls.load(text)
            changed = change(current)
            if not isinstance(changed, Xauthority):
                raise XauthorityError(
                    f"the change function for {text} returned a {type(changed).__name__}, not "
                    "an Xauthority; the file was left unchanged"
                )
            if changed != current:
                changed.save(text, lock=False)
        return changed

    # Matching ----------------------------------------------------------------------------

    def find(
        self,
        family: int,
        address: bytes,
        number: str | int,
        *,
        names: Sequence[str] = (MIT_MAGIC_COOKIE_1,),
    ) -> XauthEntry | None:
        """
        Return the entry libXau's ``XauGetBestAuthByAddr`` picks, or None.

        An entry matches when (1) the wanted family or the entry's family is
        :attr:`Family.WILD`, or both family and address are equal; (2) the wanted number or
        the entry's number is empty, or they are equal strings (``"0"`` is not ``"00"``);
        (3) its name is in ``names``. Among matches the one whose name comes first in
        ``names`` wins, and among those the first in the file: a specific entry has no
        priority over a wildcard one. The scan stops at the first match named ``names[0]``.
        With ``names=()`` the first entry passing (1) and (2) is returned, whatever its name.

        Args:
            family: The connection's family (see :func:`peer_family_address`).
            address: The connection's address bytes.
            number: The display number, e.g. ``0`` or ``"0"``.
            names: Acceptable auth names, most preferred first.

        Returns:
            The chosen entry, or None.

        Raises:
            XauthorityError: When an argument has the wrong type (e.g. a str address, or a
                single name instead of a sequence of names).
        """
        _check_query(family, address, number)
        number = str(number)
        if isinstance(names, (str, bytes)):
            raise XauthorityError(
                f"names must be a sequence of auth names, e.g. ({MIT_MAGIC_COOKIE_1!r},), "
                f"not the single {type(names).__name__} {_shown(names)}"
            )
        rank: dict[str, int] = {}
        for index, name in enumerate(names):
            rank.setdefault(name, index)
        wild = Family.WILD
        any_address = family == wild
        best: XauthEntry | None = None
        best_rank = len(names)
        for entry in self.entries:
            entry_family = entry.family
            if not (
                any_address
                or entry_family == wild
                or (entry_family == family and entry.address == address)
            ):
                continue
            if number and entry.number and entry.number != number:
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

    def for_connection(
        self,
        sock_or_peer: socket.socket | tuple[int, Any],
        number: str | int,
        *,
        names: Sequence[str] = (MIT_MAGIC_COOKIE_1,),
        hostname: str | bytes | None = None,
    ) -> XauthEntry | None:
        """
        Return the entry an X client (libxcb) would send on a connection, or None.

        The family and address come from :func:`peer_family_address` (UNIX sockets and the
        loopback addresses 127.0.0.1 and ::1 look up :attr:`Family.LOCAL` with this host's
        name; other peers their IP address); the entry is then chosen by :meth:`find`.
        libxcb built with XDMCP asks for ``("XDM-AUTHORIZATION-1", "MIT-MAGIC-COOKIE-1")``;
        pass that as ``names`` to mirror it exactly.

        Args:
            sock_or_peer: A connected socket, or ``(address_family, peer)`` as accepted by
                :func:`peer_family_address`.
            number: The display number.
            names: Acceptable auth names, most preferred first.
            hostname: The local host name; ``socket.gethostname()`` by default.

        Returns:
            The chosen entry, or None.

        Raises:
            XauthorityError: When the socket is not connected or not an X transport.
        """
        family, address = peer_family_address(sock_or_peer, hostname=hostname)
        return self.find(family, address, number, names=names)

    # Changing ----------------------------------------------------------------------------

    def merge(self, entries: Iterable[XauthEntry]) -> Xauthority:
        """
        Return these entries with ``entries`` merged in, by xauth's ``merge``/``add`` rule.

        Each new entry replaces, in place, the first entry with the same family, address,
        number and name (the data changes, the position stays); otherwise it is appended.
        New entries are also matched against the ones appended before them, so duplicates
        among ``entries`` collapse to the last one. (xauth 1.1 additionally re-sorts the file,
        putting entries with an empty number and then FamilyWild entries last, and writes
        MIT-MAGIC-COOKIE-1 entries first; this method keeps the order, so the caller decides
        it. Remember libXau picks the *first* match: put specific entries before wildcard
        ones.)

        Args:
            entries: The entries to add or replace.

        Returns:
            A new :class:`Xauthority`.

        Raises:
            XauthorityError: When an item of ``entries`` is not an :class:`XauthEntry`.
        """
        result = list(self.entries)
        for new in entries:
            if not isinstance(new, XauthEntry):
                raise XauthorityError(
                    f"can only merge XauthEntry objects, not {type(new).__name__}"
                )
            for index, old in enumerate(result):
                if old.name == new.name and _same_display(old, new):
                    result[index] = new
                    break
            else:
                result.append(new)
        return self._of(tuple(result))

    def remove(
        self,
        *,
        family: int | None = None,
        address: bytes | None = None,
        number: str | int | None = None,
        name: str | None = None,
    ) -> Xauthority:
        """
        Return these entries without the ones whose fields equal all the given values.

        Omitted fields match anything: ``remove(family=Family.LOCAL, address=host,
        number="5")`` drops every entry of that display whatever its auth name, like
        ``xauth remove HOST/unix:5``. Comparison is exact: unlike xauth, an entry is not
        removed just because its family is FamilyWild or its number empty (those entries also
        serve other displays; remove them with ``family=Family.WILD`` or ``number=""``).
        Calling it with no field removes everything.

        Args:
            family: The family to match.
            address: The address bytes to match.
            number: The display number to match (``""`` matches only empty numbers).
            name: The auth name to match.

        Returns:
            A new :class:`Xauthority`.
        """
        _check_query(family, address, number)
        if number is not None:
            number = str(number)
        kept = tuple(
            entry
            for entry in self.entries
            if not (
                (family is None or entry.family == family)
                and (address is None or entry.address == address)
                and (number is None or entry.number == number)
                and (name is None or entry.name == name)
            )
        )
        return self._of(kept)


_set_entries: Callable[[object, object], None] = vars(Xauthority)["entries"].__set__


# Locking ---------------------------------------------------------------------------------


def _check_lock_options(path: str, retries: int, wait: float, dead: float) -> None:
    if not path or path.endswith("/"):
        raise XauthorityError(f"cannot lock Xauthority path {path!r}: it must name a file")
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 1:
        raise XauthorityError(f"lock_retries must be an int of at least 1, not {retries!r}")
    if not isinstance(wait, (int, float)) or wait < 0:
        raise XauthorityError(f"lock_wait must be a number of seconds >= 0, not {wait!r}")
    if not isinstance(dead, (int, float)) or dead < 0:
        raise XauthorityError(f"lock_dead must be a number of seconds >= 0, not {dead!r}")


def _remove_quietly(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


def _break_stale_lock(creat_name: str, link_name: str, dead: float) -> None:
    try:
        status = os.stat(creat_name)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise XauthorityError(f"cannot check the lock file {creat_name}: {exc.strerror}") from exc
    age = time.time() - status.st_ctime
    if dead == 0 or age > dead:
        _LOG.warning(
            "breaking the Xauthority lock %s / %s (%.0f s old, limit %.0f s)",
            creat_name,
            link_name,
            age,
            dead,
        )
        try:
            _remove_quietly(creat_name)
            _remove_quietly(link_name)
        except OSError as exc:
            raise XauthorityError(
                f"cannot remove the stale lock files {creat_name} and {link_name}: "
                f"{exc.strerror}; remove them by hand"
            ) from exc


def _create_lock_file(path: str, creat_name: str) -> tuple[int, int] | None:
    """Create ``PATH-c`` exclusively; return its (device, inode), or None when it exists."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
    try:
        fd = os.open(creat_name, flags, 0o600)
    except FileExistsError:
        return None
    except OSError as exc:
        directory = os.path.dirname(creat_name) or "."
        raise XauthorityError(
            f"cannot lock the Xauthority file {path}: cannot create {creat_name} "
            f"({exc.strerror}); check that the directory {directory} exists and is writable"
        ) from exc
    try:
        status = os.fstat(fd)
    finally:
        os.close(fd)
    return status.st_dev, status.st_ino


def _link_lock(creat_name: str, link_name: str) -> bool | None:
    """Link ``PATH-c`` to ``PATH-l``: True when locked, False when held, None when -c vanished."""
    try:
        links_supported = os.pathconf(creat_name, "PC_LINK_MAX") != 1
    except (OSError, ValueError):
        links_supported = True
    try:
        if links_supported:
            os.link(creat_name, link_name)
        else:
            os.rename(creat_name, link_name)
    except FileNotFoundError:
        return None
    except FileExistsError:
        return False
    except OSError as exc:
        raise XauthorityError(
            f"cannot lock: linking {creat_name} to {link_name} failed ({exc.strerror})"
        ) from exc
    return True


def _remove_own(creat_name: str, identity: tuple[int, int] | None) -> None:
    """Remove ``PATH-c`` if it is still the file this process created."""
    if identity is None:
        return
    with contextlib.suppress(OSError):
        status = os.stat(creat_name, follow_symlinks=False)
        if (status.st_dev, status.st_ino) == identity:
            os.remove(creat_name)


def _acquire(path: str, retries: int, wait: float, dead: float) -> None:
    creat_name = path + "-c"
    link_name = path + "-l"
    _break_stale_lock(creat_name, link_name, dead)
    created: tuple[int, int] | None = None
    vanished = 0
    tries = retries
    try:
        while tries > 0:
            if created is None:
                created = _create_lock_file(path, creat_name)
            if created is not None:
                linked = _link_lock(creat_name, link_name)
                if linked:
                    return
                if linked is None:
                    created = None
                    vanished += 1
                    if vanished <= _LOCK_ENOENT_LIMIT:
                        continue
            tries -= 1
            if tries > 0:
                time.sleep(wait)
    except BaseException:
        _remove_own(creat_name, created)
        raise
    _remove_own(creat_name, created)
    raise XauthorityLockError(
        f"cannot lock the Xauthority file {path}: the lock files {creat_name} / {link_name} "
        f"are held by another process (tried {retries} times, {wait:g} s apart). If no xauth, "
        f"display manager or sshd is writing the file right now, the lock is stale: remove "
        f"both files (rm -f {creat_name} {link_name}), or wait {dead:g} s after it was taken "
        "for it to be broken automatically"
    )


def _release(path: str) -> None:
    for name in (path + "-c", path + "-l"):
        try:
            _remove_quietly(name)
        except OSError as exc:
            _LOG.warning(
                "cannot remove the Xauthority lock file %s (%s); remove it by hand, or "
                "other programs will wait for it",
                name,
                exc.strerror,
            )


@contextlib.contextmanager
def xauthority_lock(
    path: str | os.PathLike[str],
    *,
    retries: int = _LOCK_RETRIES,
    wait: float = _LOCK_WAIT,
    dead: float = _LOCK_DEAD,
) -> Iterator[None]:
    """
    Hold libXau's lock on an Xauthority file, the one xauth, xdm and sshd's xauth honour.

    The protocol (``XauLockAuth``): when ``PATH-c`` exists and its ctime is more than
    ``dead`` seconds old, it and ``PATH-l`` are removed as stale; then ``PATH-c`` is created
    exclusively (mode 0600) and hard-linked to ``PATH-l``. The lock is held when the link
    succeeds. If another process holds it, wait ``wait`` seconds and try again, ``retries``
    times in all; if ``PATH-c`` vanishes between creating and linking, try again at once.
    Leaving the block removes both files. A failed attempt removes the ``PATH-c`` it created.
    The names come from the path as given; symlinks are not resolved.

    Args:
        path: The Xauthority file.
        retries: How many times to try.
        wait: Seconds between tries.
        dead: Age in seconds after which a lock is stale (0: break any lock).

    Yields:
        Nothing; the lock is held inside the ``with`` block.

    Raises:
        XauthorityError: When the lock files cannot be created (e.g. missing directory).
        XauthorityLockError: When the lock is still held by another process after the tries.
    """
    text = _path_text(path)
    _check_lock_options(text, retries, wait, dead)
    _acquire(text, retries, wait, dead)
    _LOG.debug("locked Xauthority file %s", text)
    try:
        yield
    finally:
        _release(text)
        _LOG.debug("unlocked Xauthority file %s", text)


# Writing ---------------------------------------------------------------------------------


def _temp_name(base: str) -> str:
    """Return a fresh random name for the temporary file next to the file `base`."""
    return f"{base}.tmp-{secrets.token_hex(8)}"


def _open_temporary(path: str, directory: str, base: str) -> tuple[str, int]:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(_TEMP_ATTEMPTS):
        temporary = os.path.join(directory, _temp_name(base))
        try:
            return temporary, os.open(temporary, flags, 0o600)
        except FileExistsError:
            _LOG.warning(
                "temporary file name %s is already taken (by a file or symlink); trying "
                "another name",
                temporary,
            )
        except OSError as exc:
            raise XauthorityError(
                f"cannot write the Xauthority file {path}: cannot create a temporary file in "
                f"{directory} ({exc.strerror}); check that the directory exists and is writable"
            ) from exc
    raise XauthorityError(
        f"cannot write the Xauthority file {path}: {_TEMP_ATTEMPTS} random temporary names in "
        f"{directory} were all taken; some other program is creating files there"
    )


def _fsync_directory(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        _LOG.debug("cannot open %s to fsync it: %s", directory, exc.strerror)
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            _LOG.warning("fsync of directory %s failed: %s", directory, exc.strerror)
    finally:
        os.close(fd)


def _write_atomically(path: str, payload: bytes) -> None:
    directory, base = os.path.split(path)
    directory = directory or "."
    if not base:
        raise XauthorityError(f"cannot write the Xauthority file {path!r}: it must name a file")
    temporary, fd = _open_temporary(path, directory, base)
    try:
        try:
            os.fchmod(fd, 0o600)
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        if isinstance(exc, OSError):
            raise XauthorityError(
                f"cannot write the Xauthority file {path}: {exc.strerror or exc}; the file was "
                "left unchanged"
            ) from exc
        raise
    _fsync_directory(directory)
