"""Fragments: what one shard of a fleet's run publishes, and collecting them into one release.

A fragment is a directory with the artifacts of the shard's cells and `fragment.json`: the shard,
the matrix file's digest, every cell as a release manifest records it (status, artifacts with size
and SHA-256, stages with their keys, packages), and the tools' versions. It is never signed and
never a release. `collect` checks every fragment against its record (each artifact's size and
SHA-256), that all come from the one matrix file, that no cell comes twice and which planned cells
are missing or failed, and only then assembles the release exactly as a single-host run publishes
it: the artifacts, SHA256SUMS (+ .gpg), manifest.json (each cell with the shard that built it),
renamed into place at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matrix import release as rel
from matrix.spec import Matrix
from mkosi import checksums, naming
from mkosi.errors import ConfigError
from mkosi.workspace import claim_directory, release_directory

FRAGMENT = "fragment.json"
SCHEMA = 1


def write_fragment(
    directory: Path,
    shard: str,
    matrix_file: Mapping[str, str],
    cells: Sequence[Mapping[str, Any]],
    tools: Mapping[str, str],
) -> None:
    fragment = {"fragment": {"schema": SCHEMA, "shard": shard}, "matrix": dict(matrix_file), "cells": list(cells)}
    (directory / FRAGMENT).write_text(json.dumps({**fragment, "tools": dict(tools)}, indent=2) + "\n")


@dataclass(frozen=True)
class Fragment:
    directory: Path
    shard: str
    matrix_sha256: str
    cells: list[dict[str, Any]]
    tools: dict[str, str]


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def read_fragment(directory: Path) -> Fragment:
    """A fragment whose every artifact is what its record says, or a ConfigError naming the file."""
    record = directory / FRAGMENT
    try:
        data = json.loads(record.read_text())
        shard, digest, cells = data["fragment"]["shard"], data["matrix"]["sha256"], data["cells"]
        tools = data.get("tools", {})
    except FileNotFoundError:
        raise ConfigError(f"not a fragment: no {FRAGMENT}", origin=str(directory)) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise ConfigError(f"not a fragment record: {e}", origin=str(record)) from None
    expected = set()
    for cell in cells:
        for artifact in cell.get("artifacts", []):
            path = directory / artifact["name"]
            expected.add(artifact["name"])
            if not path.is_file() or path.is_symlink():
                raise ConfigError(f"{artifact['name']} of cell {cell['name']} is missing", origin=str(directory))
            if path.stat().st_size != artifact["size"] or _sha256(path) != artifact["sha256"]:
                raise ConfigError("is not what its fragment records (size or SHA-256 differs)", origin=str(path))
    if strays := sorted(p.name for p in directory.iterdir() if p.name not in expected | {FRAGMENT}):
        raise ConfigError(f"holds files its record does not list: {', '.join(strays)}", origin=str(directory))
    return Fragment(directory, shard, digest, cells, tools)


def check_fragments(fragments: Sequence[Fragment], matrix: Matrix, allow_missing: bool) -> list[str]:
    """The cells that will be missing from the release (failed or not built), or a ConfigError."""
    for fragment in fragments:
        if fragment.matrix_sha256 != matrix.digest:
            raise ConfigError(
                f"was built from another matrix file (SHA-256 {fragment.matrix_sha256}, {matrix.path.name} "
                f"has {matrix.digest})",
                origin=str(fragment.directory),
            )
    seen: dict[str, Path] = {}
    for fragment in fragments:
        for cell in fragment.cells:
            if cell["name"] in seen:
                raise ConfigError(
                    f"cell {cell['name']} comes twice: also in {seen[cell['name']]}", origin=str(fragment.directory)
                )
            seen[cell["name"]] = fragment.directory
    succeeded = {c["name"] for f in fragments for c in f.cells if c.get("status") == "success"}
    missing = [c.name for c in matrix.cells if c.name not in succeeded]
    if missing and not allow_missing:
        raise ConfigError(f"cells not built or failed: {', '.join(missing)} (--allow-missing publishes the others)")
    return missing


def _place(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


async def collect(fragments: Sequence[Fragment], matrix: Matrix, log: Any) -> Path:
    """Assemble and publish the release from checked fragments; returns its directory."""
    final = matrix.release.directory
    rel.check_replaceable(final)
    assembled, owner = claim_directory(final.parent, f".{final.name}.mkosi-collect.")
    try:
        order = {c.name: i for i, c in enumerate(matrix.cells)}
        cells = sorted((c for f in fragments for c in f.cells), key=lambda c: order.get(c["name"], len(order)))
        artifacts = []
        for fragment in fragments:
            for cell in fragment.cells:
                if cell.get("status") != "success":
                    continue
                for a in cell["artifacts"]:
                    _place(fragment.directory / a["name"], assembled / a["name"])
                    artifacts.append(checksums.Artifact(a["name"], a["size"], a["sha256"]))
        sums = assembled / naming.SUMS
        sums.write_text(checksums.checksums(artifacts))
        if matrix.release.sign:
            await checksums.sign(sums, matrix.release.key, log, epoch=matrix.release.source_date_epoch)
        tools = fragments[0].tools if fragments else {}
        matrix_file = {"name": matrix.path.name, "sha256": matrix.digest}
        shards = [{"shard": f.shard, "tools": f.tools} for f in fragments]
        rel.write_manifest(assembled / rel.MANIFEST, matrix_file, cells, tools, shards)
        await rel.publish(assembled, final)
    finally:
        await release_directory(assembled, owner)
    return final
