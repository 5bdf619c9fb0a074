"""
Screenshots: a window's (or the screen's) pixels with one GetImage, as RGB and as PNG.

Used by the pytest plugin (a screenshot of each failed test) and by the
tests of the app matrix.

Pixel formats: every TrueColor visual of 8, 16, 24 or 32 bits per pixel is read, in either
image byte order, with the rows padded as the server's pixmap format says. That covers what
Xvfb, Xorg and Xwayland serve at depth 24 (32 bits per pixel, 8-bit channels), depth 16 (the
5-6-5 format of pytest-xvfb's default ``xvfb_colordepth = 16``) and depth 15 (5-5-5).
Channels narrower than 8 bits are scaled to 0-255 with rounding (5-bit 31 is 255, 16 is 132).
Other visual classes (PseudoColor at depth 8, DirectColor) raise
:class:`~x11passthrough.exceptions.DisplayError` naming the format. Decoding slices the bytes
of 8-bit channels, and looks 8- and 16-bit pixels up in a table of every value (built once per
format). Measured on the 2-core test machine, GetImage and decoding of a whole 1280x1024
screen take about 12 ms at depth 24 and 90 ms at depth 16 (0.25 s the first time, with the
table); the crop below usually makes the picture far smaller.

Cropping (:func:`grab_windows`): a failure screenshot of a test's Xvfb is mostly black root
window around one small app window (about 95 % of a 1280x1024 screen for a 320x200 window).
So it covers the bounding box of the viewable top-level windows (children of the root with
``map_state == IsViewable``, not InputOnly, borders included), clipped to the screen; with no
window mapped it is the whole screen, which then shows the root window's background.
"""

from __future__ import annotations

import array
import functools
import struct
import sys
import zlib

from typing import Any

import attrs

from ..exceptions import DisplayError


_Z_PIXMAP = 2
_ALL_PLANES = 0xFFFFFFFF
_LSB_FIRST = 0
_TRUE_COLOR = 4
_INPUT_ONLY = 2
_IS_VIEWABLE = 2
_BYTE_MASKS = frozenset(0xFF << shift for shift in (0, 8, 16, 24))


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
    target = window if window is not None else display.screen().root
    geometry = target.get_geometry()
    return _read(display, target, (0, 0, geometry.width, geometry.height))


def grab_windows(display: Any) -> Screenshot:
    """
    Take a screenshot of the part of the screen that the mapped top-level windows cover.

    That is the bounding box of the viewable children of the root window (borders included),
    clipped to the screen, as the screen shows it; the whole screen when none is mapped.

    Raises:
        DisplayError: The visual's pixel format is not one this reads.
    """
    root = display.screen().root
    return _read(display, root, mapped_box(display))


def mapped_box(display: Any) -> tuple[int, int, int, int]:
    """
    Return ``(x, y, width, height)`` of the screen's viewable top-level windows.

    Windows that vanish while they are looked at are skipped; with no window mapped the box is
    the whole screen.
    """
    from Xlib.error import XError  # noqa: PLC0415 - python-xlib only where a shot is taken

    screen = display.screen()
    screen_width, screen_height = screen.width_in_pixels, screen.height_in_pixels
    left, top, right, bottom = screen_width, screen_height, 0, 0
    for window in screen.root.query_tree().children:
        try:
            attributes = window.get_attributes()
            if attributes.map_state != _IS_VIEWABLE or attributes.win_class == _INPUT_ONLY:
                continue
            geometry = window.get_geometry()
        except XError:  # destroyed meanwhile
            continue
        border = 2 * geometry.border_width
        x0, y0 = max(geometry.x, 0), max(geometry.y, 0)
        x1 = min(geometry.x + geometry.width + border, screen_width)
        y1 = min(geometry.y + geometry.height + border, screen_height)
        if x1 > x0 and y1 > y0:
            left, top, right, bottom = min(left, x0), min(top, y0), max(right, x1), max(bottom, y1)
    if right <= left or bottom <= top:
        return (0, 0, screen_width, screen_height)
    return (left, top, right - left, bottom - top)


def _read(display: Any, target: Any, box: tuple[int, int, int, int]) -> Screenshot:
    """Read `box` of `target` with one GetImage and decode it to RGB."""
    x, y, width, height = box
    image = target.get_image(x, y, width, height, _Z_PIXMAP, _ALL_PLANES)
    data = image.data if isinstance(image.data, bytes) else bytes(image.data)
    info = display.display.info
    visual = _visual(display, image.visual)
    pixmap = next((f for f in info.pixmap_formats if f.depth == image.depth), None)
    bpp = pixmap.bits_per_pixel if pixmap is not None else None
    masks = (visual.red_mask, visual.green_mask, visual.blue_mask) if visual else None
    if visual is None or visual.visual_class != _TRUE_COLOR or bpp not in (8, 16, 24, 32):
        kind = "no visual" if visual is None else f"visual class {visual.visual_class}"
        raise DisplayError(
            f"cannot read a screenshot of depth {image.depth} ({bpp} bits per pixel, {kind}, "
            f"colour masks {masks}): only TrueColor visuals of 8, 16, 24 or 32 bits per pixel "
            "are read"
        )
    assert pixmap is not None  # noqa: S101 - bpp was found in it
    assert masks is not None  # noqa: S101 - the visual was found
    pad = pixmap.scanline_pad
    stride = (width * bpp + pad - 1) // pad * pad // 8
    if len(data) < stride * height:
        raise DisplayError(
            f"the screenshot's image holds {len(data)} bytes, not {stride * height} "
            f"({height} rows of {stride})"
        )
    little = info.image_byte_order == _LSB_FIRST
    rgb = _decode(data, (width, height), stride, bpp=bpp, masks=masks, little=little)
    return Screenshot(width, height, rgb)


def _decode(
    data: bytes,
    size: tuple[int, int],
    stride: int,
    *,
    bpp: int,
    masks: tuple[int, int, int],
    little: bool,
) -> bytes:
    """Turn `size` (width, height) of rows of `stride` bytes of `bpp`-bit pixels into RGB."""
    width, height = size
    step = bpp // 8
    row = width * step
    pixels = data[: stride * height]
    if stride != row:
        pixels = b"".join(data[y * stride : y * stride + row] for y in range(height))
    if bpp in (24, 32) and all(m in _BYTE_MASKS for m in masks):
        # 8-bit channels: each is one byte of the pixel, taken by slicing.
        rgb = bytearray(width * height * 3)
        for channel, mask in enumerate(masks):
            index = (mask.bit_length() - 1) // 8
            rgb[channel::3] = pixels[(index if little else step - 1 - index) :: step]
        return bytes(rgb)
    if bpp in (8, 16):
        values = array.array("B" if bpp == 8 else "H", pixels)
        if bpp == 16 and little != (sys.byteorder == "little"):
            values.byteswap()
        return b"".join(map(_table(bpp, masks).__getitem__, values))
    return b"".join(
        bytes(_scaled(int.from_bytes(pixels[i : i + step], "little" if little else "big"), masks))
        for i in range(0, len(pixels), step)
    )


@functools.lru_cache(maxsize=4)
def _table(bpp: int, masks: tuple[int, int, int]) -> list[bytes]:
    """Return the RGB bytes of every `bpp`-bit pixel value (built once per format)."""
    return [bytes(_scaled(value, masks)) for value in range(1 << bpp)]


def _scaled(pixel: int, masks: tuple[int, int, int]) -> tuple[int, int, int]:
    """Return the 8-bit red, green and blue of `pixel`, scaled with rounding."""
    out = [0, 0, 0]
    for channel, mask in enumerate(masks):
        if mask:
            shift = (mask & -mask).bit_length() - 1
            top = mask >> shift
            out[channel] = (((pixel & mask) >> shift) * 255 + top // 2) // top
    return (out[0], out[1], out[2])


def _visual(display: Any, visual_id: int) -> Any:
    """Return the visual type with `visual_id` from the display's screens, or None."""
    for screen in display.display.info.roots:
        for depth in screen.allowed_depths:
            for visual in depth.visuals:
                if visual.visual_id == visual_id:
                    return visual
    return None
