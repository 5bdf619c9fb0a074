"""
A Qt 5 repaint loop (PyQt5): a 640x480 widget that asks for its next paint from each
``paintEvent``, drawing a moving gradient, 40 rectangles and a line of text with QPainter.

Qt's xcb platform draws into a client-side image and puts it on the window; with MIT-SHM it
hands the X server a shared memory segment instead of sending the pixels.
"""

from __future__ import annotations

import sys

from typing import Any

from _frames import Frames, arguments
from PyQt5.QtCore import QRectF
from PyQt5.QtGui import QColor, QLinearGradient, QPainter
from PyQt5.QtWidgets import QApplication, QWidget


class Canvas(QWidget):  # type: ignore[misc]
    """The widget that repaints itself as fast as Qt lets it."""

    def __init__(self, frames: Frames) -> None:
        super().__init__()
        self.frames = frames
        self.phase = 0
        self.resize(640, 480)
        self.setWindowTitle("qt repaint loop")

    def paintEvent(self, _event: Any) -> None:  # noqa: N802 - Qt's name
        """Draw one frame; ask for the next one until the counting time is over."""
        self.phase = (self.phase + 7) % 640
        painter = QPainter(self)
        gradient = QLinearGradient(self.phase, 0, 640 + self.phase, 480)
        gradient.setColorAt(0, QColor(20, 40, 90))
        gradient.setColorAt(1, QColor(230, 180, 40))
        painter.fillRect(self.rect(), gradient)
        for index in range(40):
            x = (self.phase * 3 + index * 53) % 600
            y = (index * 37 + self.phase) % 440
            painter.fillRect(QRectF(x, y, 40, 40), QColor(index * 6, 255 - index * 6, 128))
        painter.drawText(20, 460, f"frame {self.frames.count}")
        painter.end()
        if self.frames.tick():
            self.update()
        else:
            QApplication.quit()


def main() -> int:
    """Show the widget, count its frames, print the rate."""
    options = arguments(__doc__ or "")
    app = QApplication(sys.argv[:1])
    frames = Frames(options.seconds, options.warmup)
    canvas = Canvas(frames)
    canvas.show()
    app.exec_()
    print(frames.report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
