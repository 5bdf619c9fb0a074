"""
A raw X client for tests that need requests no library sends (MIT-SHM with descriptors,
images of chosen sizes): little-endian, on any connected socket, numbering its requests.
"""

from __future__ import annotations

import array
import os
import socket
import struct


NAME = b"MIT-MAGIC-COOKIE-1"


def recv_exactly(sock: socket.socket, size: int, fds: list[int] | None = None) -> bytes:
    data = b""
    while len(data) < size:
        chunk, ancillary, _flags, _ = sock.recvmsg(size - len(data), socket.CMSG_SPACE(64))
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                received = array.array("i")
                received.frombytes(payload[: len(payload) - len(payload) % 4])
                if fds is None:
                    for fd in received:
                        os.close(fd)
                else:
                    fds.extend(received)
        assert chunk, "the connection closed"
        data += chunk
    return data


class Client:
    """A raw X client on a UNIX socket: little-endian, numbering its requests."""

    def __init__(self, path: str | None, cookie: bytes, sock: socket.socket | None = None) -> None:
        if sock is None:
            assert path is not None
            sock = socket.socket(socket.AF_UNIX)
            sock.connect(path)
        self.sock = sock
        self.sock.settimeout(20)
        self.sock.sendall(
            struct.pack("<BxHHHHxx", 0x6C, 11, 0, len(NAME), len(cookie))
            + NAME
            + b"\0" * (-len(NAME) % 4)
            + cookie
        )
        head = recv_exactly(self.sock, 8)
        assert head[0] == 1, "the connection setup failed"
        body = recv_exactly(self.sock, 4 * struct.unpack_from("<H", head, 6)[0])
        self.base: int = struct.unpack_from("<I", body, 4)[0]
        vendor = struct.unpack_from("<H", body, 16)[0]
        formats = body[21]
        screen = 32 + vendor + (-vendor % 4) + 8 * formats
        self.root = struct.unpack_from("<I", body, screen)[0]
        self.depth = body[screen + 38]
        self.sequence = 0
        self.next_id = 0
        self.fds: list[int] = []

    @classmethod
    def adopt(cls, sock: socket.socket, cookie: bytes) -> Client:
        """A client on a connection another process made."""
        return cls(None, cookie, sock)

    def new_id(self) -> int:
        self.next_id += 1
        return self.base + self.next_id

    def send(self, major: int, minor: int, body: bytes, fds: tuple[int, ...] = ()) -> int:
        data = struct.pack("<BBH", major, minor, 1 + len(body) // 4) + body
        if fds:
            self.sock.sendmsg(
                [data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
            )
        else:
            self.sock.sendall(data)
        self.sequence += 1
        return int(self.sequence)

    def reply(self, sequence: int) -> tuple[bytes, bytes]:
        """Read until the answer to `sequence`; raise on an error for it or before."""
        while True:
            head = recv_exactly(self.sock, 32, self.fds)
            (number,) = struct.unpack_from("<H", head, 2)
            if head[0] == 0:
                raise AssertionError(f"X error {head[1]} for request {number} (major {head[10]})")
            extra = b""
            if head[0] == 1:
                extra = recv_exactly(self.sock, 4 * struct.unpack_from("<I", head, 4)[0], self.fds)
            if head[0] == 1 and number == sequence:
                return head, extra

    def sync(self) -> None:
        self.reply(self.send(43, 0, b""))

    def query(self, name: bytes) -> tuple[bool, int]:
        body = struct.pack("<Hxx", len(name)) + name + b"\0" * (-len(name) % 4)
        head, _ = self.reply(self.send(98, 0, body))
        return bool(head[8]), head[9]

    def close(self) -> None:
        self.sock.close()
        for fd in self.fds:
            os.close(fd)
