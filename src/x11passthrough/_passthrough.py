"""
X11Passthrough: one context manager that lends the host's display to containers.

Strictly private: import :class:`X11Passthrough` from :mod:`x11passthrough`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import secrets
import shutil
import socket
import tempfile
import warnings

from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import Any, Literal, get_args

import attrs

from . import _netinfo
from ._display import DisplayLocator, DisplayName, Endpoint
from ._dockerargs import DEFAULT_CONTAINER_XAUTHORITY, DockerRunArgs
from ._relay import Relay, RelayThread
from ._security import SecurityClient, UntrustedCookie
from ._x11setup import CookieGate
from ._xauth import Family, XauthEntry, Xauthority
from .exceptions import ConfigurationError, DisplayError, X11PassthroughError


log = logging.getLogger("x11passthrough")

AuthMode = Literal["substitute", "untrusted", "forward"]
_MIT = "MIT-MAGIC-COOKIE-1"
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@attrs.frozen(kw_only=True)
class _Options:
    """The validated options of a passthrough. Strictly private."""

    display: str | None
    xauthority: Path | None
    auth: AuthMode
    host_alias: str
    gateway: str
    bind: tuple[str, ...] | None
    allow: tuple[_Network, ...] | None
    container_xauthority: PurePosixPath
    container_hostname: str | None
    host_dir: Path | None
    display_range: range
    untrusted_timeout: int
    connect_timeout: float
    setup_timeout: float


def _validate(**options: object) -> _Options:  # noqa: PLR0912 - one check per option
    auth = options["auth"]
    if auth not in get_args(AuthMode):
        raise ConfigurationError(
            f"auth={auth!r} is not an auth mode; use 'substitute' (default), 'untrusted' or "
            "'forward'"
        )
    display = options["display"]
    if display is not None:
        display = str(display)
        DisplayName.parse(display)  # fail early, with the parser's message
    bind = options["bind"]
    if bind is not None:
        bind = (bind,) if isinstance(bind, str) else tuple(str(b) for b in bind)  # type: ignore[attr-defined]
        if not bind:
            raise ConfigurationError("bind=() names no address; pass None for the default")
        for address in bind:
            try:
                ipaddress.ip_address(address)
            except ValueError:
                raise ConfigurationError(
                    f"bind address {address!r} is not an IP address; pass the address of an "
                    "interface of this host, e.g. the docker0 address 172.17.0.1"
                ) from None
    allow = options["allow"]
    if allow is not None:
        nets = []
        for net in (allow,) if isinstance(allow, str) else allow:  # type: ignore[attr-defined]
            try:
                nets.append(ipaddress.ip_network(net, strict=False))
            except ValueError:
                raise ConfigurationError(
                    f"allow entry {net!r} is not a network; use CIDR notation like '172.17.0.0/16'"
                ) from None
        allow = tuple(nets)
    display_range = options["display_range"]
    if not isinstance(display_range, range) or not display_range:
        raise ConfigurationError(
            f"display_range={display_range!r} must be a non-empty range, e.g. range(50, 300)"
        )
    if display_range.start < 1 or display_range.stop > 59536:
        raise ConfigurationError(
            f"display_range={display_range!r} must stay within 1..59535 (port 6000+N <= 65535)"
        )
    hostname = options["container_hostname"]
    if hostname is not None and (
        not isinstance(hostname, str) or not hostname or len(hostname) > 63
    ):
        raise ConfigurationError(
            f"container_hostname={hostname!r} must be a host name of 1 to 63 characters, or None"
        )
    container_xauthority = PurePosixPath(str(options["container_xauthority"]))
    if not container_xauthority.is_absolute():
        raise ConfigurationError(
            f"container_xauthority={str(container_xauthority)!r} must be an absolute path"
        )
    untrusted_timeout = options["untrusted_timeout"]
    if not isinstance(untrusted_timeout, int) or untrusted_timeout < 0:
        raise ConfigurationError(
            f"untrusted_timeout={untrusted_timeout!r} must be whole seconds >= 0 (0: no expiry)"
        )
    for name in ("connect_timeout", "setup_timeout"):
        value = options[name]
        if not isinstance(value, (int, float)) or not 0 < value < float("inf"):
            raise ConfigurationError(f"{name}={value!r} must be a positive number of seconds")
    xauthority = options["xauthority"]
    host_dir = options["host_dir"]
    return _Options(
        display=display,
        xauthority=None if xauthority is None else Path(xauthority),  # type: ignore[arg-type]
        auth=auth,  # type: ignore[arg-type]
        host_alias=str(options["host_alias"]),
        gateway=str(options["gateway"]),
        bind=bind,
        allow=allow,
        container_xauthority=container_xauthority,
        container_hostname=hostname,
        host_dir=None if host_dir is None else Path(host_dir),  # type: ignore[arg-type]
        display_range=display_range,
        untrusted_timeout=untrusted_timeout,
        connect_timeout=float(options["connect_timeout"]),  # type: ignore[arg-type]
        setup_timeout=float(options["setup_timeout"]),  # type: ignore[arg-type]
    )


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
            ``~/.Xauthority``).
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
        untrusted_timeout: In ``untrusted`` mode, seconds the X server keeps the cookie after
            its last client left (0: until revoked).
        connect_timeout: Seconds to wait for the host display when probing and connecting.
        setup_timeout: Seconds a container's client has to complete its X11 setup message
            before the relay drops it.
        locator: The :class:`DisplayLocator` to use (for other socket directories).

    Raises:
        ConfigurationError: An option is invalid (raised at construction).
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
        allow: str | Sequence[str | _Network] | None = None,
        container_xauthority: str | PurePosixPath = DEFAULT_CONTAINER_XAUTHORITY,
        container_hostname: str | None = "x11passthrough",
        host_dir: str | os.PathLike[str] | None = None,
        display_range: range = range(50, 300),
        untrusted_timeout: int = 3600,
        connect_timeout: float = 2.0,
        setup_timeout: float = 10.0,
        locator: DisplayLocator | None = None,
    ) -> None:
        self._options = _validate(
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
        )
        self._locator = locator or DisplayLocator(connect_timeout=self._options.connect_timeout)
        self._cleanup: contextlib.ExitStack | None = None
        self._args: DockerRunArgs | None = None
        self._relay: RelayThread | Relay | None = None
        self._async_cleanup: Callable[[], object] | None = None

    def __repr__(self) -> str:
        state = "open" if self._args is not None else "closed"
        display = self._args.display if self._args is not None else None
        return (
            f"<X11Passthrough(display={self._options.display!r}, auth={self._options.auth!r}, "
            f"container_display={display!r}, state={state!r})>"
        )

    @property
    def args(self) -> DockerRunArgs:
        """The docker-run arguments of the running passthrough."""
        if self._args is None:
            raise X11PassthroughError("the passthrough is not running; call start() first")
        return self._args

    @property
    def relay(self) -> RelayThread | Relay | None:
        """The running relay (for its ``stats``), or None."""
        return self._relay

    # -- sync API ---------------------------------------------------------------------------

    def start(self) -> DockerRunArgs:
        """
        Start the passthrough and return the container's arguments.

        Raises:
            DisplayError: No display is set, or it cannot be reached.
            XauthorityError: The host's authority file cannot be read.
            NoFreeDisplayError: No display number in `display_range` is free.
            BindError: The relay cannot listen on the bind address.
            SecurityExtensionError: ``auth="untrusted"`` and the server cannot issue a cookie.
        """
        if self._args is not None:
            return self._args
        stack = contextlib.ExitStack()
        try:
            session = self._prepare(stack)
            relay = RelayThread(session.listeners, session.endpoint, **session.relay_options)
            relay.start()
            stack.callback(relay.stop)
        except BaseException:
            stack.close()
            raise
        self._relay = relay
        self._cleanup = stack
        self._args = session.args
        return session.args

    def close(self) -> None:
        """Stop the relay, free the port and remove the files. Idempotent."""
        stack, self._cleanup = self._cleanup, None
        self._args = None
        self._relay = None
        if stack is not None:
            stack.close()
            log.debug("passthrough closed")

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
        """Start the passthrough with its relay in the running event loop."""
        if self._args is not None:
            return self._args
        stack = contextlib.ExitStack()
        try:
            session = await asyncio.to_thread(self._prepare, stack)
            relay = Relay(session.listeners, session.endpoint, **session.relay_options)
            await relay.start()
        except BaseException:
            stack.close()
            raise
        self._relay = relay
        self._cleanup = stack
        self._async_cleanup = relay.stop
        self._args = session.args
        return session.args

    async def aclose(self) -> None:
        """Stop the relay, free the port and remove the files. Idempotent."""
        stop, self._async_cleanup = self._async_cleanup, None
        if stop is not None:
            await stop()  # type: ignore[misc]
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

    def _prepare(self, stack: contextlib.ExitStack) -> _Session:
        """Locate, authenticate, reserve and write; register every cleanup on `stack`."""
        opts = self._options
        text = opts.display if opts.display is not None else os.environ.get("DISPLAY")
        if not text:
            raise DisplayError(
                "DISPLAY is not set and no display was given: run inside an X session, or pass "
                "X11Passthrough(display=':0')"
            )
        name = DisplayName.parse(text)
        endpoint = self._locator.locate(name)
        real = self._real_cookie(name, endpoint)

        bind = opts.bind or self._default_bind()
        reservation = self._locator.reserve(range=opts.display_range, bind=bind)
        stack.callback(reservation.close)
        number = reservation.number

        if opts.auth == "forward":
            container_cookie = real
            gate = None
        else:
            container_cookie = secrets.token_bytes(16)
            upstream = real
            if opts.auth == "untrusted":
                upstream = self._untrusted_cookie(endpoint, real, stack)
            gate = CookieGate(
                expected_name=_MIT.encode(),
                expected_data=container_cookie,
                replacement_name=_MIT.encode() if upstream else b"",
                replacement_data=upstream or b"",
            )

        xauthority = None
        if container_cookie:
            xauthority = self._write_session_file(number, container_cookie, stack)
        allow = opts.allow
        if allow is None:
            allow = tuple(_netinfo.networks_for(list(bind))) or None
            if allow is None:
                log.warning(
                    "no container network found to restrict relay clients to; any host that "
                    "reaches port %d may connect (the session cookie still guards it)",
                    6000 + number,
                )
        args = DockerRunArgs(
            display=f"{opts.host_alias}:{number}",
            xauthority=xauthority,
            container_xauthority=opts.container_xauthority,
            extra_hosts={opts.host_alias: opts.gateway},
            hostname=opts.container_hostname,
        )
        log.info(
            "passthrough %s -> %s on %s (auth %s)",
            args.display,
            endpoint,
            ", ".join(f"{a}:{6000 + number}" for a in bind),
            opts.auth,
        )
        return _Session(
            endpoint=endpoint,
            listeners=reservation.sockets,
            relay_options={
                "setup_filter": gate,
                "setup_timeout": opts.setup_timeout,
                "connect_timeout": opts.connect_timeout,
                "allow": allow,
            },
            args=args,
        )

    def _real_cookie(self, name: DisplayName, endpoint: Endpoint) -> bytes | None:
        """Return the MIT cookie a client of the host display would send, or None."""
        opts = self._options
        authority = Xauthority.load(opts.xauthority)
        try:
            sock = endpoint.connect(opts.connect_timeout)
        except OSError as e:
            raise DisplayError(f"the X display at {endpoint} stopped answering: {e}") from e
        with sock:
            entry = authority.for_connection(sock, name.number)
        if entry is None:
            log.info(
                "no MIT-MAGIC-COOKIE-1 for display %s in the authority file; the X server must "
                "accept clients without one (xhost, SI:localuser or no access control)",
                name,
            )
            return None
        return entry.data

    def _untrusted_cookie(
        self, endpoint: Endpoint, real: bytes | None, stack: contextlib.ExitStack
    ) -> bytes:
        opts = self._options
        client = SecurityClient(
            endpoint,
            _MIT.encode() if real else b"",
            real or b"",
            timeout=opts.connect_timeout,
        )
        stack.callback(client.close)
        cookie = client.generate(timeout=opts.untrusted_timeout)

        def revoke(cookie: UntrustedCookie = cookie) -> None:
            try:
                client.revoke(cookie)
            except X11PassthroughError:
                log.warning("could not revoke the untrusted cookie", exc_info=True)

        stack.callback(revoke)
        return cookie.data

    def _default_bind(self) -> tuple[str, ...]:
        gateway = _netinfo.docker_gateway()
        if gateway is not None:
            return (gateway,)
        log.warning(
            "this host has no docker0 interface; the relay listens on 0.0.0.0 so that "
            "containers in a VM (Docker Desktop) can reach it. Pass bind=... to narrow it."
        )
        return ("0.0.0.0",)

    def _write_session_file(self, number: int, cookie: bytes, stack: contextlib.ExitStack) -> Path:
        opts = self._options
        base = opts.host_dir
        if base is None:
            runtime = os.environ.get("XDG_RUNTIME_DIR")
            base = Path(runtime) if runtime and os.path.isdir(runtime) else None
        try:
            directory = Path(tempfile.mkdtemp(prefix="x11passthrough-", dir=base))
        except OSError as e:
            raise X11PassthroughError(
                f"cannot create a private directory in {base or tempfile.gettempdir()}: {e}; "
                "pass host_dir=... pointing to a writable directory"
            ) from e
        stack.callback(shutil.rmtree, directory, ignore_errors=True)
        entries = [
            XauthEntry(family=Family.WILD, address=b"", number=str(number), name=_MIT, data=cookie)
        ]
        if opts.container_hostname:
            entries.append(
                XauthEntry(
                    family=Family.LOCAL,
                    address=opts.container_hostname.encode(),
                    number=str(number),
                    name=_MIT,
                    data=cookie,
                )
            )
        path = directory / "Xauthority"
        data = Xauthority(entries).dumps()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return path


@attrs.frozen(kw_only=True)
class _Session:
    """What _prepare made. Strictly private."""

    endpoint: Endpoint
    listeners: Sequence[socket.socket]
    relay_options: dict[str, Any]
    args: DockerRunArgs
