"""
Screenshots: a window's (or the screen's) pixels with one GetImage, as RGB and as PNG.

Strictly private. Used by the pytest plugin (a screenshot of each failed test) and by the
tests of the app matrix. Only the formats of TrueColor visuals with 8 bits per channel and
32 bits per pixel are read (what Xvfb, Xorg and Xwayland serve at depth 24); others raise
:class:`~x11passthrough.exceptions.DisplayError` naming the format.
"""

from __future__ import annotations

import struct
import zlib

from typing import Any

import attrs

from ..exceptions import DisplayError


_Z_PIXMAP = 2
_ALL_PLANES = 0xFFFFFFFF
_LSB_FIRST = 0


@attrs.frozen
class Screenshot:
    """
    Pixels of a rectangle of the display.

    Attributes:
        width: Width in pixels.
        height: Height in pixels.
        rgb: ``width * height`` pixels, three bytes (red, green, blue) each, row by row.
    """

    width: int
    height: int
    rgb: bytes = attrs.field(repr=False)

    def colours(self) -> int:
        """Return how many distinct colours the picture has (1 for a blank window)."""
        rgb = self.rgb
        return len({rgb[i : i + 3] for i in range(0, len(rgb), 3)})

    def png(self) -> bytes:
        """Encode the picture as PNG (8-bit RGB, no interlace)."""
        row = self.width * 3
        raw = b"".join(b"\0" + self.rgb[y * row : (y + 1) * row] for y in range(self.height))

        def chunk(kind: bytes, body: bytes) -> bytes:
            crc = zlib.crc32(kind + body) & 0xFFFFFFFF
            return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

        header = struct.pack(">IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0)
        return (
            b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(raw, 6))
            + chunk(b"IEND", b"")
        )


def grab(display: Any, window: Any = None) -> Screenshot:
    """
    Take a screenshot of `window` (default: the whole root window) of a python-xlib display.

    Args:
        display: An open ``Xlib.display.Display``.
        window: A window of it; None takes the screen.

    Returns:
        The window's pixels as the server has them (a window under others shows them).

    Raises:
        DisplayError: The visual's pixel format is not one this reads.
    """
    screen = display.screen()
    target = window if window is not None else screen.root
    geometry = target.get_geometry()
    width, height = geometry.width, geometry.height
    image = target.get_image(0, 0, width, height, _Z_PIXMAP, _ALL_PLANES)
    data = image.data if isinstance(image.data, bytes) else bytes(image.data)
    visual = _visual(display, image.visual)
    formats = {f.depth: f.bits_per_pixel for f in display.display.info.pixmap_formats}
    bpp = formats.get(image.depth)
    masks = (visual.red_mask, visual.green_mask, visual.blue_mask) if visual else None
    if bpp != 32 or masks != (0xFF0000, 0xFF00, 0xFF) or len(data) < width * height * 4:
        raise DisplayError(
            f"cannot read a screenshot of depth {image.depth} ({bpp} bits per pixel, "
            f"colour masks {masks}): only 24-bit TrueColor at 32 bits per pixel is supported"
        )
    pixels = data[: width * height * 4]
    rgb = bytearray(width * height * 3)
    little = display.display.info.image_byte_order == _LSB_FIRST
    red, blue = (2, 0) if little else (1, 3)
    green = 1 if little else 2
    rgb[0::3] = pixels[red::4]
    rgb[1::3] = pixels[green::4]
    rgb[2::3] = pixels[blue::4]
    return Screenshot(width, height, bytes(rgb))


def _visual(display: Any, visual_id: int) -> Any:
    """Return the visual type with `visual_id` from the display's screens, or None."""
    for screen in display.display.info.roots:
        for depth in screen.allowed_depths:
            for visual in depth.visuals:
                if visual.visual_id == visual_id:
                    return visual
    return None
