"""`tar` output: the tree as a tarball, optionally compressed with xz or zstd."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from mkosi import ownership
from mkosi.concurrency import cpu_heavy
from mkosi.config import Compression
from mkosi.context import Context
from mkosi.outputs.compress import command
from mkosi.run import run


def reproducible_options(epoch: int | None) -> list[str]:
    """For SourceDateEpoch=: no entry newer than the epoch, and pax headers without the access and
    change times of the build (GNU tar writes them as soon as --xattrs makes the archive pax)."""
    if epoch is None:
        return []
    return [
        f"--mtime=@{epoch}",
        "--clamp-mtime",
        "--format=pax",
        "--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime",
    ]


async def tar_tree(tree: Path, destination: Path, compression: Compression, log: Any, epoch: int | None = None) -> None:
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
                # mkosi's mark of what it published belongs to the published tree, not to its contents.
                f"--xattrs-exclude={ownership.ATTRIBUTE}",
                "--acls",
                # A sparse file stays sparse (a 2 GiB file with a few bytes of data is a few KiB of
                # archive, not 2 GiB of zeros), and GNU tar and Python's tarfile extract it so.
                "--sparse",
                "--sort=name",
                *reproducible_options(epoch),
                *([f"--use-compress-program={shlex.join(compressor)}"] if compressor else []),
                ".",
            ],
            log=log,
        )


async def write(context: Context) -> None:
    staged = context.stage_output(context.config.output)
    await tar_tree(context.root, staged, context.config.compress, context.log, context.config.source_date_epoch)
