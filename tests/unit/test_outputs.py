"""Output writers on a small tree: real tar, xz and zstd; publication by rename."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import structlog

from mkosi.build import publish
from mkosi.config import parse_args
from mkosi.context import Context
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
