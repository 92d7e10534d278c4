"""Named locks and the package-cache lock around bootstraps: never held twice at once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import anyio
import pytest
import structlog

from mkosi import build
from mkosi.concurrency import CPU_LIMITER, cpu_heavy, cpu_limited, exclusive, on_all_cores
from mkosi.config import Distribution, parse_args
from mkosi.context import Context

pytestmark = pytest.mark.anyio


async def test_exclusive_in_process(tmp_path: Path) -> None:
    holders: list[int] = []
    peak = 0

    async def hold(i: int) -> None:
        nonlocal peak
        async with exclusive(tmp_path / "lock"):
            holders.append(i)
            peak = max(peak, len(holders))
            await anyio.sleep(0.01)
            holders.remove(i)

    async with anyio.create_task_group() as tg:
        for i in range(8):
            tg.start_soon(hold, i)
    assert peak == 1


async def test_exclusive_across_processes(tmp_path: Path) -> None:
    lock, released = tmp_path / "lock", tmp_path / "released"
    # Another process holds the flock for a moment; we must wait for it, without blocking the loop.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import fcntl,time,sys; f=open({str(lock)!r},'w'); fcntl.flock(f, fcntl.LOCK_EX); "
            f"print('held', flush=True); time.sleep(0.5); open({str(released)!r},'w').close(); f.close(); "
            "time.sleep(5)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await anyio.sleep(0.01)

    async with anyio.create_task_group() as tg:
        tg.start_soon(tick)
        async with exclusive(lock):
            assert released.exists()  # got it only once the holder let go
        tg.cancel_scope.cancel()
    assert ticks > 10
    holder.kill()
    holder.wait()


async def test_bootstraps_of_one_release_never_overlap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    running: dict[str, int] = {}
    peaks: dict[str, int] = {}
    overlap_between_releases = False

    async def fake_install(self: object, context: Context) -> None:
        nonlocal overlap_between_releases
        release = context.config.release
        running[release] = running.get(release, 0) + 1
        peaks[release] = max(peaks.get(release, 0), running[release])
        overlap_between_releases |= len([r for r, n in running.items() if n]) > 1
        await anyio.sleep(0.05)
        running[release] -= 1

    monkeypatch.setattr(type(Distribution.debian.installer()), "install", fake_install)
    cache = tmp_path / "cache"

    async def bootstrap(release: str, i: int) -> None:
        config = parse_args(["-C", str(tmp_path), "-d", "debian", "-r", release, f"--cache={cache}"])[1]
        workspace = tmp_path / f"{release}-{i}"
        workspace.mkdir()
        await build.install_distribution(Context(config, workspace, structlog.get_logger("test")))

    async with anyio.create_task_group() as tg:
        for i in range(4):
            tg.start_soon(bootstrap, "bookworm", i)
            tg.start_soon(bootstrap, "trixie", i)
    assert peaks == {"bookworm": 1, "trixie": 1}
    assert overlap_between_releases  # different releases still run side by side


async def test_side_tasks_finish_and_the_body_error_comes_out_unwrapped() -> None:
    from mkosi.concurrency import side_tasks
    from mkosi.errors import MkosiError

    finished: list[str] = []

    async def side() -> None:
        await anyio.sleep(0.05)
        finished.append("side")

    with pytest.raises(MkosiError, match=r"^stage failed$"):
        async with side_tasks() as tg:
            tg.start_soon(side)
            raise MkosiError("stage failed")
    assert finished == ["side"]

    async with side_tasks() as tg:
        tg.start_soon(side)
    assert finished == ["side", "side"]


def test_on_all_cores_runs_every_item_and_no_more_at_once_than_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    running, peak, done = 0, 0, []

    async def work(item: int) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await anyio.sleep(0.01)
        running -= 1
        done.append(item)

    anyio.run(on_all_cores, work, range(7))
    assert sorted(done) == list(range(7)) and peak == 2


_HOLD = """
import sys, time
from pathlib import Path
from mkosi import concurrency
concurrency.OUTPUT_LOCKS = Path(sys.argv[1])
with concurrency.claimed([Path(sys.argv[2])]):
    print("held", flush=True)
    time.sleep(60)
"""


def test_an_output_is_claimed_by_one_build_and_a_killed_holder_blocks_nobody(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    import signal
    import subprocess
    import sys

    from mkosi import concurrency
    from mkosi.errors import MkosiError

    monkeypatch.setattr(concurrency, "OUTPUT_LOCKS", tmp_path / "locks")
    output = tmp_path / "image.raw"
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(tmp_path / "locks"), str(output)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        refused = rf"^{output} is being built by another mkosi \(pid {holder.pid}\)"
        with pytest.raises(MkosiError, match=refused), concurrency.claimed([output]):
            pass
        # Another output is not in its way.
        with concurrency.claimed([tmp_path / "other.raw"]):
            pass
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    # Killed with SIGKILL: its lock went with it.
    mine = f"pid {os.getpid()}"
    with concurrency.claimed([output]), pytest.raises(MkosiError, match=mine), concurrency.claimed([output]):
        pass


async def test_cpu_heavy_steps_of_tasks_started_inside_cpu_limited_share_its_slots() -> None:
    running, peak = 0, 0

    async def step() -> None:
        nonlocal running, peak
        async with cpu_heavy():
            running += 1
            peak = max(peak, running)
            await anyio.sleep(0.01)
            running -= 1

    with cpu_limited(2):
        async with anyio.create_task_group() as tg:
            for _ in range(6):
                tg.start_soon(step)
    assert peak == 2
    assert CPU_LIMITER.get() is None  # gone with the block: a single build runs without one

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(step)
    assert peak == 3
