"""Showing a matrix run: a live table on a terminal, log lines otherwise, and a summary at the end."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import structlog
from rich.console import Console
from rich.live import Live
from rich.table import Table

from matrix.scheduler import Outcome, Status

STYLES = {
    Status.pending: "dim",
    Status.running: "cyan",
    Status.success: "green",
    Status.failed: "bold red",
    Status.skipped: "yellow",
}


def format_size(size: int | None) -> str:
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(size)


class LogProgress:
    """One log line whenever a cell starts, changes step or finishes."""

    def __init__(self) -> None:
        self._log: Any = structlog.get_logger("mkosi.matrix")

    def changed(self, outcome: Outcome) -> None:
        if outcome.status is Status.running:
            step = outcome.step or "started"
            self._log.info(f"{outcome.name}: {step}", elapsed=round(outcome.elapsed(), 1))
        else:
            self._log.info(
                f"{outcome.name}: {outcome.status}",
                seconds=round(outcome.seconds, 1),
                **({"error": outcome.error} if outcome.error else {}),
            )


class LiveProgress:
    """One line per cell with its current step and elapsed time, redrawn in place.

    It is a rich renderable itself (`console.print(progress)` shows the current table).
    """

    def __init__(self, names: Sequence[str], console: Console) -> None:
        self._outcomes = {name: Outcome(name) for name in names}
        self._live = Live(console=console, refresh_per_second=4, get_renderable=self.__rich__, transient=True)

    def __rich__(self) -> Table:
        table = Table(box=None, show_header=False, pad_edge=False)
        for outcome in self._outcomes.values():
            state = outcome.step if outcome.status is Status.running else outcome.status.value
            elapsed = f"{outcome.elapsed():6.1f}s" if outcome.started else ""
            table.add_row(outcome.name, f"[{STYLES[outcome.status]}]{state}", elapsed)
        return table

    def changed(self, outcome: Outcome) -> None:
        self._outcomes[outcome.name] = outcome

    @contextlib.contextmanager
    def shown(self) -> Iterator[LiveProgress]:
        with self._live:
            yield self


def summary_table(outcomes: Sequence[Outcome], sizes: Mapping[str, int], hits: Mapping[str, tuple[int, int]]) -> Table:
    table = Table(title="mkosi matrix")
    for column in ("cell", "status", "time", "size", "cache hits"):
        table.add_column(column, justify="right" if column in ("time", "size") else "left")
    for outcome in outcomes:
        reused, total = hits.get(outcome.name, (0, 0))
        table.add_row(
            outcome.name,
            f"[{STYLES[outcome.status]}]{outcome.status.value}",
            f"{outcome.seconds:.1f}s" if outcome.started else "-",
            format_size(sizes.get(outcome.name)),
            f"{reused}/{total}" if total else "-",
        )
    return table
