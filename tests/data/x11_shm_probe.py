"""
A raw X client that asks for MIT-SHM and attaches System V segments by id: prints JSON.

Standard library only, so it runs under Debian's python3 as another user and in the test
image. Usage: ``python3 x11_shm_probe.py SOCKET COOKIE_HEX [SHMID[:ro] ...]`` (SOCKET "" means
$DISPLAY's ``/tmp/.X11-unix/XN``; COOKIE_HEX "" means the first MIT-MAGIC-COOKIE-1 of
$XAUTHORITY). For each id it sends ``ShmAttach`` and a ``GetInputFocus`` and reports the error
code the attach got (0: attached). Output: ``{"uid": ..., "shm": bool, "attach": {id: code}}``.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import sys


NAME = b"MIT-MAGIC-COOKIE-1"


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise SystemExit("the connection closed")
        data += chunk
    return data


def cookie_from_file(path: str) -> bytes:
    with open(path, "rb") as file:
        data = file.read()
    at = 0
    while at < len(data):
        fields: list[bytes] = []
        at += 2
        for _ in range(4):
            (length,) = struct.unpack_from(">H", data, at)
            fields.append(data[at + 2 : at + 2 + length])
            at += 2 + length
        if fields[2] == NAME:
            return fields[3]
    raise SystemExit("no cookie in " + path)


def packet(sock: socket.socket) -> bytes:
    head = recv_exactly(sock, 32)
    if head[0] == 1:
        recv_exactly(sock, 4 * struct.unpack_from("<I", head, 4)[0])
    return head


def main() -> None:
    path, cookie_hex, *ids = sys.argv[1:]
    if not path:
        path = "/tmp/.X11-unix/X" + os.environ["DISPLAY"].rsplit(":", 1)[1].split(".")[0]
    cookie = (
        bytes.fromhex(cookie_hex) if cookie_hex else cookie_from_file(os.environ["XAUTHORITY"])
    )
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(30)
    sock.connect(path)
    sock.sendall(
        struct.pack("<BxHHHHxx", 0x6C, 11, 0, len(NAME), len(cookie))
        + NAME
        + b"\0" * (-len(NAME) % 4)
        + cookie
        + b"\0" * (-len(cookie) % 4)
    )
    head = recv_exactly(sock, 8)
    if head[0] != 1:
        raise SystemExit("the connection setup failed")
    body = recv_exactly(sock, 4 * struct.unpack_from("<H", head, 6)[0])
    (base,) = struct.unpack_from("<I", body, 4)
    name = b"MIT-SHM"
    query = struct.pack("<Hxx", len(name)) + name + b"\0" * (-len(name) % 4)
    sock.sendall(struct.pack("<BxH", 98, 1 + len(query) // 4) + query)
    sequence = 1
    reply = packet(sock)
    present, major = bool(reply[8]), reply[9]
    attached: dict[str, int] = {}
    for index, spec in enumerate(ids if present else []):
        shmid, _, mode = spec.partition(":")
        read_only = 1 if mode == "ro" else 0
        attach_request = struct.pack(
            "<BBHIIBxxx", major, 1, 4, base + 1 + index, int(shmid), read_only
        )
        sock.sendall(attach_request)
        sock.sendall(struct.pack("<BxH", 43, 1))
        attach, sync = sequence + 1, sequence + 2
        sequence = sync
        code = 0
        while True:
            head = packet(sock)
            (number,) = struct.unpack_from("<H", head, 2)
            if head[0] == 0 and number == attach:
                code = head[1]
            if head[0] == 1 and number == sync:
                break
        attached[spec] = code
    print(json.dumps({"uid": os.geteuid(), "shm": present, "attach": attached}), flush=True)


main()
