"""`subvolume` output: the tree as a btrfs subvolume; the output directory must be on btrfs."""

from __future__ import annotations

from typing import Any

from mkosi import ownership
from mkosi.config import Config
from mkosi.context import Context
from mkosi.errors import MkosiError
from mkosi.run import run


async def check(config: Config, log: Any) -> None:
    """Fail before any work is done when the output directory is not on btrfs."""
    result = await run(["stat", "--file-system", "--format=%T", config.output.parent], capture_stdout=True, log=log)
    fstype = result.stdout.strip()
    if fstype != "btrfs":
        raise MkosiError(
            f"Format=subvolume needs the output directory on btrfs, but {config.output.parent} is on {fstype}"
        )


async def write(context: Context) -> None:
    staged = context.stage_output(context.config.output)
    await run(["btrfs", "subvolume", "create", staged], log=context.log)
    # Reflinks make this cheap when the workspace is on the same btrfs filesystem.
    await run(["cp", "-a", "--reflink=auto", f"{context.root}/.", staged], log=context.log)
    if context.config.read_only:
        # Marked as published now: a read-only subvolume takes no attributes any more.
        ownership.mark(staged, context.config.output.name)
        await run(["btrfs", "property", "set", "-ts", staged, "ro", "true"], log=context.log)
