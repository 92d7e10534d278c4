"""Compressing outputs with every core: xz or zstd."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mkosi.config import Compression
from mkosi.run import run

COMMANDS = {
    Compression.xz: ["xz", "-T0"],
    Compression.zstd: ["zstd", "-T0", "-q"],
}


def command(compression: Compression) -> list[str] | None:
    """The compressor as a filter (stdin to stdout), or None for no compression."""
    return COMMANDS.get(compression)


async def compress_file(compression: Compression, source: Path, destination: Path, log: Any) -> None:
    compressor = COMMANDS[compression]
    # Through a shell only for the redirections; the file names are positional parameters.
    script = 'src="$1" dst="$2"; shift 2; exec "$@" < "$src" > "$dst"'
    await run(["sh", "-c", script, "sh", source, destination, *compressor, "-c"], log=log)
