"""arm64 images built on this x86-64 host: a two-architecture matrix (directory and raw_gpt), whose
arm64 bootstrap runs its maintainer scripts (and mkosi.postinst) through qemu-user-static."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from mkosi.architecture import Architecture
from mkosi.binfmt import BINFMT_DIR
from tests.integration.support import CACHE, LEFT_OUT, ModuleDir, Result, log_events, mkosi

pytestmark = pytest.mark.skipif(platform.machine() != "x86_64", reason="builds arm64 on an x86-64 host")

MATRIX = """
[matrix]
Distribution = ["debian"]
Release = ["bookworm"]
Architecture = ["x86-64", "arm64"]
Format = ["directory", "raw_gpt"]

[release]
Directory = "release"
"""
# Run inside the tree, under emulation for arm64: what the image's own tools say they are.
POSTINST = """#!/bin/sh
set -e
dpkg --print-architecture > /etc/built-for
uname -m >> /etc/built-for
"""
CELLS = {
    Architecture.x86_64: ("debian-bookworm-x86_64-directory", "debian-bookworm-x86_64-raw_gpt"),
    Architecture.arm64: ("debian-bookworm-arm64-directory", "debian-bookworm-arm64-raw_gpt"),
}


# The release directory, the matrix run, and the host's binfmt handlers before and after it.
Release = tuple[Path, subprocess.CompletedProcess[str], set[str], set[str]]


def _handlers() -> set[str]:
    if not (BINFMT_DIR / "register").exists():
        return set()
    return {p.name for p in BINFMT_DIR.iterdir()} - {"register", "status"}


@pytest.fixture(scope="module")
def release(module_dir: ModuleDir) -> Release:
    project = module_dir("foreign")
    (project / "mkosi.default").write_text(f"[Packages]\nCache={CACHE / 'packages'}\n")
    (project / "mkosi.matrix").write_text(MATRIX)
    (project / "mkosi.postinst").write_text(POSTINST)
    (project / "mkosi.postinst").chmod(0o755)
    before = _handlers()
    result = subprocess.run(
        [sys.executable, "-m", "mkosi", "matrix", "-C", str(project), "--jobs", "2"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return project / "release", result, before, _handlers()


@pytest.fixture(scope="module")
def arm64_tree(release: Release, module_dir: ModuleDir) -> Path:
    tree = module_dir("arm64-tree")
    archive = release[0] / f"{CELLS[Architecture.arm64][0]}.tar"
    subprocess.run(["tar", "--numeric-owner", "--xattrs", "-xf", str(archive), "-C", str(tree)], check=True)
    return tree


def test_the_matrix_publishes_four_artifacts_from_two_bootstraps(
    release: Release,
) -> None:
    directory = release[0]
    cells = {cell["name"]: cell for cell in json.loads((directory / "manifest.json").read_text())["cells"]}
    assert sorted(cells) == sorted(name for names in CELLS.values() for name in names)
    assert all(cell["status"] == "success" for cell in cells.values())
    bootstraps = {
        architecture: {s["key"] for name in names for s in cells[name]["stages"] if s["name"] == "bootstrap"}
        for architecture, names in CELLS.items()
    }
    # One per architecture, shared by both formats; never one for both.
    assert all(len(keys) == 1 for keys in bootstraps.values()), bootstraps
    assert bootstraps[Architecture.x86_64] != bootstraps[Architecture.arm64]
    artifacts = [a["name"] for cell in cells.values() for a in cell["artifacts"]]
    assert sorted(artifacts) == sorted(
        [*(f"{d}.tar" for d, _ in CELLS.values()), *(f"{r}.raw" for _, r in CELLS.values())]
    )
    assert all((directory / name).is_file() for name in artifacts)
    check = subprocess.run(["sha256sum", "--strict", "-c", "SHA256SUMS"], cwd=directory, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_every_program_of_the_arm64_tree_is_aarch64(arm64_tree: Path) -> None:
    programs = sorted(p for p in (arm64_tree / "usr/bin").iterdir() if p.is_file() and not p.is_symlink())
    described = subprocess.run(["file", "-b", *map(str, programs)], capture_output=True, text=True, check=True)
    elves = [line for line in described.stdout.splitlines() if line.startswith("ELF")]
    assert len(elves) > 50
    assert all("ARM aarch64" in line for line in elves), [line for line in elves if "aarch64" not in line][:3]


def test_the_arm64_trees_own_tools_ran_under_emulation_and_its_packages_verify(arm64_tree: Path) -> None:
    # mkosi.postinst ran inside the tree: arm64's dpkg and uname answered through qemu-user.
    assert (arm64_tree / "etc/built-for").read_text().split() == ["arm64", "aarch64"]
    # The tree's own dpkg, which honours the image's path-exclude (no documentation), under emulation.
    verified = _shell(arm64_tree, "/usr/bin/dpkg", "--verify")
    problems = [line for line in verified.stdout.splitlines() if not LEFT_OUT.match(line)]
    assert "missing     /usr/share/doc/bash/README.gz" in verified.stdout  # it did check every file
    assert problems == [], problems[:5]


def test_the_arm64_disk_has_the_arm64_root_partition_type(
    release: Release,
) -> None:
    directory = release[0]
    for architecture, (_, disk) in CELLS.items():
        table = json.loads(
            subprocess.run(
                ["sfdisk", "-J", str(directory / f"{disk}.raw")], capture_output=True, text=True, check=True
            ).stdout
        )
        types = [p["type"].lower() for p in table["partitiontable"]["partitions"]]
        assert types == [str(architecture.root_type)], (architecture, types)


def test_the_host_keeps_the_binfmt_handlers_it_had(
    release: Release,
) -> None:
    _, result, before, after = release
    assert after == before
    events = [e for e in log_events(result.stderr) if "binfmt" in str(e.get("event"))]
    assert events, "the arm64 builds said nothing about emulation"


def _shell(tree: Path, *command: str) -> Result:
    argv = ["-d", "debian", "-r", "bookworm", "--architecture=arm64", "-t", "directory", "-o", str(tree)]
    return mkosi(*argv, "shell", *command, cwd=tree.parent)


def test_mkosi_shell_runs_the_arm64_trees_programs(arm64_tree: Path) -> None:
    before = _handlers()
    result = _shell(arm64_tree, "/usr/bin/uname", "-m")
    assert result.stdout.strip().splitlines()[-1] == "aarch64", result.stdout + result.stderr
    assert _handlers() == before
