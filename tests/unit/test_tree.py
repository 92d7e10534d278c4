"""The stages that adjust the image's tree never follow the tree's links out to the build host.

mkosi.extra, the build script's $DESTDIR and mkosi.postinst can all leave links at the paths these
stages write (etc/hostname, etc/machine-id, etc/shadow) or clean (docs, ldconfig's cache): each
link here points at a file or directory of the "host" (outside the tree), which must stay as it was.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import structlog

from mkosi import base_image
from mkosi.config import parse_args
from mkosi.context import Context
from mkosi.errors import MkosiError
from mkosi.tree import clean_tree, configure_system, make_reproducible
from tests.unit.conftest import StandardInput

pytestmark = pytest.mark.anyio
SHADOW = "root:*:20424:0:99999:7:::\n"


def _host(tmp_path: Path) -> dict[str, Path]:
    host = tmp_path / "host"
    (host / "doc/pkg").mkdir(parents=True)
    (host / "ldconfig").mkdir()
    files = {name: host / name for name in ("hostname", "machine-id", "shadow", "dbus-id", "seed")}
    files |= {"doc": host / "doc/pkg/README", "aux-cache": host / "ldconfig/aux-cache"}
    for name, path in files.items():
        path.write_text(SHADOW if name == "shadow" else f"the host's {name}\n")
    return files


def _context(tmp_path: Path, *argv: str) -> Context:
    project = tmp_path / "project"
    project.mkdir(exist_ok=True)
    config = parse_args(["-C", str(project), *argv])[1]
    workspace = tmp_path / "workspace"
    (workspace / "root/etc").mkdir(parents=True, exist_ok=True)
    return Context(config=config, workspace=workspace, log=structlog.get_logger("test"))


def _link(root: Path, path: str, target: Path) -> None:
    (root / path).parent.mkdir(parents=True, exist_ok=True)
    (root / path).symlink_to(target)


def _unchanged(host: dict[str, Path]) -> bool:
    return all(p.read_text() == (SHADOW if n == "shadow" else f"the host's {n}\n") for n, p in host.items())


async def test_configure_replaces_links_to_the_host_and_never_writes_through_them(tmp_path: Path) -> None:
    host = _host(tmp_path)
    context = _context(tmp_path, "--hostname=image")
    root = context.root
    for path, name in [("etc/hostname", "hostname"), ("etc/machine-id", "machine-id")]:
        _link(root, path, host[name])
    _link(root, "var/lib/dbus/machine-id", host["dbus-id"])
    _link(root, "var/lib/systemd/random-seed", host["seed"])
    await configure_system(context)
    assert _unchanged(host)
    assert (root / "etc/hostname").read_text() == "image\n" and not (root / "etc/hostname").is_symlink()
    assert (root / "etc/machine-id").read_text() == "" and not (root / "etc/machine-id").is_symlink()
    assert (root / "var/lib/dbus/machine-id").is_symlink()  # a link is no identity of its own: kept
    assert not (root / "var/lib/systemd/random-seed").is_symlink()


async def test_a_password_is_never_set_in_a_shadow_file_outside_the_image(tmp_path: Path, stdin: StandardInput) -> None:
    host = _host(tmp_path)
    stdin("hunter2\n")
    context = _context(tmp_path, "--password=-")
    _link(context.root, "etc/shadow", host["shadow"])
    with pytest.raises(MkosiError, match=r"the image has no /etc/shadow \(a regular file\)"):
        await configure_system(context)
    assert _unchanged(host)
    # A link inside the image is followed there, and replaced by the file it is written as.
    (context.root / "etc/shadow.real").write_text(SHADOW)
    (context.root / "etc/shadow").unlink()
    (context.root / "etc/shadow").symlink_to("/etc/shadow.real")
    await configure_system(context)
    assert (context.root / "etc/shadow").read_text().startswith("root:$6$")


async def test_clean_and_reproducible_stages_leave_the_hosts_directories_alone(tmp_path: Path) -> None:
    host = _host(tmp_path)
    context = _context(tmp_path, "--source-date-epoch=1700000000")
    root = context.root
    _link(root, "usr/share/doc", host["doc"].parent.parent)
    _link(root, "var/cache/ldconfig", host["aux-cache"].parent)
    _link(root, "etc/shadow", host["shadow"])
    _link(root, "etc/shadow-", host["shadow"])
    (root / "usr/share/man/man1").mkdir(parents=True)
    await clean_tree(context)
    await make_reproducible(context)
    assert _unchanged(host) and host["doc"].exists()
    assert not (root / "usr/share/man/man1").exists()  # the image's own documentation goes


async def test_the_tree_stages_leave_a_base_image_s_own_files_alone(tmp_path: Path) -> None:
    # A confext's base: its documentation, resolver configuration and shadow are the base's, and an
    # overlay could not take away what cleaning would remove; what the build added is cleaned.
    context = _context(tmp_path, "--source-date-epoch=1700000000")
    root = context.root
    (root / "usr/share/doc/base-package").mkdir(parents=True)
    (root / "usr/share/doc/base-package/copyright").write_text("text\n")
    (root / "etc/resolv.conf").write_text("nameserver 192.0.2.1\n")
    (root / "etc/shadow").write_text("root:*:19000:0:99999:7:::\n")
    base_image.record(context, ("usr", "etc"))
    (root / "usr/share/doc/added-package").mkdir()
    (root / "usr/share/doc/added-package/copyright").write_text("text\n")
    await clean_tree(context)
    await make_reproducible(context)
    assert (root / "usr/share/doc/base-package/copyright").exists()
    assert not (root / "usr/share/doc/added-package").exists()
    assert (root / "etc/resolv.conf").read_text() == "nameserver 192.0.2.1\n"
    assert (root / "etc/shadow").read_text() == "root:*:19000:0:99999:7:::\n"
    assert base_image.changed(context, ("usr", "etc")) == []
