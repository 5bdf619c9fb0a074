"""
X11Passthrough: one context manager that lends the host's display to containers.

Strictly private: import :class:`X11Passthrough` from :mod:`x11passthrough`.

It composes the layers below it and is imported by none of them: the display locator finds
and connects to the host's display, the Xauthority reader picks the cookie for that very
connection, the SECURITY client (untrusted mode) turns it into an untrusted one, the locator
reserves display M, the session module writes the container's authority file, the relay
serves M, and :class:`DockerRunArgs` says what a container needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import secrets
import socket
import warnings

from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

import attrs

from . import _engine, _netinfo, _session
from ._args import DEFAULT_CONTAINER_XAUTHORITY, DockerRunArgs
from ._cleanup import Cleanup
from ._display._endpoint import Endpoint
from ._display._locate import DisplayConnection
from ._display._locator import DisplayLocator
from ._display._name import DisplayName
from ._display._owner import ownership_problem
from ._display._reserve import reserve
from ._options import AuthMode, Options
from ._relay.options import RelayOptions
from ._relay.server import Relay
from ._relay.stats import RelayStats
from ._relay.thread import RelayThread
from ._validate import IPAddress, IPNetwork
from ._x11.gate import CookieGate
from ._x11.handshake import CookieKeeper, handshake
from ._x11.security import SecurityClient, UntrustedCookie
from ._x11.wire import MIT_MAGIC_COOKIE_1, SetupStatus
from ._x11.xlib import SetupRefusedError, open_display
from ._xauth.authority import Xauthority, default_path
from ._xauth.format import Family, XauthEntry, dump
from .exceptions import (
    DisplayAuthorizationError,
    DisplayError,
    DisplayOwnerError,
    SecurityExtensionError,
    X11PassthroughError,
    X11SetupError,
)


logger = logging.getLogger("x11passthrough")


@attrs.frozen(kw_only=True)
class _Session:
    """What _prepare made. Strictly private."""

    endpoint: Endpoint
    listeners: Sequence[socket.socket]
    relay_options: RelayOptions
    args: DockerRunArgs


class X11Passthrough:
    """
    Lend the host's X display to containers for the duration of a ``with`` block.

    Entering finds the live display, reserves a free display number M, writes a per-session
    authority file and starts a relay on TCP 6000+M; it yields the :class:`DockerRunArgs` a
    container needs. Leaving stops the relay, frees the port, removes the file and, in
    ``untrusted`` mode, revokes the cookie.

    ::

        with X11Passthrough() as args:
            subprocess.run(["docker", "run", "--rm", *args, image, "xeyes"])

    Args:
        display: The host display, in any ``DISPLAY`` form; default: ``$DISPLAY``.
        xauthority: The host's authority file; default: libXau's (``$XAUTHORITY``, else
            ``~/.Xauthority``). ``""`` means no file, as ``XAUTHORITY=""`` does for libXau.
        auth: ``"substitute"`` (default): the container gets a fresh session cookie that the
            relay checks and swaps for the real one; the real cookie never leaves the host.
            ``"untrusted"``: as substitute, but the X server sees an untrusted cookie from its
            SECURITY extension, revoked on exit. ``"forward"``: the container gets the real
            cookie (what Briefcase does); weaker, opt-in.
        host_alias: The name containers use for the host.
        gateway: The ``--add-host`` value for `host_alias` (``host-gateway`` on Docker 20.10+).
        bind: The address(es) the relay listens on; default: the docker0 address, or
            ``0.0.0.0`` (with a warning) where the host has no docker0.
        allow: Client networks the relay accepts connections from (CIDR strings or
            :mod:`ipaddress` networks); default: the networks of the bound addresses plus
            every container bridge network. Anything else is refused before a byte is
            forwarded.
        container_xauthority: Where the authority file is mounted in the container.
        container_hostname: The host name the container gets (``--hostname``), so python-xlib
            clients, which look cookies up by host name, find theirs; None leaves Docker's
            default (libX11/libxcb clients still work, through the FamilyWild entry).
        host_dir: Where the private directory holding the authority file is created; default:
            ``$XDG_RUNTIME_DIR``, else the system temporary directory. Docker Desktop shares
            only paths under ``$HOME``: pass a directory there.
        display_range: The display numbers M to choose from.
        untrusted_timeout: In ``untrusted`` mode, seconds the X server keeps the untrusted
            cookie after this process is gone. While the passthrough runs, a connection of
            its own holds the cookie, so it never expires under the relay; if the process dies
            (even by SIGKILL) the cookie dies this long after.
        connect_timeout: Seconds to wait for the host display when probing and connecting.
        setup_timeout: Seconds a container's client has to complete its X11 setup message
            before the relay drops it.
        stall_timeout: Seconds a container's client may leave the X server's replies unread
            (with 1 MiB waiting) before the relay drops it; 0 never drops. An X server buffers
            without bound for a client that asks and never reads (Xvfb grew about 800 MB/s
            and crashed near 2 GB), so one stalled container could take the display down.
        locator: The :class:`~x11passthrough.display.DisplayLocator` to use (for other socket
            directories).

    Raises:
        ConfigurationError: An option is invalid (raised at construction).

    .. versionadded:: 0.1.0
    """

    def __init__(
        self,
        display: str | DisplayName | None = None,
        xauthority: str | os.PathLike[str] | None = None,
        *,
        auth: AuthMode = "substitute",
        host_alias: str = "host.docker.internal",
        gateway: str = "host-gateway",
        bind: str | Sequence[str] | None = None,
        allow: str | Sequence[str | ipaddress.IPv4Network | ipaddress.IPv6Network] | None = None,
        container_xauthority: str | os.PathLike[str] = DEFAULT_CONTAINER_XAUTHORITY,
        container_hostname: str | None = "x11passthrough",
        host_dir: str | os.PathLike[str] | None = None,
        display_range: range = range(50, 300),
        untrusted_timeout: int = 5,
        connect_timeout: float = 2.0,
        setup_timeout: float = 10.0,
        stall_timeout: float = 0.5,
        locator: DisplayLocator | None = None,
    ) -> None:
        self._options = Options(
            display=display,
            xauthority=xauthority,
            auth=auth,
            host_alias=host_alias,
            gateway=gateway,
            bind=bind,
            allow=allow,
            container_xauthority=container_xauthority,
            container_hostname=container_hostname,
            host_dir=host_dir,
            display_range=display_range,
            untrusted_timeout=untrusted_timeout,
            connect_timeout=connect_timeout,
            setup_timeout=setup_timeout,
            stall_timeout=stall_timeout,
        )
        self._locator = locator or DisplayLocator(connect_timeout=self._options.connect_timeout)
        self._cleanup: Cleanup | None = None
        self._args: DockerRunArgs | None = None
        self._relay: RelayThread | Relay | None = None
        self._last_stats = RelayStats()
        self._untrusted: UntrustedCookie | None = None

    def __repr__(self) -> str:
        state = "open" if self._args is not None else "closed"
        display = self._args.display if self._args is not None else None
        shown = None if self._options.display is None else str(self._options.display)
        return (
            f"<X11Passthrough(display={shown!r}, auth={self._options.auth!r}, "
            f"container_display={display!r}, state={state!r})>"
        )

    @property
    def args(self) -> DockerRunArgs:
        """
        The docker-run arguments of the running passthrough.

        Raises:
            X11PassthroughError: The passthrough is not running.
        """
        if self._args is None:
            raise X11PassthroughError("the passthrough is not running; call start() first")
        return self._args

    @property
    def stats(self) -> RelayStats:
        """
        A snapshot of the relay's counters, now while it runs, else as it ended.

        .. versionadded:: 0.1.0
        """
        if self._relay is not None:
            return self._relay.stats
        return self._last_stats

    # -- sync API ---------------------------------------------------------------------------

    def start(self) -> DockerRunArgs:
        """
        Start the passthrough and return the container's arguments.

        Calling it again while running returns the same arguments.

        Raises:
            DisplayError: No display is set, or it cannot be reached.
            XauthorityError: The host's authority file cannot be read.
            NoFreeDisplayError: No display number in `display_range` is free.
            BindError: The relay cannot listen on the bind address.
            SecurityExtensionError: ``auth="untrusted"`` and the server cannot issue a cookie.
        """
        if self._args is not None:
            return self._args
        cleanup = Cleanup()
        try:
            session = self._prepare(cleanup)
            relay = RelayThread(session.listeners, session.endpoint, session.relay_options)
            relay.start()
            cleanup.add("stopping the relay", relay.stop)
        except BaseException:
            cleanup.close()
            raise
        self._relay = relay
        self._cleanup = cleanup
        self._args = session.args
        return session.args

    def close(self) -> None:
        """
        Stop the relay, free the port and remove the files. Idempotent.

        It never raises: a step that fails (the X server is gone, a file was removed by hand)
        is logged as a warning and the other steps still run.
        """
        cleanup, self._cleanup = self._cleanup, None
        relay, self._relay = self._relay, None
        self._args = None
        if cleanup is not None:
            cleanup.close()
            logger.debug("passthrough closed")
        if relay is not None:
            self._last_stats = relay.stats

    def __enter__(self) -> DockerRunArgs:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_cleanup", None) is not None:
            warnings.warn(
                f"{self!r} was not closed; closing it now. Use 'with' or call close().",
                ResourceWarning,
                stacklevel=2,
            )
            with contextlib.suppress(Exception):
                self.close()

    # -- async API --------------------------------------------------------------------------

    async def astart(self) -> DockerRunArgs:
        """
        Start the passthrough with its relay in the running event loop.

        Raises:
            The same errors as :meth:`start`.
        """
        if self._args is not None:
            return self._args
        cleanup = Cleanup()
        try:
            session = await asyncio.to_thread(self._prepare, cleanup)
            relay = Relay(session.listeners, session.endpoint, session.relay_options)
            await relay.start()
        except BaseException:
            cleanup.close()
            raise
        self._relay = relay
        self._cleanup = cleanup
        self._args = session.args
        return session.args

    async def aclose(self) -> None:
        """Stop the relay, free the port and remove the files. Idempotent."""
        relay = self._relay
        if isinstance(relay, Relay):
            try:
                await relay.stop()
            except Exception:
                logger.warning("cleanup: stopping the relay failed", exc_info=True)
        self.close()

    async def __aenter__(self) -> DockerRunArgs:
        return await self.astart()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- the work -----------------------------------------------------------------------------

    def _display_name(self) -> DisplayName:
        if self._options.display is not None:
            return self._options.display
        text = os.environ.get("DISPLAY")
        if not text:
            raise DisplayError(
                "DISPLAY is not set and no display was given: run inside an X session, or pass "
                "X11Passthrough(display=':0')"
            )
        return DisplayName.parse(text)

    def _prepare(self, cleanup: Cleanup) -> _Session:
        """Locate, authenticate, reserve and write; register every undo step on `cleanup`."""
        opts = self._options
        name = self._display_name()
        connection = self._locator.connect(name)
        endpoint = connection.endpoint
        keeper: CookieKeeper | None = None
        try:
            authority = self._authority_file()
            real = self._real_cookie(connection, authority)
            upstream: bytes | None
            if opts.auth == "untrusted":
                upstream, keeper = self._untrusted_cookie(connection, real, authority, cleanup)
            else:
                self._check_host(connection, real, authority)
                upstream = real
        finally:
            if opts.auth != "untrusted":
                connection.close()

        bind = opts.bind or self._default_bind()
        reservation = reserve(opts.display_range, bind, self._locator._places(abstract=True))
        cleanup.add("releasing the display number", reservation.close)
        number = reservation.number

        container_cookie = real if opts.auth == "forward" else secrets.token_bytes(16)
        gate = None
        if container_cookie is not None:
            gate = CookieGate(
                expected_name=MIT_MAGIC_COOKIE_1,
                expected_data=container_cookie,
                replacement_name=MIT_MAGIC_COOKIE_1 if upstream else b"",
                replacement_data=upstream or b"",
            )
        elif opts.auth == "forward":
            logger.warning(
                "the X display %s admits clients without a cookie, and auth='forward' has none "
                "to demand: every container that reaches the relay becomes a trusted client of "
                "your display. Use auth='substitute' (the default) to guard the relay.",
                name,
            )

        xauthority = None
        if container_cookie:
            xauthority = self._write_session_file(number, container_cookie, cleanup)
        allow = opts.allow
        refresh_allow = None
        if allow is None:

            def refresh_allow() -> tuple[IPNetwork, ...]:
                # Facts, not names: the bound networks, this host's own addresses (its
                # processes and --network host containers), and every engine network.
                return tuple(dict.fromkeys([*_netinfo.networks_for(bind), *_engine.networks()]))

            allow = refresh_allow()
        args = DockerRunArgs(
            display=f"{opts.host_alias}:{number}",
            xauthority=xauthority,
            container_xauthority=opts.container_xauthority,
            extra_hosts={opts.host_alias: opts.gateway},
            hostname=opts.container_hostname,
        )
        logger.info(
            "passthrough %s -> %s on %s (auth %s)",
            args.display,
            endpoint,
            ", ".join(f"{a}:{6000 + number}" for a in bind),
            opts.auth,
        )
        return _Session(
            endpoint=endpoint,
            listeners=reservation.sockets,
            relay_options=RelayOptions(
                setup_filter=gate,
                check_upstream=self._upstream_check(endpoint, keeper),
                setup_timeout=opts.setup_timeout,
                stall_timeout=opts.stall_timeout,
                connect_timeout=opts.connect_timeout,
                allow=allow,
                refresh_allow=refresh_allow,
            ),
            args=args,
        )

    def _authority_file(self) -> str:
        """Return the host authority file's path as libXau picks it ("" for none)."""
        if self._options.xauthority is not None:
            return self._options.xauthority
        return default_path()

    def _upstream_check(
        self, endpoint: Endpoint, keeper: CookieKeeper | None
    ) -> Callable[[socket.socket], str | None]:
        """Return the check of every connection the relay makes (cookie alive, owner ours)."""
        trusted = self._locator.trusted_owners

        def check(sock: socket.socket) -> str | None:
            if keeper is not None:
                problem = keeper.problem()
                if problem is not None:
                    return problem
            return ownership_problem(sock, endpoint, trusted)

        return check

    def _real_cookie(self, connection: DisplayConnection, authority: str) -> bytes | None:
        """Return the MIT cookie a client would send on `connection`, or None."""
        entries = Xauthority.load(authority)
        entry = entries.for_connection(connection.socket, connection.name.number)
        if entry is None:
            logger.info(
                "no MIT-MAGIC-COOKIE-1 for display %s in %s; the X server must accept clients "
                "without one (xhost, SI:localuser or no access control)",
                connection.name,
                authority or "any authority file (XAUTHORITY is empty)",
            )
            return None
        return entry.data

    def _refused(
        self, connection: DisplayConnection, real: bytes | None, authority: str, reason: str
    ) -> DisplayAuthorizationError:
        where = authority or "no authority file (XAUTHORITY is empty)"
        if real is None:
            what = (
                "a connection without a cookie (there is no entry for display "
                f"{connection.name} in {where})"
            )
            hint = "add one (xauth add), or point XAUTHORITY / xauthority=... at the right file"
        else:
            what = f"the cookie for display {connection.name} from {where}"
            hint = (
                "the file holds a stale cookie: log in again, or point xauthority=... at the "
                "file your X server uses"
            )
        return DisplayAuthorizationError(
            f"the X server at {connection.endpoint} refused {what}: "
            f"{reason.strip() or 'no reason given'}; {hint}"
        )

    def _check_host(
        self, connection: DisplayConnection, real: bytes | None, authority: str
    ) -> None:
        """Make one X11 setup with the cookie the relay will present, on the locate connection."""
        try:
            reply = handshake(
                connection.socket,
                MIT_MAGIC_COOKIE_1 if real else b"",
                real or b"",
                timeout=self._options.connect_timeout,
            )
        except X11SetupError as e:
            raise DisplayError(f"the X display at {connection.endpoint}: {e}") from e
        if reply.status is not SetupStatus.SUCCESS:
            raise self._refused(connection, real, authority, reply.reason)
        if real is None:
            logger.info("the X display %s admits clients without a cookie", connection.name)

    def _untrusted_cookie(
        self,
        connection: DisplayConnection,
        real: bytes | None,
        authority: str,
        cleanup: Cleanup,
    ) -> tuple[bytes, CookieKeeper]:
        opts = self._options
        where = str(connection.endpoint)
        try:
            display = open_display(
                connection.socket,
                MIT_MAGIC_COOKIE_1 if real else b"",
                real or b"",
                number=connection.name.number,
                timeout=opts.connect_timeout,
                what=f"the connection to the X display at {where}",
            )
        except SetupRefusedError as e:
            raise self._refused(connection, real, authority, e.reason) from None
        except X11SetupError as e:
            raise SecurityExtensionError(str(e)) from None
        client = SecurityClient(display, timeout=opts.connect_timeout, where=where)
        cleanup.add("closing the SECURITY connection", client.close)
        cookie = client.generate(timeout=opts.untrusted_timeout)
        self._untrusted = cookie

        def revoke() -> None:
            client.revoke(cookie)

        cleanup.add("revoking the untrusted cookie", revoke)
        keeper = self._keep(connection.endpoint, cookie.data)
        cleanup.add("closing the connection that holds the untrusted cookie", keeper.close)
        return cookie.data, keeper

    def _keep(self, endpoint: Endpoint, cookie: bytes) -> CookieKeeper:
        """Open the connection that keeps the untrusted cookie alive while we run."""
        timeout = self._options.connect_timeout
        try:
            sock = endpoint.connect(timeout)
        except OSError as e:
            raise SecurityExtensionError(
                f"the X display at {endpoint} stopped answering: {e}"
            ) from e
        try:
            self._present_untrusted(sock, endpoint, cookie)
        except BaseException:
            sock.close()
            raise
        return CookieKeeper(sock)

    def _present_untrusted(self, sock: socket.socket, endpoint: Endpoint, cookie: bytes) -> None:
        """Check the keeper's endpoint and make its setup with the untrusted cookie."""
        problem = ownership_problem(sock, endpoint, self._locator.trusted_owners)
        if problem is not None:
            raise DisplayOwnerError(problem)
        timeout = self._options.connect_timeout
        try:
            reply = handshake(sock, MIT_MAGIC_COOKIE_1, cookie, timeout=timeout)
        except X11SetupError as e:
            raise SecurityExtensionError(f"the X display at {endpoint}: {e}") from e
        if reply.status is not SetupStatus.SUCCESS:
            raise SecurityExtensionError(
                f"the X server at {endpoint} refused the untrusted cookie it had just "
                f"issued: {reply.reason.strip() or 'no reason given'}"
            )

    def _default_bind(self) -> tuple[IPAddress, ...]:
        gateway = _netinfo.docker_gateway()
        if gateway is not None:
            return (ipaddress.IPv4Address(gateway),)
        logger.warning(
            "this host has no docker0 interface; the relay listens on 0.0.0.0 so that "
            "containers in a VM (Docker Desktop) can reach it. Pass bind=... to narrow it."
        )
        return (ipaddress.IPv4Address("0.0.0.0"),)

    def _write_session_file(self, number: int, cookie: bytes, cleanup: Cleanup) -> Path:
        opts = self._options
        directory = _session.create_directory(opts.host_dir)
        cleanup.add(f"removing {directory}", lambda: _session.remove_directory(directory))
        entries = [XauthEntry(Family.WILD, b"", number, MIT_MAGIC_COOKIE_1, cookie)]
        if opts.container_hostname:
            entries.append(
                XauthEntry(
                    Family.LOCAL,
                    opts.container_hostname.encode(),
                    number,
                    MIT_MAGIC_COOKIE_1,
                    cookie,
                )
            )
        path = directory / "Xauthority"
        _session.write_file(path, dump(entries))
        return path
