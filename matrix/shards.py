"""Splitting a matrix into shards for a CI fleet: every cell in exactly one shard, cells that share
stages kept together where that does not unbalance the shards.

Cells are grouped by their first stage (the bootstrap): a group builds its shared stages once when
it stays on one runner. Groups go to the least loaded shard, most costly first (longest processing
time first); a group that alone would load one shard well beyond an even share is placed cell by
cell instead, and each shard that gets some of its cells bootstraps it too (or pulls it from a
shared stage cache). A cell costs what its stages took in an earlier release (its manifest), else
a weight per stage.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from matrix.runner import PlannedCell
from mkosi.errors import ConfigError

# Relative cost of building a stage when no earlier release says how long it took: the bootstrap
# and the build image install whole distributions, the disk stages write images, the rest is quick.
STAGE_WEIGHTS = {"bootstrap": 10.0, "build-image": 6.0, "build": 4.0, "filesystems": 3.0, "boot-files": 3.0}
DEFAULT_WEIGHT = 1.0
# A group may load one shard up to this much beyond an even share before it is split.
IMBALANCE = 1.25


@dataclass(frozen=True)
class Shard:
    index: int  # from 1
    total: int
    cells: tuple[str, ...]
    cost: float

    @property
    def label(self) -> str:
        return f"{self.index}/{self.total}"


def parse_shard(text: str) -> tuple[int, int]:
    """I/N, 1 <= I <= N."""
    index, _, total = text.partition("/")
    if not (index.isdigit() and total.isdigit()) or not 1 <= int(index) <= int(total):
        raise ConfigError(f"--shard: {text!r} is not I/N with 1 <= I <= N (e.g. 2/3)")
    return int(index), int(total)


def stage_costs(manifest: Mapping[str, Any] | None) -> dict[str, float]:
    """Stage key -> seconds it took to build, from an earlier release's manifest."""
    costs: dict[str, float] = {}
    for cell in (manifest or {}).get("cells", []):
        for stage in cell.get("stages", []):
            if not stage.get("cached") and isinstance(stage.get("duration_s"), int | float):
                costs[stage["key"]] = float(stage["duration_s"])
    return costs


def _cost(cells: Sequence[PlannedCell], costs: Mapping[str, float]) -> float:
    """What building `cells` on one runner costs: every distinct stage once."""
    stages = {key: name for p in cells for name, key, _ in p.keys}
    return sum(costs.get(key, STAGE_WEIGHTS.get(name, DEFAULT_WEIGHT)) for key, name in stages.items())


def _built_from(planned: Sequence[PlannedCell]) -> dict[str, str]:
    """Each cell's first cell: itself, or the cell its chain of `cell:NAME` settings starts from."""
    by_name = {p.name: p for p in planned}

    def first(p: PlannedCell) -> str:
        return first(by_name[p.cell.needs[0]]) if p.cell.needs and p.cell.needs[0] in by_name else p.name

    return {p.name: first(p) for p in planned}


def _groups(planned: Sequence[PlannedCell]) -> list[list[PlannedCell]]:
    """Cells sharing their bootstrap; a cell built from another cell (which has no bootstrap of its
    own) goes where that one goes."""
    by_name, origin = {p.name: p for p in planned}, _built_from(planned)
    groups: dict[str, list[PlannedCell]] = {}
    for p in planned:
        first = by_name[origin[p.name]]
        groups.setdefault(first.keys[0][1] if first.keys else first.name, []).append(p)
    return list(groups.values())


def _units(group: list[PlannedCell]) -> list[list[PlannedCell]]:
    """A group's cells in the smallest pieces that can build on different runners: a cell with
    the cells built from it."""
    origin = _built_from(group)
    units: dict[str, list[PlannedCell]] = {}
    for p in group:
        units.setdefault(origin[p.name], []).append(p)
    return list(units.values())


def plan_shards(planned: Sequence[PlannedCell], count: int, costs: Mapping[str, float] | None = None) -> list[Shard]:
    """`count` shards (fewer cells than shards leave some empty) covering every cell once."""
    if count < 1:
        raise ConfigError("--shards must be at least 1")
    costs = costs or {}
    groups = sorted(_groups(planned), key=lambda g: -_cost(g, costs))
    even = _cost(planned, costs) / count
    units: list[list[PlannedCell]] = []
    for group in groups:
        # A group that alone would overload a shard is placed cell by cell (with the cells built from each).
        units += _units(group) if len(group) > 1 and _cost(group, costs) > even * IMBALANCE else [group]
    units.sort(key=lambda u: -_cost(u, costs))
    loads: list[list[PlannedCell]] = [[] for _ in range(count)]
    for unit in units:
        lightest = min(range(count), key=lambda i: (_cost(loads[i], costs), i))
        loads[lightest] += unit
    order = {p.name: i for i, p in enumerate(planned)}
    return [
        Shard(
            i + 1, count, tuple(sorted((p.name for p in cells), key=order.__getitem__)), round(_cost(cells, costs), 1)
        )
        for i, cells in enumerate(loads)
    ]


def shard_cells(
    planned: Sequence[PlannedCell], index: int, count: int, costs: Mapping[str, float] | None = None
) -> list[str]:
    return list(plan_shards(planned, count, costs)[index - 1].cells)


def ci_matrix(shards: Sequence[Shard]) -> dict[str, Any]:
    """What a CI job feeds into its matrix (GitHub's `fromJSON(...)`): one entry per non-empty shard."""
    return {"include": [{"shard": s.label, "cells": list(s.cells), "cost": s.cost} for s in shards if s.cells]}


def render(shards: Sequence[Shard], form: str) -> str:
    """json: the CI matrix; github: the same as a `matrix=...` line for $GITHUB_OUTPUT; text: a table."""
    if form == "json":
        return json.dumps(ci_matrix(shards), indent=2)
    if form == "github":
        return "matrix=" + json.dumps(ci_matrix(shards), separators=(",", ":"))
    return "\n".join(f"{s.label:<6} cost {s.cost:<7} {' '.join(s.cells) or '(empty)'}" for s in shards)
