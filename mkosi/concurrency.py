"""Locks and limits shared by concurrent builds, in one process and across processes.

`exclusive(path)` is a lock named by a file: an anyio lock for the tasks of this process (fair,
and cheap to wait on) and then flock(2) on the file for other processes. flock is polled without
blocking so that a waiting task stays cancellable and never blocks the event loop.

`cpu_heavy()` bounds steps that can use every core by themselves (compression, squashfs): whoever
runs many builds at once starts them inside `cpu_limited(slots)`, and every task started there
inherits its limiter; a single build runs without one.
"""

from __future__ import annotations

import contextlib
import contextvars
import fcntl
import hashlib
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import anyio
from anyio.abc import TaskGroup

from mkosi.errors import MkosiError

# How often a task waiting for another process's flock tries again.
FLOCK_POLL_SECONDS = 0.05

CPU_LIMITER: contextvars.ContextVar[anyio.CapacityLimiter | None] = contextvars.ContextVar(
    "mkosi_cpu_limiter", default=None
)

_LOCKS: dict[str, anyio.Lock] = {}
T = TypeVar("T")


@dataclass
class Held:
    """An acquired `exclusive` lock; release() exactly once, from the task that acquired it."""

    path: Path
    _lock: anyio.Lock
    _fd: int

    def release(self) -> None:
        # Closing the descriptor drops the flock.
        os.close(self._fd)
        self._lock.release()


async def flock_polled(fd: int, operation: int) -> None:
    """flock(2) `operation` (LOCK_EX or LOCK_SH) on `fd`, waiting without blocking the event loop."""
    while True:
        try:
            fcntl.flock(fd, operation | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            await anyio.sleep(FLOCK_POLL_SECONDS)


async def _flock(path: Path) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        await flock_polled(fd, fcntl.LOCK_EX)
    except BaseException:
        os.close(fd)
        raise
    return fd


async def acquire(path: Path) -> Held:
    """Take the lock named by `path` (created if missing; its directory must exist)."""
    lock = _LOCKS.setdefault(str(path), anyio.Lock())
    await lock.acquire()
    try:
        fd = await _flock(path)
    except BaseException:
        lock.release()
        raise
    return Held(path, lock, fd)


@contextlib.asynccontextmanager
async def exclusive(path: Path) -> AsyncIterator[None]:
    held = await acquire(path)
    try:
        yield
    finally:
        held.release()


# Where the locks of outputs being built live: not next to the outputs (no litter in the user's
# directories), and on tmpfs, so that none survives a reboot.
OUTPUT_LOCKS = Path("/run/lock/mkosi")


@contextlib.contextmanager
def _claim(path: Path) -> Iterator[None]:
    OUTPUT_LOCKS.mkdir(parents=True, exist_ok=True)
    # Resolved: two spellings of one file (through "..", a symlinked directory) are one claim.
    name = hashlib.sha256(os.fsencode(path.parent.resolve() / path.name)).hexdigest()[:32]
    fd = os.open(OUTPUT_LOCKS / f"{name}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            problem = f"{path} is being built by another mkosi (pid {holder}): wait for it or choose another output"
            raise MkosiError(problem) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def claimed(paths: Iterable[Path]) -> Iterator[None]:
    """Hold every path a build publishes for that build, or refuse at once, naming the process that
    holds one. Two outputs in one directory may both publish SHA256SUMS: they must not overlap.

    flock(2): a build killed with SIGKILL holds nothing any more, so it never blocks the next one.
    Never waiting, a build cannot deadlock with another whatever order they claim in.
    """
    with contextlib.ExitStack() as held:
        for path in paths:
            held.enter_context(_claim(path))
        yield


@contextlib.asynccontextmanager
async def cpu_heavy() -> AsyncIterator[None]:
    """Hold one of the scheduler's CPU slots, if any, for a step that fills the cores by itself."""
    limiter = CPU_LIMITER.get()
    if limiter is None:
        yield
        return
    async with limiter:
        yield


@contextlib.contextmanager
def cpu_limited(slots: int) -> Iterator[None]:
    """At most `slots` cpu_heavy() steps at once among the tasks started inside the block (each
    task inherits the limiter through its copy of the context)."""
    token = CPU_LIMITER.set(anyio.CapacityLimiter(slots))
    try:
        yield
    finally:
        CPU_LIMITER.reset(token)


async def on_all_cores(work: Callable[[T], Awaitable[object]], items: Iterable[T], leave_free: int = 0) -> None:
    """Run `work` on every item, as many at a time as there are cores (for steps that keep one
    core busy each, such as one decompressing subprocess per item). `leave_free` cores are kept
    for work running beside it; one item at a time runs in any case."""
    limiter = anyio.CapacityLimiter(max(1, (os.cpu_count() or 1) - leave_free))

    async def limited(item: T) -> None:
        async with limiter:
            await work(item)

    async with anyio.create_task_group() as tg:
        for item in items:
            tg.start_soon(limited, item)


# Exit statuses of a command stopped by a signal, as a shell reports them.
SIGNAL_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}


async def cancelled_by_signals(work: Callable[[], Awaitable[object]]) -> signal.Signals | None:
    """Run `work`; Ctrl-C or SIGTERM cancels it (the run layer then ends every subprocess it started).

    Returns the signal that stopped it, or None when it ran to completion.
    """
    received: list[signal.Signals] = []

    async def watch(scope: anyio.CancelScope) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                received.append(signal.Signals(signum))
                scope.cancel()
                return

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch, tg.cancel_scope)
        await work()
        tg.cancel_scope.cancel()
    return received[0] if received else None


@contextlib.asynccontextmanager
async def side_tasks() -> AsyncIterator[TaskGroup]:
    """A task group for work started beside the body. It is waited for either way; an error of the
    body comes out as itself rather than wrapped in an ExceptionGroup, so callers catch it as before."""
    failure: Exception | None = None
    async with anyio.create_task_group() as tg:
        try:
            yield tg
        except Exception as e:
            failure = e
    if failure is not None:
        raise failure
