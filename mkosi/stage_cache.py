"""A content-addressed cache of workspace snapshots, one per stage key.

After a cacheable stage the whole workspace is its result, so a copy of it stands in for running
the stage (and every stage before it: keys are chained) again. Each entry is a directory, DIR/<key>/, of
tar archives, one per top-level item of the workspace (the image's tree, the build image, file
system images), written under a temporary name and renamed into place, so a reader never sees half
an entry, and entries never change once written. The archives are written and extracted side by
side: extracting a build image and the final tree at once takes about half as long on two cores.

Why archives and not copies of the tree: the workspace lives on tmpfs and the cache on disk, and
creating ten thousand small files on the disk's file system is what a snapshot used to cost; one
sparse tar file per item is written many times faster, and extracting it to tmpfs takes about as
long as copying the tree (figures in the README).

The cache works on segments, runs of consecutive cacheable stages (see pipeline.segments), each in
one call: walking back from the segment's end to the deepest stored entry, restoring it, running the
rest and storing at the keys worth keeping.

Single flight: before it builds, a build takes the lock of the next key it will store (per key,
both in-process and across processes), so a concurrent build of the same key waits for it and then
restores the finished copy instead of building it a second time. A build holds at most one such
lock at a time and never waits for another while holding one, so builds cannot deadlock.

Look-ahead: when a later stage of the segment already has an entry, only the deepest entry is
restored; the stages before it are reported as reused without copying anything.

`keep(key)` decides which keys are worth storing: every key for incremental builds of one image;
for a matrix, only the keys other cells will ask for too.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import anyio

from mkosi import concurrency
from mkosi.context import Context
from mkosi.pipeline import Stage, Steps
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
    """An entry of archives; a directory without any is a tree copy left by an older mkosi."""
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
class SnapshotCache:
    directory: Path
    keep: Callable[[str], bool] = _keep_all
    # Counters, for reports and tests.
    built: list[str] = field(default_factory=list)
    restored: list[str] = field(default_factory=list)
    stored: list[str] = field(default_factory=list)

    def entry(self, key: str) -> Path:
        return self.directory / key

    def has(self, key: str) -> bool:
        return _complete(self.entry(key))

    async def run_segment(self, context: Context, segment: Sequence[tuple[Stage, str]], steps: Steps) -> None:
        """Leave the result of a run of consecutive cacheable stages in the workspace.

        Walks the segment in spans, each ending at the next key worth storing. For each span it holds
        that key's lock (single flight), restores the deepest stored entry of the rest of the
        segment if there is one, else builds the span's stages and stores its last one. A lock lives
        in the `async with` that took it: released when the span ends, however it ends.
        """
        position = 0
        while position < len(segment):
            rest = segment[position:]
            target = next((i for i, (_, key) in enumerate(rest) if self.keep(key)), None)
            span = rest if target is None else rest[: target + 1]
            async with self._single_flight(span[-1][1] if target is not None else None):
                hit = next((i for i in reversed(range(len(rest))) if self.has(rest[i][1])), None)
                if hit is not None:
                    await self._restore_to(context, rest[: hit + 1], steps)
                    position += hit + 1
                    continue
                for stage, key in span:
                    await steps.run(stage, key)
                    self.built.append(key)
                if target is not None:
                    await self.store(span[-1][1], context)
                position += len(span)

    @contextlib.asynccontextmanager
    async def _single_flight(self, key: str | None) -> AsyncIterator[None]:
        """Hold the lock of `key`, so that concurrent builds of it wait and restore what this one stores."""
        if key is None:
            yield
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        async with concurrency.exclusive(self.directory / f".{key}.lock"):
            yield

    async def _restore_to(self, context: Context, stages: Sequence[tuple[Stage, str]], steps: Steps) -> None:
        """Only the last of `stages` is restored: the others' results are part of it (keys are chained)."""
        for stage, key in stages[:-1]:
            steps.reused(stage, key, 0.0)
        stage, key = stages[-1]
        started = time.monotonic()
        await self.restore(key, context)
        steps.reused(stage, key, time.monotonic() - started)

    async def restore(self, key: str, context: Context) -> None:
        """Replace the workspace's items with the entry of `key`."""
        await remove_trees([home / name for name, home in context.items().items()])
        await extract(self.entry(key), context)
        self.restored.append(key)
        context.log.info("restored from the stage cache", key=key[:12])

    async def store(self, key: str, context: Context) -> None:
        """The workspace's items as the entry of `key`, unless there is one: entries never change."""
        if self.has(key):
            return
        self.directory.mkdir(parents=True, exist_ok=True)
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
