"""
Worker processes for the display tests (importable by multiprocessing's spawn start method).

Strictly private to the tests.
"""

from __future__ import annotations

import os

from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier, Event

from x11passthrough.display import DisplayLocator


def reserve_and_hold(
    locator: DisplayLocator,
    numbers: range,
    barrier: Barrier,
    results: Queue[tuple[str, int | str]],
    done: Event,
) -> None:
    """Reserve a number together with the others; report it; hold it until `done` is set."""
    barrier.wait(60)
    try:
        reservation = locator.reserve(range=numbers)
    except Exception as e:
        results.put(("error", f"{type(e).__name__}: {e}"))
        return
    with reservation:
        results.put(("ok", reservation.number))
        done.wait(60)


def reserve_as_nobody(locator: DisplayLocator, numbers: list[int], results: Queue[str]) -> None:
    """Drop to user and group 65534 ("nobody"), then try to reserve; report the outcome."""
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
    try:
        with locator.reserve(range=numbers) as reservation:
            results.put(f"reserved {reservation.number}")
    except Exception as e:
        results.put(f"{type(e).__name__}: {e}")
