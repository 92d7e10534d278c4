"""Progress display: the live table, the summary table."""

from __future__ import annotations

import io
from datetime import datetime

from rich.console import Console

from matrix.progress import LiveProgress, format_size, summary_table
from matrix.scheduler import Outcome, Status


def _text(renderable: object) -> str:
    console = Console(file=io.StringIO(), width=120, force_terminal=False)
    console.print(renderable)
    assert isinstance(console.file, io.StringIO)
    return console.file.getvalue()


def test_live_table_shows_each_cell_and_its_step() -> None:
    progress = LiveProgress(["a", "b"], Console(file=io.StringIO()))
    running = Outcome("a", Status.running, step="bootstrap")
    running.started = datetime.now()
    progress.changed(running)
    text = _text(progress._render())
    assert "a" in text and "bootstrap" in text and "pending" in text


def test_summary_table() -> None:
    outcomes = [Outcome("ok", Status.success, seconds=12.3), Outcome("bad", Status.failed, error="x")]
    outcomes[0].started = outcomes[1].started = datetime.now()
    text = _text(summary_table(outcomes, {"ok": 3 << 20}, {"ok": (3, 4)}))
    assert "12.3s" in text and "3.0 MiB" in text and "3/4" in text and "failed" in text
    assert format_size(None) == "-" and format_size(100) == "100 B"
