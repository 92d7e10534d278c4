"""Progress display: the live table, the summary table."""

from __future__ import annotations

import io
import re
from datetime import datetime

import pytest
from rich.console import Console

from matrix.progress import LiveProgress, format_size, summary_table
from matrix.scheduler import Job, Outcome, Report, Status, schedule

# The vertical lines between cells, in the header and in the body.
BORDER = "[┃│]"


def _lines(renderable: object) -> list[str]:
    console = Console(file=io.StringIO(), width=120, force_terminal=False)
    console.print(renderable)
    assert isinstance(console.file, io.StringIO)
    return console.file.getvalue().splitlines()


def _rows(renderable: object) -> list[list[str]]:
    """The table's rows as printed (the header's too), each a list of its cells' texts."""
    lines = _lines(renderable)
    if not any(re.search(BORDER, line) for line in lines):
        return [line.split() for line in lines]  # no borders: cells are apart by blanks
    return [[c.strip() for c in re.split(BORDER, line)[1:-1]] for line in lines if re.search(BORDER, line)]


def _elapsed(rows: list[list[str]]) -> list[list[str]]:
    """The rows with their elapsed time (the third cell, which depends on the clock) checked for
    its format and left out."""
    for row in rows:
        assert len(row) < 3 or re.fullmatch(r"\d+\.\ds", row[2]), row
    return [row[:2] for row in rows]


@pytest.mark.anyio
async def test_live_table_shows_each_cell_and_its_step() -> None:
    progress = LiveProgress(["a", "b", "c"], Console(file=io.StringIO()))
    while_a_ran: list[list[str]] = []

    async def a(report: Report) -> None:
        report("bootstrap")
        while_a_ran.extend(_elapsed(_rows(progress)))

    async def b(report: Report) -> None:
        raise RuntimeError("broke")

    async def c(report: Report) -> None:
        pass

    jobs = [Job("a", a), Job("b", b), Job("c", c)]
    assert _rows(progress) == [["a", "pending"], ["b", "pending"], ["c", "pending"]]
    await schedule(jobs, max_jobs=1, keep_going=False, observer=progress)
    assert while_a_ran == [["a", "bootstrap"], ["b", "pending"], ["c", "pending"]]
    rows = _rows(progress)
    assert _elapsed(rows) == [["a", "success"], ["b", "failed"], ["c", "skipped"]]
    assert [len(row) for row in rows] == [3, 3, 2]  # a cell never started has no time


def test_a_finished_cell_shows_its_time() -> None:
    progress = LiveProgress(["a"], Console(file=io.StringIO()))
    progress.changed(Outcome("a", Status.success, started=datetime.now(), seconds=12.34))
    assert _rows(progress) == [["a", "success", "12.3s"]]


def test_summary_table() -> None:
    now = datetime.now()
    outcomes = [
        Outcome("ok", Status.success, started=now, seconds=12.34),
        Outcome("bad", Status.failed, error="x", started=now, seconds=0.5),
        Outcome("later", Status.skipped),
    ]
    table = summary_table(outcomes, {"ok": 3 << 20}, {"ok": (3, 4), "bad": (0, 2)})
    assert _lines(table)[0].strip() == "mkosi matrix"
    assert _rows(table) == [
        ["cell", "status", "time", "size", "cache hits"],
        ["ok", "success", "12.3s", "3.0 MiB", "3/4"],
        ["bad", "failed", "0.5s", "-", "0/2"],
        ["later", "skipped", "-", "-", "-"],
    ]


def test_format_size() -> None:
    assert format_size(None) == "-"
    assert format_size(100) == "100 B"
    assert format_size(1536) == "1.5 KiB"
    assert format_size(3 << 20) == "3.0 MiB"
    assert format_size(5 << 40) == "5120.0 GiB"  # no unit above GiB
