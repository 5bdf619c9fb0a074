"""
The client's request stream, walked request by request: extensions a relayed client must not use.

Strictly private. Two extensions cannot work across the container boundary, and one of them
must not:

* ``MIT-SHM``: a client that believes its display is local attaches System V shared memory by
  its id. The X server looks the id up in *its* IPC namespace, with the credentials of the
  connection it sees: the relay's, i.e. the user's (or root's). A container's segment ids mean
  nothing there, so the attach fails (BadAccess) at best; at worst the id names one of the
  user's own segments, which the container can then read through the display. With
  ``--ipc host`` the ids do match, but the segment *file descriptors* of newer clients (Qt 5's
  ``ShmCreateSegment``) cannot pass a byte relay: such a client gets a blank window.
* ``DRI3``: every reply of it carries a file descriptor, which a byte relay cannot pass; libxcb
  then waits for it forever.

A client asks for an extension with ``QueryExtension`` before it uses it. :class:`RequestFilter`
changes the first byte of the name in a ``QueryExtension`` for a hidden extension to NUL, so
that the server itself answers "not present" (no reply needs changing), and turns every request
with a hidden extension's major opcode (a client that guesses it) into major opcode 0, which
the server answers with BadRequest. ``ListExtensions`` still lists them (no client relies on
that list alone). The filter follows the stream from its first byte: the setup request, then
each request by its length, with ``BIG-REQUESTS`` lengths once the client enabled them.
"""

from __future__ import annotations

import struct

import attrs


#: Extensions no relayed client gets, and why (for the docs and the log).
HIDDEN_EXTENSIONS: dict[bytes, str] = {
    b"MIT-SHM": "shared memory does not cross the container boundary",
    b"DRI3": "its replies carry file descriptors, which a relay cannot pass",
}
#: The extension whose requests change how lengths are read.
BIG_REQUESTS = b"BIG-REQUESTS"
#: Core opcode of QueryExtension.
QUERY_EXTENSION = 98
#: The major opcode hidden requests become: no request has it, so the server answers
#: BadRequest with the request's sequence number and skips its length.
BAD_REQUEST_OPCODE = 0

_SETUP_PREFIX = 12
_HEADER = 4
_BIG_HEADER = 8
_QUERY_NAME_OFFSET = 8


@attrs.frozen(kw_only=True)
class Hidden:
    """
    What the relay keeps from its clients, in the X server's own numbering.

    Attributes:
        names: Extension names a ``QueryExtension`` must not find.
        majors: Their major opcodes on this server (absent extensions have none).
        big_requests: The major opcode of ``BIG-REQUESTS``, or None if the server lacks it.
    """

    names: frozenset[bytes]
    majors: frozenset[int]
    big_requests: int | None = None

    @property
    def name_lengths(self) -> frozenset[int]:
        """Lengths of the hidden names (a ``QueryExtension`` of another length passes)."""
        return frozenset(len(name) for name in self.names)


class RequestFilter:
    """
    One client's request stream as the X server will read it: hidden extensions taken out.

    Feed it every byte the client sends, in order (the setup request first); it rewrites them
    in place and says how many may go on. Bytes it cannot judge yet (a header or a
    ``QueryExtension`` split across reads: at most a few dozen) wait for the next feed.
    """

    __slots__ = (
        "_big",
        "_big_opcode",
        "_carry",
        "_fmt16",
        "_fmt32",
        "_lengths",
        "_majors",
        "_names",
        "_setup",
        "_skip",
        "problem",
        "queries_hidden",
        "requests_blocked",
    )

    def __init__(self, hidden: Hidden) -> None:
        self._names = hidden.names
        self._majors = hidden.majors
        self._lengths = hidden.name_lengths
        self._big_opcode = hidden.big_requests
        self._big = False
        self._carry = b""
        self._setup = True
        self._skip = 0
        self._fmt16 = "<H"
        self._fmt32 = "<I"
        #: Why the stream cannot be followed (the connection must close), or None.
        self.problem: str | None = None
        #: How many QueryExtension requests were answered "not present" by the rewrite.
        self.queries_hidden = 0
        #: How many requests to a hidden extension were turned into BadRequest.
        self.requests_blocked = 0

    def feed(self, data: bytearray | memoryview) -> bytearray | memoryview:
        """
        Take the next bytes of the stream; return those that may be sent now, rewritten.

        Args:
            data: The bytes just received. They may be changed in place.

        Returns:
            A prefix of `data` (or, after held-back bytes, a new buffer holding them and
            `data`); empty when everything waits for more. Once :attr:`problem` is set the
            connection must close: nothing more is returned.
        """
        if self.problem is not None:
            return data[:0]
        if self._carry:
            data = bytearray(self._carry) + data
            self._carry = b""
        size = len(data)
        skip = self._skip
        if skip >= size:
            self._skip = skip - size
            return data
        pos = skip
        self._skip = 0
        while pos < size:
            if self._setup:
                need = self._setup_size(data, pos, size)
            else:
                need = self._request_size(data, pos, size)
            if need is None:
                if self.problem is not None:
                    return data[:0]
                self._carry = bytes(data[pos:])
                return data[:pos]
            pos += need
        self._skip = pos - size
        return data

    def _setup_size(self, data: bytearray | memoryview, pos: int, size: int) -> int | None:
        """Return the length of the setup request at `pos` (and learn the byte order)."""
        if size - pos < _SETUP_PREFIX:
            return None
        order = data[pos]
        prefix = ">" if order in b"BR" else "<"
        self._fmt16 = prefix + "H"
        self._fmt32 = prefix + "I"
        name_length, data_length = struct.unpack_from(prefix + "HH", data, pos + 6)
        self._setup = False
        return _SETUP_PREFIX + _pad4(name_length) + _pad4(data_length)

    def _request_size(self, data: bytearray | memoryview, pos: int, size: int) -> int | None:
        """Judge (and rewrite) the request at `pos`; return its length, or None to wait."""
        if size - pos < _HEADER:
            return None
        major = data[pos]
        (words,) = struct.unpack_from(self._fmt16, data, pos + 2)
        offset = pos
        if words == 0:
            if not self._big:
                self.problem = (
                    "the client sent a request of length 0 without enabling BIG-REQUESTS"
                )
                return None
            if size - pos < _BIG_HEADER:
                return None
            (words,) = struct.unpack_from(self._fmt32, data, pos + 4)
            if words < 2:
                self.problem = f"the client sent a big request of {words} words"
                return None
            offset = pos + _BIG_HEADER - _HEADER
        length: int = words * 4
        if major in self._majors:
            data[pos] = BAD_REQUEST_OPCODE
            self.requests_blocked += 1
        elif major == QUERY_EXTENSION and not self._judge_query(data, offset, pos + length, size):
            return None
        elif major == self._big_opcode:
            self._big = True
        return length

    def _judge_query(self, data: bytearray | memoryview, offset: int, end: int, size: int) -> bool:
        """
        Hide the name in the QueryExtension at `offset` (ending at `end`) if it is hidden.

        Returns False when the name is not all in `data` yet.
        """
        name_at = offset + _QUERY_NAME_OFFSET
        if end < name_at:
            return True  # too short for a name: the server answers BadLength
        if size < name_at:
            return False
        (name_length,) = struct.unpack_from(self._fmt16, data, offset + 4)
        name_end = name_at + name_length
        if name_length not in self._lengths or name_end > end:
            return True
        if size < name_end:
            return False
        if bytes(data[name_at:name_end]) in self._names:
            data[name_at] = 0
            self.queries_hidden += 1
        return True


def _pad4(length: int) -> int:
    return length + (-length % 4)
