"""A matrix split over a fleet: shards that cover every cell once and keep shared stages together,
and fragments that are refused when they are not what they record."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from matrix.fragments import FRAGMENT, check_fragments, read_fragment, write_fragment
from matrix.runner import plan
from matrix.shards import ci_matrix, parse_shard, plan_shards, render, stage_costs
from matrix.spec import Matrix, parse_matrix
from mkosi.errors import ConfigError

MATRIX = '[matrix]\nRelease = ["bookworm", "trixie"]\nFormat = ["tar", "directory", "raw_gpt"]\n'


def _matrix(tmp_path: Path, text: str = MATRIX) -> Matrix:
    return parse_matrix(text, tmp_path / "mkosi.matrix", tmp_path)


def test_every_cell_is_in_exactly_one_shard_and_a_release_stays_together_when_that_balances(tmp_path: Path) -> None:
    m = _matrix(tmp_path)
    planned = plan(m, tmp_path, m.cells, tmp_path / "work")
    shards = plan_shards(planned, 2)
    assert sorted(c for s in shards for c in s.cells) == sorted(c.name for c in m.cells)
    # Two releases, two shards: each release's cells share its bootstrap on one runner.
    releases = [{name.split("-")[0] for name in s.cells} for s in shards]
    assert sorted(map(sorted, releases)) == [["bookworm"], ["trixie"]]
    assert [s.label for s in shards] == ["1/2", "2/2"]


def test_a_cell_built_from_another_stays_on_its_shard_even_when_a_group_is_split(tmp_path: Path) -> None:
    m = _matrix(
        tmp_path,
        '[matrix]\nRelease = ["bookworm"]\nFormat = ["tar", "directory", "raw_gpt", "sysext"]\n'
        '[[include]]\nFormat = "sysext"\nBaseImage = "cell:bookworm-tar"\n',
    )
    planned = plan(m, tmp_path, m.cells, tmp_path / "work/cells")
    for count in (2, 3, 4):
        with_base = [s for s in plan_shards(planned, count) if "bookworm-tar" in s.cells]
        assert len(with_base) == 1 and "bookworm-sysext-cell_bookworm_tar" in with_base[0].cells


def test_a_group_that_would_overload_a_shard_is_split(tmp_path: Path) -> None:
    m = _matrix(
        tmp_path, '[matrix]\nRelease = ["bookworm"]\nFormat = ["tar", "directory", "raw_gpt", "raw_squashfs"]\n'
    )
    planned = plan(m, tmp_path, m.cells, tmp_path / "work")
    shards = plan_shards(planned, 2)
    assert all(len(s.cells) == 2 for s in shards)
    # More shards than cells: the rest are empty, and the CI matrix leaves them out.
    many = plan_shards(planned, 6)
    assert sum(1 for s in many if not s.cells) == 2
    assert len(ci_matrix(many)["include"]) == 4
    assert json.loads(render(many, "json")) == ci_matrix(many)
    assert render(many, "github").startswith('matrix={"include":[')


def test_costs_from_an_earlier_release_decide_the_split(tmp_path: Path) -> None:
    m = _matrix(tmp_path, '[matrix]\nRelease = ["bookworm"]\nFormat = ["tar", "directory", "raw_gpt"]\n')
    planned = plan(m, tmp_path, m.cells, tmp_path / "work")
    # The raw_gpt cell's own stages took far longer than everything else together.
    raw = next(p for p in planned if p.name.endswith("raw_gpt"))
    stages = [{"key": key, "cached": False, "duration_s": 100.0 if name == "filesystems" else 1.0}
              for name, key, _ in raw.keys]  # fmt: skip
    costs = stage_costs({"cells": [{"stages": stages}]})
    shards = plan_shards(planned, 2, costs)
    assert sorted(len(s.cells) for s in shards) == [1, 2]
    assert next(s for s in shards if len(s.cells) == 1).cells[0].endswith("raw_gpt")


@pytest.mark.parametrize("bad", ["0/2", "3/2", "1", "a/b", "1/0", "-1/2"])
def test_a_shard_is_i_of_n(bad: str) -> None:
    with pytest.raises(ConfigError, match="--shard"):
        parse_shard(bad)
    assert parse_shard("2/3") == (2, 3)


def _fragment(directory: Path, matrix: Matrix, cells: dict[str, bytes]) -> Path:
    directory.mkdir()
    records: list[dict[str, Any]] = []
    for name, content in cells.items():
        (directory / f"{name}.tar").write_bytes(content)
        artifact = {"name": f"{name}.tar", "size": len(content), "sha256": hashlib.sha256(content).hexdigest()}
        records.append({"name": name, "status": "success", "artifacts": [artifact]})
    write_fragment(directory, "1/2", {"name": "mkosi.matrix", "sha256": matrix.digest}, records, {"tar": "1.34"})
    return directory


def test_a_fragment_is_refused_unless_it_is_what_it_records(tmp_path: Path) -> None:
    m = _matrix(tmp_path, '[matrix]\nFormat = ["tar", "directory"]\n')
    good = _fragment(tmp_path / "good", m, {"tar": b"tarball", "directory": b"tree"})
    assert [c["name"] for c in read_fragment(good).cells] == ["tar", "directory"]
    assert check_fragments([read_fragment(good)], m, allow_missing=False) == []
    flipped = _fragment(tmp_path / "flipped", m, {"tar": b"tarball"})
    (flipped / "tar.tar").write_bytes(b"tarbalL")
    with pytest.raises(ConfigError, match=r"flipped/tar\.tar: is not what its fragment records"):
        read_fragment(flipped)
    truncated = _fragment(tmp_path / "truncated", m, {"tar": b"tarball"})
    (truncated / "tar.tar").write_bytes(b"tar")
    with pytest.raises(ConfigError, match="is not what its fragment records"):
        read_fragment(truncated)
    stray = _fragment(tmp_path / "stray", m, {"tar": b"tarball"})
    (stray / "extra.raw").write_bytes(b"?")
    with pytest.raises(ConfigError, match=r"holds files its record does not list: extra\.raw"):
        read_fragment(stray)
    with pytest.raises(ConfigError, match=f"not a fragment: no {FRAGMENT}"):
        read_fragment(tmp_path)
    (tmp_path / "garbled").mkdir()
    (tmp_path / "garbled" / FRAGMENT).write_text("{")
    with pytest.raises(ConfigError, match="not a fragment record"):
        read_fragment(tmp_path / "garbled")


def test_collect_refuses_foreign_duplicate_and_missing_cells(tmp_path: Path) -> None:
    m = _matrix(tmp_path, '[matrix]\nFormat = ["tar", "directory"]\n')
    other = _matrix(tmp_path, '[matrix]\nFormat = ["tar", "directory", "raw_gpt"]\n')
    one = read_fragment(_fragment(tmp_path / "one", m, {"tar": b"a"}))
    with pytest.raises(ConfigError, match="was built from another matrix file"):
        check_fragments([one], other, allow_missing=True)
    with pytest.raises(ConfigError, match="cell tar comes twice"):
        check_fragments([one, read_fragment(_fragment(tmp_path / "again", m, {"tar": b"a"}))], m, allow_missing=True)
    with pytest.raises(ConfigError, match=r"cells not built or failed: directory \(--allow-missing"):
        check_fragments([one], m, allow_missing=False)
    assert check_fragments([one], m, allow_missing=True) == ["directory"]
