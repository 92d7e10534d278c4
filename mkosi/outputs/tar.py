"""`tar` output: the tree as a tarball, optionally compressed with xz or zstd."""

from __future__ import annotations

from mkosi.concurrency import cpu_heavy
from mkosi.config import Compression
from mkosi.context import Context
from mkosi.run import run

COMPRESSORS = {
    Compression.xz: "xz -T0",
    Compression.zstd: "zstd -T0 -q",
}


async def write(context: Context) -> None:
    staged = context.stage_output(context.config.output)
    compressor = COMPRESSORS.get(context.config.compress)
    # Compressors use every core: under a matrix, only as many at once as the scheduler allows.
    async with cpu_heavy():
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
                *([f"--use-compress-program={compressor}"] if compressor else []),
                ".",
            ],
            log=context.log,
        )
