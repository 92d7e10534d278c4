"""Output writers on a small tree: real tar, xz and zstd; publication by rename."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import structlog

from mkosi import ownership
from mkosi.build import publish
from mkosi.config import parse_args
from mkosi.context import Context
from mkosi.errors import MkosiError
from mkosi.outputs import WRITERS

pytestmark = pytest.mark.anyio


def _context(tmp_path: Path, *argv: str) -> Context:
    _, config, _ = parse_args(["-C", str(tmp_path), *argv])
    workspace = tmp_path / "workspace"
    (workspace / "root/etc").mkdir(parents=True)
    (workspace / "root/etc/os-release").write_text("ID=test\n")
    (workspace / "root/etc/weird\\name").write_text("")
    (workspace / "root/bin").symlink_to("usr/bin")
    return Context(config=config, workspace=workspace, log=structlog.get_logger("test"))


@pytest.mark.parametrize(
    ("argv", "name", "tar_flag", "check"),
    [
        ((), "image.tar", None, None),
        (("--xz",), "image.tar.xz", "--xz", ["xz", "--test"]),
        (("--compress=zstd",), "image.tar.zst", "--zstd", ["zstd", "--test", "-q"]),
    ],
)
async def test_tar_output(
    tmp_path: Path, argv: tuple[str, ...], name: str, tar_flag: str | None, check: list[str] | None
) -> None:
    context = _context(tmp_path, "-t", "tar", *argv)
    await WRITERS[context.config.format](context)
    final = tmp_path / name
    assert context.config.output == final
    assert not final.exists(), "outputs appear only when published"
    publish(context)
    assert final.is_file()
    if check:
        subprocess.run([*check, str(final)], check=True)
    listing = subprocess.run(
        ["tar", *([tar_flag] if tar_flag else []), "--quoting-style=literal", "-tvf", str(final)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "./etc/os-release" in listing
    assert "./etc/weird\\name" in listing
    assert "./bin -> usr/bin" in listing
    assert not list(tmp_path.glob(".mkosi-tmp.*"))


async def test_directory_output_is_the_tree(tmp_path: Path) -> None:
    context = _context(tmp_path, "-t", "directory")
    await WRITERS[context.config.format](context)
    publish(context)
    assert (tmp_path / "image/etc/os-release").read_text() == "ID=test\n"
    assert (tmp_path / "image/bin").readlink() == Path("usr/bin")


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
    (tmp_path / ".mkosi-old.image.tar").write_text("left behind")
    (tmp_path / ".mkosi-old.SHA256SUMS").write_text("left behind")
    # Another output's leftovers in the same directory are not this one's.
    (tmp_path / ".mkosi-tmp.image.tar.xz").write_text("another build's")
    with pytest.raises(Exception, match="in the way"):
        set_aside_outputs(earlier_outputs(config))
    await remove_outputs_of_killed_builds(config)
    assert [p.name for p in set_aside_outputs(earlier_outputs(config)).values()] == [".mkosi-old.image.tar"]
    assert (tmp_path / ".mkosi-tmp.image.tar.xz").exists()


def test_a_failed_build_puts_earlier_outputs_back(tmp_path: Path) -> None:
    from mkosi.build import earlier_outputs, put_back, set_aside_outputs

    _, config, _ = parse_args(["-C", str(tmp_path), "-t", "tar", "-f"])
    _published(tmp_path / "image.tar", "old image")
    _published(tmp_path / "image.tar.log", "old log")
    aside = set_aside_outputs(earlier_outputs(config))
    (tmp_path / "image.tar.log").write_text("the failed build's log")
    left = put_back(aside)
    assert (tmp_path / "image.tar").read_text() == "old image"
    # The failed build's log stays, explaining what failed; the old one is what is left to remove.
    assert (tmp_path / "image.tar.log").read_text() == "the failed build's log"
    assert left == [tmp_path / ".mkosi-old.image.tar.log"]


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


async def test_workspaces_whose_build_was_killed_are_removed_and_live_ones_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    import signal
    import sys

    from mkosi import workspace

    monkeypatch.setattr(workspace, "ABANDONED_AFTER_SECONDS", 0)
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
