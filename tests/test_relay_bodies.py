"""
Large request bodies spliced on TCP (issue 19, item 3): once the request filter has read a
request's header, the rest of a large body moves through a pipe without entering user space,
and the filter stays in step with the X server for the requests after it.

Real Xvfb, the real passthrough on TCP, a raw client sending PutImage requests of 160 KB.
"""

from __future__ import annotations

import functools
import socket
import struct

from x11passthrough import X11Passthrough
from x11passthrough._relay.flows import BodySpliceFlow
from x11passthrough.xauth import Xauthority

from infra.processes import wait_until
from infra.rawx import Client
from infra.xvfb import XServer


RANGE = range(940, 980)
SIDE = 200
Z_PIXMAP = 2


def pixels(seed: int) -> bytes:
    """SIDE x SIDE pixels of depth 24 (the padding byte 0, as the server returns it)."""
    return bytes((i * seed + 11) % 251 if i % 4 != 3 else 0 for i in range(SIDE * SIDE * 4))


def forwarded(passthrough: X11Passthrough, size: int) -> bool:
    return passthrough.stats.bytes_up >= size


def test_large_bodies_are_spliced_and_the_filter_stays_in_step(xvfb: XServer) -> None:
    passthrough = X11Passthrough(
        xvfb.display, xvfb.xauthority, transport="tcp", bind=["127.0.0.1"], display_range=RANGE
    )
    with passthrough as args:
        assert args.xauthority is not None
        cookie = Xauthority.load(args.xauthority).entries[0].data
        port = 6000 + int(args.display.rsplit(":", 1)[1])
        client = Client(None, cookie, socket.create_connection(("127.0.0.1", port)))
        try:
            assert client.depth == 24
            pixmap, gc = client.new_id(), client.new_id()
            client.send(53, client.depth, struct.pack("<IIHH", pixmap, client.root, SIDE, SIDE))
            client.send(55, 0, struct.pack("<III", gc, pixmap, 0))
            for seed in (7, 13, 29):
                head = struct.pack("<IIHHhhBBxx", pixmap, gc, SIDE, SIDE, 0, 0, 0, client.depth)
                request = struct.pack(
                    "<BBH", 72, Z_PIXMAP, 1 + (len(head) + len(pixels(seed))) // 4
                )
                request += head + pixels(seed)
                # The header and a little of the body first: the rest is spliced.
                sent = passthrough.stats.bytes_up
                client.sock.sendall(request[:4096])
                wait_until(
                    functools.partial(forwarded, passthrough, sent + 4096),
                    "the relay passed the start of the request on",
                    timeout=30,
                )
                client.sock.sendall(request[4096:])
                client.sequence += 1
                # The requests after the spliced body are framed and judged as before.
                assert client.query(b"MIT-SHM") == (False, 0)
                assert client.query(b"BIG-REQUESTS")[0]
                get = struct.pack("<IhhHHI", pixmap, 0, 0, SIDE, SIDE, 0xFFFFFFFF)
                _, image = client.reply(client.send(73, Z_PIXMAP, get))
                assert image == pixels(seed)
            relay = passthrough._relay
            assert relay is not None
            flows = [f for c in relay.relay.connections for f in c.flows]
            assert any(isinstance(f, BodySpliceFlow) for f in flows)
        finally:
            client.close()
