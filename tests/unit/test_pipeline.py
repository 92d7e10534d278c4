"""Stage cache keys change exactly when a stage or one before it would build something else."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from mkosi.build import STAGES
from mkosi.config import parse_args
from mkosi.pipeline import hash_tree, stage_keys


def _keys(directory: Path | str, *argv: str) -> dict[str, str]:
    _, config, _ = parse_args(["-C", str(directory), "-d", "debian", "-r", "bookworm", *argv])
    return {stage.name: key for stage, key in stage_keys(config, STAGES)}


# A configuration whose keys do not depend on the host or the project directory (no files in it).
FIXED = ("-t", "directory", "--architecture", "x86-64", "-p", "vim,less,zsh,curl", "--hostname", "pinned")


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
        "bootstrap": "6dadbce2e9107da34d465e5e0b93b90371a3d66c20e09b5313be9313ae41d055",
        "configure": "069a6dee6ee69464c4d3919c0324a2a145c07c7a86b3e49a9deda043739c509b",
        "clean": "9f8c50ce702a0eaed7d9cd33778a81ec9c6f375be9d7263f02e511e6d54171f1",
        "output": "cc3d643d5506838876678b052574b6aea7c74aa620b92fb14c9ea6a9657728ed",
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


@pytest.mark.skipif(os.geteuid() != 0, reason="making device nodes needs root")
def test_hash_tree_sees_which_device_a_node_is(tmp_path: Path) -> None:
    os.mknod(tmp_path / "node", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    null = hash_tree([tmp_path])
    (tmp_path / "node").unlink()
    os.mknod(tmp_path / "node", 0o600 | stat.S_IFCHR, os.makedev(1, 5))
    assert hash_tree([tmp_path]) != null


def test_hash_tree_sees_every_byte_of_a_sparse_file_without_reading_its_holes(tmp_path: Path) -> None:
    sparse = tmp_path / "disk.img"
    with sparse.open("wb") as f:
        f.write(b"head")
        f.truncate(1024**3)  # 1 GiB, nearly all hole: hashed in far less than reading it takes
    digests = [hash_tree([tmp_path])]
    for offset, byte in ((2, b"x"), (512 * 1024**2, b"\0"), (512 * 1024**2, b"y")):
        with sparse.open("r+b") as f:
            f.seek(offset)
            f.write(byte)
        digests.append(hash_tree([tmp_path]))
    # A zero written into a hole is the same bytes but another layout: a new digest is only a rebuild.
    assert len(set(digests)) == len(digests)
    assert hash_tree([tmp_path]) == digests[-1]
