"""The shared package pool: atomic entry, links where possible, nothing half-written."""

from __future__ import annotations

import os
from pathlib import Path

from mkosi import package_cache
from mkosi.distributions import Distribution


def test_link_in_and_out_round_trip(tmp_path: Path) -> None:
    pool, archive = tmp_path / "pool", tmp_path / "archive"
    archive.mkdir()
    (archive / "a_1.0_amd64.deb").write_bytes(b"a")
    (archive / "lock").write_text("")  # apt's own files never enter the pool
    (archive / "partial").mkdir()

    assert package_cache.link_out(archive, pool) == 1
    assert sorted(p.name for p in pool.iterdir()) == [".lock", "a_1.0_amd64.deb"]
    # Same filesystem: a hard link, not a copy.
    assert os.path.samefile(pool / "a_1.0_amd64.deb", archive / "a_1.0_amd64.deb")

    fresh = tmp_path / "fresh"
    assert package_cache.link_in(pool, fresh) == 1
    assert (fresh / "a_1.0_amd64.deb").read_bytes() == b"a"
    # Nothing new: nothing placed twice, and no temporary files left behind.
    assert package_cache.link_in(pool, fresh) == 0
    assert package_cache.link_out(fresh, pool) == 0
    assert not [p for p in pool.iterdir() if p.name.endswith(".tmp")]


def test_one_pool_per_distribution_release_and_architecture(tmp_path: Path) -> None:
    # The names are on disk in every user's cache: a build after a change to them would find none of
    # the packages downloaded before it.
    pools = [
        package_cache.pool_for(tmp_path, Distribution.debian, "bookworm", "x86-64"),  # as builds call it
        package_cache.pool_for(tmp_path, "debian", "trixie", "x86-64"),
        package_cache.pool_for(tmp_path, "ubuntu", "trixie", "x86-64"),
        package_cache.pool_for(tmp_path, "debian", "bookworm", "arm64"),
    ]
    assert pools == [
        tmp_path / "debian~bookworm~x86-64",
        tmp_path / "debian~trixie~x86-64",
        tmp_path / "ubuntu~trixie~x86-64",
        tmp_path / "debian~bookworm~arm64",
    ]


def test_link_in_only_the_named_packages(tmp_path: Path) -> None:
    pool, archive = tmp_path / "pool", tmp_path / "archive"
    pool.mkdir()
    for name in ("a_1_amd64.deb", "a_2_amd64.deb", "gcc_1_amd64.deb"):
        (pool / name).write_bytes(b"x")
    assert package_cache.link_in(pool, archive, ["a_2_amd64.deb", "b_1_all.deb"]) == 1
    assert [p.name for p in archive.iterdir()] == ["a_2_amd64.deb"]


def test_a_damaged_pool_file_is_replaced_by_a_rename_and_nothing_else_is(tmp_path: Path) -> None:
    pool, archive = tmp_path / "pool", tmp_path / "archive"
    pool.mkdir()
    archive.mkdir()
    for name, content in (("a_1_amd64.deb", b"damaged"), ("b_1_amd64.deb", b"pool's")):
        (pool / name).write_bytes(content)
        (archive / name).write_bytes(b"downloaded")
    damaged = (pool / "a_1_amd64.deb").stat().st_ino
    assert package_cache.link_out(archive, pool) == 0  # the pool keeps what it has
    assert package_cache.link_out(archive, pool, replacing=["a_1_amd64.deb"]) == 1
    assert (pool / "a_1_amd64.deb").read_bytes() == b"downloaded"
    # A new file put in place, not the old one rewritten where a concurrent reader would see half.
    assert (pool / "a_1_amd64.deb").stat().st_ino != damaged
    assert (pool / "b_1_amd64.deb").read_bytes() == b"pool's"
    # Once the pool's copy is the archive's (linked in), there is nothing to replace.
    assert package_cache.link_out(archive, pool, replacing=["a_1_amd64.deb"]) == 0
    assert sorted(p.name for p in pool.iterdir()) == [".lock", "a_1_amd64.deb", "b_1_amd64.deb"]
