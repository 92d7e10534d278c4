"""Faults injected for real: concurrent matrices and builds on one cache, kill -9 of a matrix, full
file systems under the output and the workspace."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.support import CACHE, mkosi, own_cache


def _matrix_project(directory: Path, hostname: str, formats: str = '"tar"') -> Path:
    """A project whose matrix builds small Debian images with one epoch, on the shared package cache."""
    directory.mkdir(parents=True)
    (directory / "mkosi.default").write_text(f"[Packages]\nCache={CACHE / 'packages'}\n")
    (directory / "mkosi.matrix").write_text(
        f"[matrix]\nFormat = [{formats}]\n"
        f'[defaults]\nDistribution = "debian"\nRelease = "bookworm"\nPackages = "less"\nHostname = "{hostname}"\n'
        '[release]\nDirectory = "release"\nSourceDateEpoch = 1700000000\n'
    )
    return directory


def _matrix(project: Path, *args: str) -> subprocess.Popen[str]:
    """`mkosi matrix` running; its JSON log goes to a file (a pipe nobody reads yet would fill up
    and stop it), read by _finished()."""
    with _log_of(project).open("w") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "matrix", *args, "-C", str(project), "--log-format=json"],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )


def _log_of(project: Path) -> Path:
    return project.parent / f"{project.name}.stderr"


def _finished(process: subprocess.Popen[str], project: Path, timeout: float = 600) -> tuple[str, str]:
    """Its standard output and log, once it ended."""
    stdout, _ = process.communicate(timeout=timeout)
    return stdout, _log_of(project).read_text()


def test_two_matrices_on_one_package_cache_at_once_both_publish_releases_that_verify(tmp_path: Path) -> None:
    projects = [_matrix_project(tmp_path / name, name) for name in ("first", "second")]
    running = [_matrix(project) for project in projects]
    for process, project in zip(running, projects, strict=True):
        _, stderr = _finished(process, project)
        assert process.returncode == 0, stderr[-3000:]
    for project in projects:
        release = project / "release"
        checked = subprocess.run(
            ["sha256sum", "--strict", "-c", "SHA256SUMS"], cwd=release, capture_output=True, text=True
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr
        verified = _matrix(project, "verify", str(release))
        stdout, stderr = _finished(verified, project)
        assert verified.returncode == 0, stdout + stderr[-3000:]
        assert [line.split() for line in stdout.splitlines()] == [["tar.tar", "identical"], ["SHA256SUMS", "identical"]]


def _stage_runs(stderr: str) -> list[tuple[str, str]]:
    """The (stage, key) pairs a build ran itself, from its JSON events."""
    runs = []
    for line in stderr.splitlines():
        event = json.loads(line)
        if event.get("type") == "stage-finished" and not event["reused"]:
            runs.append((event["stage"], event["key"]))
    return runs


@pytest.fixture
def private_cache(tmp_path: Path) -> Iterator[Path]:
    """A package cache of its own whose pool is the shared one: a stage cache nobody else uses."""
    yield own_cache(tmp_path / "cache")


def test_eight_builds_of_four_configurations_on_one_cache_build_each_stage_once(
    tmp_path: Path, private_cache: Path
) -> None:
    builds = []
    for i in range(8):
        directory = tmp_path / f"build-{i}"
        directory.mkdir()
        argv = [
            sys.executable,
            "-m",
            "mkosi",
            f"--cache={private_cache}",
            "-d",
            "debian",
            "-r",
            "bookworm",
            "-p",
            "less",
        ]
        argv += ["-t", "tar", f"--hostname=config-{i % 4}", "-i", "--log-format=json", "build"]
        # Logs to files: a build stopped on a full pipe while holding a stage's lock would stop the rest.
        with (tmp_path / f"build-{i}.stderr").open("w") as log:
            builds.append(subprocess.Popen(argv, cwd=directory, stderr=log, stdout=subprocess.DEVNULL, text=True))
    runs: Counter[tuple[str, str]] = Counter()
    for i, process in enumerate(builds):
        process.wait(timeout=900)
        stderr = (tmp_path / f"build-{i}.stderr").read_text()
        assert process.returncode == 0, stderr[-3000:]
        runs.update(r for r in _stage_runs(stderr) if r[0] != "output")
    # One bootstrap for all eight, and each configuration's own stages once, by one of its two builds.
    assert Counter(stage for stage, _ in runs) == {"bootstrap": 1, "configure": 4, "clean": 4}
    assert set(runs.values()) == {1}
    for i in range(8):
        assert (tmp_path / f"build-{i}/image.tar").stat().st_size > 0


def _descendants_alive(marker: str) -> str:
    return subprocess.run(["pgrep", "-af", marker], capture_output=True, text=True).stdout


def _shm() -> set[Path]:
    return set(Path("/dev/shm").iterdir())


def test_kill_9_of_a_matrix_leaves_nothing_the_next_run_needs_cleaned(tmp_path: Path) -> None:
    project = _matrix_project(tmp_path / "project", "killed", '"tar", "directory"')
    before = _shm()
    process = _matrix(project)
    deadline = time.monotonic() + 240
    # The cells under way: a tree being installed in a workspace of this run's (the other cell may
    # still be waiting for the bootstrap they share).
    while not [p for p in Path("/dev/shm").glob(".mkosi-workspace.*/root/usr") if p.parents[1] not in before]:
        if process.poll() is not None:
            raise AssertionError(f"the matrix ended before it was killed:\n{_finished(process, project)[1][-3000:]}")
        assert time.monotonic() < deadline, "the cells did not start"
        time.sleep(0.2)
    time.sleep(2)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    left = _shm() - before
    assert left, "the killed matrix had nothing in /dev/shm: the test proves nothing"
    # Nothing of it runs on: every command died with it.
    time.sleep(1)
    for path in left:
        assert subprocess.run(["pgrep", "-af", path.name], capture_output=True, text=True).stdout == ""
    assert not (project / "release").exists()
    # The next run succeeds without anyone cleaning up, and removes what the killed one left.
    again = _matrix(project)
    _, stderr = _finished(again, project)
    assert again.returncode == 0, stderr[-3000:]
    assert sorted(p.name for p in project.iterdir()) == ["mkosi.default", "mkosi.matrix", "release", "release.logs"]
    assert not [p for p in left if p.exists()]


@contextlib.contextmanager
def _mounted(tmp_path: Path, name: str, source: list[str]) -> Iterator[Path]:
    mount = tmp_path / name
    mount.mkdir()
    subprocess.run(["mount", *source, str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


@pytest.fixture
def small_ext4(tmp_path: Path) -> Iterator[Path]:
    """A 128 MiB ext4 file system on a loop device: room for a compressed image, not for a tree."""
    image = tmp_path / "small.ext4"
    with image.open("wb") as f:
        f.truncate(128 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-m", "0", str(image)], check=True)
    with _mounted(tmp_path, "small-ext4", ["-o", "loop", str(image)]) as mount:
        yield mount


TARBALL = ("-d", "debian", "-r", "bookworm", "-p", "less", "-t", "tar", "--compress=zstd")


def test_a_full_output_file_system_fails_in_one_line_and_keeps_the_earlier_output(small_ext4: Path) -> None:
    mkosi(*TARBALL, "build", cwd=small_ext4)
    earlier = (small_ext4 / "image.tar.zst").read_bytes()
    # Again with -f, the workspace next to the output this time: the tree does not fit.
    result = mkosi(*TARBALL, "--workspace=disk", "-f", "build", cwd=small_ext4, check=False)
    assert result.returncode != 0
    problem = [line for line in result.stderr.splitlines() if "no space left" in line]
    assert len(problem) == 1, result.stderr[-3000:]
    assert f"the workspace and the output on {small_ext4} (" in problem[0] and "MiB free" in problem[0]
    assert "the image's tree had reached" in problem[0] and " failed)" in problem[0]
    assert (small_ext4 / "image.tar.zst").read_bytes() == earlier
    assert sorted(p.name for p in small_ext4.iterdir()) == ["image.tar.zst", "image.tar.zst.log", "lost+found"]


def test_a_full_tmpfs_workspace_fails_in_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    with _mounted(tmp_path, "small-tmpfs", ["-t", "tmpfs", "-o", "size=96m", "tmpfs"]) as mount:
        result = mkosi(*TARBALL[:-3], "-t", "directory", "--workspace=disk", "build", cwd=mount, check=False)
        assert result.returncode != 0
        problem = [line for line in result.stderr.splitlines() if "no space left" in line]
        assert len(problem) == 1, result.stderr[-3000:]
        assert f"on {mount} (96 MiB, " in problem[0]
        assert sorted(p.name for p in mount.iterdir()) == ["image.log"]
