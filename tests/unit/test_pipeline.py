"""Stage cache keys change exactly when a stage or one before it would build something else."""

from __future__ import annotations

from pathlib import Path

from mkosi.build import STAGES
from mkosi.config import parse_args
from mkosi.pipeline import hash_tree, stage_keys


def _keys(tmp_path: Path, *argv: str) -> dict[str, str]:
    _, config, _ = parse_args(["-C", str(tmp_path), "-d", "debian", "-r", "bookworm", *argv])
    return {stage.name: key for stage, key in stage_keys(config, STAGES)}


def test_keys_are_stable(tmp_path: Path) -> None:
    assert _keys(tmp_path) == _keys(tmp_path)


def test_package_change_invalidates_everything_from_bootstrap(tmp_path: Path) -> None:
    before, after = _keys(tmp_path), _keys(tmp_path, "-p", "less")
    assert all(before[name] != after[name] for name in before)


def test_hostname_change_keeps_the_bootstrap(tmp_path: Path) -> None:
    before, after = _keys(tmp_path), _keys(tmp_path, "--hostname", "other")
    assert before["bootstrap"] == after["bootstrap"]
    assert before["configure"] != after["configure"]
    assert before["output"] != after["output"]


def test_extra_tree_content_counts(tmp_path: Path) -> None:
    extra = tmp_path / "mkosi.extra"
    (extra / "etc").mkdir(parents=True)
    (extra / "etc/motd").write_text("one\n")
    first = _keys(tmp_path)
    assert "extra-trees" in first
    (extra / "etc/motd").write_text("two\n")
    second = _keys(tmp_path)
    assert first["bootstrap"] == second["bootstrap"]
    assert first["extra-trees"] != second["extra-trees"]


def test_hash_tree_sees_modes_and_links(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    before = hash_tree([tmp_path])
    (tmp_path / "file").chmod(0o755)
    after_chmod = hash_tree([tmp_path])
    (tmp_path / "link").symlink_to("file")
    after_link = hash_tree([tmp_path])
    assert len({before, after_chmod, after_link}) == 3
