"""
The probe ``doctor --image`` runs inside an image: an X client of the standard library only.

It is shipped as package data and run by the image's own ``python3`` (3.7 or later), so it
imports nothing but the standard library and nothing of this package. It connects as an X
client of the image would (``DISPLAY``, ``XAUTHORITY``), makes the connection setup with the
MIT cookie for that display, and prints the server's vendor and screen and whether the
client gets MIT-SHM (shared memory); it exits with a message when the display refuses or
closes the connection.
"""

from __future__ import annotations

import os
import socket
import struct
import sys


#: Where X clients look for the socket of display N (``/tmp/.X11-unix/X%d``).
SOCKET_DIR = "/tmp/.X11-unix"
MIT_MAGIC_COOKIE_1 = b"MIT-MAGIC-COOKIE-1"


def parse_display(display: str) -> tuple[str, int]:
    """Return ``(host, number)`` of a ``DISPLAY`` value; host "" for the local socket."""
    host, _, rest = display.rpartition(":")
    number = int(rest.split(".")[0])
    if host.startswith("tcp/"):
        host = host[4:]
    return ("" if host == "unix" else host), number


def cookie_for(data: bytes, number: int) -> tuple[bytes, bytes]:
    """Return the first MIT cookie entry of an Xauthority file's `data` for `number`."""
    at = 0
    while at + 2 <= len(data):
        fields = []
        at += 2  # the family: any (a container's file is written for it)
        for _ in range(4):
            (size,) = struct.unpack(">H", data[at : at + 2])
            fields.append(data[at + 2 : at + 2 + size])
            at += 2 + size
        if fields[1] == str(number).encode() and fields[2] == MIT_MAGIC_COOKIE_1:
            return fields[2], fields[3]
    return b"", b""


def connect(host: str, number: int, timeout: float = 10.0) -> socket.socket:
    """Connect to display `number` of `host` as Xlib does (the local socket for "")."""
    if host:
        return socket.create_connection((host, 6000 + number), timeout=timeout)
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(timeout)
    try:
        sock.connect(f"{SOCKET_DIR}/X{number}")
    except BaseException:
        sock.close()
        raise
    return sock


def _read(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def setup(sock: socket.socket, name: bytes, cookie: bytes) -> str:
    """
    Make the connection setup and describe the server (vendor and screen).

    Raises:
        ConnectionError: The display closed the connection, or refused the setup.
    """

    def pad(data: bytes) -> bytes:
        return data + b"\0" * (-len(data) % 4)

    head = struct.pack("<BxHHHHxx", 0x6C, 11, 0, len(name), len(cookie))
    sock.sendall(head + pad(name) + pad(cookie))
    reply = _read(sock, 8)
    if len(reply) < 8:
        raise ConnectionError("the display closed the connection")
    (words,) = struct.unpack("<H", reply[6:8])
    body = _read(sock, 4 * words)
    if reply[0] != 1:
        raise ConnectionError("refused: " + body[: reply[1]].decode("latin-1"))
    (vendor_length,) = struct.unpack("<H", body[16:18])
    formats = body[21]
    vendor = body[32 : 32 + vendor_length].decode("latin-1")
    screen = 32 + vendor_length + (-vendor_length % 4) + 8 * formats
    width, height = struct.unpack("<HH", body[screen + 20 : screen + 24])
    return f"{vendor}, screen {width}x{height}"


def has_extension(sock: socket.socket, name: bytes) -> bool:
    """
    Ask ``QueryExtension(name)`` on a connection set up in LSB-first order.

    Raises:
        ConnectionError: The display closed the connection, or answered with no reply.
    """
    padded = name + b"\0" * (-len(name) % 4)
    sock.sendall(struct.pack("<BxHHxx", 98, 2 + len(padded) // 4, len(name)) + padded)
    while True:
        packet = _read(sock, 32)
        if len(packet) < 32:
            raise ConnectionError("the display closed the connection")
        if packet[0] == 1:
            return bool(packet[8])
        if packet[0] == 0:
            raise ConnectionError(f"QueryExtension failed with X error {packet[1]}")
        # An event: not ours; read on.


def main() -> int:
    """Probe ``$DISPLAY`` with ``$XAUTHORITY``'s cookie; print what answered."""
    display = os.environ.get("DISPLAY", "")
    host, number = parse_display(display)
    path = os.environ.get("XAUTHORITY")
    data = b""
    if path:
        with open(path, "rb") as file:
            data = file.read()
    name, cookie = cookie_for(data, number)
    try:
        with connect(host, number) as sock:
            described = setup(sock, name, cookie)
            shm = "granted" if has_extension(sock, b"MIT-SHM") else "hidden"
    except ConnectionError as e:
        print(f"x11passthrough probe: {e}", file=sys.stderr)
        return 1
    print(f"probe: {described}, MIT-SHM {shm}, display {display}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
