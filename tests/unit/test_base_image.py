"""What a build changed relative to its base image: added and changed entries, removals refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import structlog

from mkosi.base_image import BaseKind, changed, kind_of, record
from mkosi.config import config_from_settings
from mkosi.context import Context
from mkosi.errors import MkosiError


def _context(project: Path) -> Context:
    (project / "base").mkdir()
    config = config_from_settings(project, [("test", "Format", "sysext"), ("test", "BaseImage", "base")])
    workspace = project / "workspace"
    (workspace / "root/usr/bin").mkdir(parents=True)
    (workspace / "root/etc").mkdir()
    return Context(config=config, workspace=workspace, log=structlog.get_logger("test"))


def test_only_what_the_build_added_or_changed_is_kept(project: Path) -> None:
    context = _context(project)
    root = context.root
    (root / "usr/bin/same").write_text("same")
    (root / "usr/bin/edited").write_text("before")
    (root / "usr/bin/chmodded").write_text("mode")
    (root / "usr/bin/link").symlink_to("same")
    record(context, ("usr", "opt"))
    os.utime(root / "usr/bin/same", (0, 0))  # a new time alone is no change (SourceDateEpoch= clamps times)
    (root / "usr/bin/edited").write_text("after")
    (root / "usr/bin/chmodded").chmod(0o755)
    (root / "usr/bin/link").unlink()
    (root / "usr/bin/link").symlink_to("edited")
    (root / "usr/lib/new").mkdir(parents=True)
    (root / "usr/lib/new/file").write_text("new")
    (root / "opt").mkdir()
    (root / "etc/outside-the-scope").write_text("x")
    # Parents first; /usr itself and what is unchanged in it are not kept, /etc is out of the scope.
    assert changed(context, ("usr", "opt")) == [
        "usr/lib",
        "usr/bin/chmodded",
        "usr/bin/edited",
        "usr/bin/link",
        "usr/lib/new",
        "usr/lib/new/file",
        "opt",
    ]


def test_a_removed_base_file_is_refused_in_one_line(project: Path) -> None:
    context = _context(project)
    for name in ("a", "b"):
        (context.root / "usr/bin" / name).write_text(name)
    record(context, ("usr", "opt"))
    for name in ("a", "b"):
        (context.root / "usr/bin" / name).unlink()
    with pytest.raises(MkosiError) as error:
        changed(context, ("usr", "opt"))
    assert str(error.value) == (
        "the build removed /usr/bin/a (and 1 more) from BaseImage=: an extension can only add or change files, "
        "systemd overlays it on the base"
    )


def test_a_base_is_known_by_what_it_holds(project: Path) -> None:
    (project / "tree").mkdir()
    assert kind_of(project / "tree") is BaseKind.directory
    disk = project / "disk"
    disk.write_bytes(b"\0" * 512 + b"EFI PART" + b"\0" * 504)
    assert kind_of(disk) is BaseKind.raw
    (project / "archive.tar.zst").write_bytes(b"\x28\xb5\x2f\xfd" + b"\0" * 100)
    assert kind_of(project / "archive.tar.zst") is BaseKind.tar
    (project / "text").write_text("hello")
    with pytest.raises(MkosiError, match="neither a tar archive nor a GPT disk image"):
        kind_of(project / "text")
    with pytest.raises(MkosiError, match="No such file or directory"):
        kind_of(project / "missing")
