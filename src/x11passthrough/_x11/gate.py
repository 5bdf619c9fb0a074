"""
The relay's cookie gate: admit only the per-session cookie and swap in the real one.

The relay checks each client's first message with a :class:`CookieGate`: it
accepts only the per-session fake cookie, swaps in the real cookie (or no authorization at
all), and answers every other client with a readable "Failed" reply instead of a silent close.
"""

from __future__ import annotations

import hmac
import logging

from collections.abc import Callable

import attrs

from .._validate import shown
from ..exceptions import X11SetupError
from .wire import (
    MAX_AUTH_DATA_LENGTH,
    MAX_AUTH_NAME_LENGTH,
    MIT_MAGIC_COOKIE_1,
    SetupRequest,
    failed_reply,
    secret_repr,
)


logger = logging.getLogger("x11passthrough")


@attrs.frozen
class Accept:
    """
    Verdict of a setup filter: send `forward` to the X display, then relay bytes unchanged.

    Attributes:
        forward: Replaces every byte received so far: the rewritten setup request followed by
            the bytes the client sent after it, unchanged. Not shown in the repr (it carries
            the real cookie).
    """

    forward: bytes = attrs.field(repr=False)


@attrs.frozen
class Reject:
    """
    Verdict of a setup filter: send `reply` (an X11 "Failed" reply) to the client, close.

    Attributes:
        reason: Why, readable; the same text the reply carries (fit for logs: no secrets).
        reply: The encoded "Failed" reply, in the client's byte order.
    """

    reason: str
    reply: bytes = attrs.field(repr=False)


_REASON_PREFIX = "x11passthrough: "
_WRONG_COOKIE = _REASON_PREFIX + "wrong authorization cookie"
_NO_AUTH = (
    _REASON_PREFIX + "no authorization: this display needs the session cookie (set XAUTHORITY)"
)
_INTERNAL = _REASON_PREFIX + "internal error while checking the setup message"
#: Most characters of an untrusted protocol name shown in a reason.
_SHOWN_NAME_MAX = 40


def _validate_cookie_pair(name: bytes, data: bytes, *, what: str, required: bool) -> None:
    """Check a configured name/data pair (never shows the data)."""
    if not isinstance(name, bytes) or not isinstance(data, bytes):
        raise X11SetupError(f"{what} name and data must be bytes")
    if required and not (name and data):
        raise X11SetupError(f"{what} name and data must not be empty")
    if not name and data:
        raise X11SetupError(f"{what} data given without a protocol name")
    if len(name) > MAX_AUTH_NAME_LENGTH or len(data) > MAX_AUTH_DATA_LENGTH:
        raise X11SetupError(
            f"{what} is too long: name of {len(name)} bytes (limit {MAX_AUTH_NAME_LENGTH}), "
            f"data of {len(data)} bytes (limit {MAX_AUTH_DATA_LENGTH})"
        )


@attrs.frozen(kw_only=True)
class CookieGate:
    """
    The relay's setup filter: admit only the session's fake cookie and swap in the real one.

    Call it with every byte the client has sent so far (from the start of the connection)
    until it returns a verdict. It never raises: any problem becomes a :class:`Reject` whose
    reply is a readable X11 "Failed" reply in the client's byte order, so X clients print the
    reason (e.g. ``x11passthrough: wrong authorization cookie``) instead of "connection
    broken". A verdict is reached at the latest after :data:`MAX_SETUP_SIZE` bytes.

    Cookies are compared with :func:`hmac.compare_digest`, name and data both always, so the
    time taken depends only on what the client sent. Neither the repr nor the str shows a
    cookie.

    Attributes:
        expected_data: The per-session fake cookie clients must present.
        replacement_name: Authorization protocol name sent to the real server; empty (with
            empty `replacement_data`) to send no authorization, for servers that need none.
        replacement_data: The real cookie sent to the server; empty for no authorization.
        expected_name: The authorization protocol clients must use.
        admit_without_auth: Also admit a client that presents no authorization at all, and
            give it the replacement. Only for a listener nobody but the intended containers can
            reach (a socket in a private directory, bind-mounted into them): python-xlib
            clients find no cookie under a container host name they cannot know, and send none.

    Raises:
        X11SetupError: A name or cookie is empty where it must not be, or too long.
    """

    expected_data: bytes = attrs.field(repr=secret_repr)
    replacement_name: bytes
    replacement_data: bytes = attrs.field(repr=secret_repr)
    expected_name: bytes = MIT_MAGIC_COOKIE_1
    admit_without_auth: bool = False

    def __attrs_post_init__(self) -> None:
        _validate_cookie_pair(
            self.expected_name, self.expected_data, what="expected cookie", required=True
        )
        _validate_cookie_pair(
            self.replacement_name,
            self.replacement_data,
            what="replacement cookie",
            required=False,
        )

    def __call__(self, data: bytes) -> Accept | Reject | None:
        """
        Judge the client's first bytes.

        Args:
            data: Every byte the client sent so far, from the start of the connection.

        Returns:
            ``None`` while the setup request is incomplete; :class:`Accept` whose `forward`
            is the rewritten request followed by the bytes after it, unchanged; or
            :class:`Reject` with a "Failed" reply for the client.
        """
        order = 0x6C
        try:
            if data:
                order = data[0]
            return self._judge(data)
        except X11SetupError as exc:
            return self._reject(f"{_REASON_PREFIX}{exc}", order)
        except Exception:  # the gate must fail closed, never crash the relay
            logger.exception("unexpected error while checking an X11 setup message")
            return self._reject(_INTERNAL, order)

    def _judge(self, data: bytes) -> Accept | Reject | None:
        request = SetupRequest.parse(data)
        if request is None:
            return None
        name_ok = hmac.compare_digest(self.expected_name, request.auth_name)
        data_ok = hmac.compare_digest(self.expected_data, request.auth_data)
        anonymous = not request.auth_name and not request.auth_data
        if (name_ok & data_ok) or (anonymous and self.admit_without_auth):
            rewritten = request.with_auth(self.replacement_name, self.replacement_data)
            return Accept(rewritten.encode() + bytes(data[request.size :]))
        if not request.auth_name and not request.auth_data:
            return self._reject(_NO_AUTH, request.byte_order)
        if not name_ok:
            expected = shown(self.expected_name, limit=_SHOWN_NAME_MAX)
            named = shown(request.auth_name, limit=_SHOWN_NAME_MAX)
            return self._reject(
                f"{_REASON_PREFIX}unsupported authorization protocol {named} "
                f"(only {expected} is accepted)",
                request.byte_order,
            )
        return self._reject(_WRONG_COOKIE, request.byte_order)

    @staticmethod
    def _reject(reason: str, byte_order: int) -> Reject:
        return Reject(reason, failed_reply(reason, byte_order))


@attrs.frozen(kw_only=True)
class LiveCookieGate:
    """
    A served display's setup filter: one container-side cookie, a host cookie that may change.

    A served display outlives the X server behind it: when that server restarts (the user logs
    out and in, a display manager restarts Xorg or Xwayland) the cookie the relay must present
    changes, and while it is gone clients must be told so. `present` is asked at each verdict
    for what to present now, or for the reason to refuse; everything else is a
    :class:`CookieGate` (same comparisons, same readable "Failed" replies). The container-side
    cookie never changes: it is the one written in the container's authority file.

    Attributes:
        expected_data: The cookie this gate's clients must present.
        present: Returns ``(name, data)`` to present to the X server (``(b"", b"")`` for no
            authorization), or a reason text to refuse with while the display is gone.
    """

    expected_data: bytes = attrs.field(repr=secret_repr)
    present: Callable[[], tuple[bytes, bytes] | str] = attrs.field(repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        _validate_cookie_pair(
            MIT_MAGIC_COOKIE_1, self.expected_data, what="expected cookie", required=True
        )

    def __call__(self, data: bytes) -> Accept | Reject | None:
        """Judge the client's first bytes, as :meth:`CookieGate.__call__` does."""
        order = data[0] if data else 0x6C
        try:
            if SetupRequest.parse(data) is None:
                return None
            now = self.present()
            if isinstance(now, str):
                return CookieGate._reject(f"{_REASON_PREFIX}{now}", order)
            name, cookie = now
            gate = CookieGate(
                expected_data=self.expected_data, replacement_name=name, replacement_data=cookie
            )
        except X11SetupError as exc:
            return CookieGate._reject(f"{_REASON_PREFIX}{exc}", order)
        except Exception:  # the gate must fail closed, never crash the relay
            logger.exception("unexpected error while checking an X11 setup message")
            return CookieGate._reject(_INTERNAL, order)
        return gate(data)
