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
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mkosi import naming, ownership
from mkosi.checksums import Artifact, describe_artifact
from mkosi.config import Compression, Config, OutputFormat
from mkosi.outputs.tar import tar_tree
from mkosi.run import run
from mkosi.workspace import remove_tree

# Tools whose versions go into the manifest besides the cells' package managers, when installed:
# they determine the artifacts' bytes.
TOOLS = (
    "tar",
    "xz",
    "zstd",
    "cp",
    "gpg",
    "mksquashfs",
    "mkfs.erofs",
    "veritysetup",
    "sfdisk",
    "openssl",
    "objcopy",
    "sbsign",
)

MANIFEST = "manifest.json"

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
    if output.is_dir() and not output.is_symlink() and config.format is OutputFormat.oci:
        # One file skopeo reads as it is (oci-archive:), uncompressed: the layer inside already is.
        packed = release / naming.oci_archive_name(name)
        await tar_tree(output, packed, Compression.none, log, config.source_date_epoch)
        await remove_tree(output)
        artifacts.append(packed)
    elif output.is_dir() and not output.is_symlink():
        packed = release / naming.image_file_name(name, OutputFormat.tar, compress)
        await tar_tree(output, packed, compress, log, config.source_date_epoch)
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


async def _debian_package_version(program: Path, log: Any) -> str | None:
    """The version of the Debian package that ships `program` (some print banners or help instead of a
    version), with the package's name when it differs from the program's."""
    path = program.resolve()
    # dpkg knows files of merged-/usr hosts under the name their package shipped: /bin/tar, /usr/bin/gpg.
    names = [path, Path("/") / path.relative_to("/usr")] if path.is_relative_to("/usr") else [path]
    found = await run(["dpkg-query", "--search", *names], capture_stdout=True, check=False, log=log)
    package = found.stdout.partition(":")[0].strip()
    if not package:
        return None
    # A diverted program, or one two packages share, is answered with several names or none.
    query = ["dpkg-query", "--showformat=${Version}", "--show", package]
    shown = await run(query, capture_stdout=True, check=False, log=log)
    if shown.returncode != 0 or not shown.stdout.strip():
        return None
    return shown.stdout.strip() + ("" if package == program.name else f" ({package})")


async def _first_line_of_version(program: Path, log: Any) -> str | None:
    result = await run([program, "--version"], capture_stdout=True, check=False, log=log)
    first = next((line for line in result.stdout.splitlines() if line.strip()), "")
    return first.strip() if result.returncode == 0 and first else None


async def tool_versions(package_managers: Iterable[str], log: Any) -> dict[str, str]:
    """Python's version and each installed tool's: the package managers the cells really used, then
    the tools every image goes through."""
    versions = {"python": sys.version.split()[0]}
    for tool in (*dict.fromkeys(package_managers), *TOOLS):
        found = shutil.which(tool)
        if found is None:
            continue
        # The Debian package's version names exactly what is installed; a tool from elsewhere says its own.
        version = await _debian_package_version(Path(found), log) or await _first_line_of_version(Path(found), log)
        if version:
            versions[tool] = version
    return versions


def write_manifest(
    path: Path,
    matrix_file: Mapping[str, str],
    cells: Sequence[Mapping[str, Any]],
    tools: Mapping[str, str],
    shards: Sequence[Mapping[str, Any]] = (),
) -> None:
    """The release's manifest.json; `shards` lists the fragments a fleet's release was collected from."""
    manifest = {"matrix": dict(matrix_file), "cells": list(cells), "tools": dict(tools)}
    if shards:
        manifest["shards"] = list(shards)
    path.write_text(json.dumps(manifest, indent=2) + "\n")


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
