"""
glxgears with Mesa's software renderer (llvmpipe), no vsync: the frames per second it prints.

glxgears prints ``N frames in 5.0 seconds = F FPS`` every 5 seconds, counted from its first
frame, so start-up is not in it; the reports within ``--seconds`` (at least one) are averaged.
Mesa's software path puts each frame with XShmPutImage when the server offers MIT-SHM, else
with XPutImage.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys

from _frames import arguments


REPORT = re.compile(r"(\d+) frames in ([\d.]+) seconds")


def main() -> int:
    """Run glxgears until it has reported for `--seconds`; print the rate."""
    options = arguments(__doc__ or "")
    wanted = max(1, math.floor(options.seconds / 5))
    env = {**os.environ, "vblank_mode": "0", "LIBGL_ALWAYS_SOFTWARE": "1"}
    gears = subprocess.Popen(
        ["glxgears", "-geometry", "640x480"],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=env,
        text=True,
    )
    frames, seconds = 0, 0.0
    try:
        assert gears.stdout is not None  # noqa: S101 - stdout=PIPE
        for line in gears.stdout:
            found = REPORT.search(line)
            if found:
                frames += int(found.group(1))
                seconds += float(found.group(2))
                wanted -= 1
                if wanted == 0:
                    break
    finally:
        gears.terminate()
        gears.wait(10)
    if not seconds:
        raise SystemExit(f"glxgears reported nothing (exit status {gears.returncode})")
    print(json.dumps({"rate": frames / seconds, "unit": "fps", "count": frames}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
