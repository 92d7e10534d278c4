"""The stage cache with fake stages: single flight, look-ahead, atomic entries, locks released, damaged
entries refused."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
import structlog
from structlog.testing import capture_logs

from mkosi.config import Config, parse_args
from mkosi.context import Context
from mkosi.pipeline import Stage, run_stages
from mkosi.stage_cache import SnapshotCache, prune

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


async def test_shared_stage_runs_once_while_the_others_wait(tmp_path: Path) -> None:
    rec = Recorder()
    rec.slow.add("bootstrap")
    stages = _stages(rec)
    cache = SnapshotCache(tmp_path / "cache")
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
    cache = SnapshotCache(tmp_path / "cache")
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
    cache = SnapshotCache(tmp_path / "cache")
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
    first = SnapshotCache(tmp_path / "cache")
    config = _config(tmp_path)
    await run_stages(_context(tmp_path, config, "probe"), stages, first)
    clean_key = first.stored[-1]
    cache = SnapshotCache(tmp_path / "cache2", keep=lambda k: k == clean_key)
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
    cache = SnapshotCache(tmp_path / "cache")
    config = _config(tmp_path)
    with pytest.raises(RuntimeError):
        await run_stages(_context(tmp_path, config, "a"), stages, cache)
    assert cache.stored == []
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".tmp")]
    # The lock was released: a second build does not hang.
    with anyio.fail_after(5):
        await run_stages(_context(tmp_path, config, "b"), stages, cache)
    assert len(cache.stored) == 3


async def test_a_cancelled_build_releases_its_lock_for_the_next(tmp_path: Path) -> None:
    rec = Recorder()
    started = anyio.Event()

    async def hangs(context: Context) -> None:
        started.set()
        await anyio.sleep_forever()

    hanging = [Stage("bootstrap", hangs, inputs=lambda c: {}), *_stages(rec)[1:]]
    cache = SnapshotCache(tmp_path / "cache")
    config = _config(tmp_path)
    async with anyio.create_task_group() as tg:
        tg.start_soon(run_stages, _context(tmp_path, config, "a"), hanging, cache)
        await started.wait()
        tg.cancel_scope.cancel()
    assert cache.stored == []
    # Same keys, a bootstrap that finishes: the cancelled build's lock is not in its way.
    working = [rec.stage("bootstrap"), *_stages(rec)[1:]]
    with anyio.fail_after(5):
        await run_stages(_context(tmp_path, config, "b"), working, cache)
    assert len(cache.stored) == 3


async def test_a_stage_that_is_not_cacheable_splits_the_segments(tmp_path: Path) -> None:
    rec = Recorder()
    stages = [rec.stage("bootstrap"), rec.stage("output", cacheable=False), rec.stage("after")]
    cache = SnapshotCache(tmp_path / "cache")
    config = _config(tmp_path)
    await run_stages(_context(tmp_path, config, "a"), stages, cache)
    rec.runs.clear()
    second = _context(tmp_path, config, "b")
    await run_stages(second, stages, cache)
    # The stage after the uncacheable one is restored from its own entry, not rebuilt.
    assert [n for n, _ in rec.runs] == ["output"]
    assert [r.reused for r in second.stages] == [True, False, True]
    assert len(cache.restored) == 2


def test_summary_marks_cached_stages(tmp_path: Path) -> None:
    from mkosi.build import STAGES, stage_cache_dir
    from mkosi.cli import summary
    from mkosi.pipeline import stage_keys

    config = _config(tmp_path, "-i", f"--cache={tmp_path}/c")
    bootstrap_key = stage_keys(config, STAGES)[0][1]
    (stage_cache_dir(config) / bootstrap_key).mkdir(parents=True)
    (stage_cache_dir(config) / bootstrap_key / "root.tar").touch()
    lines = [line for line in summary(config).splitlines() if "reused with -i" in line]
    assert len(lines) == 1 and "bootstrap" in lines[0]


@pytest.mark.skipif(os.geteuid() != 0, reason="ownership and file capabilities need root")
async def test_an_entry_gives_back_everything_a_tree_holds(tmp_path: Path) -> None:
    """Owners by number, modes, capabilities, hard links, symlinks, holes and times survive a round trip."""
    cache = SnapshotCache(tmp_path / "cache")
    config = _config(tmp_path)
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
    key = "0" * 64
    cache.directory.mkdir()
    await cache.store(key, first)
    assert sum(p.stat().st_size for p in cache.entry(key).iterdir()) < 1 << 20  # holes are not stored

    second = _context(tmp_path, config, "second")
    await cache.restore(key, second)
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
    probe = SnapshotCache(tmp_path / "probe")
    config = _config(tmp_path)
    await run_stages(_context(tmp_path, config, "probe"), stages, probe)
    cache = SnapshotCache(tmp_path / "cache")
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
    cache = SnapshotCache(tmp_path / "cache")
    config = _config(tmp_path)
    whole = _context(tmp_path, config, "whole")
    (whole.root / "etc").mkdir(parents=True)
    (whole.root / "etc/hostname").write_text("image\n")
    (whole.workspace / "build-root").mkdir()
    (whole.workspace / "build-root/gcc").write_text("compiler\n")
    cache.directory.mkdir()
    await cache.store("1" * 64, whole)

    split = _context(tmp_path, config, "split", split=True)
    assert split.tree_workspace is not None and split.root == split.tree_workspace / "root"
    (split.root / "stale").mkdir(parents=True)
    (split.workspace / "leftover").mkdir()
    await cache.restore("1" * 64, split)
    assert sorted(p.name for p in split.tree_workspace.iterdir()) == ["root"]
    assert sorted(p.name for p in split.workspace.iterdir()) == ["build-root"]
    assert (split.root / "etc/hostname").read_text() == "image\n" and not (split.root / "stale").exists()
    assert set(split.items()) == {"root", "build-root"}

    (split.root / "etc/hostname").write_text("changed\n")
    await cache.store("2" * 64, split)
    back = _context(tmp_path, config, "back")
    await cache.restore("2" * 64, back)
    assert (back.root / "etc/hostname").read_text() == "changed\n"
    assert (back.workspace / "build-root/gcc").read_text() == "compiler\n"


KEY = "3" * 64


async def _stored_entry(tmp_path: Path) -> tuple[SnapshotCache, Path]:
    """An entry of two archives: the image's tree and a build image."""
    cache = SnapshotCache(tmp_path / "cache")
    source = _context(tmp_path, _config(tmp_path), "source")
    (source.root / "etc").mkdir(parents=True)
    (source.root / "etc/hostname").write_text("intact-hostname\n")
    (source.workspace / "build-root").mkdir()
    (source.workspace / "build-root/gcc").write_text("compiler\n")
    cache.directory.mkdir()
    await cache.store(KEY, source)
    return cache, cache.entry(KEY)


def _truncate(entry: Path) -> None:
    archive = entry / "root.tar"
    os.truncate(archive, archive.stat().st_size // 2)


def _flip(entry: Path, offset: int) -> None:
    with (entry / "root.tar").open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x01]))


def _flip_in_a_files_data(entry: Path) -> None:
    # tar keeps no checksum of the data: only the digest can tell.
    _flip(entry, (entry / "root.tar").read_bytes().index(b"intact-hostname"))


def _flip_in_a_header(entry: Path) -> None:
    _flip(entry, 0)  # the first member's name: tar itself fails on the header's checksum


def _stray_file(entry: Path) -> None:
    (entry / "notes.txt").write_text("left here by hand\n")


def _digest_reason(entry: Path) -> str:
    recorded = json.loads((entry / "manifest.json").read_text())["archives"]["root.tar"]["sha256"]
    actual = hashlib.sha256((entry / "root.tar").read_bytes()).hexdigest()
    return f"root.tar has SHA-256 {actual[:16]}…, its manifest.json records {recorded[:16]}…"


def _rekey(entry: Path, key: str) -> None:
    manifest = json.loads((entry / "manifest.json").read_text())
    (entry / "manifest.json").write_text(json.dumps({**manifest, "key": key}))


# Each damage, and the reason the warning gives for it (from the damaged entry and the archive's
# size before).
DAMAGES: dict[str, tuple[Callable[[Path], None], Callable[[Path, int], str]]] = {
    "truncated": (_truncate, lambda e, size: f"root.tar has {size // 2} bytes, its manifest.json records {size}"),
    "flipped-data": (_flip_in_a_files_data, lambda e, size: _digest_reason(e)),
    "flipped-header": (_flip_in_a_header, lambda e, size: _digest_reason(e)),
    "no-manifest": (
        lambda e: (e / "manifest.json").unlink(),
        lambda e, size: "it has no manifest.json (written by an earlier mkosi, or never finished)",
    ),
    "stray-file": (_stray_file, lambda e, size: "notes.txt is not in its manifest.json"),
    "missing-archive": (lambda e: (e / "build-root.tar").unlink(), lambda e, size: "build-root.tar is missing"),
    "garbled-manifest": (
        lambda e: (e / "manifest.json").write_text("{"),
        lambda e, size: (
            "its manifest.json is unreadable: Expecting property name enclosed in double quotes: "
            "line 1 column 2 (char 1)"
        ),
    ),
    "another-keys-manifest": (
        lambda e: _rekey(e, "4" * 64),
        lambda e, size: f"its manifest.json is that of the entry {'4' * 64}",
    ),
}


def _warnings(logs: list[dict[str, Any]]) -> list[str]:
    return [log["event"] for log in logs if log["log_level"] == "warning"]


@pytest.mark.parametrize("damage", DAMAGES)
async def test_a_damaged_entry_is_refused_with_its_reason_and_dropped(tmp_path: Path, damage: str) -> None:
    cache, entry = await _stored_entry(tmp_path)
    size = (entry / "root.tar").stat().st_size
    make_damage, reason = DAMAGES[damage]
    make_damage(entry)
    expected = reason(entry, size)
    target = _context(tmp_path, _config(tmp_path), "target")
    target.root.mkdir()
    (target.root / "before").write_text("the workspace as it was\n")
    with capture_logs() as logs:
        assert not await cache.restore(KEY, target)
    assert _warnings(logs) == [
        f"stage-cache entry {entry} is damaged: {expected}; dropping it and building the stage again"
    ]
    assert cache.dropped == [KEY] and cache.restored == []
    # Dropped whole, nothing of it left aside; the workspace untouched, no half-restored item in it.
    assert not cache.has(KEY)
    assert [p.name for p in cache.directory.iterdir() if not p.name.endswith(".lock")] == []
    assert sorted(p.name for p in target.workspace.iterdir()) == ["root"]
    assert sorted(p.name for p in target.root.iterdir()) == ["before"]


async def test_an_intact_entry_is_restored_and_its_manifest_agrees_with_sha256sum(tmp_path: Path) -> None:
    cache, entry = await _stored_entry(tmp_path)
    manifest = json.loads((entry / "manifest.json").read_text())
    assert manifest["key"] == KEY and sorted(manifest["archives"]) == ["build-root.tar", "root.tar"]
    sums = subprocess.run(["sha256sum", "root.tar", "build-root.tar"], cwd=entry, capture_output=True, text=True)
    for line in sums.stdout.splitlines():
        digest, name = line.split()
        assert manifest["archives"][name] == {"size": (entry / name).stat().st_size, "sha256": digest}
    assert sorted(p.name for p in entry.iterdir()) == ["build-root.tar", "manifest.json", "root.tar"]

    target = _context(tmp_path, _config(tmp_path), "target")
    (target.workspace / "stale").mkdir()
    with capture_logs() as logs:
        assert await cache.restore(KEY, target)
    assert _warnings(logs) == []
    assert sorted(p.name for p in target.workspace.iterdir()) == ["build-root", "root"]
    assert (target.root / "etc/hostname").read_text() == "intact-hostname\n"
    assert (target.workspace / "build-root/gcc").read_text() == "compiler\n"


async def test_a_damaged_entry_is_rebuilt_from_the_deepest_intact_one(tmp_path: Path) -> None:
    rec = Recorder()
    stages = _stages(rec)
    cache = SnapshotCache(tmp_path / "cache")
    config = _config(tmp_path)
    await run_stages(_context(tmp_path, config, "first"), stages, cache)
    _, configure, clean = cache.stored
    _truncate(cache.entry(clean))
    rec.runs.clear()
    second = _context(tmp_path, config, "second")
    with capture_logs() as logs:
        await run_stages(second, stages, cache)
    assert len(_warnings(logs)) == 1 and str(cache.entry(clean)) in _warnings(logs)[0]
    assert cache.dropped == [clean] and cache.restored == [configure]
    # Only what the damaged entry stood for is built again, and stored again, intact.
    assert [n for n, _ in rec.runs] == ["clean", "output"]
    assert [r.reused for r in second.stages] == [True, True, False, False]
    assert (second.root / "state").read_text() == "bootstrap\nconfigure\nclean\noutput\n"
    assert cache.stored[-1] == clean
    rec.runs.clear()
    third = _context(tmp_path, config, "third")
    with capture_logs() as logs:
        await run_stages(third, stages, cache)
    assert _warnings(logs) == [] and [n for n, _ in rec.runs] == ["output"]
    assert cache.restored[-1] == clean


async def test_prune_drops_what_no_owner_uses_any_more(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    for key in ("1" * 64, "2" * 64, "3" * 64):
        (cache / key).mkdir(parents=True)
        (cache / key / "root.tar").write_bytes(b"archive")
    await prune(cache, "image-a", {"1" * 64, "2" * 64})
    await prune(cache, "image-b", {"2" * 64})
    await prune(cache, "image-a", {"3" * 64})
    # The first key only image-a used is gone, whole; the one image-b still uses is kept.
    assert sorted(p.name for p in cache.iterdir() if not p.name.endswith(".lock")) == ["2" * 64, "3" * 64, "owners"]


async def test_prune_forgets_an_owner_whose_directory_is_gone_but_not_one_whose_image_is(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    for key in ("1" * 64, "2" * 64, "3" * 64):
        (cache / key).mkdir(parents=True)
    kept, removed = tmp_path / "cleaned", tmp_path / "removed"
    kept.mkdir()
    removed.mkdir()
    await prune(cache, str(kept / "image.raw"), {"1" * 64})
    await prune(cache, str(removed / "image.raw"), {"2" * 64})
    removed.rmdir()  # the whole project went; `kept` only lost its image (it never had one here)
    await prune(cache, str(tmp_path / "image.raw"), {"3" * 64})
    assert sorted(p.name for p in cache.iterdir() if len(p.name) == 64) == ["1" * 64, "3" * 64]
    assert len(list((cache / "owners").iterdir())) == 2
