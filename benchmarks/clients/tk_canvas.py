"""
A Tk canvas loop (tkinter): 200 rectangles and ovals on a 640x480 canvas, all moved each
frame, then ``update()``, which lets Tk redraw what changed with core X requests.
"""

from __future__ import annotations

import sys
import tkinter

from _frames import Frames, arguments


def main() -> int:
    """Show the canvas, move its items as fast as Tk redraws, print the rate."""
    options = arguments(__doc__ or "")
    root = tkinter.Tk()
    root.title("tk canvas loop")
    canvas = tkinter.Canvas(root, width=640, height=480, background="#102040")
    canvas.pack()
    items = []
    for index in range(200):
        x, y = (index * 53) % 600, (index * 37) % 440
        colour = f"#{index:02x}{255 - index:02x}80"
        make = canvas.create_rectangle if index % 2 else canvas.create_oval
        items.append(make(x, y, x + 40, y + 40, fill=colour, outline="white"))
    frames = Frames(options.seconds, options.warmup)
    step = 1
    while frames.tick():
        step = -step if frames.count % 50 == 0 else step
        for index, item in enumerate(items):
            canvas.move(item, step * (1 + index % 3), step)
        root.update()
    root.destroy()
    print(frames.report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
