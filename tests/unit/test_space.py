"""A full file system, whichever tool hit it, is one line naming it."""

from __future__ import annotations

import errno
from pathlib import Path

from mkosi.run import CommandError
from mkosi.space import mount_point, out_of_space, out_of_space_error


def test_a_full_disk_is_recognised_in_every_shape_it_comes_in() -> None:
    full = CommandError(["/usr/bin/tar", "-c"], 2, ["tar: ./usr: Cannot write: No space left on device"])
    assert out_of_space(full)
    assert out_of_space(OSError(errno.ENOSPC, "No space left on device"))
    assert out_of_space(ExceptionGroup("side tasks", [ValueError("other"), full]))
    assert not out_of_space(CommandError(["dpkg"], 1, ["dpkg: error processing package less"]))
    assert not out_of_space(OSError(errno.EACCES, "Permission denied"))


def test_the_line_names_each_file_system_once_and_the_program(tmp_path: Path) -> None:
    (tmp_path / "workspace/root/etc").mkdir(parents=True)
    (tmp_path / "workspace/root/etc/os-release").write_text("ID=debian\n")
    full = CommandError(["/usr/bin/apt-get", "install"], 100, ["No space left on device"])
    places = [("the workspace", tmp_path / "workspace"), ("the output", tmp_path), ("the cache", tmp_path / "gone")]
    line = str(out_of_space_error(places, tmp_path / "workspace/root", ExceptionGroup("g", [full])))
    where = mount_point(tmp_path)
    assert line.startswith(f"no space left on device (apt-get failed): the workspace and the output on {where} (")
    assert "MiB free); the image's tree had reached 0 MiB" in line and "cache" not in line
    assert "\n" not in line
    assert mount_point(Path("/")) == Path("/")
