"""Waiting until the disk is idle, so that each timed build starts from the same state.

Removing a tree leaves the disk work to do after `rm` returned: written-back data, and on file
systems mounted with `discard` (as these machines' ext4 is), the trims of every freed extent, which
ext4 issues in the background after each journal commit. Here that work slowed the creation of a
directory output from 0.5 s to 2-6 s for whichever build came next. Both tools get the same wait.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def _device_of(path: Path) -> str | None:
    """The block device (by its name in /proc/diskstats) holding `path`, or None if unknown."""
    st = os.stat(path)
    sysfs = Path(f"/sys/dev/block/{os.major(st.st_dev)}:{os.minor(st.st_dev)}")
    return sysfs.resolve().name if sysfs.exists() else None


def _activity(device: str) -> tuple[int, ...]:
    """Requests in flight and completed reads, writes, discards and flushes of `device`."""
    for line in Path("/proc/diskstats").read_text().splitlines():
        fields = line.split()
        if fields[2] == device:
            numbers = [int(f) for f in fields[3:]]
            return (numbers[0], numbers[4], numbers[8], *numbers[11:12], *numbers[15:16])
    return ()


def settle(path: Path = Path("/var/tmp"), quiet: float = 1.0, limit: float = 60.0) -> None:
    """sync, then wait until the disk holding `path` did nothing for `quiet` seconds (at most `limit`)."""
    os.sync()
    device = _device_of(path)
    if device is None:
        return
    deadline = time.monotonic() + limit
    last, since = _activity(device), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = _activity(device)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
