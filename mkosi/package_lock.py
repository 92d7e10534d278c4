"""What a build installed, package by package, and builds that install exactly that again.

The bootstrap records every package it installs (name, version, architecture, and the SHA-256 of
the package file, which the signed index vouches for) and the sources it used, in the workspace;
the build returns them, and a matrix release's manifest keeps them per cell. PackageLock= takes
such a list back: the bootstrap then asks for exactly those versions and refuses any package whose
file is not the recorded one. That is how `mkosi matrix verify` rebuilds a release.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mkosi.errors import ConfigError, MkosiError

# In the workspace, next to the tree: a top-level item, so the stage cache keeps it with the tree.
RECORDS = "packages.json"
FIELDS = ("name", "version", "architecture", "sha256")


@dataclass(frozen=True, order=True)
class PackageRecord:
    name: str
    version: str
    architecture: str
    sha256: str

    def as_json(self) -> dict[str, str]:
        return asdict(self)

    @property
    def request(self) -> str:
        """How apt is asked for exactly this version."""
        return f"{self.name}={self.version}"


@dataclass(frozen=True)
class Installed:
    """The packages of an image and the sources they came from (their URIs)."""

    packages: tuple[PackageRecord, ...] = ()
    sources: tuple[str, ...] = ()


def write_records(workspace: Path, packages: Iterable[PackageRecord], sources: Sequence[str]) -> None:
    installed = {"sources": list(sources), "packages": [p.as_json() for p in sorted(packages)]}
    (workspace / RECORDS).write_text(json.dumps(installed, indent=1) + "\n")


def read_records(workspace: Path) -> Installed:
    """What the bootstrap recorded; nothing for distributions whose installers record nothing."""
    path = workspace / RECORDS
    if not path.is_file():
        return Installed()
    data = json.loads(path.read_text())
    return Installed(tuple(PackageRecord(**p) for p in data["packages"]), tuple(data["sources"]))


def records_from_json(value: Any, where: str) -> tuple[PackageRecord, ...]:
    """A list of {name, version, architecture, sha256} objects, or a ConfigError saying where it is wrong."""
    if not isinstance(value, list) or not value:
        raise ConfigError("must be a non-empty JSON list of packages", origin=where)
    records = []
    for i, item in enumerate(value):
        if not isinstance(item, dict) or set(item) != set(FIELDS) or not all(isinstance(item[f], str) for f in FIELDS):
            raise ConfigError(f"package {i + 1} must have exactly the string fields {', '.join(FIELDS)}", origin=where)
        if len(item["sha256"]) != 64 or any(c not in "0123456789abcdef" for c in item["sha256"]):
            raise ConfigError(f"package {item['name']}: sha256 must be 64 lowercase hex digits", origin=where)
        records.append(PackageRecord(**item))
    names = [r.name for r in records]
    if duplicates := sorted({n for n in names if names.count(n) > 1}):
        raise ConfigError(f"packages listed twice: {', '.join(duplicates)}", origin=where)
    return tuple(records)


def load_lock(path: Path) -> tuple[PackageRecord, ...]:
    """A PackageLock= file: the JSON list of a release manifest's "packages", or a whole {"packages": [...]}."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"cannot read a package list: {e}", origin=str(path)) from None
    return records_from_json(data["packages"] if isinstance(data, dict) and "packages" in data else data, str(path))


def check_locked(resolved: Iterable[PackageRecord], lock: Sequence[PackageRecord], lock_path: Path) -> None:
    """The packages a locked bootstrap is about to install must be the lock's, file for file."""
    wanted = {r.name: r for r in lock}
    got = {r.name: r for r in resolved}
    problems = [f"{n} is not in the lock" for n in sorted(got.keys() - wanted.keys())]
    problems += [f"{n} {wanted[n].version} would not be installed" for n in sorted(wanted.keys() - got.keys())]
    for name in sorted(got.keys() & wanted.keys()):
        have, want = got[name], wanted[name]
        if (have.version, have.architecture) != (want.version, want.architecture):
            problems.append(f"{name}: {have.version}/{have.architecture} instead of {want.version}/{want.architecture}")
        elif have.sha256 != want.sha256:
            problems.append(f"{name} {want.version}: the file's SHA-256 is {have.sha256}, the lock's {want.sha256}")
    if problems:
        raise MkosiError(f"PackageLock={lock_path}: the package set differs: " + "; ".join(problems))
