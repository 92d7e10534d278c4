"""The scheduler with fake jobs: bounds, failure policies, cancellation of real subprocesses."""

from __future__ import annotations

import contextvars
import re
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import pytest

from matrix.scheduler import Job, Outcome, Report, Status, schedule
from mkosi.run import run
from tests.processes import alive, packages_imported_by

pytestmark = pytest.mark.anyio


class Gauge:
    def __init__(self) -> None:
        self.now = 0
        self.peak = 0

    def __enter__(self) -> None:
        self.now += 1
        self.peak = max(self.peak, self.now)

    def __exit__(self, *exc: object) -> None:
        self.now -= 1


def _job(name: str, body: Callable[[Report], Awaitable[None]]) -> Job:
    return Job(name, body)


async def test_the_job_bound_is_never_exceeded() -> None:
    gauge = Gauge()

    async def body(report: Report) -> None:
        with gauge:
            report("working")
            await anyio.sleep(0.01)

    outcomes = await schedule([_job(f"j{i}", body) for i in range(12)], max_jobs=3)
    assert [o.status for o in outcomes] == [Status.success] * 12
    assert gauge.peak == 3


SETTING: contextvars.ContextVar[str] = contextvars.ContextVar("setting", default="unset")


async def test_every_job_sees_the_context_variables_its_caller_set() -> None:
    # How a caller hands every job a shared limit (mkosi's CPU limiter) without the scheduler
    # knowing of it.
    seen: list[str] = []

    async def body(report: Report) -> None:
        seen.append(SETTING.get())

    token = SETTING.set("set by the caller")
    try:
        await schedule([_job(f"j{i}", body) for i in range(3)], max_jobs=2)
    finally:
        SETTING.reset(token)
    assert seen == ["set by the caller"] * 3


def test_the_scheduler_imports_nothing_of_mkosi() -> None:
    imported = packages_imported_by("matrix.scheduler")
    assert "anyio" in imported  # the check sees what the scheduler imports
    assert "mkosi" not in imported


async def test_keep_going_lets_the_others_finish() -> None:
    async def fail(report: Report) -> None:
        raise RuntimeError("cell broke")

    async def ok(report: Report) -> None:
        await anyio.sleep(0.01)

    jobs = [_job("bad", fail), *(_job(f"ok{i}", ok) for i in range(3))]
    outcomes = await schedule(jobs, max_jobs=1, keep_going=True)
    assert [o.status for o in outcomes] == [Status.failed, Status.success, Status.success, Status.success]
    assert outcomes[0].error == "cell broke"


async def test_fail_fast_starts_no_new_job() -> None:
    started: list[str] = []

    async def fail(report: Report) -> None:
        started.append("bad")
        raise ExceptionGroup("group", [RuntimeError("one"), ValueError("two")])

    async def ok(report: Report) -> None:
        started.append("ok")

    jobs = [_job("bad", fail), _job("ok1", ok), _job("ok2", ok)]
    outcomes = await schedule(jobs, max_jobs=1, keep_going=False)
    assert started == ["bad"]
    assert [o.status for o in outcomes] == [Status.failed, Status.skipped, Status.skipped]
    assert outcomes[0].error == "one; two"


async def test_cancellation_reaches_every_running_subprocess(tmp_path: Path) -> None:
    pids: list[int] = []

    async def body(report: Report) -> None:
        # A shell that starts a grandchild: the whole process group has to go.
        pidfile = tmp_path / f"{len(pids)}.pid"
        pids.append(-1)
        await run(["sh", "-c", f"sleep 60 & echo $! > {pidfile}; echo $$ >> {pidfile}; wait"], grace=1)

    outcomes: list[Outcome] = []
    with anyio.move_on_after(1.5):
        outcomes = await schedule([_job(f"s{i}", body) for i in range(3)], max_jobs=3)
    assert outcomes == []  # cancelled, not finished
    found = [int(line) for f in tmp_path.glob("*.pid") for line in f.read_text().split()]
    assert len(found) == 6
    with anyio.fail_after(5):
        while any(alive(pid) for pid in found):
            await anyio.sleep(0.05)


async def test_a_job_starts_after_the_jobs_it_names_and_holds_no_slot_while_waiting() -> None:
    events: list[str] = []

    def body(name: str, seconds: float) -> Callable[[Report], Awaitable[None]]:
        async def run_it(report: Report) -> None:
            events.append(f"{name} started")
            await anyio.sleep(seconds)
            events.append(f"{name} finished")

        return run_it

    # Listed first and waiting, the extension holds no slot: the base and the other job run meanwhile.
    jobs = [Job("extension", body("extension", 0), after=("base",)), _job("base", body("base", 0.05))]
    jobs.append(_job("other", body("other", 0)))
    outcomes = await schedule(jobs, max_jobs=2)
    assert [o.status for o in outcomes] == [Status.success] * 3
    assert events.index("extension started") > events.index("base finished")
    assert events.index("other finished") < events.index("base finished")


async def test_a_job_whose_predecessor_failed_fails_without_starting() -> None:
    started: list[str] = []

    async def fail(report: Report) -> None:
        raise RuntimeError("base broke")

    async def ok(report: Report) -> None:
        started.append("extension")

    outcomes = await schedule([_job("base", fail), Job("extension", ok, after=("base",))], max_jobs=2)
    assert started == []
    assert outcomes[1].status is Status.failed
    assert outcomes[1].error == "not started: it runs after base, which did not succeed"


@pytest.mark.parametrize(
    ("jobs", "problem"),
    [
        ([("a", ("b",))], "job a runs after b, which is not another job"),
        ([("a", ("a",))], "job a runs after a, which is not another job"),
        ([("a", ("b",)), ("b", ("a",))], "jobs wait for each other in a circle: a -> b -> a"),
    ],
)
async def test_unknown_predecessors_and_circles_are_refused(
    jobs: list[tuple[str, tuple[str, ...]]], problem: str
) -> None:
    async def ok(report: Report) -> None:
        pass

    with pytest.raises(ValueError, match=re.escape(problem)):
        await schedule([Job(name, ok, after=after) for name, after in jobs], max_jobs=1)
