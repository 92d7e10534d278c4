"""The release directory: artifacts, SHA256SUMS (+ .gpg), manifest.json, published in one rename.

Everything is assembled in a directory next to the release and swapped into place at the end
(renameat2 RENAME_EXCHANGE when a previous release exists), so a reader sees the old release or the
new one, never a mixture or half a file.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mkosi import naming, ownership
from mkosi.checksums import Artifact, describe_artifact
from mkosi.config import Compression, Config, OutputFormat
from mkosi.outputs.tar import tar_tree
from mkosi.run import run
from mkosi.workspace import remove_tree

# Tools whose versions go into the manifest, when installed: they determine the artifacts' bytes.
TOOLS = ("apt", "dpkg", "tar", "xz", "zstd", "cp", "gpg", "mksquashfs", "veritysetup", "sfdisk")

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


async def collect_artifacts(
    config: Config, name: str, release: Path, compress: Compression, log: Any
) -> list[Artifact]:
    """Move (or, for trees, pack) what a cell's build published into the release being assembled.

    Everything next to the output whose name starts with the output's (sidecars such as .roothash
    included) is an artifact, except the build log.
    """
    output = config.output
    stem = naming.image_stem(output)
    artifacts: list[Path] = []
    if output.is_dir() and not output.is_symlink():
        packed = release / naming.image_file_name(name, OutputFormat.tar, compress)
        await tar_tree(output, packed, compress, log)
        await remove_tree(output)
        artifacts.append(packed)
    for path in sorted(output.parent.iterdir()):
        if (path == output and path.is_dir()) or not (path == output or path.name.startswith(stem + ".")):
            continue
        if path == naming.log_path(output) or path == release:
            continue
        target = release / path.name
        os.rename(path, target)
        artifacts.append(target)
    return [await describe_artifact(path) for path in artifacts]


async def tool_versions(log: Any) -> dict[str, str]:
    versions = {"python": sys.version.split()[0]}
    for tool in TOOLS:
        if shutil.which(tool) is None:
            continue
        if tool in ("apt", "dpkg"):
            argv = ["dpkg-query", "--showformat=${Version}", "--show", tool]
        else:
            argv = [tool, "--version"]
        result = await run(argv, capture_stdout=True, check=False, log=log)
        first = next((line for line in result.stdout.splitlines() if line.strip()), "")
        if result.returncode == 0 and first:
            versions[tool] = first.strip()
    return versions


def write_manifest(path: Path, cells: Sequence[Mapping[str, Any]], tools: Mapping[str, str]) -> None:
    path.write_text(json.dumps({"cells": list(cells), "tools": dict(tools)}, indent=2) + "\n")


def _exchange(a: Path, b: Path) -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(a))


def check_replaceable(final: Path) -> None:
    """Refuse, before anything runs, to replace a directory that is not a release mkosi published."""
    ownership.check_replaceable(final, final.name)


async def publish(assembled: Path, final: Path) -> None:
    """Put the assembled release at `final` atomically, replacing a previous one that mkosi published."""
    check_replaceable(final)
    ownership.mark(assembled, final.name)
    try:
        os.rename(assembled, final)
        return
    except OSError as e:
        if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
    _exchange(assembled, final)
    # `assembled` now holds the previous release.
    await remove_tree(assembled)
