"""`directory` output: the tree itself."""

from __future__ import annotations

import os
from pathlib import Path

from mkosi.context import Context
from mkosi.run import run


def same_filesystem(a: Path, b: Path) -> bool:
    return a.stat().st_dev == b.stat().st_dev


async def move_or_copy_tree(context: Context, source: Path, destination: Path) -> None:
    """Rename when the workspace shares the destination's filesystem, else copy (reflinks if possible)."""
    if same_filesystem(source, destination.parent):
        os.rename(source, destination)
    else:
        await run(["cp", "-a", "--reflink=auto", "--no-target-directory", source, destination], log=context.log)


async def write(context: Context) -> None:
    staged = context.stage_output(context.config.output)
    await move_or_copy_tree(context, context.root, staged)
