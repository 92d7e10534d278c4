"""The `mkosi` command: parse, then run one verb under structured concurrency."""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence

import anyio
import structlog

from mkosi import log, machine
from mkosi.build import STAGES, build, remove_caches, remove_outputs
from mkosi.config import Config, LogFormat, Verb, format_help, format_summary, parse_args
from mkosi.errors import MkosiError
from mkosi.pipeline import stage_keys

# Exit statuses of a build stopped by a signal, as a shell would report them.
SIGNAL_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}


def summary(config: Config) -> str:
    lines = [format_summary(config), "", "Stages:"]
    lines += [f"  {stage.name:<12} {key[:16]}" for stage, key in stage_keys(config, STAGES)]
    return "\n".join(lines)


async def clean(config: Config) -> None:
    await remove_outputs(config)
    if config.force >= 2:
        await remove_caches(config)


def _leaves(group: BaseExceptionGroup[MkosiError]) -> list[MkosiError]:
    leaves: list[MkosiError] = []
    for error in group.exceptions:
        leaves += _leaves(error) if isinstance(error, BaseExceptionGroup) else [error]
    return leaves


async def run_verb(verb: Verb, config: Config, args: Sequence[str] = ()) -> int:
    """Run the verb; Ctrl-C or SIGTERM cancels it, and the run layer cleans up what it started."""
    received: list[signal.Signals] = []

    async def watch_signals(scope: anyio.CancelScope) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                received.append(signal.Signals(signum))
                scope.cancel()
                return

    failures: list[MkosiError] = []
    status = 0
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch_signals, tg.cancel_scope)
            if verb is Verb.build:
                await build(config)
            elif verb is Verb.clean:
                await clean(config)
            elif verb in (Verb.shell, Verb.boot):
                status = await machine.shell(config, args, boot=verb is Verb.boot)
            elif verb is Verb.qemu:
                status = await machine.qemu(config, args)
            tg.cancel_scope.cancel()
    except* MkosiError as group:
        failures += _leaves(group)
    if failures:
        raise failures[0]

    if received:
        structlog.get_logger("mkosi").error(f"interrupted by {received[0].name}, cleaned up")
        return SIGNAL_EXIT[received[0]]
    return status


def main(argv: Sequence[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        verb, config, verb_args = parse_args(args)
        if verb is Verb.help:
            print(format_help())
            return
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
