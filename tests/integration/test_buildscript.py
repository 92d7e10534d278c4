"""Two-phase builds of a small C project, and incremental rebuilds, as a developer would run them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.support import CACHE, ModuleDir, mkosi, own_cache

EXAMPLE = Path(__file__).parent / "example-project"
GIT = ["git", "-c", "user.name=Test", "-c", "user.email=test@example.org", "-c", "init.defaultBranch=main"]


def _in_tree(tree: Path, *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-nspawn", "--register=no", "--keep-unit", "--quiet", "--read-only", "-D", str(tree), *command],
        capture_output=True,
        text=True,
        env={**os.environ, "SYSTEMD_NSPAWN_LOCK": "0"},
    )


@pytest.fixture(scope="module")
def project(module_dir: ModuleDir) -> Path:
    """The example project as a git checkout, with an ignored and an untracked file next to the sources."""
    project = module_dir("example") / "project"
    shutil.copytree(EXAMPLE, project)
    subprocess.run([*GIT, "init", "-q", str(project)], check=True)
    subprocess.run([*GIT, "-C", str(project), "add", "-A"], check=True)
    subprocess.run([*GIT, "-C", str(project), "commit", "-qm", "example"], check=True)
    (project / "secret.txt").write_text("ignored by git\n")
    (project / "notes.txt").write_text("untracked\n")
    # Incremental stage copies go into this project's own cache; packages come from the shared pool.
    own_cache(project / "mkosi.cache")
    return project


def _stages(result_stderr: str) -> dict[str, str]:
    """Each stage's fate in one build, from the build's own JSON log lines: done or reused."""
    fates = {}
    for line in result_stderr.splitlines():
        event = json.loads(line)
        if event.get("type") == "stage-finished":
            fates[event["stage"]] = "reused" if event["reused"] else "done"
    return fates


def _build(project: Path, *args: str) -> dict[str, str]:
    result = subprocess.run(
        [sys.executable, "-m", "mkosi", "--log-format=json", "-i", "-f", *args, "build"],
        cwd=project,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return _stages(result.stderr)


@pytest.fixture(scope="module")
def first_build(project: Path) -> dict[str, str]:
    return _build(project)


def test_final_image_runs_the_program(project: Path, first_build: dict[str, str]) -> None:
    result = _in_tree(project / "image", "/usr/bin/hello")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "Hello from the mkosi example project"


def test_no_compiler_and_no_sources_in_the_final_image(project: Path, first_build: dict[str, str]) -> None:
    image = project / "image"
    assert not (image / "usr/bin/gcc").exists()
    status = subprocess.run(["dpkg", f"--root={image}", "-s", "gcc"], capture_output=True)
    assert status.returncode != 0
    assert not (image / "root/src").exists() and not (image / "root/dest").exists()
    assert not (image / "root/mkosi.build").exists() and not (image / "root/mkosi.postinst").exists()
    assert not list(project.glob(".mkosi-*"))  # the build image is gone


def test_sources_are_what_git_tracks(project: Path, first_build: dict[str, str]) -> None:
    listing = (project / "image/usr/share/example/srcdir-listing").read_text().split()
    assert "hello.c" in listing and "Makefile" in listing
    assert "secret.txt" not in listing  # .gitignore'd
    assert "notes.txt" not in listing  # untracked, and GitFiles=cached by default
    assert ".git" not in listing


def test_postinst_ran_in_both_images(project: Path, first_build: dict[str, str]) -> None:
    assert (project / "image/usr/share/example/postinst-in-build-image").read_text() == "build\n"
    assert (project / "image/etc/mkosi-postinst-ran").read_text() == "final\n"


def test_incremental_rebuilds_only_what_changed(project: Path, first_build: dict[str, str]) -> None:
    assert first_build["bootstrap"] == "done" and first_build["build-script"] == "done"

    unchanged = _build(project)
    assert {fate for name, fate in unchanged.items() if name != "output"} == {"reused"}

    greeting = project / "greeting.c"
    greeting.write_text(greeting.read_text().replace("Hello from", "Hello again from"))
    after_edit = _build(project)
    assert after_edit["bootstrap"] == after_edit["build-image"] == "reused"
    assert after_edit["build-script"] == "done"
    result = _in_tree(project / "image", "/usr/bin/hello")
    assert result.stdout.strip() == "Hello again from the mkosi example project"
    # The installed tree came from the cache, so it was restored next to the output and published
    # by a rename; nothing of the build is left there.
    assert f"workspace (path={project}/.mkosi-workspace.image." in (project / "image.log").read_text()
    assert not list(project.glob(".mkosi-*"))

    with_package = _build(project, "-p", "less")
    assert with_package["bootstrap"] == "done"
    status = subprocess.run(["dpkg", f"--root={project / 'image'}", "-s", "less"], capture_output=True)
    assert status.returncode == 0


def test_failing_script_stops_the_build_with_its_status(tmp_path: Path) -> None:
    (tmp_path / "mkosi.build").write_text("#!/bin/sh\necho about to fail\nexit 7\n")
    (tmp_path / "mkosi.build").chmod(0o755)
    result = mkosi("-d", "debian", "-r", "bookworm", "-t", "directory", "build", cwd=tmp_path, check=False)
    assert result.returncode == 7
    assert "mkosi.build failed with exit status 7" in result.stderr
    assert "about to fail" in result.stderr
    assert not (tmp_path / "image").exists()
    assert not list(tmp_path.glob(".mkosi-*"))


# Counts its runs in $BUILDDIR and ships the count, so the image shows what the build directory held.
COUNTING_SCRIPT = """#!/bin/sh
set -e
runs=$(cat "$BUILDDIR/runs" 2>/dev/null || echo 0)
echo $((runs + 1)) > "$BUILDDIR/runs"
mkdir -p "$DESTDIR/usr/share/example"
cp "$BUILDDIR/runs" "$DESTDIR/usr/share/example/runs"
cat "$SRCDIR/version" > "$DESTDIR/usr/share/example/version"
"""


def test_build_directory_persists_between_builds(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "mkosi.default").write_text(
        "[Distribution]\nDistribution=debian\nRelease=bookworm\n[Output]\nFormat=directory\n"
    )
    (project / "mkosi.build").write_text(COUNTING_SCRIPT)
    (project / "mkosi.build").chmod(0o755)
    (project / "version").write_text("1\n")
    (project / "mkosi.builddir").mkdir()
    cache = project / "mkosi.cache"
    cache.mkdir()
    pool = CACHE / "packages" / "debian~bookworm~x86-64"
    pool.mkdir(parents=True, exist_ok=True)
    (cache / pool.name).symlink_to(pool)
    example = project / "image/usr/share/example"

    _build(project)
    assert (example / "runs").read_text() == "1\n"
    # A source change reruns the script, which finds what its last run left in $BUILDDIR.
    (project / "version").write_text("2\n")
    fates = _build(project)
    assert fates["build-script"] == "done"
    assert (example / "runs").read_text() == "2\n" and (example / "version").read_text() == "2\n"
    assert (project / "mkosi.builddir/runs").read_text() == "2\n"
    # Neither the build directory nor its content reaches the image or counts as a source.
    assert not (project / "image/root/build/runs").exists()
    assert _build(project)["build-script"] == "reused"

    # -ff empties it and keeps it, so persistent builds stay on; it drops the project's own caches,
    # and of the shared package pool linked into them only the link.
    subprocess.run([sys.executable, "-m", "mkosi", "-ff", "clean"], cwd=project, check=True)
    assert (project / "mkosi.builddir").is_dir() and not list((project / "mkosi.builddir").iterdir())
    assert sorted(p.name for p in cache.iterdir()) == []
    assert pool.is_dir()
