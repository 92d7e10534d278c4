"""The stage cache with fake stages: single flight, look-ahead, atomic entries, locks released."""

from __future__ import annotations

import os
import stat
import struct
from pathlib import Path

import anyio
import pytest
import structlog

from mkosi.config import Config, parse_args
from mkosi.context import Context
from mkosi.pipeline import Stage, run_stages, stage_keys
from mkosi.stage_cache import SnapshotCache

pytestmark = pytest.mark.anyio


class Recorder:
    """Fake stages that append a line to a file in the workspace, so restored state is visible."""

    def __init__(self) -> None:
        self.runs: list[tuple[str, str]] = []  # (stage, hostname)
        self.running: set[str] = set()
        self.gate = anyio.Event()
        self.slow: set[str] = set()

    def stage(self, name: str, inputs: tuple[str, ...] = (), cacheable: bool = True) -> Stage:
        async def run(context: Context) -> None:
            self.runs.append((name, str(context.config.hostname)))
            if name in self.slow:
                await anyio.sleep(0.2)
            state = context.root / "state"
            state.parent.mkdir(exist_ok=True)
            with state.open("a") as f:
                f.write(f"{name}\n")

        return Stage(name, run, inputs=lambda c: {i: getattr(c, i) for i in inputs}, cacheable=cacheable)


def _config(tmp_path: Path, *argv: str) -> Config:
    return parse_args(["-C", str(tmp_path), "-d", "debian", "-r", "bookworm", *argv])[1]


def _context(tmp_path: Path, config: Config, name: str, split: bool = False) -> Context:
    workspace = tmp_path / f"ws-{name}"
    workspace.mkdir()
    tree_workspace = None
    if split:
        tree_workspace = tmp_path / f"tree-ws-{name}"
        tree_workspace.mkdir()
    log = structlog.get_logger("test").bind(build=name)
    return Context(config=config, workspace=workspace, log=log, tree_workspace=tree_workspace)


def _stages(rec: Recorder) -> list[Stage]:
    return [
        rec.stage("bootstrap", ("release",)),
        rec.stage("configure", ("hostname",)),
        rec.stage("clean"),
        rec.stage("output", ("format",), cacheable=False),
    ]


def _snapshots(*names: str) -> list[Stage]:
    """Cacheable stages that build nothing: what a test puts in the workspace is their result."""
    return [Stage(name, _nothing_to_run, inputs=lambda c: {}) for name in names]


async def _nothing_to_run(context: Context) -> None:
    pass


async def _nothing_to_build() -> None:
    pass


async def _not_to_be_built() -> None:
    raise AssertionError("built although the cache holds the entry")


async def test_shared_stage_runs_once_while_the_others_wait(tmp_path: Path) -> None:
    rec = Recorder()
    rec.slow.add("bootstrap")
    stages = _stages(rec)
    cache = SnapshotCache(tmp_path / "cache", stages)
    config = _config(tmp_path)
    contexts = [_context(tmp_path, config, str(i)) for i in range(4)]
    async with anyio.create_task_group() as tg:
        for context in contexts:
            tg.start_soon(run_stages, context, stages, cache)
    # Every cacheable stage ran once; the non-cacheable output stage once per build.
    assert [n for n, _ in rec.runs].count("bootstrap") == 1
    assert [n for n, _ in rec.runs].count("configure") == 1
    assert [n for n, _ in rec.runs].count("output") == 4
    for context in contexts:
        assert (context.root / "state").read_text() == "bootstrap\nconfigure\nclean\noutput\n"
    reused = sorted(sum(r.reused for r in c.stages) for c in contexts)
    assert reused == [0, 3, 3, 3]


async def test_look_ahead_restores_only_the_deepest_entry(tmp_path: Path) -> None:
    rec = Recorder()
    stages = _stages(rec)
    cache = SnapshotCache(tmp_path / "cache", stages)
    config = _config(tmp_path)
    await run_stages(_context(tmp_path, config, "first"), stages, cache)
    assert len(cache.stored) == 3
    second = _context(tmp_path, config, "second")
    await run_stages(second, stages, cache)
    assert cache.restored == [cache.stored[-1]]
    assert [r.reused for r in second.stages] == [True, True, True, False]
    assert (second.root / "state").read_text() == "bootstrap\nconfigure\nclean\noutput\n"


async def test_a_changed_input_rebuilds_from_that_stage(tmp_path: Path) -> None:
    rec = Recorder()
    stages = _stages(rec)
    cache = SnapshotCache(tmp_path / "cache", stages)
    await run_stages(_context(tmp_path, _config(tmp_path, "--hostname", "one"), "one"), stages, cache)
    rec.runs.clear()
    two = _context(tmp_path, _config(tmp_path, "--hostname", "two"), "two")
    await run_stages(two, stages, cache)
    assert [n for n, _ in rec.runs] == ["configure", "clean", "output"]
    assert [r.reused for r in two.stages] == [True, False, False, False]
    assert (two.root / "state").read_text() == "bootstrap\nconfigure\nclean\noutput\n"


async def test_keep_limits_what_is_stored(tmp_path: Path) -> None:
    rec = Recorder()
    stages = _stages(rec)
    first = SnapshotCache(tmp_path / "cache", stages)
    config = _config(tmp_path)
    await run_stages(_context(tmp_path, config, "probe"), stages, first)
    clean_key = first.stored[-1]
    cache = SnapshotCache(tmp_path / "cache2", stages, keep=lambda k: k == clean_key)
    await run_stages(_context(tmp_path, config, "a"), stages, cache)
    assert cache.stored == [clean_key]
    entries = [p.name for p in (tmp_path / "cache2").iterdir() if not p.name.startswith(".")]
    assert entries == [clean_key]


async def test_failed_stage_releases_its_lock_and_stores_nothing(tmp_path: Path) -> None:
    rec = Recorder()
    attempts = []

    async def failing(context: Context) -> None:
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("boom")

    stages = [Stage("bootstrap", failing, inputs=lambda c: {}), *_stages(rec)[1:]]
    cache = SnapshotCache(tmp_path / "cache", stages)
    config = _config(tmp_path)
    with pytest.raises(RuntimeError):
        await run_stages(_context(tmp_path, config, "a"), stages, cache)
    assert cache.stored == []
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".tmp")]
    # The lock was released: a second build does not hang.
    with anyio.fail_after(5):
        await run_stages(_context(tmp_path, config, "b"), stages, cache)
    assert len(cache.stored) == 3


def test_incremental_needs_a_cache_directory(tmp_path: Path) -> None:
    from mkosi.build import stage_cache_dir
    from mkosi.errors import MkosiError

    with pytest.raises(MkosiError, match="needs a cache directory"):
        stage_cache_dir(_config(tmp_path, "-i"))
    assert stage_cache_dir(_config(tmp_path, "-i", f"--cache={tmp_path}/c")) == tmp_path / "c/stages"


def test_summary_marks_cached_stages(tmp_path: Path) -> None:
    from mkosi.build import STAGES, stage_cache_dir
    from mkosi.cli import summary

    config = _config(tmp_path, "-i", f"--cache={tmp_path}/c")
    bootstrap_key = stage_keys(config, STAGES)[0][1]
    (stage_cache_dir(config) / bootstrap_key).mkdir(parents=True)
    (stage_cache_dir(config) / bootstrap_key / "root.tar").touch()
    lines = [line for line in summary(config).splitlines() if "reused with -i" in line]
    assert len(lines) == 1 and "bootstrap" in lines[0]


@pytest.mark.skipif(os.geteuid() != 0, reason="ownership and file capabilities need root")
async def test_an_entry_gives_back_everything_a_tree_holds(tmp_path: Path) -> None:
    """Owners by number, modes, capabilities, hard links, symlinks, holes and times survive a round trip."""
    stages = _snapshots("tree")
    cache = SnapshotCache(tmp_path / "cache", stages)
    config = _config(tmp_path)
    [(stage, key)] = stage_keys(config, stages)
    first = _context(tmp_path, config, "first")
    root = first.root
    (root / "usr/bin").mkdir(parents=True)
    ping = root / "usr/bin/ping"
    ping.write_bytes(b"\x7fELF")
    os.chown(ping, 4321, 8765)
    ping.chmod(0o4750)
    # A version 2 file capability: cap_net_raw (bit 13) permitted and effective.
    os.setxattr(ping, "security.capability", struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0))
    os.link(ping, root / "usr/bin/ping6")
    (root / "usr/bin/ping4").symlink_to("ping")
    sparse = root / "disk.img"
    with sparse.open("wb") as f:
        f.truncate(64 << 20)
        f.seek(32 << 20)
        f.write(b"data")
    os.utime(ping, ns=(1_000_000_123, 1_000_000_123))
    (root / "empty").mkdir(mode=0o700)
    assert not await cache.run(stage, key, first, _nothing_to_build)
    assert cache.stored == [key]
    assert sum(p.stat().st_size for p in cache.entry(key).iterdir()) < 1 << 20  # holes are not stored

    second = _context(tmp_path, config, "second")
    assert await cache.run(stage, key, second, _not_to_be_built)
    copy = second.root / "usr/bin/ping"
    st = copy.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (4321, 8765, 0o4750)
    assert os.getxattr(copy, "security.capability") == os.getxattr(ping, "security.capability")
    assert st.st_mtime_ns == 1_000_000_123
    assert os.stat(second.root / "usr/bin/ping6").st_ino == st.st_ino
    assert os.readlink(second.root / "usr/bin/ping4") == "ping"
    image = second.root / "disk.img"
    assert image.stat().st_size == 64 << 20 and image.stat().st_blocks * 512 < 1 << 20
    assert image.read_bytes()[32 << 20 :][:4] == b"data"
    assert stat.S_IMODE((second.root / "empty").stat().st_mode) == 0o700


async def test_a_tree_copy_of_an_older_mkosi_is_not_an_entry(tmp_path: Path) -> None:
    rec = Recorder()
    stages = _stages(rec)
    probe = SnapshotCache(tmp_path / "probe", stages)
    config = _config(tmp_path)
    await run_stages(_context(tmp_path, config, "probe"), stages, probe)
    cache = SnapshotCache(tmp_path / "cache", stages)
    for key in probe.stored:
        (cache.entry(key) / "root").mkdir(parents=True)  # what entries looked like before archives
    rec.runs.clear()
    build = _context(tmp_path, config, "build")
    await run_stages(build, stages, cache)
    assert [n for n, _ in rec.runs] == ["bootstrap", "configure", "clean", "output"]
    assert (build.root / "state").read_text() == "bootstrap\nconfigure\nclean\noutput\n"
    assert all(cache.has(key) for key in probe.stored)


async def test_a_tree_kept_next_to_the_output_round_trips(tmp_path: Path) -> None:
    """An entry stored from one workspace restores into a split one (the tree in its own directory,
    the rest in the workspace) and back, replacing what was there."""
    stages = _snapshots("tree", "changed")
    cache = SnapshotCache(tmp_path / "cache", stages)
    config = _config(tmp_path)
    (tree, tree_key), (changed, changed_key) = stage_keys(config, stages)
    whole = _context(tmp_path, config, "whole")
    (whole.root / "etc").mkdir(parents=True)
    (whole.root / "etc/hostname").write_text("image\n")
    (whole.workspace / "build-root").mkdir()
    (whole.workspace / "build-root/gcc").write_text("compiler\n")
    assert not await cache.run(tree, tree_key, whole, _nothing_to_build)

    split = _context(tmp_path, config, "split", split=True)
    assert split.tree_workspace is not None and split.root == split.tree_workspace / "root"
    (split.root / "stale").mkdir(parents=True)
    (split.workspace / "leftover").mkdir()
    assert await cache.run(tree, tree_key, split, _not_to_be_built)
    assert sorted(p.name for p in split.tree_workspace.iterdir()) == ["root"]
    assert sorted(p.name for p in split.workspace.iterdir()) == ["build-root"]
    assert (split.root / "etc/hostname").read_text() == "image\n" and not (split.root / "stale").exists()
    assert set(split.items()) == {"root", "build-root"}

    (split.root / "etc/hostname").write_text("changed\n")
    assert not await cache.run(changed, changed_key, split, _nothing_to_build)
    assert cache.stored == [tree_key, changed_key]
    back = _context(tmp_path, config, "back")
    await run_stages(back, stages, cache)
    assert [r.reused for r in back.stages] == [True, True]
    assert cache.restored == [tree_key, changed_key]  # into split, then into back
    assert (back.root / "etc/hostname").read_text() == "changed\n"
    assert (back.workspace / "build-root/gcc").read_text() == "compiler\n"


def test_only_an_incremental_directory_with_an_installed_tree_in_the_cache_is_split(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mkosi import workspace
    from mkosi.build import STAGES, stage_cache_dir, tree_next_to_output

    monkeypatch.setattr(workspace, "available_memory", lambda: 64 << 30)
    monkeypatch.setattr(workspace, "_tmpfs_free", lambda path: 64 << 30)
    cache = f"--cache={tmp_path}/c"
    config = _config(tmp_path, "-i", cache, "-t", "directory")
    assert not tree_next_to_output(config)  # nothing cached: the bootstrap installs into tmpfs
    entry = stage_cache_dir(config) / stage_keys(config, STAGES)[0][1]
    entry.mkdir(parents=True)
    (entry / "root.tar").touch()
    assert tree_next_to_output(config)
    assert not tree_next_to_output(_config(tmp_path, "-i", cache, "-t", "tar"))
    assert not tree_next_to_output(_config(tmp_path, "-i", cache, "-t", "directory", "--workspace=tmpfs"))
    assert not tree_next_to_output(_config(tmp_path, cache, "-t", "directory"))
    # Another package set is another bootstrap: nothing of it is cached.
    assert not tree_next_to_output(_config(tmp_path, "-i", cache, "-t", "directory", "-p", "less"))
    # When memory is short the whole workspace is next to the output already.
    monkeypatch.setattr(workspace, "available_memory", lambda: 1 << 30)
    assert not tree_next_to_output(config)
