"""A content-addressed cache of workspace snapshots, one per stage key.

After a cacheable stage the whole workspace is its result, so a copy of it stands in for running
the stage (and every stage before it: keys are chained) again. Each entry is a directory, DIR/<key>/, of
tar archives, one per top-level item of the workspace (the image's tree, the build image, file
system images), written under a temporary name and renamed into place, so a reader never sees half
an entry, and entries never change once written. The archives are written and extracted side by
side: extracting a build image and the final tree at once takes about half as long on two cores.

Why archives and not copies of the tree: the workspace lives on tmpfs and the cache on disk, and
creating ten thousand small files on the disk's file system is what a snapshot used to cost (a
200 MB Debian tree: 2-7 s with cp -a, 0.3 s as one sparse tar file; extracting it to tmpfs takes
about as long as copying the tree).

Single flight: a build that misses takes the lock of the next key it will store (per key, both
in-process and across processes) before building, so a concurrent build of the same key waits for
it and then restores the finished copy instead of building it a second time. A build holds at most
one such lock at a time and never waits for another while holding one, so builds cannot deadlock.

Look-ahead: when a later stage in the same run of cacheable stages already has an entry, only the
deepest entry is restored; the stages before it are reported as reused without copying anything.

`keep(key)` decides which keys are worth storing: every key for incremental builds of one image;
for a matrix, only the keys other cells will ask for too.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import anyio

from mkosi import concurrency
from mkosi.config import Config
from mkosi.context import Context
from mkosi.errors import MkosiError
from mkosi.pipeline import Stage, stage_keys
from mkosi.run import run
from mkosi.workspace import remove_tree, remove_trees

# Everything a root file system tree holds: ownership by number (the tree's users are not the
# host's), permissions, ACLs and extended attributes (file capabilities), hard links, and holes in
# sparse files such as file system images.
ARCHIVE_OPTIONS = ["--sparse", "--acls", "--xattrs", "--xattrs-include=*", "--numeric-owner"]


def _keep_all(key: str) -> bool:
    return True


OWNERS = "owners"


def cached_keys(directory: Path) -> set[str]:
    """The keys the cache in `directory` holds an entry for."""
    if not directory.is_dir():
        return set()
    return {p.name for p in directory.iterdir() if p.name != OWNERS and not p.name.startswith(".") and _complete(p)}


def _complete(entry: Path) -> bool:
    """An entry of archives; a directory without any is a tree copy left by mkosi before 2026-11-25."""
    return entry.is_dir() and any(entry.glob("*.tar"))


async def archive(context: Context, entry: Path) -> None:
    """Each item of the build's workspace into ENTRY/<item>.tar, side by side."""
    async with anyio.create_task_group() as tg:
        for name, home in context.items().items():
            command = ["tar", "--create", f"--file={entry / name}.tar", f"--directory={home}"]
            tg.start_soon(partial(run, [*command, *ARCHIVE_OPTIONS, name], log=context.log))


async def extract(entry: Path, context: Context) -> None:
    """The archives of `entry` into the build's workspace, side by side."""
    async with anyio.create_task_group() as tg:
        for item in sorted(entry.glob("*.tar")):
            command = ["tar", "--extract", f"--file={item}", f"--directory={context.home_of(item.stem)}"]
            options = [*ARCHIVE_OPTIONS, "--same-permissions", "--same-owner"]
            tg.start_soon(partial(run, [*command, *options], log=context.log))


@dataclass
class _BuildState:
    """What one build in progress holds between stages."""

    lock: concurrency.Held | None = None
    lock_key: str | None = None
    # A later stage's entry that will be restored when that stage is reached.
    promised: str | None = None


@dataclass
class SnapshotCache:
    directory: Path
    stages: Sequence[Stage]
    keep: Callable[[str], bool] = _keep_all
    # Counters, for reports and tests.
    built: list[str] = field(default_factory=list)
    restored: list[str] = field(default_factory=list)
    stored: list[str] = field(default_factory=list)
    _builds: dict[int, _BuildState] = field(default_factory=dict)

    def entry(self, key: str) -> Path:
        return self.directory / key

    def has(self, key: str) -> bool:
        return _complete(self.entry(key))

    def _cacheable_run(self, config: Config, key: str) -> list[str]:
        """The keys from `key` to the end of the run of cacheable stages it is part of."""
        keys: list[str] = []
        found = False
        for stage, k in stage_keys(config, self.stages):
            found = found or k == key
            if not found:
                continue
            if not stage.cacheable:
                break
            keys.append(k)
        if not keys:
            raise MkosiError(f"stage key {key[:12]} is not a cacheable stage of this build")
        return keys

    async def run(self, stage: Stage, key: str, context: Context, build: Callable[[], Awaitable[None]]) -> bool:
        state = self._builds.setdefault(id(context), _BuildState())
        try:
            reused = await self._run(key, context, build, state)
        except BaseException:
            self._finish(context, state)
            raise
        if state.lock_key == key or (state.lock_key is None and state.promised is None):
            self._finish(context, state)
        return reused

    def _finish(self, context: Context, state: _BuildState) -> None:
        if state.lock is not None:
            state.lock.release()
            state.lock, state.lock_key = None, None
        if state.promised is None:
            self._builds.pop(id(context), None)

    async def _run(self, key: str, context: Context, build: Callable[[], Awaitable[None]], state: _BuildState) -> bool:
        if state.promised is not None:
            if state.promised != key:
                return True
            state.promised = None
            if not self.has(key):
                raise MkosiError(f"stage cache entry {self.entry(key)} vanished while in use, run again")
            await self._restore(key, context)
            return True

        chain = self._cacheable_run(context.config, key)
        if state.lock is None:
            target = next((k for k in chain if self.keep(k)), None)
            if target is not None:
                self.directory.mkdir(parents=True, exist_ok=True)
                state.lock = await concurrency.acquire(self.directory / f".{target}.lock")
                state.lock_key = target

        hit = next((k for k in reversed(chain) if self.has(k)), None)
        if hit == key:
            await self._restore(key, context)
            return True
        if hit is not None:
            state.promised = hit
            return True

        await build()
        self.built.append(key)
        if self.keep(key):
            await self._store(key, context)
        return False

    async def _restore(self, key: str, context: Context) -> None:
        await remove_trees([home / name for name, home in context.items().items()])
        await extract(self.entry(key), context)
        self.restored.append(key)
        context.log.info("restored from the stage cache", key=key[:12])

    async def _store(self, key: str, context: Context) -> None:
        if self.has(key):
            return
        temporary = Path(tempfile.mkdtemp(prefix=f".tmp.{key}.", dir=self.directory))
        try:
            await archive(context, temporary)
            # An older mkosi's tree copy under the same key is not an entry: replace it.
            await remove_tree(self.entry(key))
            os.rename(temporary, self.entry(key))
        finally:
            await remove_tree(temporary)
        self.stored.append(key)
        context.log.info("stored in the stage cache", key=key[:12])


async def prune(directory: Path, owner: str, keys: set[str], log: Any = None) -> None:
    """Forget what `owner` (one image's output path) used before, keeping `keys`, its latest entries.

    Each owner's keys are recorded in DIR/owners/; an entry is removed once no owner records it, so
    an incremental cache holds the latest entries of each image and does not grow with every build.
    """
    owners = directory / OWNERS
    owners.mkdir(parents=True, exist_ok=True)
    async with concurrency.exclusive(directory / ".prune.lock"):
        record = owners / hashlib.sha256(owner.encode()).hexdigest()
        previous = set(record.read_text().split()) if record.exists() else set()
        temporary = record.with_suffix(".tmp")
        temporary.write_text("\n".join(sorted(keys)) + "\n")
        os.replace(temporary, record)
        still_used = set().union(*(set(r.read_text().split()) for r in owners.iterdir() if r.suffix != ".tmp"))
        for key in sorted(previous - still_used):
            await remove_tree(directory / key)
            if log is not None:
                log.info("dropped from the stage cache", key=key[:12])


async def remove_cache(directory: Path) -> None:
    """Drop every entry; only when no build uses the cache (mkosi -ff)."""
    await remove_tree(directory)
