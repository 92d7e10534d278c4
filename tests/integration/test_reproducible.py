"""SourceDateEpoch=: two clean builds of the same inputs, in other directories, at other times, on
other numbers of cores, give the same bytes (checked with cmp); another input gives others.

One bootable disk covers ext4, verity, the ESP, systemd-boot and the signed UKI at once: built cold
on tmpfs, then with -i on one core with the workspace on disk (storing its stages), then with -i
again (restoring them). Each build is a clean one of its own project copy.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.support import CACHE, ModuleDir, mkosi, own_cache
from tests.integration.test_buildscript import _stages
from tests.integration.test_disk import _by_type
from tests.integration.test_protected import VERITY_TYPE, _certificate

EPOCH = "1700000000"
DEBIAN = ("-d", "debian", "-r", "bookworm", f"--source-date-epoch={EPOCH}")


def _same(first: Path, second: Path) -> bool:
    return subprocess.run(["cmp", "-s", str(first), str(second)]).returncode == 0


def _project(directory: Path, template: Path | None = None) -> Path:
    """A project with an extra file, or a copy of `template` (same keys, same files)."""
    if template is not None:
        shutil.copytree(template, directory, symlinks=True)
        return directory
    (directory / "mkosi.extra/etc").mkdir(parents=True)
    (directory / "mkosi.extra/etc/release-note").write_text("built to be rebuilt\n")
    return directory


def _tarball(directory: Path, epoch: str, *prefix: str) -> bytes:
    directory.mkdir()
    argv = [sys.executable, "-m", "mkosi", f"--cache={CACHE / 'packages'}", "-d", "debian", "-r", "bookworm"]
    argv += ["-p", "less", "-t", "tar", "--compress=zstd", f"--source-date-epoch={epoch}", "build"]
    result = subprocess.run([*prefix, *argv], cwd=directory, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return (directory / "image.tar.zst").read_bytes()


def test_the_same_epoch_gives_the_same_tarball_and_another_epoch_another(tmp_path: Path) -> None:
    first = _tarball(tmp_path / "first", EPOCH)
    time.sleep(2)
    # Another directory, a few seconds later, on one core: compressors and dpkg must not care.
    second = _tarball(tmp_path / "second", EPOCH, "taskset", "-c", "0")
    assert first == second
    assert _tarball(tmp_path / "later", str(int(EPOCH) + 86400)) != first


def _listing(tree: Path) -> str:
    """What a directory image is, as GNU find and getfattr print it: every path's type, mode, owner,
    group, mtime, size and link target, its extended attributes and its content's digest."""
    # A directory's size is its file system's business (tmpfs and ext4 count differently): not listed.
    metadata = subprocess.run(
        ["find", ".", "(", "-type", "d", "-printf", r"%p %y %m %U %G %T@\n", ")", "-o", "-printf",
         r"%p %y %m %U %G %T@ %s %l\n"], cwd=tree, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    xattrs = subprocess.run(
        ["getfattr", "-R", "-h", "-d", "-m", "-", "--absolute-names", "."], cwd=tree, capture_output=True, text=True
    ).stdout
    digests = subprocess.run(
        "find . -type f -print0 | sort -z | xargs -0 sha256sum", shell=True, cwd=tree, capture_output=True, text=True,
        check=True,
    ).stdout  # fmt: skip
    return "\n".join(sorted(metadata.splitlines())) + xattrs + digests


def test_directories_of_the_same_inputs_list_the_same(tmp_path: Path) -> None:
    first, second = _project(tmp_path / "first"), _project(tmp_path / "second", tmp_path / "first")
    mkosi(*DEBIAN, "-p", "less", "-t", "directory", "build", cwd=first)
    time.sleep(2)
    mkosi(*DEBIAN, "-p", "less", "-t", "directory", "--workspace=disk", "build", cwd=second)
    listing = _listing(first / "image")
    assert " 1700000000.0000000000 " in listing and "usr/bin/less" in listing
    assert listing == _listing(second / "image")
    # Another epoch: the same files, other times.
    mkosi(*DEBIAN[:-1], "--source-date-epoch=1700086400", "-p", "less", "-t", "directory", "-f", "build", cwd=second)
    assert listing != _listing(second / "image")
    subprocess.run(["rm", "-rf", "--one-file-system", str(first / "image"), str(second / "image")], check=True)


def test_squashfs_with_verity_rebuilds_to_the_same_bytes_and_a_changed_file_to_others(tmp_path: Path) -> None:
    first, second = _project(tmp_path / "first"), _project(tmp_path / "second", tmp_path / "first")
    options = (*DEBIAN, "-p", "less", "-t", "raw_squashfs", "--verity", "build")
    mkosi(*options, cwd=first)
    time.sleep(2)
    mkosi(*options, cwd=second)
    assert _same(first / "image.raw", second / "image.raw")
    assert (first / "image.roothash").read_text() == (second / "image.roothash").read_text()
    (second / "mkosi.extra/etc/release-note").write_text("built to be rebuilt, once more\n")
    mkosi(*options[:-1], "-f", "build", cwd=second)
    assert not _same(first / "image.raw", second / "image.raw")
    assert (first / "image.roothash").read_text() != (second / "image.roothash").read_text()


@pytest.fixture(scope="module")
def bootable_projects(module_dir: ModuleDir) -> tuple[Path, Path]:
    """Two copies of one bootable project with a Secure Boot key, the second with a stage cache."""
    first = _project(module_dir("reproducible") / "first")
    _certificate(first, "mkosi.secure-boot")
    second = _project(first.parent / "second", first)
    own_cache(second / "mkosi.cache")
    return first, second


BOOTABLE = (*DEBIAN, "-t", "raw_gpt", "--bootable", "--verity", "--secure-boot")


def _in_project(project: Path, *args: str, prefix: tuple[str, ...] = ()) -> str:
    """A bootable build with the project's own cache (its stage cache with it); returns stderr."""
    argv = [*prefix, sys.executable, "-m", "mkosi", *BOOTABLE, *args]
    built = subprocess.run(argv, cwd=project, capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-3000:]
    return built.stderr


def test_a_signed_bootable_disk_rebuilds_to_the_same_bytes_cold_incremental_and_on_disk(
    bootable_projects: tuple[Path, Path],
) -> None:
    first, second = bootable_projects
    mkosi(*BOOTABLE, "build", cwd=first)
    image = first / "image.raw"
    assert VERITY_TYPE in _by_type(image)
    time.sleep(2)
    # On one core, the workspace on disk, storing every stage for -i in the project's own cache.
    _in_project(second, "-i", "--workspace=disk", "build", prefix=("taskset", "-c", "0"))
    assert _same(image, second / "image.raw"), "a build on one core with its workspace on disk differs"
    assert list((second / "mkosi.cache/stages").iterdir())
    # Every stage restored from the cache this time.
    stages = _stages(_in_project(second, "-i", "-f", "--log-format=json", "build"))
    assert stages["bootstrap"] == "reused"
    assert _same(image, second / "image.raw"), "an -i rebuild from the stage cache differs from a cold build"
    # One extra file changed: other bytes, and another root hash.
    (second / "mkosi.extra/etc/release-note").write_text("built to be rebuilt, once more\n")
    _in_project(second, "-i", "-f", "build")
    assert not _same(image, second / "image.raw")
    assert (first / "image.roothash").read_text() != (second / "image.roothash").read_text()


def test_a_cpio_initrd_rebuilds_to_the_same_bytes_and_the_kernel_can_read_it(tmp_path: Path) -> None:
    first, second = _project(tmp_path / "first"), _project(tmp_path / "second", tmp_path / "first")
    options = (*DEBIAN, "-p", "less", "-t", "cpio", "--compress=zstd", "build")
    mkosi(*options, cwd=first)
    time.sleep(2)
    subprocess.run(["taskset", "-c", "0", sys.executable, "-m", "mkosi", f"--cache={CACHE / 'packages'}", *options],
                   cwd=second, check=True, capture_output=True)  # fmt: skip
    archive = first / "image.cpio.zst"
    assert _same(archive, second / "image.cpio.zst")
    members = subprocess.run(f"zstd -dc {archive} | cpio -itv --quiet", shell=True, capture_output=True, text=True,
                             check=True).stdout.splitlines()  # fmt: skip
    init = next(line for line in members if line.split()[8:9] == ["init"])
    assert init.startswith("l") and init.endswith("init -> usr/lib/systemd/systemd")
    assert any(line.endswith(" usr/bin/less") for line in members)
    # In name order, but for files with several hard links: cpio writes them with their last link.
    single = [line.split()[8] for line in members if not (line.startswith("-") and line.split()[1] != "1")]
    assert single == sorted(single)
