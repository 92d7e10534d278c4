"""Stages: named steps of a build that declare what determines their result.

A build is a list of stages run top to bottom. Each stage names the settings and files it depends
on; chaining their hashes gives every stage a cache key that changes exactly when the stage or one
before it would produce something different.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import json
import os
import stat
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from mkosi.config import Config
from mkosi.context import Context, StageRecord
from mkosi.events import StageFinished, StageStarted


def _always(config: Config) -> bool:
    return True


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[Context], Awaitable[None]]
    # Everything that determines the stage's result: setting values, and paths whose content counts.
    inputs: Callable[[Config], Mapping[str, object]]
    enabled: Callable[[Config], bool] = _always
    # Whether the stage's whole result is the workspace's state, so a copy of it can stand in for
    # running the stage again (not so for stages that publish outputs).
    cacheable: bool = True
    # Whether incremental builds keep a copy of the workspace after this stage. Copies cost time and
    # space, so only after stages that are slow to redo (package installation).
    checkpoint: bool = False


class Steps(Protocol):
    """How a cache has a segment's stages run, or reports them reused."""

    async def run(self, stage: Stage, key: str) -> None: ...

    def reused(self, stage: Stage, key: str, seconds: float, pulled: bool = False) -> None: ...


class StageCache(Protocol):
    """Where finished stages' results are kept, to be reused by later builds or sibling builds."""

    async def run_segment(self, context: Context, segment: Sequence[tuple[Stage, str]], steps: Steps) -> None:
        """Leave the result of `segment` (consecutive cacheable stages with their keys) in the
        workspace: restored from the cache, or run through `steps`, or both."""
        ...


def hash_tree(paths: Iterable[Path]) -> str:
    """A digest of the names, modes, link targets, device numbers and contents of every file under `paths`."""
    digest = hashlib.sha256()
    for top in paths:
        digest.update(os.fsencode(top) + b"\0")
        if not top.exists():
            digest.update(b"missing\0")
            continue
        files = [top] if not top.is_dir() else sorted(top.rglob("*"))
        for path in files:
            st = path.lstat()
            digest.update(os.fsencode(path.relative_to(top.parent)) + f"\0{st.st_mode}\0".encode())
            if path.is_symlink():
                digest.update(os.fsencode(os.readlink(path)))
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                digest.update(f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}".encode())
            elif path.is_file():
                digest.update(_content_digest(path, st))
    return digest.hexdigest()


def _content_digest(path: Path, st: os.stat_result) -> bytes:
    with path.open("rb") as f:
        if st.st_blocks * 512 >= st.st_size:
            return hashlib.file_digest(f, "sha256").digest()
        # A file with holes (a sparse disk image): each run of data with where it lies, instead of
        # the gigabytes of zeros its holes would read as. Only the same bytes give the same digest.
        digest = hashlib.sha256(f"sparse {st.st_size}\0".encode())
        fd, offset = f.fileno(), 0
        while (start := _next_data(fd, offset)) is not None:
            offset = os.lseek(fd, start, os.SEEK_HOLE)
            digest.update(f"{start}:{offset}\0".encode())
            os.lseek(fd, start, os.SEEK_SET)
            remaining = offset - start
            while remaining > 0 and (chunk := os.read(fd, min(remaining, 1 << 20))):
                digest.update(chunk)
                remaining -= len(chunk)
        return digest.digest()


def _next_data(fd: int, offset: int) -> int | None:
    try:
        return os.lseek(fd, offset, os.SEEK_DATA)
    except OSError as e:
        if e.errno == errno.ENXIO:  # nothing but a hole after offset
            return None
        raise


def _encode(value: object) -> object:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple | list):
        return [_encode(v) for v in value]
    return value


def stage_keys(config: Config, stages: Sequence[Stage]) -> list[tuple[Stage, str]]:
    """The enabled stages with their chained cache keys."""
    keys = []
    previous = ""
    for stage in stages:
        if not stage.enabled(config):
            continue
        inputs = {k: _encode(v) for k, v in stage.inputs(config).items()}
        blob = json.dumps([previous, stage.name, inputs], sort_keys=True, default=str)
        previous = hashlib.sha256(blob.encode()).hexdigest()
        keys.append((stage, previous))
    return keys


def segments(keyed: Sequence[tuple[Stage, str]]) -> list[list[tuple[Stage, str]]]:
    """The stages in runs that are all cacheable or all not, in order."""
    return [list(run) for _, run in itertools.groupby(keyed, key=lambda keyed_stage: keyed_stage[0].cacheable)]


@dataclass
class _Steps:
    """Runs stages for a build and reports each as it starts and finishes."""

    context: Context

    async def run(self, stage: Stage, key: str) -> None:
        self.context.emit(StageStarted(stage.name, key))
        start = time.monotonic()
        await stage.run(self.context)
        self._finished(stage, key, False, time.monotonic() - start)

    def reused(self, stage: Stage, key: str, seconds: float, pulled: bool = False) -> None:
        self.context.emit(StageStarted(stage.name, key))
        self._finished(stage, key, True, seconds, pulled)

    def _finished(self, stage: Stage, key: str, reused: bool, seconds: float, pulled: bool = False) -> None:
        self.context.stages.append(StageRecord(stage.name, key, reused, seconds, pulled))
        self.context.emit(StageFinished(stage.name, key, reused, round(seconds, 1)))


async def run_stages(context: Context, stages: Sequence[Stage], cache: StageCache | None = None) -> None:
    """Run the enabled stages in order, the cacheable ones segment by segment through `cache`."""
    steps = _Steps(context)
    for segment in segments(stage_keys(context.config, stages)):
        if cache is not None and segment[0][0].cacheable:
            await cache.run_segment(context, segment, steps)
        else:
            for stage, key in segment:
                await steps.run(stage, key)
