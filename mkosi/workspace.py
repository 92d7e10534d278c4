"""Where a build's working tree lives: tmpfs when memory allows, else the output's filesystem.

dpkg's file handling dominates bootstrap time, and it is markedly faster on tmpfs than on a disk
file system, most of all on one that has just had trees removed (the README's Benchmarks section
has the figures). On disk the workspace sits next to the output so that a finished tree can be
renamed into place instead of copied.
"""

from __future__ import annotations

import contextlib
import fcntl
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


WORKSPACE_PREFIX = ".mkosi-workspace."


@contextlib.asynccontextmanager
async def owned_directory(base: Path, prefix: str, log: Any) -> AsyncIterator[Path]:
    """A new private directory in `base` called `prefix` and a random suffix, removed when it ends.

    Its owner holds a flock on it while it lives: an owner killed too hard to remove it (SIGKILL, a
    power cut on disk) holds nothing any more, and the next run removes it (remove_abandoned). On
    tmpfs that is memory the machine would never get back.
    """
    path, owner = claim_directory(base, prefix)
    log.info("workspace", path=str(path))
    try:
        yield path
    finally:
        await release_directory(path, owner)


def claim_directory(base: Path, prefix: str) -> tuple[Path, int]:
    """The directory of owned_directory() and the descriptor that holds its lock, for owners that
    need its path before they can enter an async context; release_directory() ends it."""
    base.mkdir(parents=True, exist_ok=True)
    # Locked before it gets the name others look for: they never see it unlocked.
    creating = Path(tempfile.mkdtemp(prefix=".mkosi-creating.", dir=base))
    owner = os.open(creating, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    fcntl.flock(owner, fcntl.LOCK_EX)  # a new directory: nobody else holds it
    path = creating.with_name(f"{prefix}{creating.name.rsplit('.', 1)[-1]}")
    os.rename(creating, path)
    return path, owner


async def release_directory(path: Path, owner: int) -> None:
    with anyio.CancelScope(shield=True):
        await remove_tree(path)
    os.close(owner)


def workspace(config: Config, log: Any, base: Path | None = None) -> contextlib.AbstractAsyncContextManager[Path]:
    """A build's workspace in `base` (by default where choose_base() says), named after its output."""
    base = base or choose_base(config.workspace, config.output.parent)
    return owned_directory(base, f"{WORKSPACE_PREFIX}{config.output.name}.", log)


async def remove_abandoned(directories: list[Path], prefix: str, log: Any) -> None:
    """Remove the directories called `prefix`* in `directories` whose owner is gone; a live owner's
    lock keeps its own (see owned_directory)."""
    for directory in directories:
        for path in sorted(directory.glob(f"{prefix}*")):
            try:
                # Never through a link: /dev/shm is writable by everyone.
                fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError:
                continue  # removed meanwhile, or not a directory: not ours to judge
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # its owner is alive
                log.warning("removing what a killed build left", path=str(path))
                await remove_trees([path])
            finally:
                os.close(fd)


async def remove_abandoned_workspaces(directories: list[Path], log: Any) -> None:
    """Remove the workspaces in `directories` whose build is gone."""
    await remove_abandoned(directories, WORKSPACE_PREFIX, log)
