"""extension-release files, and the extension's tree of changed entries."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mkosi.config import Config, config_from_settings
from mkosi.errors import MkosiError
from mkosi.outputs.extension import copy_changes, extension_release, name


def _config(project: Path, fmt: str = "sysext", output: str = "tools_2.raw") -> Config:
    (project / "base").mkdir(exist_ok=True)
    settings = [("test", "Format", fmt), ("test", "BaseImage", "base"), ("test", "Output", output)]
    return config_from_settings(project, settings)


def test_extension_release_names_the_base_and_the_architecture(project: Path) -> None:
    config = _config(project)
    assert name(config) == "tools_2"
    debian = {"ID": "debian", "VERSION_ID": "12", "VERSION_CODENAME": "bookworm"}
    assert extension_release(config, debian) == "ID=debian\nVERSION_ID=12\nARCHITECTURE=x86-64\n"
    # A level, when the base has one, is what systemd compares instead of VERSION_ID=.
    levelled = {**debian, "SYSEXT_LEVEL": "1.2", "CONFEXT_LEVEL": "7"}
    assert extension_release(config, levelled) == "ID=debian\nSYSEXT_LEVEL=1.2\nARCHITECTURE=x86-64\n"
    confext = _config(project, "confext", "etc_1.raw")
    assert extension_release(confext, levelled) == "ID=debian\nCONFEXT_LEVEL=7\nARCHITECTURE=x86-64\n"
    with pytest.raises(MkosiError, match="neither SYSEXT_LEVEL= nor VERSION_ID="):
        extension_release(config, {"ID": "debian", "VERSION_CODENAME": "trixie"})
    with pytest.raises(MkosiError, match="has no ID="):
        extension_release(config, {"VERSION_ID": "12"})


def test_the_tree_holds_the_changes_with_their_parents_metadata(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "usr/lib/tools").mkdir(parents=True)
    (root / "usr/lib/tools").chmod(0o750)
    (root / "usr/lib/tools/tool").write_text("tool")
    (root / "usr/lib/tools/link").symlink_to("tool")
    (root / "usr/lib/other").write_text("not kept")
    os.utime(root / "usr/lib/tools", (1000, 1000))
    tree = tmp_path / "extension"
    copy_changes(root, tree, ["usr/lib/tools/tool", "usr/lib/tools/link"])
    assert sorted(str(p.relative_to(tree)) for p in tree.rglob("*")) == [
        "usr",
        "usr/lib",
        "usr/lib/tools",
        "usr/lib/tools/link",
        "usr/lib/tools/tool",
    ]
    assert (tree / "usr/lib/tools").stat().st_mode & 0o777 == 0o750
    assert (tree / "usr/lib/tools").stat().st_mtime == 1000
    assert os.readlink(tree / "usr/lib/tools/link") == "tool"
    assert (tree / "usr/lib/tools/tool").stat().st_ino == (root / "usr/lib/tools/tool").stat().st_ino
