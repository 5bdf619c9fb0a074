"""
Which clients really used shared memory: the segments the X server attached, seen in its maps.

A client can only hand pixels over in shared memory if the X server maps the memory too:
``XShmAttach`` makes the server ``shmat`` a System V segment (a ``/SYSV<key> (deleted)`` line
in ``/proc/<server>/maps``), ``xcb_shm_attach_fd`` (MIT-SHM 1.2) makes it ``mmap`` the
passed file (``/memfd:...`` or a ``/dev/shm/`` file). A segment the server could not attach
(the client's System V segment lives in the container's IPC namespace, which the server cannot
see) never shows up, whatever the client believes. :class:`ShmWatch` samples the server's
maps while a client runs and counts the shared mappings that were not there before. DRI3's
``xshmfence`` mappings are fences, not pixels, and are not counted.
"""

from __future__ import annotations

import threading

from dataclasses import dataclass
from pathlib import Path
from types import TracebackType


#: How often the maps are read while a client runs.
INTERVAL = 0.02


@dataclass(frozen=True)
class Mapping:
    """One shared memory mapping of the server: address range and what it maps."""

    start: int
    end: int
    name: str

    @property
    def size(self) -> int:
        """Bytes mapped."""
        return self.end - self.start


def shared_mappings(pid: int) -> set[Mapping]:
    """The client-shared memory the process `pid` has mapped now."""
    found: set[Mapping] = set()
    try:
        text = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return found
    for line in text.splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) < 6:
            continue
        name = fields[5]
        shared = name.startswith(("/SYSV", "/memfd:", "/dev/shm/"))
        if not shared or "xshmfence" in name:
            continue
        low, _, high = fields[0].partition("-")
        found.add(Mapping(int(low, 16), int(high, 16), name))
    return found


class ShmWatch:
    """
    Count the shared memory segments a server attaches during a ``with`` block.

    Attributes:
        segments: Distinct new mappings seen.
        peak_bytes: The most bytes of new mappings seen at one time.
    """

    def __init__(self, server_pid: int) -> None:
        self.pid = server_pid
        self.segments = 0
        self.peak_bytes = 0
        self._before: set[Mapping] = set()
        self._seen: set[Mapping] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="shm-watch", daemon=True)

    def _sample(self) -> None:
        new = shared_mappings(self.pid) - self._before
        self._seen |= new
        self.peak_bytes = max(self.peak_bytes, sum(m.size for m in new))

    def _run(self) -> None:
        while not self._stop.wait(INTERVAL):
            self._sample()

    def __enter__(self) -> ShmWatch:
        self._before = shared_mappings(self.pid)
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()
        self.segments = len(self._seen)
