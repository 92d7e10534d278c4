"""A matrix run: cells planned into Configs, built concurrently with shared stages, released."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import structlog

from matrix import release as rel
from matrix.fragments import write_fragment
from matrix.scheduler import Job, Observer, Outcome, Report, Status, schedule
from matrix.spec import Cell, Matrix, ini_value, referenced_cell, shown_value
from mkosi import checksums, naming
from mkosi.build import STAGES, build
from mkosi.concurrency import cpu_limited
from mkosi.config import Compression, Config, OutputFormat, WorkspaceMode, config_from_settings
from mkosi.context import StageRecord
from mkosi.errors import ConfigError
from mkosi.events import Event, Monitor, StageStarted
from mkosi.package_lock import Installed
from mkosi.pipeline import stage_keys
from mkosi.remote_cache import remote_cache
from mkosi.stage_cache import SnapshotCache
from mkosi.workspace import choose_base, owned_directory, remove_tree


@dataclass
class PlannedCell:
    cell: Cell
    config: Config
    keys: list[tuple[str, str, bool]]  # (stage, key, cacheable)

    @property
    def name(self) -> str:
        return self.cell.name


def _stage_reporter(report: Report) -> Monitor:
    """A cell's build events as the step the scheduler shows it in."""

    def monitor(event: Event) -> None:
        if isinstance(event, StageStarted):
            report(event.stage)

    return monitor


@dataclass
class CellResult:
    stages: list[StageRecord] = field(default_factory=list)
    artifacts: list[checksums.Artifact] = field(default_factory=list)
    installed: Installed = field(default_factory=Installed)


Setting = tuple[str, str, str]  # where it comes from, its key, its value
# Where a run assembles its release, next to the cells' build directories (Run.work / "cells").
ASSEMBLED = "release"
# The stages a matrix run shares between its cells, on tmpfs when memory allows: a directory of
# the run's own, removed with it, and by the next run when the run was killed.
CACHE_PREFIX = ".mkosi-matrix-cache."


def plan(
    matrix: Matrix,
    directory: Path,
    cells: Sequence[Cell],
    build_root: Path,
    overrides: Mapping[str, Sequence[Setting]] | None = None,
) -> list[PlannedCell]:
    """Every cell's Config, or a ConfigError listing every invalid cell; nothing is built here.
    `overrides` adds settings to cells by name, after their own (a rebuild's package locks)."""
    planned: dict[str, PlannedCell] = {}
    problems: list[str] = []
    origin = matrix.path.name
    selected = {cell.name for cell in cells}
    for cell in dependencies_first(cells):
        missing = [name for name in cell.needs if name not in selected]
        if missing:
            problems.append(f"cell {cell.name} is built from cell {missing[0]}: select that cell too")
            continue
        if any(name not in planned for name in cell.needs):
            continue  # a cell it is built from is invalid, and reported
        # The release's epoch first: [defaults] and the cell may still set their own.
        epoch = matrix.release.source_date_epoch
        settings = [] if epoch is None else [(f"{origin}: [release]", "SourceDateEpoch", str(epoch))]
        settings += [(f"{origin}: [defaults]", k, ini_value(v)) for k, v in matrix.defaults.items()]
        settings += [(f"{origin}: cell {cell.name}", k, ini_value(v)) for k, v in cell.settings.items()]
        settings += (overrides or {}).get(cell.name, [])
        # A cell another one names is read from the release being assembled, where it is published.
        assembled = build_root.parent / ASSEMBLED
        settings = [
            (
                where,
                key,
                value
                if (name := referenced_cell(key, value)) is None
                else str(assembled / planned[name].config.output.name),
            )
            for where, key, value in settings
        ]
        try:
            config = config_from_settings(directory, settings)
        except ConfigError as e:
            problems.append(str(e))
            continue
        if config.format is OutputFormat.directory:
            # A tree is published as a tarball: written straight from the build's workspace, instead
            # of creating every file of the tree on disk first and packing them from there.
            config = dataclasses.replace(config, format=OutputFormat.tar)
        compressible = not config.format.is_tree
        if config.compress is Compression.none and compressible:
            if config.format is OutputFormat.oci and matrix.release.compress.oci_layer_media_type is None:
                problems.append(
                    f"cell {cell.name}: Format=oci cannot take the release's Compress={matrix.release.compress}: "
                    "the OCI image-spec has no media type for it (give the cell Compress=zstd or none)"
                )
                continue
            config = dataclasses.replace(config, compress=matrix.release.compress)
        output = build_root / cell.name / naming.image_file_name(cell.name, config.format, config.compress)
        config = dataclasses.replace(config, output=output, force=0)
        keys = [(stage.name, key, stage.cacheable) for stage, key in stage_keys(config, STAGES)]
        planned[cell.name] = PlannedCell(cell, config, keys)
    if problems:
        raise ConfigError("invalid cells:\n" + "\n".join(f"  {p}" for p in problems))
    return [planned[cell.name] for cell in cells]


def dependencies_first(cells: Sequence[Cell]) -> list[Cell]:
    """The cells in an order where every cell comes after the cells it names (the matrix file
    refuses circles)."""
    by_name = {cell.name: cell for cell in cells}
    ordered: dict[str, Cell] = {}

    def add(cell: Cell) -> None:
        for name in cell.needs:
            if name in by_name and name not in ordered:
                add(by_name[name])
        ordered.setdefault(cell.name, cell)

    for cell in cells:
        add(cell)
    return list(ordered.values())


def sharers(planned: Sequence[PlannedCell]) -> dict[str, list[str]]:
    """Stage key → the cells whose builds contain that stage."""
    result: dict[str, list[str]] = {}
    for p in planned:
        for _, key, _ in p.keys:
            result.setdefault(key, []).append(p.name)
    return result


def keys_to_keep(planned: Sequence[PlannedCell]) -> set[str]:
    """The shared keys where sharing ends: storing those alone serves every cell that can reuse work.

    Along a cell's stages the set of sharers only shrinks; a snapshot is worth taking where it is
    about to shrink (or the run of cacheable stages ends) and more than one cell still shares it.
    """
    share = sharers(planned)
    keep: set[str] = set()
    for p in planned:
        for i, (_, key, cacheable) in enumerate(p.keys):
            if not cacheable or len(share[key]) < 2:
                continue
            following = p.keys[i + 1] if i + 1 < len(p.keys) else None
            if following is None or not following[2] or share[following[1]] != share[key]:
                keep.add(key)
    return keep


def start_order(planned: Sequence[PlannedCell]) -> list[PlannedCell]:
    """The cells in the order to start them: one of each group sharing a bootstrap first.

    A cell waiting for a sibling's shared stage holds a job slot while it waits, so starting
    siblings together would leave slots idle that a cell of another group could use.
    """
    seen: dict[str, int] = {}
    rank: dict[str, int] = {}
    for p in planned:
        first = p.keys[0][1] if p.keys else p.name
        rank[p.name] = seen.get(first, 0)
        seen[first] = rank[p.name] + 1
    return sorted(planned, key=lambda p: rank[p.name])


def listing(planned: Sequence[PlannedCell]) -> str:
    share = sharers(planned)
    lines = []
    for p in planned:
        lines.append(p.name)
        for stage, key, _ in p.keys:
            others = [n for n in share.get(key, []) if n != p.name]
            shared = f"  shared with {', '.join(others)}" if others else ""
            lines.append(f"  {stage:<12} {key[:12]}{shared}")
    return "\n".join(lines)


@dataclass
class Run:
    matrix: Matrix
    planned: list[PlannedCell]
    work: Path  # next to the release directory: the release being assembled and the cells' outputs
    max_jobs: int
    keep_going: bool = True
    # Set for a shard of a fleet's run: the run publishes a fragment (matrix/fragments.py) to the
    # release directory's place instead of a release.
    shard: str | None = None
    # The stage keys worth storing, when not those the planned cells share among themselves (a
    # shard of a fleet with a registry shares with the other shards' cells too).
    keep: set[str] | None = None
    results: dict[str, CellResult] = field(default_factory=dict)
    outcomes: list[Outcome] = field(default_factory=list)
    log: Any = field(default_factory=lambda: structlog.get_logger("mkosi.matrix"))

    @property
    def assembled(self) -> Path:
        return self.work / ASSEMBLED

    @property
    def logs(self) -> Path:
        final = self.matrix.release.directory
        return final.with_name(final.name + ".logs")

    async def _cell(self, p: PlannedCell, cache: SnapshotCache, report: Report) -> None:
        result = self.results.setdefault(p.name, CellResult())
        log_file = naming.log_path(p.config.output)
        p.config.output.parent.mkdir(parents=True)
        try:
            built = await build(p.config, cache, monitor=_stage_reporter(report))
            result.stages, result.installed = built.stages, built.installed
            report("publish")
            pending = p.config.output.parent / ".publish"
            pending.mkdir()
            artifacts = await rel.collect_artifacts(
                p.config, p.name, pending, self.matrix.release.compress, self.log.bind(build=p.name)
            )
            # Only now, with nothing left that can fail or be interrupted halfway, into the release.
            for artifact in artifacts:
                os.rename(pending / artifact.name, self.assembled / artifact.name)
            result.artifacts = artifacts
        finally:
            if log_file.exists():
                self.logs.mkdir(parents=True, exist_ok=True)
                os.replace(log_file, naming.log_path(self.logs / p.name))
            with anyio.CancelScope(shield=True):
                await remove_tree(p.config.output.parent)

    async def execute(self, observer: Observer | None = None) -> list[Outcome]:
        """Build every cell; publish the release unless cancelled. Returns the cells' outcomes."""
        self.assembled.mkdir(parents=True)
        base = choose_base(WorkspaceMode.auto, self.work)
        release = self.matrix.release
        async with (
            owned_directory(base, CACHE_PREFIX, self.log) as cache_dir,
            remote_cache(release.remote_cache, release.remote_cache_insecure, self.log) as remote,
        ):
            keep = keys_to_keep(self.planned) if self.keep is None else self.keep
            cache = SnapshotCache(cache_dir, keep=keep.__contains__, remote=remote)

            def job(p: PlannedCell) -> Job:
                return Job(p.name, lambda report: self._cell(p, cache, report), after=p.cell.needs)

            with cpu_limited(os.cpu_count() or 1):
                finished = await schedule(
                    [job(p) for p in start_order(self.planned)],
                    max_jobs=self.max_jobs,
                    keep_going=self.keep_going,
                    observer=observer,
                )
        by_name = {o.name: o for o in finished}
        outcomes = [by_name[p.name] for p in self.planned]
        self.outcomes = outcomes
        await self._finish(outcomes)
        return outcomes

    def _cell_json(self, p: PlannedCell, outcome: Outcome, share: dict[str, list[str]]) -> dict[str, Any]:
        result = self.results.get(p.name, CellResult())
        return {
            "name": p.name,
            **({"shard": self.shard} if self.shard is not None else {}),
            "status": outcome.status.value,
            "error": outcome.error,
            "started": outcome.started.isoformat() if outcome.started else None,
            "finished": outcome.finished.isoformat() if outcome.finished else None,
            "settings": {
                **{k: shown_value(k, v) for k, v in self.matrix.defaults.items()},
                **{k: shown_value(k, v) for k, v in p.cell.settings.items()},
            },
            "artifacts": [a.as_json() for a in result.artifacts] if outcome.status is Status.success else [],
            # What a rebuild needs besides the matrix file (mkosi matrix verify).
            "source_date_epoch": p.config.source_date_epoch,
            "seed": str(p.config.seed),
            "sources": list(result.installed.sources),
            "packages": [r.as_json() for r in result.installed.packages],
            "stages": [
                {
                    "name": r.name,
                    "key": r.key,
                    "cached": r.reused,
                    # Built by another machine of the fleet and pulled from the registry.
                    "pulled": r.pulled,
                    "shared_with": [n for n in share.get(r.key, []) if n != p.name],
                    "duration_s": round(r.seconds, 3),
                }
                for r in result.stages
            ],
        }

    async def _finish(self, outcomes: Sequence[Outcome]) -> None:
        share = sharers(self.planned)
        cells = [self._cell_json(p, o, share) for p, o in zip(self.planned, outcomes, strict=True)]
        used = [tool for p in self.planned for tool in p.config.distribution.installer().package_manager_tools]
        tools = await rel.tool_versions(used, self.log)
        matrix_file = {"name": self.matrix.path.name, "sha256": self.matrix.digest}
        if self.shard is not None:
            write_fragment(self.assembled, self.shard, matrix_file, cells, tools)
            await rel.publish(self.assembled, self.matrix.release.directory)
            self.log.info("fragment published", directory=str(self.matrix.release.directory), shard=self.shard)
            return
        succeeded = [o.name for o in outcomes if o.status is Status.success]
        artifacts = [a for name in succeeded for a in self.results[name].artifacts]
        sums = self.assembled / naming.SUMS
        sums.write_text(checksums.checksums(artifacts))
        if self.matrix.release.sign:
            await checksums.sign(sums, self.matrix.release.key, self.log, epoch=self.matrix.release.source_date_epoch)
        rel.write_manifest(self.assembled / rel.MANIFEST, matrix_file, cells, tools)
        await rel.publish(self.assembled, self.matrix.release.directory)
        self.log.info("release published", directory=str(self.matrix.release.directory))

    def sizes(self) -> dict[str, int]:
        return {name: sum(a.size for a in r.artifacts) for name, r in self.results.items() if r.artifacts}

    def hits(self) -> dict[str, tuple[int, int]]:
        return {name: (sum(s.reused for s in r.stages), len(r.stages)) for name, r in self.results.items()}
