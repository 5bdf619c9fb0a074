"""
The Xauthority class: an immutable sequence of entries read from, and written to, a file.

Import :class:`Xauthority` from :mod:`x11passthrough.xauth`.
"""

from __future__ import annotations

import logging
import os
import socket
import stat

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, overload

import attrs

from .._x11.wire import MIT_MAGIC_COOKIE_1
from ..exceptions import XauthorityError
from .files import LOCK_DEAD, LOCK_RETRIES, LOCK_WAIT, path_text, write_atomically, xauthority_lock
from .format import (
    XauthEntry,
    damage_message,
    dump,
    name_bytes,
    number_bytes,
    parse,
    parse_prefix,
)
from .match import best_entry, check_query, peer_family_address


logger = logging.getLogger("x11passthrough")


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


#: The largest authority file :meth:`Xauthority.load` reads (a real one is a few KiB; 10,000
#: entries take about 620 KiB).
MAX_FILE_SIZE = 16 * 1024 * 1024


def _read_regular_file(path: str) -> bytes | None:
    """Read a regular file without blocking on FIFOs or devices; None when it does not exist."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except FileNotFoundError:
        return None
    except PermissionError as exc:
        raise XauthorityError(
            f"cannot read the Xauthority file {path}: permission denied; it should belong "
            "to you with mode 0600 (fix with chown/chmod), or set XAUTHORITY to a file "
            "you can read"
        ) from exc
    except OSError as exc:
        raise XauthorityError(
            f"cannot read the Xauthority file {path}: {exc.strerror or exc}; set "
            "XAUTHORITY to the authority file itself"
        ) from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = _KINDS.get(stat.S_IFMT(info.st_mode), "not a regular file")
            raise XauthorityError(
                f"cannot read the Xauthority file {path}: it is {kind}; set XAUTHORITY to "
                "the authority file itself"
            )
        if info.st_size > MAX_FILE_SIZE:
            raise XauthorityError(
                f"the Xauthority file {path} is {info.st_size} bytes long, more than any "
                f"authority file ({MAX_FILE_SIZE} bytes at most); set XAUTHORITY to the "
                "right file"
            )
        chunks = []
        while chunk := os.read(fd, MAX_FILE_SIZE + 1):
            chunks.append(chunk)
    except OSError as exc:
        raise XauthorityError(
            f"cannot read the Xauthority file {path}: {exc.strerror or exc}"
        ) from exc
    finally:
        os.close(fd)
    return b"".join(chunks)


_KINDS = {
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a FIFO (a named pipe)",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


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

    # Sequence protocol -------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.entries)

    @overload
    def __getitem__(self, index: int) -> XauthEntry: ...

    @overload
    def __getitem__(self, index: slice) -> Xauthority: ...

    def __getitem__(self, index: int | slice) -> XauthEntry | Xauthority:
        if isinstance(index, slice):
            return Xauthority(self.entries[index])
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
        return cls(parse(data))

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None) -> Xauthority:
        """
        Read an Xauthority file.

        Like libXau and xauth, a file that does not exist has no entries, and so does the
        empty path (``XAUTHORITY=""``, which makes libXau use no authority file). Like them, a
        file whose end is damaged gives the records before the damage (with a warning).
        Only regular files are read, and at most 16 MiB of them: a FIFO, a device
        or a huge file is refused at once instead of blocking or filling memory.

        Args:
            path: The file; by default :func:`default_path`.

        Returns:
            The entries.

        Raises:
            XauthorityError: When the default path cannot be determined, or the file cannot be
                read (e.g. permission denied, a directory, a FIFO); the message names the
                path.
        """
        text = default_path() if path is None else path_text(path)
        if not text:
            logger.debug("Xauthority path is empty (XAUTHORITY=''): no authority entries")
            return cls()
        data = _read_regular_file(text)
        if data is None:
            logger.debug("Xauthority file %s does not exist: no authority entries", text)
            return cls()
        entries, damaged = parse_prefix(data)
        if damaged:
            logger.warning("%s: %s", text, damage_message(len(entries), len(data)))
        logger.debug("read %d Xauthority entries from %s", len(entries), text)
        return cls(entries)

    def dumps(self) -> bytes:
        """
        Return the file contents for these entries, in order.

        Returns:
            The bytes libXau's ``XauWriteAuth`` would write for each entry, concatenated.
        """
        return dump(self.entries)

    def save(
        self,
        path: str | os.PathLike[str],
        *,
        lock: bool = True,
        lock_retries: int = LOCK_RETRIES,
        lock_wait: float = LOCK_WAIT,
        lock_dead: float = LOCK_DEAD,
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
        text = path_text(path)
        payload = self.dumps()
        if not lock:
            write_atomically(text, payload)
        else:
            with xauthority_lock(text, retries=lock_retries, wait=lock_wait, dead=lock_dead):
                write_atomically(text, payload)
        logger.debug("wrote %d Xauthority entries to %s", len(self), text)

    @classmethod
    def update(
        cls,
        path: str | os.PathLike[str],
        change: Callable[[Xauthority], Xauthority],
        *,
        lock_retries: int = LOCK_RETRIES,
        lock_wait: float = LOCK_WAIT,
        lock_dead: float = LOCK_DEAD,
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
        text = path_text(path)
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
        number: int | str | bytes,
        *,
        names: Sequence[str | bytes] = (MIT_MAGIC_COOKIE_1,),
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
        return best_entry(self.entries, family, address, number, names)

    def for_connection(
        self,
        sock_or_peer: socket.socket | tuple[int, Any],
        number: int | str | bytes,
        *,
        names: Sequence[str | bytes] = (MIT_MAGIC_COOKIE_1,),
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
        return Xauthority(tuple(result))

    def remove(
        self,
        *,
        family: int | None = None,
        address: bytes | None = None,
        number: int | str | bytes | None = None,
        name: str | bytes | None = None,
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
        check_query(family, address, number)
        wanted_number = None if number is None else number_bytes(number)
        wanted_name = None if name is None else name_bytes(name)
        kept = tuple(
            entry
            for entry in self.entries
            if not (
                (family is None or entry.family == family)
                and (address is None or entry.address == address)
                and (wanted_number is None or entry.number == wanted_number)
                and (wanted_name is None or entry.name == wanted_name)
            )
        )
        return Xauthority(kept)
