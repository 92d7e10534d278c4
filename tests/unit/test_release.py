"""The release directory's pieces: artifacts, SHA256SUMS, atomic publication."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest
import structlog

from matrix.release import collect_artifacts, publish
from mkosi.checksums import Artifact, checksums
from mkosi.config import Compression, parse_args
from mkosi.errors import MkosiError

pytestmark = pytest.mark.anyio


def test_checksums_are_coreutils_lines_sorted_bytewise(tmp_path: Path) -> None:
    files = {"b.tar": b"b", "a.raw": b"a", "C.tar": b"c"}
    artifacts = []
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        artifacts.append(Artifact(name, len(data), hashlib.sha256(data).hexdigest()))
    text = checksums(artifacts)
    (tmp_path / "SHA256SUMS").write_text(text)
    lines = text.splitlines()
    assert lines == sorted(lines, key=str.encode)
    assert (
        subprocess.run(["sha256sum", "--strict", "-c", "SHA256SUMS"], cwd=tmp_path, capture_output=True).returncode == 0
    )


async def test_publish_replaces_a_previous_release_atomically(tmp_path: Path) -> None:
    final = tmp_path / "release"
    first = tmp_path / ".one"
    first.mkdir()
    (first / "old").write_text("old")
    await publish(first, final)
    second = tmp_path / ".two"
    second.mkdir()
    (second / "new").write_text("new")
    await publish(second, final)
    assert [p.name for p in final.iterdir()] == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["release"]


async def test_publish_never_replaces_a_directory_mkosi_did_not_publish(tmp_path: Path) -> None:
    # `Directory = "/srv/www"` naming the user's own directory: it is refused, and left as it was.
    final = tmp_path / "www"
    final.mkdir()
    (final / "index.html").write_text("the user's")
    assembled = tmp_path / ".assembled"
    assembled.mkdir()
    with pytest.raises(MkosiError, match=f"{final} was not made by mkosi"):
        await publish(assembled, final)
    assert [p.name for p in final.iterdir()] == ["index.html"]
    assert assembled.is_dir()


async def test_collect_packs_trees_and_moves_files(tmp_path: Path) -> None:
    cell = tmp_path / "cell"
    tree = cell / "c1"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc/os-release").write_text("ID=test\n")
    (cell / "c1.log").write_text("log")
    release = tmp_path / "release"
    release.mkdir()
    config = parse_args(["-C", str(tmp_path), "-d", "debian", "-o", str(tree)])[1]
    log = structlog.get_logger("test")
    artifacts = await collect_artifacts(config, "c1", release, Compression.zstd, log)
    assert [a.name for a in artifacts] == ["c1.tar.zst"]
    assert not tree.exists() and (cell / "c1.log").exists()
    listing = subprocess.run(
        ["tar", "--zstd", "-tf", str(release / "c1.tar.zst")], capture_output=True, text=True, check=True
    ).stdout.split()
    assert "./etc/os-release" in listing

    (cell / "c2.tar").write_bytes(b"x" * 10)
    (cell / "c2.roothash").write_text("abc")
    config = parse_args(["-C", str(tmp_path), "-d", "debian", "-t", "tar", "-o", str(cell / "c2.tar")])[1]
    artifacts = await collect_artifacts(config, "c2", release, Compression.none, log)
    assert sorted(a.name for a in artifacts) == ["c2.roothash", "c2.tar"]
    image = next(a for a in artifacts if a.name == "c2.tar")
    assert image.sha256 == hashlib.sha256(b"x" * 10).hexdigest() and image.size == 10


async def test_the_manifest_records_the_package_managers_the_cells_used(tmp_path: Path) -> None:
    from matrix.release import tool_versions

    versions = await tool_versions(["pacman"], structlog.get_logger("test"))
    # Only the package managers asked for: an Arch-only release has no apt in its manifest.
    assert "apt" not in versions and "dpkg" not in versions
    installed = subprocess.run(
        ["dpkg-query", "--showformat=${Version}", "--show", "pacman-package-manager"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert versions["pacman"] == f"{installed} (pacman-package-manager)"
    # Tools every image goes through, by their Debian package, also where the host merged /usr.
    tar = subprocess.run(["dpkg-query", "--showformat=${Version}", "--show", "tar"], capture_output=True, text=True)
    assert versions["tar"] == tar.stdout
