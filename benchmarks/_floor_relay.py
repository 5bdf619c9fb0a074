"""
The floor of any relay in user space, for the benchmarks: ``_floor_relay.py LISTEN DISPLAY``.

It listens on the UNIX socket `LISTEN` and joins each client to the X server's socket
`DISPLAY` with two threads that do nothing but ``recv_into`` and ``sendall`` through a
1 MiB buffer: no event loop, no request filter, no cookie check, no limits. What a real relay
must do costs more than this, so the rate through it is about the best that moving the bytes
through one more process can give on this machine (``bench_apps`` path ``floor``). Never use
it for anything else: it admits whoever can reach its socket.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading


BUFFER = 1 << 20


def pump(src: socket.socket, dst: socket.socket) -> None:
    """Copy `src` to `dst` until the end of stream, then pass it on."""
    buffer = bytearray(BUFFER)
    view = memoryview(buffer)
    with contextlib.suppress(OSError):
        while n := src.recv_into(buffer):
            dst.sendall(view[:n])
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)


def main(argv: list[str]) -> int:
    """Serve until killed."""
    listen, display = argv
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(listen)
    # The container user connects; the benchmark X server still checks its own cookie.
    os.chmod(listen, 0o666)  # noqa: S103
    listener.listen(64)
    while True:
        client, _ = listener.accept()
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        upstream.connect(display)
        for src, dst in ((client, upstream), (upstream, client)):
            threading.Thread(target=pump, args=(src, dst), daemon=True).start()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
