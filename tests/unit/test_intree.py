"""Paths inside an image's tree: links followed as the image follows them, never out to the host."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from mkosi import intree
from mkosi.errors import MkosiError


@pytest.fixture
def host(tmp_path: Path) -> Path:
    """A file of the build host's that links in the image point at."""
    path = tmp_path / "host/file"
    path.parent.mkdir()
    path.write_text("the host's\n")
    return path


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "usr/share/zoneinfo").mkdir(parents=True)
    (root / "usr/share/zoneinfo/UTC").write_text("the image's zone\n")
    return root


def test_links_are_followed_inside_the_image(root: Path, host: Path) -> None:
    (root / "etc/localtime").symlink_to("/usr/share/zoneinfo/UTC")
    (root / "etc/up").symlink_to("../../../../../usr")
    (root / "etc/host").symlink_to(host)
    assert intree.resolve(root, "etc/localtime") == root / "usr/share/zoneinfo/UTC"
    assert intree.resolve(root, "/etc/up/share") == root / "usr/share"  # `..` stops at the image's top
    assert intree.resolve(root, "etc/host") == root.joinpath(*host.parts[1:])  # the host's path, in the image
    assert intree.resolve(root, "etc/localtime", follow_last=False) == root / "etc/localtime"
    (root / "etc/loop").symlink_to("loop")
    with pytest.raises(MkosiError, match="too many levels of symbolic links in the image at /etc/loop"):
        intree.resolve(root, "etc/loop")


def test_a_write_replaces_a_link_to_the_host_instead_of_writing_through_it(root: Path, host: Path) -> None:
    (root / "etc/machine-id").symlink_to(host)
    intree.write_bytes(root, "etc/machine-id", b"")
    assert host.read_text() == "the host's\n"
    assert not (root / "etc/machine-id").is_symlink() and (root / "etc/machine-id").read_bytes() == b""


def test_a_write_keeps_a_regular_files_mode_and_replaces_a_pipe_without_opening_it(root: Path) -> None:
    shadow = root / "etc/shadow"
    shadow.write_text("old\n")
    shadow.chmod(0o640)
    intree.write_bytes(root, "etc/shadow", b"new\n")
    assert shadow.read_text() == "new\n" and stat.S_IMODE(shadow.stat().st_mode) == 0o640
    os.mkfifo(root / "etc/hostname")  # opened for writing, it would block forever
    intree.write_bytes(root, "etc/hostname", b"name\n", mode=0o644)
    assert (root / "etc/hostname").read_text() == "name\n"
    assert not list((root / "etc").glob(".mkosi-*"))


def test_a_read_stays_inside_the_image_and_opens_only_regular_files(root: Path, host: Path) -> None:
    (root / "etc/shadow").symlink_to(host)
    assert intree.read_bytes(root, "etc/shadow") is None  # the host's path does not exist in the image
    (root / "etc/localtime").symlink_to("/usr/share/zoneinfo/UTC")
    assert intree.read_bytes(root, "etc/localtime") == b"the image's zone\n"
    os.mkfifo(root / "etc/pipe")
    assert intree.read_bytes(root, "etc/pipe") is None


def test_removing_a_link_leaves_its_target(root: Path, host: Path) -> None:
    (root / "etc/cache").symlink_to(host.parent)
    intree.remove(root, "etc/cache/file")  # through a link to the host's directory: inside the image
    intree.remove(root, "etc/cache")
    assert host.read_text() == "the host's\n" and not (root / "etc/cache").is_symlink()


def _incoming(tmp_path: Path) -> Path:
    incoming = tmp_path / "incoming"
    (incoming / "etc").mkdir(parents=True)
    (incoming / "etc/localtime").write_text("mine\n")
    (incoming / "opt/tools").mkdir(parents=True)
    (incoming / "opt/tools/a").write_text("linked\n")
    os.link(incoming / "opt/tools/a", incoming / "etc/b")
    (incoming / "etc/outside").symlink_to("/etc/shadow")
    return incoming


def test_merge_replaces_links_and_follows_directory_links_inside_the_image(
    tmp_path: Path, root: Path, host: Path
) -> None:
    (root / "etc/localtime").symlink_to(host)
    (root / "opt").symlink_to(host.parent)  # a directory link to the host: followed inside the image
    (root.joinpath(*host.parent.parts[1:])).mkdir(parents=True)
    incoming = _incoming(tmp_path)
    incoming.chmod(0o750)
    intree.merge(incoming, root)
    assert host.read_text() == "the host's\n" and sorted(p.name for p in host.parent.iterdir()) == ["file"]
    assert (root / "etc/localtime").read_text() == "mine\n" and not (root / "etc/localtime").is_symlink()
    assert os.readlink(root / "etc/outside") == "/etc/shadow"  # a link of the tree stays as it was made
    moved = root.joinpath(*host.parent.parts[1:], "tools/a")
    assert moved.read_text() == "linked\n" and moved.stat().st_ino == (root / "etc/b").stat().st_ino
    assert stat.S_IMODE(root.stat().st_mode) == 0o750  # as cp -a gives the top its mode


def test_merge_never_puts_a_directory_over_a_file_or_a_file_over_a_directory(tmp_path: Path, root: Path) -> None:
    (root / "opt").write_text("a file\n")
    with pytest.raises(MkosiError, match="cannot merge a directory into /opt in the image: it is not a directory"):
        intree.merge(_incoming(tmp_path), root)
    incoming = tmp_path / "file-over-directory"
    incoming.mkdir()
    (incoming / "usr").write_text("x\n")
    with pytest.raises(MkosiError, match="cannot replace the directory /usr in the image with a non-directory"):
        intree.merge(incoming, root)
