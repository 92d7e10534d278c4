"""Running many jobs at once under structured concurrency.

The scheduler knows nothing about images: a job is a name and an async callable that reports the
step it is in. All jobs run in one task group; a capacity limiter bounds how many run at once.
Every job's task starts with a copy of the caller's context, so a context variable the caller sets
around schedule() (a limit shared by all jobs, say) is seen by every job. A failing job is recorded
and, unless fail-fast, the others go on; with fail-fast no new job starts after a failure, while
running ones finish. Cancelling the caller's scope (Ctrl-C) cancels every job.

A job may name jobs it runs `after`: it starts once they have all finished, without holding a
slot while it waits, and fails without starting when one of them did not succeed.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

import anyio

Report = Callable[[str], None]


class Status(enum.StrEnum):
    pending = "pending"
    running = "running"
    success = "success"
    failed = "failed"
    skipped = "skipped"


@dataclass(frozen=True)
class Job:
    name: str
    run: Callable[[Report], Awaitable[None]]
    # The names of the jobs that must succeed before this one starts.
    after: tuple[str, ...] = ()


@dataclass
class Outcome:
    name: str
    status: Status = Status.pending
    error: str | None = None
    started: datetime | None = None
    finished: datetime | None = None
    seconds: float = 0.0
    step: str = ""
    _start: float = field(default=0.0, repr=False)

    def elapsed(self) -> float:
        return time.monotonic() - self._start if self.status is Status.running else self.seconds


class Observer(Protocol):
    def changed(self, outcome: Outcome) -> None:
        """A job started, moved to another step or finished."""
        ...


def describe(error: BaseException) -> str:
    """One message per underlying failure: task groups wrap errors in groups."""
    if isinstance(error, BaseExceptionGroup):
        return "; ".join(describe(e) for e in error.exceptions)
    return str(error) or type(error).__name__


async def schedule(
    jobs: Sequence[Job],
    *,
    max_jobs: int,
    keep_going: bool = True,
    observer: Observer | None = None,
) -> list[Outcome]:
    """Run the jobs; returns their outcomes in the order given. Raises only when cancelled."""
    if max_jobs < 1:
        raise ValueError("max_jobs must be at least 1")
    limiter = anyio.CapacityLimiter(max_jobs)
    outcomes = [Outcome(job.name) for job in jobs]
    by_name = {outcome.name: outcome for outcome in outcomes}
    done = {job.name: anyio.Event() for job in jobs}
    for job in jobs:
        unknown = [name for name in job.after if name not in done or name == job.name]
        if unknown:
            raise ValueError(f"job {job.name} runs after {', '.join(unknown)}, which is not another job")
    _check_acyclic(jobs)
    stopping = False

    def notify(outcome: Outcome) -> None:
        if observer is not None:
            observer.changed(outcome)

    async def one(job: Job, outcome: Outcome) -> None:
        try:
            await waited_for(job, outcome)
        finally:
            done[job.name].set()

    async def waited_for(job: Job, outcome: Outcome) -> None:
        for name in job.after:
            await done[name].wait()
        failed = [name for name in job.after if by_name[name].status is not Status.success]
        if failed:
            outcome.status = Status.failed
            outcome.error = f"not started: it runs after {', '.join(failed)}, which did not succeed"
            notify(outcome)
            return
        await started(job, outcome)

    async def started(job: Job, outcome: Outcome) -> None:
        nonlocal stopping
        async with limiter:
            if stopping:
                outcome.status = Status.skipped
                outcome.error = "not started: an earlier job failed (fail-fast)"
                notify(outcome)
                return
            outcome.status, outcome.started = Status.running, datetime.now(UTC)
            outcome._start = time.monotonic()
            notify(outcome)

            def report(step: str) -> None:
                outcome.step = step
                notify(outcome)

            try:
                await job.run(report)
            except Exception as error:
                outcome.status, outcome.error = Status.failed, describe(error)
                stopping = stopping or not keep_going
            else:
                outcome.status = Status.success
            finally:
                outcome.finished = datetime.now(UTC)
                outcome.seconds = time.monotonic() - outcome._start
            notify(outcome)

    async with anyio.create_task_group() as tg:
        for job, outcome in zip(jobs, outcomes, strict=True):
            tg.start_soon(one, job, outcome, name=f"job {job.name}")
    return outcomes


def _check_acyclic(jobs: Sequence[Job]) -> None:
    after = {job.name: job.after for job in jobs}
    state: dict[str, str] = {}

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            raise ValueError(f"jobs wait for each other in a circle: {' -> '.join([*path, name])}")
        state[name] = "visiting"
        for other in after[name]:
            visit(other, [*path, name])
        state[name] = "done"

    for job in jobs:
        visit(job.name, [])
