"""
Lend the display from asyncio code: the relay runs in your event loop.

Usage: ``python examples/async_passthrough.py IMAGE [COMMAND...]``.
"""

from __future__ import annotations

import asyncio
import sys

from x11passthrough import X11Passthrough


async def main(image: str, command: list[str]) -> int:
    async with X11Passthrough() as args:
        proc = await asyncio.create_subprocess_exec(
            "docker", "run", "--rm", *args, image, *command
        )
        return await proc.wait()


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1], sys.argv[2:] or ["xdpyinfo"])))
