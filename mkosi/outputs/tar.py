"""`tar` output: the tree as a tarball, optionally compressed with xz or zstd."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from mkosi.concurrency import cpu_heavy
from mkosi.config import Compression
from mkosi.context import Context
from mkosi.outputs.compress import command
from mkosi.run import run


async def tar_tree(tree: Path, destination: Path, compression: Compression, log: Any) -> None:
    compressor = command(compression)
    # Compressors use every core: under a matrix, only as many at once as the scheduler allows.
    async with cpu_heavy():
        await run(
            [
                "tar",
                "--create",
                f"--file={destination}",
                f"--directory={tree}",
                "--numeric-owner",
                "--xattrs",
                "--xattrs-include=*",
                "--acls",
                "--sort=name",
                *([f"--use-compress-program={shlex.join(compressor)}"] if compressor else []),
                ".",
            ],
            log=log,
        )


async def write(context: Context) -> None:
    staged = context.stage_output(context.config.output)
    await tar_tree(context.root, staged, context.config.compress, context.log)
