"""
What the relay admits: which cookie gate on which listener, and which client networks.

A security review reads this module to learn who gets through:

* the **shared gate** guards the listeners others can reach (TCP, the abstract socket): a
  client must present the session cookie, which the gate swaps for the cookie the relay
  presents to the X server;
* the **private gate** guards the session's own socket, reachable only through the mount: it
  admits the session cookie and, as python-xlib finds no entry for it, no cookie at all;
* the **allowlist** (TCP only) admits the client networks: what `allow` says, else the bound
  networks, this host's own addresses and every engine's networks, asked again when an
  unknown client connects.

With ``auth="forward"`` the session cookie is the user's real one (and its file stays 0600).
A display that needs no cookie and ``auth="forward"`` leave no cookie to check: that is
refused on TCP, and on UNIX sockets the abstract one admits only the user's own uids (by the
peer's credentials, :mod:`._lending`), with a warning.
"""

from __future__ import annotations

import logging
import os
import secrets

from collections.abc import Callable

import attrs

from . import _engine, _netinfo
from ._options import Options, unix_has_no_allow
from ._plan import Plan
from ._relay.options import SetupFilter
from ._upstream import Upstream
from ._validate import IPNetwork
from ._x11.gate import CookieGate
from ._x11.wire import MIT_MAGIC_COOKIE_1
from .exceptions import ConfigurationError, Mention


logger = logging.getLogger("x11passthrough")


@attrs.frozen(kw_only=True)
class Policy:
    """
    What the relay admits, and the cookie the containers get.

    Attributes:
        cookie: The cookie containers present (None: the display needs none, and
            ``auth="forward"`` has none to demand).
        shared_gate: The setup filter of the listeners others can reach (TCP, abstract).
        private_gate: The setup filter of the session's own socket.
        private_file: The authority file holds the real cookie, so it stays 0600.
        allow: On TCP, the client networks admitted (None: all, as on UNIX sockets).
        refresh_allow: Asks the networks again when an unknown client connects, or None.
    """

    cookie: bytes | None
    shared_gate: SetupFilter | None = attrs.field(eq=False)
    private_gate: SetupFilter | None = attrs.field(eq=False)
    private_file: bool
    allow: tuple[IPNetwork, ...] | None
    refresh_allow: Callable[[], tuple[IPNetwork, ...]] | None = attrs.field(eq=False)


def policy(options: Options, chosen: Plan, upstream: Upstream, *, display: object) -> Policy:
    """
    Decide the gates and the allowlist of a passthrough that follows `chosen` to `upstream`.

    Args:
        options: The passthrough's options.
        chosen: The plan.
        upstream: The display as proved.
        display: The display's name, for messages.

    Raises:
        ConfigurationError: `allow` was given and the transport chosen is UNIX; or
            ``auth="forward"`` on TCP to a display that admits clients without a cookie.
    """
    if options.allow is not None and chosen.transport == "unix":
        raise unix_has_no_allow(options.allow)
    forward = options.auth == "forward"
    cookie = upstream.real if forward else secrets.token_bytes(16)
    shared = private = None
    if cookie is not None:
        shared = CookieGate(
            expected_name=MIT_MAGIC_COOKIE_1,
            expected_data=cookie,
            replacement_name=MIT_MAGIC_COOKIE_1 if upstream.present else b"",
            replacement_data=upstream.present or b"",
        )
        private = attrs.evolve(shared, admit_without_auth=True)
    elif chosen.transport == "tcp":
        # TCP tells nothing about who connects: any local user, and any container or host
        # that reaches the address, would become a trusted client of the display.
        raise ConfigurationError(
            Mention("auth", "forward"),
            " on ",
            Mention("transport", "tcp"),
            f": the X display {display} admits clients without a cookie, so forward mode has "
            "no cookie to demand, and the relay's TCP port would admit every local user (and "
            "anyone reaching the address) as a trusted client of your display",
            option="auth",
            value="forward",
            hint=(
                "use ",
                Mention("auth", "substitute"),
                " (the default), which guards the relay with a session cookie, or ",
                Mention("transport", "unix"),
            ),
        )
    else:
        logger.warning(
            "the X display %s admits clients without a cookie, and auth='forward' has none "
            "to demand: every container given the relay's socket becomes a trusted client "
            "of your display (the abstract socket admits only your own uids). Use "
            "auth='substitute' (the default) to guard the relay with a cookie.",
            display,
        )
    if forward and cookie is not None:
        logger.info(
            "auth='forward': the authority file holds your real cookie and stays 0600, so "
            "the container must run as root or as your uid (--user %d)",
            os.geteuid(),
        )
    allow, refresh = options.allow, None
    if chosen.transport == "tcp" and allow is None:
        refresh = _refresher(chosen)
        allow = refresh()
    return Policy(
        cookie=cookie,
        shared_gate=shared,
        private_gate=private,
        private_file=forward,
        allow=allow,
        refresh_allow=refresh,
    )


def _refresher(chosen: Plan) -> Callable[[], tuple[IPNetwork, ...]]:
    bound = chosen.bind

    def refresh_allow() -> tuple[IPNetwork, ...]:
        # Facts, not names: the bound networks, this host's own addresses (its processes and
        # --network host containers), and every engine network.
        return tuple(
            dict.fromkeys([*_netinfo.networks_for(bound), *chosen.networks, *_engine.networks()])
        )

    return refresh_allow
