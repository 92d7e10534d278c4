"""Loop devices, for the few places that truly need a block device (running a raw image's root).

Builds never use them. Each device is locked while in use (flock, systemd's convention, so udev
and other tools keep their hands off), a process holds only a few at a time, and every device is
detached again, also when the caller is cancelled.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio

from mkosi.run import run

MAX_DEVICES_PER_PROCESS = 8
_limiter: anyio.CapacityLimiter | None = None


def _process_limiter() -> anyio.CapacityLimiter:
    global _limiter
    if _limiter is None:
        _limiter = anyio.CapacityLimiter(MAX_DEVICES_PER_PROCESS)
    return _limiter


@contextlib.asynccontextmanager
async def attach(
    image: Path, *, offset: int = 0, size: int | None = None, read_only: bool = False, log: Any = None
) -> AsyncIterator[Path]:
    """A loop device over `size` bytes of `image` from `offset`, locked while the context lasts."""
    async with _process_limiter():
        command = ["losetup", "--find", "--show", f"--offset={offset}"]
        if size is not None:
            command.append(f"--sizelimit={size}")
        if read_only:
            command.append("--read-only")
        result = await run([*command, image], capture_stdout=True, log=log)
        device = Path(result.stdout.strip())
        try:
            fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
            try:
                # Shared: systemd-nspawn and other users of the device take the same lock.
                fcntl.flock(fd, fcntl.LOCK_SH)
                yield device
            finally:
                os.close(fd)
        finally:
            with anyio.CancelScope(shield=True):
                await run(["losetup", "--detach", device], log=log)
