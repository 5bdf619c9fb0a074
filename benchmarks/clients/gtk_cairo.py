"""
A GTK 3 / cairo loop (PyGObject): a 640x480 window painted from an idle handler with a
moving gradient, 40 rounded rectangles and a line of text, through GDK's double buffer
(``begin_draw_frame`` / ``end_draw_frame``), as fast as the X server takes the frames.

``queue_draw`` would tie the loop to GDK's frame clock, which paces an X11 window without a
compositor at 60 frames a second. GDK draws into an offscreen X pixmap with cairo's xlib
backend (RENDER requests; MIT-SHM for image uploads when the server offers it) and copies it
to the window.
"""

from __future__ import annotations

import math
import sys

from typing import Any

import gi

from _frames import Frames, arguments


gi.require_version("Gtk", "3.0")
from gi.repository import GLib, Gtk  # noqa: E402 - after require_version


def draw(area: Any, frames: Frames, state: dict[str, int]) -> bool:
    """Draw one frame; True (call again) until the counting time is over."""
    import cairo  # noqa: PLC0415 - pycairo comes with python3-gi-cairo

    window = area.get_window()
    region = cairo.Region(cairo.RectangleInt(0, 0, 640, 480))
    context = window.begin_draw_frame(region)
    cr = context.get_cairo_context()
    phase = state["phase"] = (state["phase"] + 7) % 640
    gradient = cairo.LinearGradient(phase, 0, 640 + phase, 480)
    gradient.add_color_stop_rgb(0, 0.08, 0.16, 0.35)
    gradient.add_color_stop_rgb(1, 0.9, 0.7, 0.16)
    cr.set_source(gradient)
    cr.paint()
    for index in range(40):
        x = (phase * 3 + index * 53) % 600
        y = (index * 37 + phase) % 440
        cr.new_sub_path()
        cr.arc(x + 32, y + 8, 8, -math.pi / 2, 0)
        cr.arc(x + 32, y + 32, 8, 0, math.pi / 2)
        cr.arc(x + 8, y + 32, 8, math.pi / 2, math.pi)
        cr.arc(x + 8, y + 8, 8, math.pi, 3 * math.pi / 2)
        cr.close_path()
        cr.set_source_rgb(index / 40, 1 - index / 40, 0.5)
        cr.fill()
    cr.set_source_rgb(1, 1, 1)
    cr.move_to(20, 460)
    cr.show_text(f"frame {frames.count}")
    window.end_draw_frame(context)
    window.get_display().sync()  # the frame counts once the server has drawn it
    if frames.tick():
        return True
    Gtk.main_quit()
    return False


def main() -> int:
    """Show the window, count its frames, print the rate."""
    options = arguments(__doc__ or "")
    frames = Frames(options.seconds, options.warmup)
    window = Gtk.Window(title="gtk cairo loop")
    window.set_default_size(640, 480)
    area = Gtk.DrawingArea()
    window.add(area)
    window.connect("destroy", Gtk.main_quit)
    window.show_all()
    GLib.idle_add(draw, area, frames, {"phase": 0})
    Gtk.main()
    print(frames.report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
