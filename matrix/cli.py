"""`mkosi matrix`: build every cell of a matrix file and publish one release directory.

The `mkosi` command starts here so that mkosi itself never imports the matrix: `mkosi matrix …`
is handled below, every other command line goes to mkosi.cli unchanged.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import anyio
import structlog
from rich.console import Console

from matrix import ci
from matrix import release as rel
from matrix.command import arguments_after
from matrix.fragments import check_fragments, collect, read_fragment
from matrix.progress import LiveProgress, LogProgress, summary_table
from matrix.runner import CACHE_PREFIX, PlannedCell, Run, keys_to_keep, listing, plan
from matrix.scheduler import Observer, Status
from matrix.shards import parse_shard, plan_shards, render, shard_cells, stage_costs
from matrix.spec import Cell, Matrix, ReleaseSettings, load_matrix, select
from matrix.verify import SCRATCH, Rebuild, Verdict, table
from mkosi import log
from mkosi.concurrency import SIGNAL_EXIT, cancelled_by_signals
from mkosi.errors import ConfigError, MkosiError
from mkosi.registry import Registry, parse_registry
from mkosi.workspace import TMPFS_DIR, claim_directory, release_directory, remove_abandoned


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ConfigError(message)


def parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="mkosi matrix",
        description="Build a matrix of images concurrently and publish one "
        "release directory with SHA256SUMS, an optional signature and manifest.json.",
    )
    p.add_argument(
        "-C",
        "--directory",
        type=Path,
        default=Path.cwd(),
        metavar="DIR",
        help="project directory (default: the current directory)",
    )
    p.add_argument("--matrix", type=Path, metavar="FILE", help="matrix file (default: DIR/mkosi.matrix)")
    p.add_argument("--list", action="store_true", help="print the cells and the stages they share, then exit")
    p.add_argument(
        "--cell",
        action="append",
        default=[],
        metavar="PATTERN",
        help="only build cells whose name matches the shell pattern (repeatable)",
    )
    p.add_argument(
        "--jobs",
        "-j",
        type=int,
        default=os.cpu_count() or 1,
        metavar="N",
        help="cells built at once (default: the number of cores)",
    )
    failure = p.add_mutually_exclusive_group()
    failure.add_argument(
        "--keep-going",
        dest="keep_going",
        action="store_true",
        default=True,
        help="let the other cells finish when one fails (default)",
    )
    failure.add_argument(
        "--fail-fast", dest="keep_going", action="store_false", help="start no new cell after a failure"
    )
    p.add_argument(
        "--remote-cache",
        type=_registry,
        metavar="oci://HOST[:PORT]/REPOSITORY",
        help="share stage-cache entries through this OCI registry (default: [release] RemoteCache)",
    )
    p.add_argument(
        "--remote-cache-insecure",
        action="store_true",
        default=None,
        help="talk to the remote cache over plain HTTP or without verifying its TLS certificate",
    )
    p.add_argument("--log-format", choices=("auto", "console", "json"), default="auto")
    p.add_argument("-v", "--verbose", action="count", default=0)
    return p


def _registry(value: str) -> Registry:
    try:
        return parse_registry(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _with_remote_cache(args: argparse.Namespace, release: ReleaseSettings) -> ReleaseSettings:
    """The command line's remote cache over the matrix file's."""
    registry = args.remote_cache or release.remote_cache
    insecure = release.remote_cache_insecure if args.remote_cache_insecure is None else args.remote_cache_insecure
    return dataclasses.replace(release, remote_cache=registry, remote_cache_insecure=insecure)


async def _run_with_signals(run: Run, observer: Observer) -> int | None:
    """Run the matrix; Ctrl-C or SIGTERM cancels every cell. Returns the signal's exit status, if any."""
    stopped_by = await cancelled_by_signals(lambda: run.execute(observer))
    return SIGNAL_EXIT[stopped_by] if stopped_by else None


def work_prefix(release: Path) -> str:
    """The run's own directory next to the release: the release being assembled, the cells' outputs."""
    return f".{release.name}.mkosi-tmp."


async def _main(args: argparse.Namespace, run: Run, console: Console, live: bool, owner: int) -> int:
    names = [p.name for p in run.planned]
    status: int | None
    # What runs of this release killed with SIGKILL left: their directories, their shared stages.
    matrix_log = structlog.get_logger("mkosi.matrix")
    await remove_abandoned([run.work.parent], work_prefix(run.matrix.release.directory), matrix_log)
    await remove_abandoned([TMPFS_DIR], CACHE_PREFIX, matrix_log)
    try:
        if live:
            progress = LiveProgress(names, console)
            with progress.shown():
                status = await _run_with_signals(run, progress)
        else:
            status = await _run_with_signals(run, LogProgress())
    finally:
        await release_directory(run.work, owner)
    if status is not None:
        structlog.get_logger("mkosi.matrix").error("interrupted, cleaned up; nothing was published")
        return status
    return 0


def main(argv: Sequence[str]) -> int:
    """`mkosi matrix [options]`: every cell (or those --cell picks), published as a release."""
    args = parser().parse_args(list(argv))
    directory = args.directory.resolve()
    matrix = load_matrix(args.matrix or directory / "mkosi.matrix", directory)
    return _build(args, matrix, select(matrix.cells, args.cell), shard=None)


def build_parser() -> argparse.ArgumentParser:
    p = parser()
    p.prog = "mkosi matrix build"
    p.description = "Build one shard's cells (--shard I/N as `mkosi matrix plan` splits them, or --cell) and " \
        "publish them as a fragment for `mkosi matrix collect`: never signed, never a release."  # fmt: skip
    p.add_argument("--shard", metavar="I/N", help="the I-th of N shards (the same split as `mkosi matrix plan`)")
    p.add_argument("--manifest", type=Path, metavar="FILE", help="an earlier release's manifest.json: stage costs")
    p.add_argument("-o", "--output", type=Path, metavar="DIR", help="the fragment directory (default: fragment-I)")
    return p


def build_main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    directory = args.directory.resolve()
    matrix = load_matrix(args.matrix or directory / "mkosi.matrix", directory)
    if args.shard is None and not args.cell:
        raise ConfigError("mkosi matrix build: --shard I/N or --cell NAME: which cells this shard builds")
    # The whole matrix's cells: which stages are worth sharing with the other shards.
    everything = plan(matrix, directory, matrix.cells, directory / "cells")
    if args.shard is not None:
        index, total = parse_shard(args.shard)
        names = set(shard_cells(everything, index, total, stage_costs(_read_json(args.manifest))))
        cells = [c for c in select(matrix.cells, args.cell) if c.name in names]
        label = f"{index}/{total}"
    else:
        cells, label = select(matrix.cells, args.cell), "cells"
    output = (args.output or Path(f"fragment-{label.split('/')[0]}")).absolute()
    release = dataclasses.replace(matrix.release, directory=output, sign=False)
    return _build(args, dataclasses.replace(matrix, release=release), cells, shard=label, fleet=everything)


def plan_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="mkosi matrix plan", description="Split the matrix's cells into shards for a CI fleet.")
    p.add_argument("-C", "--directory", type=Path, default=Path.cwd(), metavar="DIR", help="project directory")
    p.add_argument("--matrix", type=Path, metavar="FILE", help="matrix file (default: DIR/mkosi.matrix)")
    p.add_argument("--shards", type=int, required=True, metavar="N", help="how many shards")
    p.add_argument(
        "--format",
        choices=("text", "json", "github", "gitlab"),
        default="text",
        help="json: a CI job's matrix; gitlab: the build job's parallel: matrix:",
    )
    p.add_argument("--manifest", type=Path, metavar="FILE", help="an earlier release's manifest.json: stage costs")
    return p


def plan_main(argv: Sequence[str]) -> int:
    args = plan_parser().parse_args(list(argv))
    directory = args.directory.resolve()
    matrix = load_matrix(args.matrix or directory / "mkosi.matrix", directory)
    planned = plan(matrix, directory, matrix.cells, directory / "cells")
    shards = plan_shards(planned, args.shards, stage_costs(_read_json(args.manifest)))
    print(ci.dump(ci.gitlab_parallel(shards)).rstrip() if args.format == "gitlab" else render(shards, args.format))
    return 0


def ci_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="mkosi matrix ci", description="Print a complete CI pipeline that builds the matrix as shards.")
    engine = p.add_mutually_exclusive_group(required=True)
    engine.add_argument("--github", dest="engine", action="store_const", const="github", help="GitHub Actions")
    engine.add_argument("--gitlab", dest="engine", action="store_const", const="gitlab", help="GitLab CI")
    p.add_argument("-C", "--directory", type=Path, default=Path.cwd(), metavar="DIR", help="project directory")
    p.add_argument("--matrix", type=Path, metavar="FILE", help="matrix file, relative to DIR (default: mkosi.matrix)")
    p.add_argument("--shards", type=int, default=2, metavar="N", help="how many build jobs (default: 2)")
    p.add_argument("--setup", default="./setup.sh", metavar="COMMAND",
                   help="run first in every job (default: ./setup.sh; empty: the runner is ready)")  # fmt: skip
    p.add_argument("--mkosi", default=".venv/bin/mkosi", metavar="COMMAND",
                   help="how a job calls mkosi (default: .venv/bin/mkosi, what setup.sh installs)")  # fmt: skip
    p.add_argument("--registry", metavar="oci://HOST/REPOSITORY", type=lambda value: str(_registry(value)),
                   help="the shared stage cache (default: ghcr.io or $CI_REGISTRY of the project)")  # fmt: skip
    p.add_argument("--registry-insecure", action="store_true",
                   help="the registry speaks plain HTTP or has a certificate that is not verified")  # fmt: skip
    p.add_argument("--image", help="GitLab: the jobs' image")
    p.add_argument("--tag", action="append", default=[], dest="tags", help="GitLab: a runner tag (repeatable)")
    p.add_argument("--runs-on", default="ubuntu-latest", metavar="LABEL", help="GitHub: the runner label")
    p.add_argument("--no-sudo", dest="sudo", action="store_false", help="GitHub: the runner runs jobs as root")
    return p


def ci_main(argv: Sequence[str]) -> int:
    args = ci_parser().parse_args(list(argv))
    directory = args.directory.resolve()
    relative = args.matrix or Path("mkosi.matrix")
    matrix = load_matrix(directory / relative, directory)
    pipeline = ci.Pipeline(
        shards=args.shards,
        matrix=str(relative),
        setup=args.setup,
        mkosi=args.mkosi,
        registry=args.registry,
        registry_insecure=args.registry_insecure,
        image=args.image,
        tags=tuple(args.tags),
        runs_on=args.runs_on,
        sudo=args.sudo,
    )
    if args.engine == "github":
        print(ci.github(pipeline), end="")
    else:
        shards = plan_shards(plan(matrix, directory, matrix.cells, directory / "cells"), args.shards)
        print(ci.gitlab(pipeline, shards), end="")
    return 0


def collect_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="mkosi matrix collect", description="Check the shards' fragments and publish one release.")
    p.add_argument("fragments", type=Path, nargs="+", metavar="FRAGMENT_DIR")
    p.add_argument("-C", "--directory", type=Path, default=Path.cwd(), metavar="DIR", help="project directory")
    p.add_argument("--matrix", type=Path, metavar="FILE", help="matrix file (default: DIR/mkosi.matrix)")
    p.add_argument("-o", "--output", type=Path, metavar="DIR", help="the release directory (default: the matrix's)")
    p.add_argument("--allow-missing", action="store_true", help="publish the cells that succeeded, list the others")
    p.add_argument("--log-format", choices=("auto", "console", "json"), default="auto")
    return p


def collect_main(argv: Sequence[str]) -> int:
    args = collect_parser().parse_args(list(argv))
    directory = args.directory.resolve()
    matrix = load_matrix(args.matrix or directory / "mkosi.matrix", directory)
    if args.output is not None:
        matrix = dataclasses.replace(
            matrix, release=dataclasses.replace(matrix.release, directory=args.output.absolute())
        )
    fragments = [read_fragment(f.absolute()) for f in args.fragments]
    missing = check_fragments(fragments, matrix, args.allow_missing)
    log.setup(json={"json": True, "console": False}.get(args.log_format), verbose=0)
    collect_log = structlog.get_logger("mkosi.matrix")
    anyio.run(collect, fragments, matrix, collect_log)
    collect_log.info("release published", directory=str(matrix.release.directory), fragments=len(fragments))
    for name in missing:
        collect_log.warning(f"not in the release: {name}")
    return 0


def _read_json(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"cannot read a release manifest: {e}", origin=str(path)) from None
    if not isinstance(data, dict):
        raise ConfigError("not a release manifest", origin=str(path))
    return data


def _build(
    args: argparse.Namespace,
    matrix: Matrix,
    cells: list[Cell],
    shard: str | None,
    fleet: list[PlannedCell] | None = None,
) -> int:
    if args.jobs < 1:
        raise ConfigError("--jobs must be at least 1")
    matrix = dataclasses.replace(matrix, release=_with_remote_cache(args, matrix.release))
    directory = args.directory.resolve()
    release_dir = matrix.release.directory
    if args.list:
        # Where the cells would be built does not change their stages.
        print(listing(plan(matrix, directory, cells, release_dir.parent / "cells")))
        return 0

    json = {"json": True, "console": False}.get(args.log_format)
    log.setup(json=json, verbose=args.verbose)
    console = Console(stderr=True)
    live = console.is_terminal and args.log_format != "json"
    if live:
        # The live table replaces the builds' step lines; they still reach each build's log file.
        logging.getLogger("mkosi.build").propagate = False
    matrix_log = structlog.get_logger("mkosi.matrix")

    rel.check_replaceable(release_dir)
    work, owner = claim_directory(release_dir.parent, work_prefix(release_dir))
    try:
        planned = plan(matrix, directory, cells, work / "cells")
    except BaseException:
        os.rmdir(work)  # still empty
        os.close(owner)
        raise
    # With a registry, a shard keeps (and pushes) what any cell of the fleet asks for, not only its own.
    keep = keys_to_keep(fleet) if fleet is not None and matrix.release.remote_cache is not None else None
    run = Run(matrix, planned, work, max_jobs=args.jobs, keep_going=args.keep_going, shard=shard, keep=keep)
    status = anyio.run(_main, args, run, console, live, owner)
    if status:
        return status
    outcomes = run.outcomes
    console.print(summary_table(outcomes, run.sizes(), run.hits()))
    failed = [o for o in outcomes if o.status is not Status.success]
    for o in failed:
        matrix_log.error(f"{o.name}: {o.status}", error=o.error)
    return 1 if failed else 0


def verify_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="mkosi matrix verify",
        description="Rebuild every cell of a published release from its manifest (same matrix file, epoch, seed "
        "and package files) in scratch space, and compare each artifact byte for byte. Exits 1 if any differs.",
    )
    p.add_argument("release", type=Path, metavar="RELEASE_DIR", help="the published release directory")
    p.add_argument("-C", "--directory", type=Path, default=Path.cwd(), metavar="DIR", help="project directory")
    p.add_argument("--matrix", type=Path, metavar="FILE", help="matrix file (default: DIR/mkosi.matrix)")
    p.add_argument(
        "--scratch", type=Path, default=SCRATCH, metavar="DIR", help=f"where to rebuild (default: {SCRATCH})"
    )
    p.add_argument("--jobs", "-j", type=int, default=os.cpu_count() or 1, metavar="N", help="cells built at once")
    p.add_argument("--log-format", choices=("auto", "console", "json"), default="auto")
    p.add_argument("-v", "--verbose", action="count", default=0)
    return p


def verify_main(argv: Sequence[str]) -> int:
    args = verify_parser().parse_args(list(argv))
    directory = args.directory.resolve()
    release = args.release.resolve()
    if not release.is_dir():
        raise ConfigError(f"no such release directory: {release}")
    matrix = load_matrix(args.matrix or directory / "mkosi.matrix", directory)
    log.setup(json={"json": True, "console": False}.get(args.log_format), verbose=args.verbose)
    rebuild = Rebuild.plan(release, matrix, directory, args.scratch.resolve(), max(args.jobs, 1))
    verify_log = structlog.get_logger("mkosi.matrix")
    stopped_by, outcome = anyio.run(_verify_with_signals, rebuild, verify_log)
    if stopped_by is not None or not outcome:
        verify_log.error("interrupted, cleaned up; nothing was verified")
        return SIGNAL_EXIT[stopped_by] if stopped_by else 1
    verdicts, failed = outcome[0]
    print(table(verdicts))
    for problem in failed:
        verify_log.error(f"not rebuilt: {problem}")
    return 0 if all(v.identical for v in verdicts) and not failed else 1


async def _verify_with_signals(
    rebuild: Rebuild, verify_log: Any
) -> tuple[signal.Signals | None, list[tuple[list[Verdict], list[str]]]]:
    """The verification, cancelled by Ctrl-C or SIGTERM (which signal did, if one did)."""
    result: list[tuple[list[Verdict], list[str]]] = []

    async def verify() -> None:
        result.append(await rebuild.verify(verify_log))

    return await cancelled_by_signals(verify), result


VERBS: dict[str, Callable[[Sequence[str]], int]] = {
    "plan": plan_main,
    "build": build_main,
    "collect": collect_main,
    "ci": ci_main,
    "verify": verify_main,
}


def run(arguments: list[str]) -> NoReturn:
    """`mkosi matrix ARGUMENTS`: exits with the matrix's status."""
    try:
        status = next(
            (verb(rest) for name, verb in VERBS.items() if (rest := arguments_after(arguments, name)) is not None),
            None,
        )
        if status is None:
            status = main(arguments)
    except MkosiError as error:
        print(f"mkosi matrix: {error}", file=sys.stderr)
        sys.exit(error.exit_status)
    sys.exit(status)
