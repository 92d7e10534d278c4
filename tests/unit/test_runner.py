"""A matrix run with its builds replaced: what the runner hands every cell's build."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from matrix import runner
from matrix.runner import Run, plan
from matrix.scheduler import Status
from matrix.spec import parse_matrix
from mkosi.build import Built
from mkosi.concurrency import CPU_LIMITER
from mkosi.config import Config
from mkosi.package_lock import Installed

pytestmark = pytest.mark.anyio


async def test_every_cell_builds_under_one_cpu_limiter_with_a_slot_per_core(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 3)
    limiters: dict[str, anyio.CapacityLimiter | None] = {}

    async def build(config: Config, cache: object, monitor: object) -> Built:
        limiters[config.output.parent.name] = CPU_LIMITER.get()
        return Built([], Installed())

    monkeypatch.setattr(runner, "build", build)
    text = '[matrix]\nDistribution = ["debian"]\nRelease = ["bookworm", "trixie"]\nFormat = ["tar"]\n'
    matrix = parse_matrix(text, project / "mkosi.matrix", project)
    work = project / "work"
    planned = plan(matrix, project, matrix.cells, work / "cells")
    outcomes = await Run(matrix, planned, work, max_jobs=2).execute()

    assert [(o.name, o.status) for o in outcomes] == [
        ("debian-bookworm-tar", Status.success),
        ("debian-trixie-tar", Status.success),
    ]
    bookworm, trixie = limiters["debian-bookworm-tar"], limiters["debian-trixie-tar"]
    assert bookworm is not None and bookworm is trixie
    assert bookworm.total_tokens == 3
    assert CPU_LIMITER.get() is None
