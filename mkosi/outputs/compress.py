"""Compressing outputs with every core: xz, zstd, or gzip (pigz)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mkosi.concurrency import cpu_heavy
from mkosi.config import Compression
from mkosi.run import run

COMMANDS = {
    Compression.xz: ["xz", "-T0"],
    Compression.zstd: ["zstd", "-T0", "-q"],
    # pigz: gzip on every core, the same bytes whatever their number; -n: no name or time stamp.
    Compression.gz: ["pigz", "-n", "-q"],
}


# What the kernel's decompressors read: its xz decoder knows only CRC32 checks (xz's default is CRC64).
KERNEL_OPTIONS = {Compression.xz: ["--check=crc32"]}


def command(compression: Compression, for_kernel: bool = False) -> list[str] | None:
    """The compressor as a filter (stdin to stdout), or None for no compression; `for_kernel`: in a
    form the kernel unpacks itself (an initrd)."""
    found = COMMANDS.get(compression)
    return None if found is None else [*found, *(KERNEL_OPTIONS.get(compression, []) if for_kernel else [])]


async def compress_file(compression: Compression, source: Path, destination: Path, log: Any) -> None:
    compressor = COMMANDS[compression]
    # Through a shell only for the redirections; the file names are positional parameters.
    script = 'src="$1" dst="$2"; shift 2; exec "$@" < "$src" > "$dst"'
    async with cpu_heavy():
        await run(["sh", "-c", script, "sh", source, destination, *compressor, "-c"], log=log)
