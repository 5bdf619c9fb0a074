"""
ServedDisplay: a display lent under a stable name until stopped, to containers that come and go.

Strictly private: import :class:`ServedDisplay` and :func:`served_args` from
:mod:`x11passthrough.served`.

``x11passthrough run`` lends a display for one command; Compose ``up -d``, Dev Containers and
engine-restarted services outlive any command, and their arguments are written in a file
before they start. A served display has a name the user picks; its display number (kept in
its state file), its directories and the containers' environment follow from that name
alone (:mod:`.place`), so ``compose.yaml`` can name them once. It serves until stopped, through
restarts of the host's X server (:mod:`.live`). Each container may get a seat of its own (a
socket and a cookie of its own, like OpenSSH's per-session cookies) that is revoked without
disturbing the others: revoking stops that seat's relay, which closes its live connections
too.

Measured with ``nox -s bench -- served`` (2 shared cores, Xvfb, 10 runs): :meth:`start` takes
a median 2 ms (best 1.5, worst 6); ``x11passthrough serve`` prints its ready line about 0.4-0.5
s after the process starts, nearly all of it the interpreter and imports; after the X server
restarts with a new cookie, a client is served again a median 112 ms (91-195) after the new
server accepts connections (183 ms, 95-587, in a run on a busier machine): the retry interval
(:data:`.live.RETRY`, 0.1 s; 0.25 s gave a median of 241 ms) plus one X11 setup that proves
the cookie.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import threading

from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import Any

import attrs

from .. import _session
from .._args import DockerRunArgs
from .._cleanup import Cleanup
from .._display._locator import DisplayLocator
from .._display._name import DisplayName
from .._display._reserve import DEFAULT_DISPLAY_RANGE, Reservation, held_by_server, reserve
from .._relay.options import Listener, RelayOptions
from .._relay.thread import RelayThread
from .._upstream import HostSide
from .._x11.gate import LiveCookieGate
from .._x11.wire import MIT_MAGIC_COOKIE_1
from .._xauth.authority import default_path
from .._xauth.format import Family, XauthEntry, dump
from ..exceptions import DisplayError, NoFreeDisplayError, ServeError, X11PassthroughError
from . import control
from .live import LiveDisplay
from .place import (
    CONTAINER_AUTH_DIR,
    CONTAINER_SOCKET_DIR,
    CONTAINER_XAUTHORITY,
    Place,
    Seat,
    check_name,
    private_directory,
    replace_file,
)


logger = logging.getLogger("x11passthrough")


@attrs.frozen(kw_only=True)
class ServedArgs(DockerRunArgs):
    """
    What a container needs to reach a served display: the same spellings as DockerRunArgs.

    The mounts are two directories, read-only: the socket directory as ``/tmp/.X11-unix`` and
    the authority file's directory as ``/tmp/.x11passthrough``; they stay valid across restarts
    of the container, of ``serve`` and of the X server.

    Attributes:
        name: The served display's name.
        label: The container's own seat, or None for the shared one.
        socket_dir: The host directory mounted as ``/tmp/.X11-unix``.
        auth_dir: The host directory mounted as ``/tmp/.x11passthrough``.

    .. versionadded:: 0.2.0
    """

    name: str
    label: str | None = None
    socket_dir: Path
    auth_dir: Path

    @property
    def mounts(self) -> tuple[tuple[str, str, bool], ...]:
        """The two directory mounts, as ``(host path, container path, read_only)``."""
        return (
            (str(self.socket_dir), str(CONTAINER_SOCKET_DIR), True),
            (str(self.auth_dir), str(CONTAINER_AUTH_DIR), True),
        )

    def devcontainer(self) -> dict[str, Any]:
        """Return the keys of a ``devcontainer.json`` (``mounts``, ``containerEnv``, ...)."""
        config: dict[str, Any] = {
            "mounts": [
                f"type=bind,source={host},target={inside}" + (",readonly" if read_only else "")
                for host, inside, read_only in self.mounts
            ],
            "containerEnv": dict(self.environment),
        }
        run_args = [f"--add-host={n}:{v}" for n, v in self.extra_hosts.items()]
        if self.hostname is not None:
            run_args.append(f"--hostname={self.hostname}")
        if run_args:
            config["runArgs"] = run_args
        return config


def _args_for(seat: Seat, name: str, hostname: str | None) -> ServedArgs:
    return ServedArgs(
        name=name,
        label=seat.label,
        display=f":{seat.number}",
        xauthority=seat.xauthority,
        container_xauthority=PurePosixPath(CONTAINER_XAUTHORITY),
        socket=seat.socket,
        container_socket=CONTAINER_SOCKET_DIR / f"X{seat.number}",
        socket_dir=seat.socket_dir,
        auth_dir=seat.auth_dir,
        hostname=hostname,
    )


def _prepare_seat(seat: Seat) -> None:
    """Create the seat's directories (kept for the name's life: containers mount them)."""
    if seat.label is not None:
        private_directory(seat.directory.parent)
        private_directory(seat.directory)
    private_directory(seat.socket_dir, mode=0o755)
    private_directory(seat.auth_dir, mode=0o755)


def _number(
    place: Place, display_range: Sequence[int], locator: DisplayLocator
) -> tuple[int, dict[str, Any]]:
    """Return the served display's number (chosen and saved the first time) and its state."""
    state = place.read_state()
    number = state.get("number")
    if isinstance(number, int):
        return number, state
    with reserve(display_range, (), locator._places(abstract=True), abstract=True) as held:
        number = held.number
    state = {"number": number, "clients": []}
    place.write_state(state)
    logger.info("served display %r: display number %d, from now on", place.name, number)
    return number, state


def served_args(
    name: str,
    *,
    label: str | None = None,
    host_dir: str | os.PathLike[str] | None = None,
    container_hostname: str | None = None,
    display_range: Sequence[int] = DEFAULT_DISPLAY_RANGE,
) -> ServedArgs:
    """
    Return what a container needs for the served display `name`, served or not (yet).

    The first call for a name chooses its display number and creates its directories, so the
    result can be written in ``compose.yaml`` before ``serve`` runs; later calls return the same.

    Args:
        name: The served display's name.
        label: A container's own seat (minted with :meth:`ServedDisplay.mint`), or None.
        host_dir: Where served displays live (default: ``$XDG_RUNTIME_DIR``, see the docs).
        container_hostname: A host name to pin for python-xlib clients.
        display_range: Where the first call chooses the number.

    Raises:
        ConfigurationError: `name` or `label` is not valid.
        ServeError: The directory cannot be created, or the state file is damaged.
        NoFreeDisplayError: The first call found no free number in `display_range`.

    .. versionadded:: 0.2.0
    """
    place = Place.of(name, Path(host_dir) if host_dir is not None else None)
    number, _ = _number(place, display_range, DisplayLocator())
    seat = place.seat(label, number)
    _prepare_seat(seat)
    return _args_for(seat, name, container_hostname)


@attrs.define(eq=False)
class _Running:
    """A seat being served: its cookie and its relay."""

    seat: Seat
    cookie: bytes = attrs.field(repr=False)
    relay: RelayThread


class ServedDisplay:
    """
    Lend the host's display under a stable name until stopped, to containers that come and go.

    ::

        with ServedDisplay("devbox") as args:      # x11passthrough serve --name devbox
            ...  # `docker compose up -d` with args.compose(), containers restart at will

    While it serves, containers started with :func:`served_args` (``x11passthrough args
    --name devbox``) reach the display, whenever they were started; a second ServedDisplay of
    the same name (in any process of this user) raises
    :class:`~x11passthrough.exceptions.ServeError`; a killed one's name is taken over. The X
    server behind it may restart: clients are refused with a clear reason while it is gone
    and served again, with the new cookie, once it is back. Closing it
    withdraws the display from every container (the sockets and cookies are removed; the
    directories stay, so the next ``serve`` of that name reaches the same containers).

    Args:
        name: The name (``devbox``): letters, digits, ``_ . -``.
        display: The host display; default ``$DISPLAY``.
        xauthority: The host's authority file (read again when the X server restarts);
            default: libXau's.
        host_dir: Where served displays live; default ``$XDG_RUNTIME_DIR/x11passthrough-serve``
            (``/run/x11passthrough-serve`` for root without it, else a 0700 directory in /tmp).
        container_hostname: A host name containers are given, for python-xlib clients (which
            find their cookie only under their host name).
        display_range: Where the first start chooses the number (kept from then on).
        connect_timeout: Seconds to wait for the host display.
        setup_timeout: Seconds a client has to complete its X11 setup.
        stall_timeout: See :class:`~x11passthrough.X11Passthrough`.
        locator: The display locator to use.

    .. versionadded:: 0.2.0
    """

    def __init__(
        self,
        name: str,
        display: str | DisplayName | None = None,
        xauthority: str | os.PathLike[str] | None = None,
        *,
        host_dir: str | os.PathLike[str] | None = None,
        container_hostname: str | None = None,
        display_range: Sequence[int] = DEFAULT_DISPLAY_RANGE,
        connect_timeout: float = 2.0,
        setup_timeout: float = 10.0,
        stall_timeout: float = 0.5,
        locator: DisplayLocator | None = None,
    ) -> None:
        self.name = check_name(name)
        self._display = DisplayName.parse(display) if isinstance(display, str) else display
        self._xauthority = None if xauthority is None else os.fspath(xauthority)
        self._host_dir = None if host_dir is None else Path(host_dir)
        self._hostname = container_hostname
        self._range = display_range
        self._locator = locator or DisplayLocator(connect_timeout=connect_timeout)
        self._relay_options = RelayOptions(
            setup_timeout=setup_timeout,
            stall_timeout=stall_timeout,
            connect_timeout=connect_timeout,
        )
        self._connect_timeout = connect_timeout
        self._lock = threading.RLock()
        self._cleanup: Cleanup | None = None
        self._place: Place | None = None
        self._live: LiveDisplay | None = None
        self._reservation: Reservation | None = None
        self._seats: dict[str | None, _Running] = {}
        self._number = 0
        #: Set when a ``--stop`` request arrived over the control socket.
        self.stop_requested = threading.Event()

    def __repr__(self) -> str:
        state = "serving" if self._cleanup is not None else "stopped"
        return f"<ServedDisplay(name={self.name!r}, number={self._number or None}, {state})>"

    # -- public API -------------------------------------------------------------------------

    @property
    def args(self) -> ServedArgs:
        """The shared seat's arguments (every container may use them)."""
        return self._seat_args(None)

    @property
    def clients(self) -> tuple[str, ...]:
        """The labels of the containers with a seat of their own."""
        with self._lock:
            return tuple(sorted(label for label in self._seats if label is not None))

    @property
    def live(self) -> LiveDisplay:
        """The display behind it (its state, how often it came back)."""
        if self._live is None:
            raise ServeError(f"the served display {self.name!r} is not running")
        return self._live

    def start(self) -> ServedArgs:
        """
        Serve the display under its name; return the shared seat's arguments.

        Raises:
            ServeError: Another process serves this name, or its display number is taken.
            DisplayError: The display cannot be reached or refused the cookie.
        """
        with self._lock:
            if self._cleanup is not None:
                return self.args
            cleanup = Cleanup()
            try:
                self._start(cleanup)
            except BaseException:
                cleanup.close()
                self._seats.clear()
                self._place = self._live = self._reservation = None
                raise
            self._cleanup = cleanup
            return self.args

    def mint(self, label: str) -> ServedArgs:
        """
        Give the container `label` a seat of its own (socket and cookie); return its arguments.

        Minting a label that has one returns the same. The seat is kept (with a new cookie)
        when ``serve`` restarts, until :meth:`revoke`.

        Raises:
            ConfigurationError: `label` is not valid.
            ServeError: The served display is not running.
        """
        check_name(label, what="label")
        with self._lock:
            place = self._running_place()
            if label not in self._seats:
                self._open_seat(place.seat(label, self._number))
                self._save_clients()
                logger.info("served display %r: minted a cookie for %r", self.name, label)
            return self._seat_args(label)

    def revoke(self, label: str) -> None:
        """
        Withdraw the seat of `label`: its cookie, its socket and its live connections.

        Raises:
            ServeError: The served display is not running, or `label` has no seat.
        """
        check_name(label, what="label")
        with self._lock:
            self._running_place()
            running = self._seats.pop(label, None)
            if running is None:
                raise ServeError(
                    f"the served display {self.name!r} has no cookie for {label!r}; minted: "
                    f"{', '.join(self.clients) or 'none'}"
                )
            self._close_seat(running)
            self._save_clients()
            logger.info("served display %r: revoked the cookie of %r", self.name, label)

    def close(self) -> None:
        """Withdraw the display from every container and free the name. Idempotent."""
        with self._lock:
            cleanup, self._cleanup = self._cleanup, None
        if cleanup is not None:
            cleanup.close()
        with self._lock:
            self._place = self._live = self._reservation = None

    def __enter__(self) -> ServedArgs:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- the work -----------------------------------------------------------------------------

    def _start(self, cleanup: Cleanup) -> None:
        place = Place.of(self.name, self._host_dir)
        lock_fd = place.lock()
        cleanup.add("unlocking the served display", lambda: os.close(lock_fd))
        number, state = _number(place, self._range, self._locator)
        places = self._locator._places(abstract=True)
        try:
            reservation = reserve([number], (), places, abstract=True)
        except NoFreeDisplayError:
            why = held_by_server(number, places) or f"@{places.socket_path(number)} is in use"
            raise ServeError(
                f"display :{number}, the number of the served display {self.name!r}, is taken "
                f"on this host ({why}); stop what uses it, or remove {place.state_path} to "
                "choose another number (then write the containers' arguments again)"
            ) from None
        cleanup.add("releasing the display number", reservation.close)
        live = LiveDisplay(
            locator=self._locator,
            name=self._display_name(),
            host=HostSide(
                authority=default_path() if self._xauthority is None else self._xauthority,
                connect_timeout=self._connect_timeout,
                untrusted_timeout=0,
                trusted_owners=self._locator.trusted_owners,
            ),
        )
        cleanup.add("closing the connection that follows the X server", live.close)
        live.open()
        self._place, self._live, self._number = place, live, number
        self._reservation = reservation
        cleanup.add("withdrawing every seat", self._close_all)
        self._open_seat(place.seat(None, number), extra=reservation.sockets)
        labels = state.get("clients", [])
        for label in labels if isinstance(labels, list) else []:
            try:
                self._open_seat(place.seat(check_name(label, what="label"), number))
            except X11PassthroughError as e:  # e.g. a label edited by hand: serve the others
                logger.warning("served display %r: seat %r not restored: %s", self.name, label, e)
        server = control.ControlServer(place.control, self._control)
        cleanup.add("closing the control socket", server.close)
        logger.info(
            "serving %s as :%d under the name %r (%s)",
            live.endpoint,
            number,
            self.name,
            place.directory,
        )

    def _display_name(self) -> DisplayName:
        if self._display is not None:
            return self._display
        text = os.environ.get("DISPLAY")
        if not text:
            raise DisplayError(
                "DISPLAY is not set and no display was given: run it from a desktop or over "
                "ssh -X, or pass ServedDisplay(name, display=':0')"
            )
        return DisplayName.parse(text)

    def _running_place(self) -> Place:
        if self._place is None:
            raise ServeError(f"the served display {self.name!r} is not running; start() it")
        return self._place

    def _seat_args(self, label: str | None) -> ServedArgs:
        with self._lock:
            running = self._seats.get(label)
            if running is None:
                raise ServeError(f"the served display {self.name!r} is not running")
            return _args_for(running.seat, self.name, self._hostname)

    def _open_seat(self, seat: Seat, extra: Sequence[socket.socket] = ()) -> None:
        live = self._live
        assert live is not None  # noqa: S101 - set before any seat opens
        assert live.endpoint is not None  # noqa: S101
        _prepare_seat(seat)
        cookie = secrets.token_bytes(16)
        entries = [XauthEntry(Family.WILD, b"", seat.number, MIT_MAGIC_COOKIE_1, cookie)]
        if self._hostname:
            name = self._hostname.encode()
            entries.append(XauthEntry(Family.LOCAL, name, seat.number, MIT_MAGIC_COOKIE_1, cookie))
        # 0644: any container user must read it (see place's note); the directory is 0700.
        replace_file(seat.auth_dir / ".Xauthority.tmp", seat.xauthority, dump(entries), mode=0o644)
        gate = LiveCookieGate(expected_data=cookie, present=live.present)
        listening = _listen(seat.socket)
        listeners = [Listener(listening, gate), *(Listener(s, gate) for s in extra)]
        relay = RelayThread(
            listeners,
            live.endpoint,
            attrs.evolve(self._relay_options, check_upstream=live.check, hidden=live),
        )
        try:
            relay.start()
        except BaseException:
            listening.close()
            _withdraw_files(seat)
            raise
        self._seats[seat.label] = _Running(seat, cookie, relay)

    def _close_seat(self, running: _Running) -> None:
        running.relay.stop()
        _withdraw_files(running.seat)

    def _close_all(self) -> None:
        with self._lock:
            seats = list(self._seats.values())
            self._seats.clear()
        for running in seats:
            self._close_seat(running)

    def _save_clients(self) -> None:
        place = self._running_place()
        place.write_state({"number": self._number, "clients": list(self.clients)})

    def _control(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        label = request.get("label")
        if op == "mint":
            return {"args": _describe(self.mint(str(label)))}
        if op == "revoke":
            self.revoke(str(label))
            return {"revoked": label}
        if op == "list":
            return {"clients": list(self.clients), "number": self._number, "pid": os.getpid()}
        if op == "stop":
            self.stop_requested.set()
            return {"stopping": os.getpid()}
        raise ServeError(f"unknown request {op!r}")


def _describe(args: ServedArgs) -> dict[str, Any]:
    return {
        "label": args.label,
        "socket_dir": str(args.socket_dir),
        "auth_dir": str(args.auth_dir),
    }


def _listen(path: Path) -> socket.socket:
    """Listen on `path` (replacing a killed serve's socket), connectable by any container user."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with _session.socket_address(path) as address:
            sock.bind(address)
        # Reachable only through the containers' mounts of a 0700 directory; the cookie
        # guards the rest (see the session's socket in _transport).
        os.chmod(path, 0o666)  # noqa: S103
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise ServeError(f"cannot listen on {path}: {e.strerror or e}") from e
    return sock


def _withdraw_files(seat: Seat) -> None:
    """Remove the seat's socket and cookie; keep its directories (containers mount them)."""
    for path in (seat.socket, seat.xauthority):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
