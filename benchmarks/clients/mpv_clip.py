"""
mpv ``--vo=x11`` on a generated clip, as fast as it can show frames (``--untimed``).

The clip (640x480, 60 frames a second, 90 s of lavfi's ``testsrc2``, MPEG-4 Part 2) is made
once per container with mpv's own encoder. mpv's status line, set to print the position in
the clip, is read as it comes; the frames shown between the end of the warm-up and the
end of the counting time give the rate (the clip loops, so a fast path never runs out of
frames: at 900 frames a second it lasts 6 s). mpv's x11 output puts each frame with XShmPutImage
when the server offers MIT-SHM, else with XPutImage. When it attaches a segment the X server
cannot see (another IPC namespace) it waits for completion events that never come: a run
whose frame number stands still for 5 s ends with ``"rate": null`` and the reason.
"""

from __future__ import annotations

import json
import queue
import re
import subprocess
import sys
import threading
import time

from pathlib import Path
from typing import IO

from _frames import arguments


CLIP = Path("/tmp/bench-clip.mkv")
RATE = 60
SOURCE = f"av://lavfi:testsrc2=size=640x480:rate={RATE}:duration=90"
#: The status line: the position in the clip (the container holds no frame rate, so
#: ``estimated-frame-number`` stays 0; position x RATE is the frame number).
STATUS = re.compile(r"BENCH-TIME ([\d.]+)")
#: How long the frame number may stand still before the run counts as stalled.
STALL = 5.0


def make_clip() -> None:
    """Encode the clip once (mpv's encoding mode, no ffmpeg program needed)."""
    if CLIP.exists():
        return
    partial = CLIP.with_suffix(".part.mkv")
    subprocess.run(
        [
            "mpv",
            "--no-config",
            "--really-quiet",
            SOURCE,
            f"--o={partial}",
            "--of=matroska",
            "--ovc=mpeg4",
            "--ovcopts=qscale=4",
        ],
        check=True,
        stdin=subprocess.DEVNULL,
    )
    partial.rename(CLIP)


def frames_of(stream: IO[bytes], out: queue.Queue[tuple[float, int]]) -> None:
    """Put (time, frame number) for every status update mpv writes on `stream`."""
    buffer = b""
    while chunk := stream.read1(4096):  # type: ignore[attr-defined]
        buffer += chunk
        *lines, buffer = re.split(rb"[\r\n]", buffer)
        for line in lines:
            found = STATUS.search(line.decode(errors="replace"))
            if found:
                out.put((time.monotonic(), round(float(found.group(1)) * RATE)))


def measure(updates: queue.Queue[tuple[float, int]], warmup: float, seconds: float) -> str:
    """The result line from mpv's status updates."""
    first: tuple[float, int] | None = None
    last: tuple[float, int] | None = None
    began = time.monotonic()
    #: Frames shown in the loops of the clip before this one, and the last position read.
    shown = position = 0
    while True:
        try:
            now, frame = updates.get(timeout=STALL)
        except queue.Empty:
            where = "before its first frame" if last is None else f"at frame {last[1]}"
            reason = f"mpv stalled {where} (no new frame for {STALL:g} s)"
            return json.dumps({"rate": None, "unit": "fps", "error": reason})
        if frame < position:  # the clip started again (--loop-file): count on
            shown += position + 1
        position = frame
        last = (now, shown + frame)
        if first is None and now - began >= warmup:
            first = last
        if first is not None and now - first[0] >= seconds:
            break
    if first is None or last[0] <= first[0]:
        return json.dumps({"rate": None, "unit": "fps", "error": "too few frames"})
    count = last[1] - first[1]
    return json.dumps({"rate": count / (last[0] - first[0]), "unit": "fps", "count": count})


def main() -> int:
    """Play the clip, count the frames mpv shows, print the rate."""
    options = arguments(__doc__ or "")
    make_clip()
    player = subprocess.Popen(
        [
            "mpv",
            "--no-config",
            "--vo=x11",
            "--no-audio",
            "--untimed",
            "--framedrop=no",
            "--loop-file=inf",
            "--geometry=640x480",
            "--msg-level=all=error,statusline=status",
            "--term-status-msg=BENCH-TIME ${=time-pos}",
            str(CLIP),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    updates: queue.Queue[tuple[float, int]] = queue.Queue()
    assert player.stdout is not None  # noqa: S101 - stdout=PIPE
    threading.Thread(target=frames_of, args=(player.stdout, updates), daemon=True).start()
    try:
        print(measure(updates, options.warmup, options.seconds), flush=True)
    finally:
        player.kill()  # a stalled mpv does not answer SIGTERM; it has nothing to save
        player.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
