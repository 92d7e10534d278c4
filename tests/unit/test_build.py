"""Building one image as a whole: every setting that can change an image reaches a stage's key; earlier
outputs are replaced only when mkosi published them, and put back when a build fails or was killed."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import structlog

from mkosi import ownership
from mkosi.build import NOT_IMAGE_INPUTS, STAGES, publish
from mkosi.config import Config, parse_args
from mkosi.context import Context
from mkosi.errors import MkosiError
from tests.unit.conftest import StandardInput

pytestmark = pytest.mark.anyio


class _Reads:
    """A Config that records which fields are read."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self.read: set[str] = set()

    def __getattr__(self, name: str) -> Any:
        self.read.add(name)
        return getattr(self._config, name)


def _fields_the_stages_read(config: Config) -> set[str]:
    reads = _Reads(config)
    for stage in STAGES:
        if stage.enabled(reads):  # type: ignore[arg-type]
            stage.inputs(reads)  # type: ignore[arg-type]
    return reads.read


def test_every_setting_is_a_stage_input_or_declared_to_change_no_image(tmp_path: Path) -> None:
    # Between them these turn every stage on: a two-phase build of a bootable, encrypted disk.
    script = tmp_path / "mkosi.build"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    (tmp_path / "mkosi.passphrase").write_text("secret")
    (tmp_path / "mkosi.passphrase").chmod(0o600)
    plain = parse_args(["-C", str(tmp_path), "-t", "directory"])[1]
    disk = parse_args(["-C", str(tmp_path), "-t", "raw_gpt", "--bootable", "--encrypt=data", "--sign"])[1]
    for name in ("verity.key", "verity.crt"):
        (tmp_path / name).write_text("PEM")
        (tmp_path / name).chmod(0o600)
    keys = ["--verity-key", str(tmp_path / "verity.key"), "--verity-certificate", str(tmp_path / "verity.crt")]
    signed = parse_args(["-C", str(tmp_path), "-t", "raw_squashfs", "--verity=signed", *keys])[1]
    portable = parse_args(["-C", str(tmp_path), "-t", "portable", "--ddi-file-system=erofs"])[1]
    read = set().union(*map(_fields_the_stages_read, (plain, disk, signed, portable)))
    fields = {f.name for f in dataclasses.fields(Config)}
    # A setting in neither would silently reuse a stale cached stage when it changes.
    assert fields - read - NOT_IMAGE_INPUTS == set()
    # Declared to change no image, yet read by a stage: one of the two is wrong.
    assert NOT_IMAGE_INPUTS & read == set()
    assert fields >= NOT_IMAGE_INPUTS


def test_a_setting_missing_from_every_stage_would_be_found(tmp_path: Path) -> None:
    config = parse_args(["-C", str(tmp_path), "-t", "directory"])[1]
    # The hostname reaches the configure stage: the check above sees it being read.
    assert "hostname" in _fields_the_stages_read(config)
    assert "verbose" not in _fields_the_stages_read(config)


def _published(path: Path, text: str, owner: str = "image.tar") -> None:
    path.write_text(text)
    ownership.mark(path, owner)


async def test_force_sets_earlier_outputs_aside_and_removes_them(tmp_path: Path) -> None:
    from mkosi.build import earlier_outputs, remove_outputs_of_killed_builds, set_aside_outputs
    from mkosi.workspace import remove_trees

    _, config, _ = parse_args(["-C", str(tmp_path), "-t", "tar", "--checksum", "-f"])
    _published(tmp_path / "image.tar", "old image")
    _published(tmp_path / "image.tar.log", "old log")
    _published(tmp_path / "SHA256SUMS", "old sums")
    (tmp_path / "unrelated").write_text("kept")
    aside = set_aside_outputs(earlier_outputs(config))
    expected = [".mkosi-old.SHA256SUMS", ".mkosi-old.image.tar", ".mkosi-old.image.tar.log"]
    assert sorted(p.name for p in aside.values()) == expected
    assert not (tmp_path / "image.tar").exists() and (tmp_path / ".mkosi-old.image.tar").read_text() == "old image"
    await remove_trees(list(aside.values()))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unrelated"]

    # What a build killed with SIGKILL left set aside is removed by the next one.
    _published(tmp_path / "image.tar", "old image")
    _published(tmp_path / ".mkosi-old.image.tar", "left behind")
    _published(tmp_path / ".mkosi-old.SHA256SUMS", "left behind")
    (tmp_path / ".mkosi-tmp.image.tar").write_text("half written")
    # Another output's leftovers in the same directory are not this one's.
    (tmp_path / ".mkosi-tmp.image.tar.xz").write_text("another build's")
    with pytest.raises(Exception, match="in the way"):
        set_aside_outputs(earlier_outputs(config))
    await remove_outputs_of_killed_builds(config)
    assert [p.name for p in set_aside_outputs(earlier_outputs(config)).values()] == [".mkosi-old.image.tar"]
    assert (tmp_path / ".mkosi-tmp.image.tar.xz").exists()


def test_a_failed_build_puts_earlier_outputs_back(tmp_path: Path) -> None:
    from mkosi.build import earlier_outputs, set_aside_outputs, settle_set_aside

    _, config, _ = parse_args(["-C", str(tmp_path), "-t", "raw_squashfs", "--verity", "-f"])
    for name in ("image.raw", "image.raw.log", "image.roothash"):
        _published(tmp_path / name, f"old {name}", "image.raw")
    aside = set_aside_outputs(earlier_outputs(config))
    (tmp_path / "image.raw.log").write_text("the failed build's log")
    left = settle_set_aside(config.output, aside)
    assert (tmp_path / "image.raw").read_text() == "old image.raw"
    assert (tmp_path / "image.roothash").read_text() == "old image.roothash"
    # The failed build's log stays, explaining what failed; the old one is what is left to remove.
    assert (tmp_path / "image.raw.log").read_text() == "the failed build's log"
    assert left == [tmp_path / ".mkosi-old.image.raw.log"]


def test_once_the_new_image_is_published_no_earlier_sidecar_comes_back(tmp_path: Path) -> None:
    from mkosi.build import earlier_outputs, set_aside_outputs, settle_set_aside

    _, config, _ = parse_args(["-C", str(tmp_path), "-t", "raw_squashfs", "--verity", "-f"])
    for name in ("image.raw", "image.roothash"):
        _published(tmp_path / name, f"old {name}", "image.raw")
    aside = set_aside_outputs(earlier_outputs(config))
    # Killed (or failed) after publishing the image, before its root hash: the old hash would lie.
    (tmp_path / "image.raw").write_text("new image")
    left = settle_set_aside(config.output, aside)
    assert sorted(p.name for p in left) == [".mkosi-old.image.raw", ".mkosi-old.image.roothash"]
    assert not (tmp_path / "image.roothash").exists()


def test_a_sibling_outputs_files_in_the_same_directory_are_never_touched(tmp_path: Path) -> None:
    import anyio

    from mkosi.build import recover_from_killed_builds, written_paths

    # a.tar --checksum is half-way (staging its SHA256SUMS, its earlier one set aside) when b.tar
    # starts in the same directory without --checksum.
    _published(tmp_path / ".mkosi-old.SHA256SUMS", "a's earlier sums", "a.tar")
    (tmp_path / ".mkosi-tmp.SHA256SUMS").write_text("a's new sums")
    _, b, _ = parse_args(["-C", str(tmp_path), "-t", "tar", "-o", "b.tar"])
    assert tmp_path / "SHA256SUMS" not in written_paths(b)
    anyio.run(recover_from_killed_builds, b, structlog.get_logger("test"))
    assert sorted(p.name for p in tmp_path.iterdir()) == [".mkosi-old.SHA256SUMS", ".mkosi-tmp.SHA256SUMS"]
    # With --checksum both would write SHA256SUMS: they claim it, so they never overlap.
    _, b_summed, _ = parse_args(["-C", str(tmp_path), "-t", "tar", "-o", "b.tar", "--checksum"])
    assert tmp_path / "SHA256SUMS" in written_paths(b_summed)


@pytest.mark.parametrize(
    ("made", "argv", "problem"),
    [
        # A directory of the user's given to -o: -f must not touch it.
        ("image", ("-t", "directory"), "image was not made by mkosi"),
        # The user's own SHA256SUMS where this build would publish one.
        ("SHA256SUMS", ("-t", "tar", "--checksum"), "SHA256SUMS was not made by mkosi"),
        ("image.tar.log", ("-t", "tar"), "image.tar.log was not made by mkosi"),
    ],
)
def test_force_refuses_what_mkosi_did_not_publish(
    tmp_path: Path, made: str, argv: tuple[str, ...], problem: str
) -> None:
    from mkosi.build import earlier_outputs

    _, config, _ = parse_args(["-C", str(tmp_path), *argv, "-f"])
    (tmp_path / made).mkdir()
    with pytest.raises(MkosiError, match=problem):
        earlier_outputs(config)
    (tmp_path / "link").symlink_to(tmp_path / made)
    _, config, _ = parse_args(["-C", str(tmp_path), "-t", "directory", "-o", "link", "-f"])
    with pytest.raises(MkosiError, match="is a symbolic link"):
        earlier_outputs(config)


def test_published_outputs_carry_the_mark(tmp_path: Path) -> None:
    context = _context(tmp_path, "-t", "directory")
    context.stage_output(context.config.output).mkdir()
    publish(context)
    assert ownership.owner_of(tmp_path / "image") == "image"
    assert ownership.owner_of(tmp_path) is None


_LOCK_AND_WAIT = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(60)
"""


async def test_workspaces_whose_build_was_killed_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    import os
    import signal
    import sys

    from mkosi import workspace

    live, dead = tmp_path / ".mkosi-workspace.a.1", tmp_path / ".mkosi-workspace.b.2"
    for path in (live, dead):
        (path / "root/etc").mkdir(parents=True)
    (tmp_path / "unrelated").mkdir()
    holders = [
        subprocess.Popen([sys.executable, "-c", _LOCK_AND_WAIT, str(p)], stdout=subprocess.PIPE, text=True)
        for p in (live, dead)
    ]
    try:
        for holder in holders:
            assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        os.kill(holders[1].pid, signal.SIGKILL)
        holders[1].wait()
        await workspace.remove_abandoned_workspaces([tmp_path], structlog.get_logger("test"))
        assert sorted(p.name for p in tmp_path.iterdir()) == [".mkosi-workspace.a.1", "unrelated"]
    finally:
        for holder in holders:
            holder.kill()
            holder.wait()


async def test_what_a_killed_build_set_aside_goes_back_unless_it_was_replaced(tmp_path: Path) -> None:
    from mkosi.build import recover_from_killed_builds

    _, config, _ = parse_args(["-C", str(tmp_path), "-t", "tar", "-f", "--workspace=disk"])
    # Killed after -f set the earlier output aside, before publishing its own.
    _published(tmp_path / ".mkosi-old.image.tar", "earlier image")
    _published(tmp_path / ".mkosi-old.image.tar.log", "earlier log")
    _published(tmp_path / "image.tar.log", "the killed build's log")
    (tmp_path / ".mkosi-tmp.image.tar").write_text("half written")
    await recover_from_killed_builds(config, structlog.get_logger("test"))
    assert (tmp_path / "image.tar").read_text() == "earlier image"
    assert (tmp_path / "image.tar.log").read_text() == "the killed build's log"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.tar", "image.tar.log"]


def _context(tmp_path: Path, *argv: str) -> Context:
    _, config, _ = parse_args(["-C", str(tmp_path), *argv])
    (tmp_path / "workspace").mkdir()
    return Context(config=config, workspace=tmp_path / "workspace", log=structlog.get_logger("test"))


def test_incremental_needs_a_cache_directory(tmp_path: Path) -> None:
    from mkosi.build import stage_cache_dir
    from mkosi.errors import MkosiError

    with pytest.raises(MkosiError, match="needs a cache directory"):
        stage_cache_dir(_incremental_config(tmp_path, "-i"))
    assert stage_cache_dir(_incremental_config(tmp_path, "-i", f"--cache={tmp_path}/c")) == tmp_path / "c/stages"


def test_only_an_incremental_directory_with_an_installed_tree_in_the_cache_is_split(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mkosi import workspace
    from mkosi.build import STAGES, stage_cache_dir, tree_next_to_output
    from mkosi.pipeline import stage_keys

    monkeypatch.setattr(workspace, "available_memory", lambda: 64 << 30)
    monkeypatch.setattr(workspace, "_tmpfs_free", lambda path: 64 << 30)
    cache = f"--cache={tmp_path}/c"
    config = _incremental_config(tmp_path, "-i", cache, "-t", "directory")
    assert not tree_next_to_output(config)  # nothing cached: the bootstrap installs into tmpfs
    entry = stage_cache_dir(config) / stage_keys(config, STAGES)[0][1]
    entry.mkdir(parents=True)
    (entry / "root.tar").touch()
    assert tree_next_to_output(config)
    assert not tree_next_to_output(_incremental_config(tmp_path, "-i", cache, "-t", "tar"))
    assert not tree_next_to_output(_incremental_config(tmp_path, "-i", cache, "-t", "directory", "--workspace=tmpfs"))
    assert not tree_next_to_output(_incremental_config(tmp_path, cache, "-t", "directory"))
    # Another package set is another bootstrap: nothing of it is cached.
    assert not tree_next_to_output(_incremental_config(tmp_path, "-i", cache, "-t", "directory", "-p", "less"))
    # When memory is short the whole workspace is next to the output already.
    monkeypatch.setattr(workspace, "available_memory", lambda: 1 << 30)
    assert not tree_next_to_output(config)


def _incremental_config(tmp_path: Path, *argv: str) -> Config:
    return parse_args(["-C", str(tmp_path), "-d", "debian", "-r", "bookworm", *argv])[1]


def test_stage_keys_hold_no_fast_digest_of_a_secret(tmp_path: Path, stdin: StandardInput) -> None:
    # Keys are published in a matrix's manifest: a SHA-256 of the password would be a fast verifier.
    configure = next(stage for stage in STAGES if stage.name == "configure")

    def password_input(password: str | None = None) -> Any:
        stdin(f"{password}\n")
        argv = [] if password is None else ["--password=-"]
        return configure.inputs(parse_args(["-C", str(tmp_path), *argv])[1])["password"]

    digest = password_input("hunter2")
    assert digest != hashlib.sha256(b"hunter2").hexdigest() and "hunter2" not in digest
    assert digest == password_input("hunter2") != password_input("hunter3")
    assert password_input() is None
    (tmp_path / "mkosi.passphrase").write_text("luks secret")
    (tmp_path / "mkosi.passphrase").chmod(0o600)
    filesystems = next(stage for stage in STAGES if stage.name == "filesystems")
    inputs = filesystems.inputs(parse_args(["-C", str(tmp_path), "-t", "raw_gpt", "--encrypt=all"])[1])
    assert "luks secret" not in json.dumps(inputs, default=str)
    assert hashlib.sha256(b"luks secret").hexdigest() not in json.dumps(inputs, default=str)
