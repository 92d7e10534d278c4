"""SourceDateEpoch=: two clean builds of a Debian tarball, at different times and on different numbers
of cores, give the same bytes; another epoch gives others."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from tests.integration.support import CACHE

EPOCH = "1700000000"


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
