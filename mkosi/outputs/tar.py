"""`tar` output: the tree as a tarball, optionally compressed with xz or zstd."""

from __future__ import annotations

import shlex

from mkosi.context import Context
from mkosi.outputs.compress import command
from mkosi.run import run


async def write(context: Context) -> None:
    staged = context.stage_output(context.config.output)
    compressor = command(context.config.compress)
    await run(
        [
            "tar",
            "--create",
            f"--file={staged}",
            f"--directory={context.root}",
            "--numeric-owner",
            "--xattrs",
            "--xattrs-include=*",
            "--acls",
            "--sort=name",
            *([f"--use-compress-program={shlex.join(compressor)}"] if compressor else []),
            ".",
        ],
        log=context.log,
    )
