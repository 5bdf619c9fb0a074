"""
System V shared memory segments for the MIT-SHM tests, and the probe client's source.

The segments are made with ``shmget`` through ctypes by this process (root in the tests), in
the host's IPC namespace, and removed afterwards.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest


#: A raw X client that attaches segments by id and prints what the server answered.
PROBE = Path(__file__).parent.parent / "data" / "x11_shm_probe.py"
#: The X error code for BadAccess.
BAD_ACCESS = 10

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.shmget.argtypes = (ctypes.c_int, ctypes.c_size_t, ctypes.c_int)
_libc.shmctl.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_void_p)
_IPC_PRIVATE = 0
_IPC_CREAT = 0o1000
_IPC_RMID = 0


@pytest.fixture(name="segments")
def _segments() -> Iterator[Callable[[int], int]]:
    """Make segments of this process's user with a given mode; remove them afterwards."""
    made: list[int] = []

    def make(mode: int) -> int:
        shmid = int(_libc.shmget(_IPC_PRIVATE, 4096, _IPC_CREAT | mode))
        assert shmid >= 0, os.strerror(ctypes.get_errno())
        made.append(shmid)
        return shmid

    yield make
    for shmid in made:
        _libc.shmctl(shmid, _IPC_RMID, None)
