"""Where a build's working tree lives: tmpfs when memory allows, else the output's filesystem.

dpkg's file handling dominates bootstrap time, and it is markedly faster on tmpfs than on a disk
file system, most of all on one that has just had trees removed (the README's Benchmarks section
has the figures). On disk the workspace sits next to the output so that a finished tree can be
renamed into place instead of copied.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio

from mkosi.config import Config, WorkspaceMode
from mkosi.run import run

TMPFS_DIR = Path("/dev/shm")
# A bootable image needs its tree plus filesystem images of about the same size again.
TMPFS_MIN_AVAILABLE = 6 << 30


def available_memory() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def _tmpfs_free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def choose_base(mode: WorkspaceMode, output_dir: Path) -> Path:
    if mode is WorkspaceMode.disk:
        return output_dir
    usable = TMPFS_DIR.is_dir() and min(available_memory(), _tmpfs_free(TMPFS_DIR)) >= TMPFS_MIN_AVAILABLE
    if mode is WorkspaceMode.tmpfs or usable:
        return TMPFS_DIR
    return output_dir


async def remove_tree(path: Path) -> None:
    """Remove a tree without crossing into anything mounted below it."""
    if path.exists() or path.is_symlink():
        await run(["rm", "-rf", "--one-file-system", "--", path])


async def remove_trees(paths: list[Path]) -> None:
    """Remove trees side by side (each `rm` is bound by one core's file system work), shielded: a
    removal cut short would leave half a tree behind."""
    with anyio.CancelScope(shield=True):
        async with anyio.create_task_group() as tg:
            for path in paths:
                tg.start_soon(remove_tree, path)


@contextlib.asynccontextmanager
async def workspace(config: Config, log: Any, base: Path | None = None) -> AsyncIterator[Path]:
    """A private temporary directory in `base` (by default where choose_base() says)."""
    base = base or choose_base(config.workspace, config.output.parent)
    base.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=f".mkosi-workspace.{config.output.name}.", dir=base))
    log.info("workspace", path=str(path))
    try:
        yield path
    finally:
        with anyio.CancelScope(shield=True):
            await remove_tree(path)
