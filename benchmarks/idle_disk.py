"""Starting each timed build from the same state: written back, caches dropped, disk idle.

Removing a tree leaves work behind that lands on whichever build comes next:
- written-back data, and on file systems mounted with `discard` (as these machines' ext4 is) the
  trims of every freed extent;
- on an ext4 without a journal (these machines' root), every new inode is first checked against
  the inode table blocks of recently deleted ones while those blocks sit in the buffer cache. After
  removing a 7,600-file tree, copying the same tree back took 3-8 s of kernel time instead of 0.6 s,
  still a minute later; `perf` shows the time in `recently_deleted` / `find_get_block_common` under
  `__ext4_new_inode`. Dropping the caches removes it (0.64 s).
So before every timed build, whoever it is for, we sync, drop the page, dentry and inode caches (as
`hyperfine --prepare` setups do for cold runs) and wait for the disk to go quiet.
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
    """sync, drop caches, then wait until the disk holding `path` did nothing for `quiet` seconds."""
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")
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
