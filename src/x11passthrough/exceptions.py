"""
Exceptions raised by x11passthrough.

Every error the library raises on purpose derives from :class:`X11PassthroughError`, so
``except X11PassthroughError`` catches them all. A class also derives from a builtin where that
is what it means (a bad value is a ``ValueError``, a refused endpoint a ``PermissionError``),
and from none where no builtin fits.

An error that an option of the caller's can fix carries that option, the value it had and a
hint (:attr:`X11PassthroughError.option`, :attr:`~X11PassthroughError.value`,
:attr:`~X11PassthroughError.hint`); the message names options as keyword arguments
(``bind='127.0.0.1'``), and :meth:`X11PassthroughError.explain` says it in other words, as
the command line does (``--bind 127.0.0.1``).
"""

from __future__ import annotations

import os

from collections.abc import Callable, Sequence
from typing import Final, final


__all__ = [
    "BindError",
    "ConfigurationError",
    "DisplayAuthorizationError",
    "DisplayError",
    "DisplayNameError",
    "DisplayNotFoundError",
    "DisplayOwnerError",
    "Mention",
    "NoFreeDisplayError",
    "RelayError",
    "RemoteEngineError",
    "SecurityExtensionError",
    "ServeError",
    "X11PassthroughError",
    "X11SetupError",
    "XauthorityError",
    "XauthorityLockError",
    "XvfbError",
]


#: The value of a :class:`Mention` that names an option without a value (``bind=...``).
ANY: Final = ...


@final
class Mention:
    """
    An option named in a message, with the value it should have (or ``...``: any).

    The library spells it as a keyword argument, ``transport='tcp'``; the command line as a
    flag, ``--transport tcp``.

    .. versionadded:: 0.1.0
    """

    __slots__ = ("option", "value")

    def __init__(self, option: str, value: object = ANY) -> None:
        self.option = option
        self.value = value

    def __repr__(self) -> str:
        return f"Mention({self.option!r}, {self.value!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mention):
            return NotImplemented
        return (self.option, self.value) == (other.option, other.value)

    def __hash__(self) -> int:
        return hash(self.option)


#: Words of a message: text, and options named in it.
Words = Sequence["str | Mention"]
#: How options are spelled in a message: a :class:`Mention` to text.
Spelling = Callable[[Mention], str]


def keyword(mention: Mention) -> str:
    """Spell `mention` as a keyword argument: ``bind=...``, ``auth='forward'``, ``host_dir=/a``."""
    if mention.value is ANY:
        return f"{mention.option}=..."
    if isinstance(mention.value, os.PathLike):
        return f"{mention.option}={os.fspath(mention.value)}"
    return f"{mention.option}={mention.value!r}"


class X11PassthroughError(Exception):
    """
    Base class of every error raised by x11passthrough.

    Attributes:
        option: The option (keyword argument) at fault, or that widens what failed; or None.
        value: The value `option` had (None when there is no option).
    """

    option: str | None
    value: object

    def __init__(
        self,
        *words: object,
        option: str | None = None,
        value: object = None,
        hint: Sequence[str | Mention] = (),
    ) -> None:
        self.option = option
        self.value = value
        self._hint = tuple(hint)
        given = [w for w in words if isinstance(w, (str, Mention))]
        self._plain = len(given) != len(words)
        if self._plain:  # a builtin's own arguments, e.g. OSError's (errno, message)
            super().__init__(*words)
            self._words: tuple[str | Mention, ...] = (Exception.__str__(self),)
            if isinstance(self, OSError) and self.strerror is not None:
                self._words = (str(self.strerror),)
        else:
            self._words = tuple(given)
            super().__init__(self.explain(keyword))

    @property
    def hint(self) -> str:
        """What to do, spelled as keyword arguments ("" when the message has no hint apart)."""
        return _spell(self._hint, keyword)

    def explain(self, spell: Callable[[Mention], str]) -> str:
        """Return the message with every option it names spelled by `spell`."""
        text = _spell(self._words, spell)
        hint = _spell(self._hint, spell)
        return f"{text}; {hint}" if text and hint else text or hint

    def __reduce__(self) -> tuple[object, ...]:
        """Pickle the words and fields, not the rendered message."""
        if self._plain:
            reduced = super().__reduce__()
            return reduced if isinstance(reduced, tuple) else (type(self), self.args)
        return (_rebuild, (type(self), self._words, self.option, self.value, self._hint))


def _spell(words: Words, spell: Spelling) -> str:
    return "".join(w if isinstance(w, str) else spell(w) for w in words)


def _rebuild(
    cls: type[X11PassthroughError],
    words: Words,
    option: str | None,
    value: object,
    hint: Words,
) -> X11PassthroughError:
    return cls(*words, option=option, value=value, hint=hint)


class ConfigurationError(X11PassthroughError, ValueError):
    """An option passed to x11passthrough is invalid; it names the option and a valid form."""


class XauthorityError(X11PassthroughError, ValueError):
    """An Xauthority file is malformed, unreadable or cannot be written."""


class XauthorityLockError(XauthorityError, TimeoutError):
    """The lock on an Xauthority file could not be taken in time (libXau lock protocol)."""


class DisplayError(X11PassthroughError):
    """
    A display name is invalid, or the display cannot be used.

    Not a ``ValueError``: only :class:`DisplayNameError` (a bad value) is one.
    """


class DisplayNameError(DisplayError, ValueError):
    """A ``DISPLAY`` value cannot be parsed."""


class DisplayNotFoundError(DisplayError):
    """No live X server answers for a display; the message lists every place tried."""


class DisplayOwnerError(DisplayError, PermissionError):
    """
    The display's endpoint belongs to another user, so no cookie is sent there.

    Raised when every place the display could listen on is missing or owned by a uid other
    than root and the current user (a squatter on ``127.0.0.1:6000+N`` or on the abstract
    socket). The message names the endpoint and its owner; `option` is ``trusted_owners``,
    which admits that owner.
    """


class DisplayAuthorizationError(DisplayError, PermissionError):
    """
    The X server refused the connection the relay would make: wrong or missing cookie.

    Raised at start, before any container runs; the message quotes the server's reason and
    names the authority file that was read.
    """


class NoFreeDisplayError(DisplayError):
    """
    No display number in the requested range could be reserved.

    `option` names the range (``display_range``, or ``range`` for
    :meth:`~x11passthrough.display.DisplayLocator.reserve`) and `value` a wider one.
    """


class BindError(X11PassthroughError, OSError):
    """The relay's listening socket cannot be bound on the requested address."""

    def __str__(self) -> str:
        """Return the message without OSError's ``[Errno N]`` prefix (``errno`` keeps it)."""
        return str(self.strerror) if self.strerror is not None else super().__str__()


class RelayError(X11PassthroughError, RuntimeError):
    """The relay cannot start, or failed while running."""


class X11SetupError(X11PassthroughError, ValueError):
    """An X11 connection-setup message is malformed or not acceptable."""


class SecurityExtensionError(X11PassthroughError, RuntimeError):
    """The X server cannot issue an untrusted cookie (no SECURITY extension, or it refused)."""


class XvfbError(X11PassthroughError, RuntimeError):
    """A private Xvfb cannot start: the program is missing, exited, or did not answer."""


class RemoteEngineError(X11PassthroughError, OSError):
    """
    The engine is on another host and its containers cannot get the display.

    Raised when the engine is reached over TCP (``tcp://``: use ``ssh://``), when ``ssh`` to
    the engine's host fails, or when its SSH server forbids forwarding a UNIX socket. The
    message quotes ssh and names the server option or what to do.
    """

    def __str__(self) -> str:
        """Return the message without OSError's ``[Errno N]`` prefix."""
        return str(self.strerror) if self.strerror is not None else super().__str__()


class ServeError(X11PassthroughError, RuntimeError):
    """
    A served display cannot be started, reached or changed.

    Its name is served already, its display number is taken, or nothing serves it (the
    message says which, and what to do).

    .. versionadded:: 0.2.0
    """
