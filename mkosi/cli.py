"""The `mkosi` command: parse, then run one verb under structured concurrency."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import anyio
import structlog

from mkosi import log, machine, secure_boot
from mkosi.build import (
    STAGES,
    build,
    check_caches_removable,
    remove_caches,
    remove_outputs,
    stage_cache_dir,
    written_paths,
)
from mkosi.concurrency import SIGNAL_EXIT, cancelled_by_signals, claimed
from mkosi.config import (
    Config,
    LogFormat,
    Verb,
    discovered_path,
    format_help,
    format_summary,
    help_requested,
    parse_args,
)
from mkosi.errors import MkosiError
from mkosi.pipeline import stage_keys
from mkosi.reproducibility import obstacles
from mkosi.stage_cache import cached_keys


def summary(config: Config) -> str:
    lines = [format_summary(config), "Reproducibility:"]
    reasons = obstacles(config)
    lines += [f"  not reproducible: {r}" for r in reasons] or ["  a rebuild of the same inputs gives the same bytes"]
    lines += ["", "Stages:"]
    cached: set[str] = set()
    if config.incremental and config.cache_path is not None:
        cached = cached_keys(stage_cache_dir(config))
    lines += [
        f"  {stage.name:<12} {key[:16]}" + ("  (cached, reused with -i)" if key in cached else "")
        for stage, key in stage_keys(config, STAGES)
    ]
    return "\n".join(lines)


async def clean(config: Config) -> None:
    if config.force >= 2:
        check_caches_removable(config)
    with claimed(written_paths(config)):
        await remove_outputs(config)
    if config.force >= 2:
        await remove_caches(config)


async def genkey(config: Config) -> None:
    """Where the Secure Boot settings say, else where they would find the key and certificate."""
    key = config.secure_boot_key or discovered_path(config, "secure_boot_key")
    certificate = config.secure_boot_certificate or discovered_path(config, "secure_boot_certificate")
    log = structlog.get_logger("mkosi")
    await secure_boot.generate_key(key, certificate, config.secure_boot_common_name, config.secure_boot_valid_days, log)


def _leaves(group: BaseExceptionGroup[MkosiError]) -> list[MkosiError]:
    leaves: list[MkosiError] = []
    for error in group.exceptions:
        leaves += _leaves(error) if isinstance(error, BaseExceptionGroup) else [error]
    return leaves


async def run_verb(verb: Verb, config: Config, args: Sequence[str] = ()) -> int:
    """Run the verb; Ctrl-C or SIGTERM cancels it, and the run layer cleans up what it started."""
    status = 0

    async def work() -> None:
        nonlocal status
        if verb is Verb.build:
            await build(config)
        elif verb is Verb.clean:
            await clean(config)
        elif verb in (Verb.shell, Verb.boot):
            status = await machine.shell(config, args, boot=verb is Verb.boot)
        elif verb is Verb.qemu:
            status = await machine.qemu(config, args)
        elif verb is Verb.genkey:
            await genkey(config)

    failures: list[MkosiError] = []
    stopped_by = None
    try:
        stopped_by = await cancelled_by_signals(work)
    except* MkosiError as group:
        # Raised from here, it would be wrapped in a group again: report the first after the block.
        failures += _leaves(group)
    if failures:
        raise failures[0]
    if stopped_by is not None:
        structlog.get_logger("mkosi").error(f"interrupted by {stopped_by.name}, cleaned up")
        return SIGNAL_EXIT[stopped_by]
    return status


def main(argv: Sequence[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else list(argv)
    if help_requested(args):
        print(format_help())
        return
    try:
        verb, config, verb_args = parse_args(args)
        if verb is not Verb.summary:
            for warning in config.warnings:
                print(f"mkosi: warning: {warning}", file=sys.stderr)
        if verb is Verb.summary:
            print(summary(config))
            return
        json = {LogFormat.json: True, LogFormat.console: False}.get(config.log_format)
        log.setup(json=json, verbose=config.verbose)
        status = anyio.run(run_verb, verb, config, verb_args)
    except MkosiError as error:
        print(f"mkosi: {error}", file=sys.stderr)
        sys.exit(error.exit_status)
    sys.exit(status)
