"""Stage cache keys change exactly when a stage or one before it would build something else."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from mkosi.build import STAGES
from mkosi.config import parse_args
from mkosi.pipeline import hash_tree, stage_keys


def _keys(directory: Path | str, *argv: str) -> dict[str, str]:
    _, config, _ = parse_args(["-C", str(directory), "-d", "debian", "-r", "bookworm", *argv])
    return {stage.name: key for stage, key in stage_keys(config, STAGES)}


# A configuration whose keys do not depend on the host or the project directory (no files in it).
FIXED = ("--architecture", "x86-64", "-p", "vim,less,zsh,curl", "--hostname", "pinned")


def test_keys_are_the_same_in_every_interpreter(tmp_path: Path) -> None:
    # Other hash seeds would show a key that depends on hash() or on the order of a set.
    script = "import json, sys; from tests.unit.test_pipeline import _keys; print(json.dumps(_keys(*sys.argv[1:])))"
    here = _keys(tmp_path, *FIXED)
    for seed in ("1", "2"):
        child = subprocess.run(
            [sys.executable, "-c", script, str(tmp_path), *FIXED],
            cwd=Path(__file__).resolve().parents[2],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        )
        assert json.loads(child.stdout) == here


def test_keys_of_a_fixed_configuration(tmp_path: Path) -> None:
    # Pinned: these change only when a stage's inputs or the way keys are made deliberately change
    # (which makes every stored stage stale); update them in that commit, and only then.
    assert _keys(tmp_path, *FIXED) == {
        "bootstrap": "40f7be47300896a0190f2b1462452c2a9e9ced8cdaf76c0dabd5757bf1da98b1",
        "configure": "15557e962374009d81a59ddce3e1718f2d99dab2975941ca64f92983c56d9963",
        "clean": "c34f09bedfd18d5205d093df5a7e4e0616dbebddd781580ce40b45add6588543",
        "output": "20d787a6c3cb1540943a7460f03db0ed186344698f9655831c3d9ec39be8b6ee",
    }


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
