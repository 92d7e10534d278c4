"""The `cpio` output: the tree as a newc cpio archive, as the kernel unpacks an initrd.

Members go in sorted by name, with inode and device numbers renumbered (GNU cpio's --reproducible),
so the same tree gives the same archive. A tree with systemd gets `/init` pointing at it when it has
none: the kernel runs /init from an initrd.
"""

from __future__ import annotations

import os
import shlex

from mkosi import intree
from mkosi.concurrency import cpu_heavy
from mkosi.context import Context
from mkosi.outputs.compress import command
from mkosi.run import run

SYSTEMD = "usr/lib/systemd/systemd"
# bash for pipefail. find's names (without ./), sorted bytewise and NUL-separated, into cpio; then
# the compressor, if any. Paths and the compressor's words are positional parameters: nothing from
# the tree is parsed by the shell.
SCRIPT = r"""set -o pipefail
cd "$1" && out="$2" && shift 2 &&
find . -mindepth 1 -printf '%P\0' | LC_ALL=C sort -z |
cpio --quiet --null --create --format=newc --reproducible | "$@" > "$out"
"""


def add_init(context: Context) -> None:
    root, epoch = context.root, context.config.source_date_epoch
    if os.path.lexists(root / "init") or not intree.is_regular_file(root, SYSTEMD):
        return
    (root / "init").symlink_to(SYSTEMD)
    if epoch is not None:
        os.utime(root / "init", (epoch, epoch), follow_symlinks=False)


async def write(context: Context) -> None:
    config = context.config
    add_init(context)
    staged = context.stage_output(config.output)
    compressor = command(config.compress, for_kernel=True) or ["cat"]
    context.log.info("cpio archive", compressor=shlex.join(compressor))
    async with cpu_heavy():
        await run(["bash", "-c", SCRIPT, "bash", context.root, staged, *compressor], log=context.log)
