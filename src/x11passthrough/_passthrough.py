"""
X11Passthrough: one context manager that lends the host's display to containers.

Import :class:`X11Passthrough` from :mod:`x11passthrough`.

It composes the layers below it and is imported by none of them, in four steps: the host side
(:mod:`._upstream`: find the display, check its owner, prove the cookie), the plan
(:mod:`._plan`: engine and transport, decided without doing anything), the policy
(:mod:`._policy`: which gate on which listener, the allowlist) and lending (:mod:`._lending`:
reserve display M, listen, write the session files, the :class:`DockerRunArgs`); then the relay
serves M. ``doctor`` runs the same steps and reports each.
"""

from __future__ import annotations

import asyncio
import atexit
import ipaddress
import logging
import os
import warnings

from collections.abc import Sequence
from types import TracebackType
from typing import Literal, Protocol

import attrs

from . import _destination, _remote
from ._args import DEFAULT_CONTAINER_XAUTHORITY, DockerRunArgs
from ._cleanup import Cleanup
from ._display._endpoint import Endpoint
from ._display._locate import DisplayConnection
from ._display._locator import DisplayLocator
from ._display._name import DisplayName
from ._display._reserve import DEFAULT_DISPLAY_RANGE
from ._engine import Engine
from ._lending import lend
from ._options import AuthMode, EngineChoice, Options, Transport
from ._plan import Plan, engine_as_told, plan
from ._policy import policy
from ._relay.options import Listener, RelayOptions
from ._relay.stats import RelayStats
from ._relay.thread import RelayThread
from ._upstream import HostSide, Upstream
from ._x11.security import UntrustedCookie
from ._xauth.authority import default_path
from .exceptions import ConfigurationError, DisplayError, Mention, X11PassthroughError


logger = logging.getLogger("x11passthrough")


@attrs.frozen(kw_only=True)
class _Assembled:
    """What _prepare made: the relay's upstream, listeners (and where) and options."""

    endpoint: Endpoint
    listeners: Sequence[Listener]
    endpoints: Sequence[Endpoint]
    relay_options: RelayOptions
    args: DockerRunArgs
    upstream: Upstream


class Watcher(Protocol):
    """Sees the steps of a start as they pass: ``doctor`` reports each one."""

    def located(self, connection: DisplayConnection) -> None:
        """Take note: the display answered on `connection` (owner checked, nothing sent yet)."""

    def proved(self, upstream: Upstream, authority: str) -> None:
        """Take note: the X server accepted the cookie from `authority` ("" for none)."""

    def engine(self, found: Engine | None, told: EngineChoice) -> None:
        """Take note of the engine the plan follows (asked even where the plan needs none)."""

    def remote(self, where: _destination.SshDestination) -> None:
        """Take note: the engine is on another host, reached over SSH (`where`)."""


def start_watched(passthrough: X11Passthrough, watcher: Watcher) -> DockerRunArgs:
    """Start `passthrough` as :meth:`X11Passthrough.start` does, telling `watcher` each step."""
    return passthrough._start(watcher)


def relay_endpoints(passthrough: X11Passthrough) -> tuple[Endpoint, ...]:
    """Where the running `passthrough`'s relay listens, as Endpoint values (none when closed)."""
    return passthrough._endpoints


class X11Passthrough:
    """
    Lend the host's X display to containers for the duration of a ``with`` block.

    Entering finds the live display (and checks who owns it), proves the cookie with one X11
    setup, reserves a free display number M, starts a relay for display M and writes a
    per-session authority file; it yields the :class:`DockerRunArgs` a container needs.
    Leaving stops the relay, frees the number, removes the files and, in ``untrusted`` mode,
    revokes the cookie.

    Where the engine shares this host's kernel (Docker Engine, rootful or rootless; Podman;
    nerdctl) the relay listens on a socket bind-mounted into the container (``DISPLAY=:M``, no
    network needed); for engines in a VM (Docker Desktop and the like) on TCP 6000+M of the
    host's loopback (``DISPLAY=tcp/host.docker.internal:M``). For an engine on another host
    reached through OpenSSH (``DOCKER_HOST=ssh://...``, a Docker context, Podman's
    ``CONTAINER_HOST``) the relay's socket is forwarded to that host over one SSH connection,
    and the arguments name the remote paths.

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
        transport: ``"auto"`` (default): ``"unix"`` where the engine shares this host's
            kernel, ``"tcp"`` for engines in a VM; passing `bind` means ``"tcp"``.
        engine: ``"auto"`` (default: asked over its API socket, cached per process),
            ``"docker"`` (Docker Engine), ``"podman"`` or ``"desktop"`` (Docker Desktop,
            podman machine, Colima, Lima, OrbStack: an engine in a VM).
        host_alias: On TCP, the name containers use for the host; default:
            ``host.containers.internal`` for Podman, else ``host.docker.internal``.
        gateway: On TCP, the ``--add-host`` value for `host_alias`; default: ``host-gateway``
            for Docker Engine, none where the engine defines the name itself.
        bind: On TCP, the address(es) the relay listens on; default: the host's loopback for
            VM engines, the bridge gateway (docker0) for Docker Engine. Never a wildcard
            address unless you pass one.
        allow: On TCP, the client networks the relay accepts (CIDR strings or
            :mod:`ipaddress` networks); default: the bound networks, this host's own
            addresses, and every engine's networks (asked again when an unknown client
            connects). Anything else gets an X11 "Failed" reply.
        container_xauthority: Where the authority file is mounted in the container.
        container_hostname: A host name to give the container (``--hostname``) and a
            FamilyLocal entry for; default None: no host name is pinned, and clients of every
            library (python-xlib included) find their cookie whatever the container is called.
        host_dir: Where the session's private directory (socket, authority file) is created;
            default: ``$XDG_RUNTIME_DIR``, else the system temporary directory; for Docker
            Desktop ``~/.cache/x11passthrough``, as Desktop shares only paths under ``$HOME``.
            It and every directory above it must belong to root or you, and none may be
            writable by others without the sticky bit (``/tmp`` has it); else starting raises
            ``ConfigurationError``.
        display_range: The display numbers M to choose from, in order; default
            ``x11passthrough.display.DEFAULT_DISPLAY_RANGE`` (50 to 9999, so that
            another user holding the abstract names of 50 to 299 cannot stop a start).
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
        shm: Shared memory (MIT-SHM), granted as the X server would grant it to the
            container's own process. ``"auto"`` (default): offered to a client that shares the
            X server's IPC namespace (the relay checks its process, on the UNIX transport),
            hidden from the others. ``True``: as ``"auto"``, and the container gets ``--ipc
            host`` so its clients do share it: a security decision (the container then sees
            and may use every System V IPC object of the host its user has permission for;
            see the security page). ``False``: hidden from every client. The relay checks
            every ``ShmAttach`` against the client's own credentials, as the server checks a
            client connected directly.
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
        transport: Transport = "auto",
        engine: EngineChoice = "auto",
        host_alias: str | None = None,
        gateway: str | None = None,
        bind: str | Sequence[str] | None = None,
        allow: str | Sequence[str | ipaddress.IPv4Network | ipaddress.IPv6Network] | None = None,
        container_xauthority: str | os.PathLike[str] = DEFAULT_CONTAINER_XAUTHORITY,
        container_hostname: str | None = None,
        host_dir: str | os.PathLike[str] | None = None,
        display_range: range = DEFAULT_DISPLAY_RANGE,
        untrusted_timeout: int = 5,
        connect_timeout: float = 2.0,
        setup_timeout: float = 10.0,
        stall_timeout: float = 0.5,
        shm: Literal["auto", True, False] = "auto",
        locator: DisplayLocator | None = None,
    ) -> None:
        self._options = Options(
            display=display,
            xauthority=xauthority,
            auth=auth,
            transport=transport,
            engine=engine,
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
            shm=shm,
        )
        self._locator = locator or DisplayLocator(connect_timeout=self._options.connect_timeout)
        self._cleanup: Cleanup | None = None
        self._args: DockerRunArgs | None = None
        self._relay: RelayThread | None = None
        self._last_stats = RelayStats()
        self._untrusted: UntrustedCookie | None = None
        self._remote: _remote.RemoteDisplay | None = None
        self._endpoints: tuple[Endpoint, ...] = ()

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
            ConfigurationError: Another user could change names in `host_dir` (see its entry).
            XauthorityError: The host's authority file cannot be read.
            NoFreeDisplayError: No display number in `display_range` is free.
            BindError: The relay cannot listen on the bind address.
            SecurityExtensionError: ``auth="untrusted"`` and the server cannot issue a cookie.
            RemoteEngineError: The engine is on another host and reached over TCP, or ssh to
                it failed, or its SSH server forbids forwarding a UNIX socket.
        """
        return self._start(None)

    def _start(self, watcher: Watcher | None) -> DockerRunArgs:
        if self._args is not None:
            return self._args
        cleanup = Cleanup()
        try:
            assembled = self._prepare(cleanup, watcher)
            relay = RelayThread(assembled.listeners, assembled.endpoint, assembled.relay_options)
            relay.start()
            cleanup.add("stopping the relay", relay.stop)
        except BaseException:
            cleanup.close()
            raise
        self._relay = relay
        self._cleanup = cleanup
        self._endpoints = tuple(assembled.endpoints)
        self._args = assembled.args
        return assembled.args

    def close(self) -> None:
        """
        Stop the relay, free the port and remove the files. Idempotent.

        It never raises: a step that fails (the X server is gone, a file was removed by hand)
        is logged as a warning and the other steps still run.
        """
        cleanup, self._cleanup = self._cleanup, None
        relay, self._relay = self._relay, None
        self._args = None
        self._endpoints = ()
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
        # Only a warning here: stopping the relay joins its thread and revoking a cookie talks
        # to the X server, neither of which belongs in a finalizer. The interpreter's exit
        # does it instead.
        cleanup = getattr(self, "_cleanup", None)
        if cleanup is not None:
            warnings.warn(
                f"{self!r} was not closed; its display stays lent until the interpreter exits. "
                "Use 'with' or call close().",
                ResourceWarning,
                stacklevel=2,
            )
            atexit.register(cleanup.close)

    # -- async API --------------------------------------------------------------------------

    async def astart(self) -> DockerRunArgs:
        """
        Start the passthrough without blocking the running event loop.

        The relay runs on a thread of its own, as with :meth:`start`: its latency then does
        not depend on how busy your event loop is, and it can busy-poll (a relay in the
        caller's loop took 1.7 times as long per round trip). Starting and stopping happen in
        a worker thread; a cancelled start is undone when it completes.

        Raises:
            The same errors as :meth:`start`.
        """
        if self._args is not None:
            return self._args
        started = asyncio.get_running_loop().run_in_executor(None, self.start)
        try:
            return await asyncio.shield(started)
        except asyncio.CancelledError:
            started.add_done_callback(lambda _: self.close())
            raise

    async def aclose(self) -> None:
        """Stop the relay, free the port and remove the files, off the event loop. Idempotent."""
        await asyncio.get_running_loop().run_in_executor(None, self.close)

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
                "DISPLAY is not set and no display was given",
                option="display",
                hint=("run it from a desktop or over ssh -X, or pass ", Mention("display", ":0")),
            )
        return DisplayName.parse(text)

    def _prepare(self, cleanup: Cleanup, watcher: Watcher | None) -> _Assembled:
        """Prove, plan, gate and lend; register every undo step on `cleanup`."""
        opts = self._options
        connection = self._locator.connect(self._display_name())
        host = HostSide(
            authority=default_path() if opts.xauthority is None else opts.xauthority,
            connect_timeout=opts.connect_timeout,
            untrusted_timeout=opts.untrusted_timeout,
            trusted_owners=self._locator.trusted_owners,
        )
        if watcher is not None:
            watcher.located(connection)
        upstream = host.open(connection, untrusted=opts.auth == "untrusted", cleanup=cleanup)
        self._untrusted = upstream.untrusted
        found = None
        if watcher is not None:
            watcher.proved(upstream, host.authority)
        # An engine on another host (ssh://): the UNIX transport here, lent over SSH below.
        remote = _destination.destination(
            opts.engine, "tcp" if opts.bind is not None else opts.transport
        )
        if remote is not None:
            if watcher is not None:
                watcher.remote(remote)
            chosen = Plan(transport="unix", engine=None, host_dir=opts.host_dir)
        else:
            if watcher is not None:
                found = engine_as_told(opts.engine)
                watcher.engine(found, opts.engine)
            chosen = plan(opts, found)
        if opts.shm is True:
            _check_shm(chosen.transport, opts.auth, remote=remote is not None)
        gates = policy(opts, chosen, upstream, display=connection.name)
        lent = lend(chosen, gates, opts, self._locator._places(abstract=True), cleanup)
        if remote is not None:
            lent, self._remote = _remote.lend_remote(
                lent, remote, private_file=opts.auth == "forward", cleanup=cleanup
            )
        logger.info(
            "passthrough %s -> %s on %s (auth %s)",
            lent.args.display,
            upstream.endpoint,
            ", ".join(map(str, lent.endpoints)),
            opts.auth,
        )
        relay_options = RelayOptions(
            check_upstream=upstream.check,
            setup_timeout=opts.setup_timeout,
            stall_timeout=opts.stall_timeout,
            connect_timeout=opts.connect_timeout,
            allow=gates.allow,
            refresh_allow=gates.refresh_allow,
            hidden=upstream.hidden,
            # Behind an SSH forward every client's peer is the local ssh process, which
            # shares this host's IPC namespace: the remote containers never do.
            shm=opts.shm is not False and remote is None,
        )
        return _Assembled(
            endpoint=upstream.endpoint,
            listeners=lent.listeners,
            endpoints=lent.endpoints,
            relay_options=relay_options,
            args=attrs.evolve(lent.args, ipc="host") if opts.shm is True else lent.args,
            upstream=upstream,
        )


def _check_shm(transport: str, auth: AuthMode, *, remote: bool) -> None:
    """Raise if ``shm=True`` cannot give shared memory (it would only add ``--ipc host``)."""
    if remote:
        raise ConfigurationError(
            Mention("shm", True),
            " with an engine on another host: its containers cannot share this host's memory",
            option="shm",
            value=True,
            hint=("leave shm out",),
        )
    if transport != "unix":
        raise ConfigurationError(
            Mention("shm", True),
            " needs the UNIX transport: shared memory is granted only to a client the relay "
            "sees on its mounted socket (engines in a VM do not share this host's memory)",
            option="shm",
            value=True,
            hint=("leave shm out, or pass ", Mention("transport", "unix")),
        )
    if auth == "untrusted":
        raise ConfigurationError(
            Mention("shm", True),
            " with ",
            Mention("auth", "untrusted"),
            ": the X server refuses MIT-SHM to untrusted clients, so it would only add --ipc host",
            option="shm",
            value=True,
            hint=("leave shm out, or use ", Mention("auth", "substitute")),
        )
