"""
The serving process's control socket: mint, revoke, list and stop from another process.

Strictly private.

``x11passthrough serve --name devbox --mint web`` runs in another process than the ``serve``
that holds the display; it asks over ``<place>/control``, a UNIX socket in the served
display's 0700 directory that answers only processes of the same user (or root), checked
with ``SO_PEERCRED``. One JSON request line, one JSON answer line per connection.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import socket
import struct
import threading

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import _session
from ..exceptions import ServeError


logger = logging.getLogger("x11passthrough")

#: Seconds a control client may take to send its request, and to wait for the answer.
TIMEOUT = 10.0
_MAX_REQUEST = 4096

Handler = Callable[[dict[str, Any]], dict[str, Any]]


class ControlServer:
    """Answer control requests on `path` with `handler` (in a thread of its own)."""

    def __init__(self, path: Path, handler: Handler) -> None:
        self._path = path
        self._handler = handler
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a killed serve's: its lock was free, so nobody listens on it
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with _session.socket_address(path) as address:
                sock.bind(address)
            os.chmod(path, 0o600)
            sock.listen(16)
        except OSError as e:
            sock.close()
            raise ServeError(f"cannot listen on {path}: {e.strerror or e}") from e
        self._sock = sock
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread = threading.Thread(
            target=self._serve, name="x11passthrough-serve-control", daemon=True
        )
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                readable, _, _ = select.select([self._sock, self._wake_r], [], [])
            except (OSError, ValueError):
                return
            if self._wake_r in readable:
                return
            try:
                client, _ = self._sock.accept()
            except OSError:
                continue
            with client:
                self._answer(client)

    def _answer(self, client: socket.socket) -> None:
        client.settimeout(TIMEOUT)
        try:
            creds = client.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
            _, uid, _ = struct.unpack("3i", creds)
            if uid not in (os.geteuid(), 0):
                answer: dict[str, Any] = {"error": "not the served display's owner"}
            else:
                answer = self._handle(_read_line(client))
            client.sendall(json.dumps(answer).encode() + b"\n")
        except (OSError, ValueError) as e:
            logger.debug("control request failed: %s", e)

    def _handle(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
        except ValueError:
            request = None
        if not isinstance(request, dict):
            return {"error": "malformed request"}
        try:
            return self._handler(request)
        except ServeError as e:
            return {"error": str(e)}
        except Exception as e:
            logger.exception("control request %r failed", request.get("op"))
            return {"error": f"internal error: {e}"}

    def close(self) -> None:
        """Stop answering, and remove the socket."""
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        self._thread.join()
        self._sock.close()
        with contextlib.suppress(FileNotFoundError):
            self._path.unlink()
        self._wake_r.close()
        self._wake_w.close()


def _read_line(sock: socket.socket) -> bytes:
    data = b""
    while b"\n" not in data:
        chunk = sock.recv(_MAX_REQUEST)
        if not chunk:
            break
        data += chunk
        if len(data) > _MAX_REQUEST:
            raise ValueError("request too long")
    return data.split(b"\n", 1)[0]


def request(path: Path, name: str, body: dict[str, Any]) -> dict[str, Any]:
    """
    Send `body` to the serving process of `name` and return its answer.

    Raises:
        ServeError: Nothing serves `name`, or it answered with an error.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(TIMEOUT)
    try:
        with _session.socket_address(path) as address:
            sock.connect(address)
        sock.sendall(json.dumps(body).encode() + b"\n")
        line = _read_line(sock)
    except (FileNotFoundError, ConnectionRefusedError):
        raise ServeError(
            f"the served display {name!r} is not running; start it with "
            f"x11passthrough serve --name {name}"
        ) from None
    except OSError as e:
        raise ServeError(f"cannot ask the served display {name!r}: {e.strerror or e}") from e
    finally:
        sock.close()
    try:
        answer = json.loads(line)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise ServeError(f"the served display {name!r} did not answer; is it stopping?")
    if "error" in answer:
        raise ServeError(str(answer["error"]))
    return answer
