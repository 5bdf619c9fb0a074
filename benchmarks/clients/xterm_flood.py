"""
xterm printing a large file: how many MB a second xterm takes in and draws.

The outer process starts ``xterm -e python3 xterm_flood.py --inner``; the inner one writes a
4 MB text file (made once) to its terminal over and over, counting the bytes the terminal
took (its writes block while xterm is behind), and leaves the rate in a result file that the
outer process prints.
"""

from __future__ import annotations

import os
import subprocess
import sys

from pathlib import Path

from _frames import Frames, arguments


TEXT = Path("/tmp/bench-large.txt")
RESULT = Path("/tmp/bench-xterm.json")


def make_text() -> None:
    """Write the 4 MB file once: numbered lines of varying length and content."""
    if TEXT.exists():
        return
    words = [
        "lorem",
        "ipsum",
        "dolor",
        "sit",
        "amet",
        "consectetur",
        "adipiscing",
        "elit",
        "sed",
        "do",
        "eiusmod",
    ]
    lines = []
    for index in range(50_000):
        count = 4 + index % 11
        line = " ".join(words[(index + k) % len(words)] for k in range(count))
        lines.append(f"{index:7d}  {line}\n")
    TEXT.write_text("".join(lines))


def inner(seconds: float, warmup: float) -> int:
    """Print the file to the terminal for `warmup` + `seconds`; leave the rate in RESULT."""
    data = TEXT.read_bytes()
    frames = Frames(seconds, warmup)
    chunk = 16384
    while not frames.done:
        for offset in range(0, len(data), chunk):
            written = os.write(1, data[offset : offset + chunk])
            if not frames.tick(written):
                break
    RESULT.write_text(frames.report(unit="MB/s", scale=1e-6) + "\n")
    return 0


def main() -> int:
    """Run xterm with the inner process; print its result line."""
    if "--inner" in sys.argv:
        sys.argv.remove("--inner")
        options = arguments(__doc__ or "")
        return inner(options.seconds, options.warmup)
    options = arguments(__doc__ or "")
    make_text()
    RESULT.unlink(missing_ok=True)
    inner_argv = [sys.executable, os.path.abspath(__file__), "--inner"]
    inner_argv += ["--seconds", str(options.seconds), "--warmup", str(options.warmup)]
    subprocess.run(
        [
            "xterm",
            "-geometry",
            "100x40",
            "-fa",
            "DejaVu Sans Mono",
            "-fs",
            "10",
            "-e",
            *inner_argv,
        ],
        check=True,
        stdin=subprocess.DEVNULL,
    )
    print(RESULT.read_text().strip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
