"""What the build script sees: git-aware sources, the digest that decides rebuilds, its command line."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import structlog

from mkosi import buildscript
from mkosi.config import parse_args
from mkosi.context import Context

pytestmark = pytest.mark.anyio
GIT = ["git", "-c", "user.name=T", "-c", "user.email=t@example.org", "-c", "init.defaultBranch=main"]


def _project(tmp_path: Path) -> Path:
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "src/main.c").write_text("int main(void) { return 0; }\n")
    (project / ".gitignore").write_text("/build-output.o\n")
    (project / "mkosi.build").write_text("#!/bin/sh\n")
    (project / "mkosi.build").chmod(0o755)
    subprocess.run([*GIT, "init", "-q", str(project)], check=True)
    subprocess.run([*GIT, "-C", str(project), "add", "-A"], check=True)
    subprocess.run([*GIT, "-C", str(project), "commit", "-qm", "x"], check=True)
    (project / "build-output.o").write_text("ignored\n")
    (project / "untracked.txt").write_text("untracked\n")
    return project


def _context(project: Path, *argv: str) -> Context:
    _, config, _ = parse_args(["-C", str(project), *argv])
    return Context(config=config, workspace=project.parent / "ws", log=structlog.get_logger("test"))


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ((), {".gitignore", "mkosi.build", "src/main.c"}),
        (("--git-files=others",), {".gitignore", "mkosi.build", "src/main.c", "untracked.txt"}),
    ],
)
async def test_copies_what_git_knows(tmp_path: Path, argv: tuple[str, ...], expected: set[str]) -> None:
    project = _project(tmp_path)
    context = _context(project, *argv)
    assert context.config.use_git_files
    destination = tmp_path / "copy"
    await buildscript.copy_sources(context, destination)
    copied = {str(p.relative_to(destination)) for p in destination.rglob("*") if p.is_file()}
    assert copied == expected
    assert (destination / "mkosi.build").stat().st_mode & 0o111  # modes survive


async def test_without_git_everything_but_mkosi_outputs_is_copied(tmp_path: Path) -> None:
    project = _project(tmp_path)
    (project / "image").mkdir()  # a previous build's output
    (project / "image/etc").mkdir()
    context = _context(project, "-t", "directory", "--use-git-files=no")
    destination = tmp_path / "copy"
    await buildscript.copy_sources(context, destination)
    names = {p.name for p in destination.iterdir()}
    assert "image" not in names and ".git" not in names
    assert {"build-output.o", "untracked.txt", "src"} <= names


def test_sources_digest_follows_content_not_outputs(tmp_path: Path) -> None:
    project = _project(tmp_path)
    config = _context(project, "-t", "directory").config
    before = buildscript.sources_digest(config)
    (project / "image").mkdir()
    (project / "image.log").write_text("log")
    (project / ".mkosi-tmp.image").mkdir()
    assert buildscript.sources_digest(config) == before
    (project / "src/main.c").write_text("int main(void) { return 1; }\n")
    assert buildscript.sources_digest(config) != before


def test_script_runs_isolated_unless_network_is_asked_for(tmp_path: Path) -> None:
    project = _project(tmp_path)
    offline = buildscript.nspawn_command(_context(project).config, tmp_path, ["/root/x"], env={"A": "1"})
    assert "--private-network" in offline and "--setenv=A=1" in offline
    assert offline[-1] == "/root/x"
    online = buildscript.nspawn_command(_context(project, "--with-network").config, tmp_path, ["/root/x"], env={})
    assert "--private-network" not in online
    bound = buildscript.nspawn_command(
        _context(project).config, tmp_path, ["/root/x"], env={}, binds={tmp_path / "b": "/root/build"}
    )
    assert f"--bind={tmp_path / 'b'}:/root/build" in bound and bound[-1] == "/root/x"
