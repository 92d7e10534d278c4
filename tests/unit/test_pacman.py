"""pacman's failures to download, as one line: from pacman 6.0.2's real output against the tests'
faulty mirror (tests/integration/faulty_mirror.py in front of the local Arch mirror, each Server=
named three times as mkosi does)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from mkosi.package_managers import DamagedDownload, pacman
from mkosi.run import CommandError

MIRROR = "http://127.0.0.1:40029/arch"
NAME = "mkosi-test-hello-1-1-x86_64.pkg.tar.zst"
URL = f"{MIRROR}/extra/os/x86_64/{NAME}"
REPOSITORIES = [pacman.Repository(r, f"{MIRROR}/$repo/os/$arch") for r in ("core", "extra")]
FAILED = f"error: failed retrieving file '{NAME}' from 127.0.0.1:40029 : "
AFTER = [
    "warning: too many errors from 127.0.0.1:40029, skipping for the remainder of this transaction",
    "warning: failed to retrieve some files",
    "error: failed to commit transaction (download library error)",
]
SLOW = "Operation too slow. Less than 1 bytes/sec transferred the last 10 seconds"
RESET = "Recv failure: Connection reset by peer"
CUT = [f"transfer closed with {n} bytes remaining to read" for n in (645, 323, 162)]
CHECKSUM = "invalid or corrupted package (checksum)"
# A truncated or a changed file, the second time (mkosi ran pacman again after the first).
CORRUPTED = [
    " mkosi-test-hello-1-1-x86_64 downloading...",
    "checking keyring...",
    "checking package integrity...",
    f":: File /ws/pacman/cache/{NAME} is corrupted ({CHECKSUM}).",
    "Do you want to delete it? [Y/n] ",
    "Errors occurred, no packages were upgraded.",
    f"error: failed to commit transaction ({CHECKSUM})",
]


def _sync(directory: Path) -> Path:
    """Sync databases as repo-add makes them: a directory NAME-VERSION-RELEASE for each package."""
    for repository, package in (("core", "mkosi-test-base-1-1"), ("extra", "mkosi-test-hello-1-1")):
        with tarfile.open(directory / f"{repository}.db", "w:gz") as archive:
            entry = tarfile.TarInfo(package)
            entry.type = tarfile.DIRTYPE
            archive.addfile(entry)
            desc = f"%FILENAME%\n{package}-x86_64.pkg.tar.zst\n".encode()
            info = tarfile.TarInfo(f"{package}/desc")
            info.size = len(desc)
            archive.addfile(info, io.BytesIO(desc))
    return directory


@pytest.mark.parametrize(
    ("tail", "what", "reason", "tries", "network"),
    [
        (
            [FAILED + SLOW] * 3 + AFTER,
            "the mirror sent nothing for 10 s (the package manager's own limit, not MirrorTimeout=)",
            SLOW,
            3,
            True,
        ),
        ([FAILED + RESET] * 3 + AFTER, "the mirror reset the connection", RESET, 3, True),
        (
            [FAILED + c for c in CUT] + AFTER,
            "the mirror closed the connection before the end of the file",
            CUT[-1],
            3,
            True,
        ),
        (CORRUPTED, "the file has another SHA-256 than the package index names", CHECKSUM, 2, False),
    ],
    ids=["stall", "reset", "cut", "truncated-or-corrupted"],
)
def test_a_failed_download_is_one_line_naming_the_url(
    tail: list[str], what: str, reason: str, tries: int, network: bool, tmp_path: Path
) -> None:
    error = CommandError(["pacman", "-Sy"], 1, tail)
    failure = pacman.download_failure(error, REPOSITORIES, _sync(tmp_path), "x86_64")
    assert failure is not None
    assert str(failure) == f"could not download {URL}: {what}, after {tries} tries (pacman: {reason})"
    assert failure.network == network and isinstance(failure, DamagedDownload) == (not network)


def test_a_database_is_named_by_its_repository(tmp_path: Path) -> None:
    # The databases come first, before any sync database exists.
    tail = [f"error: failed retrieving file 'core.db' from 127.0.0.1:40029 : {RESET}"]
    failure = pacman.download_failure(CommandError(["pacman"], 1, tail), REPOSITORIES, tmp_path, "x86_64")
    assert failure is not None and failure.url == f"{MIRROR}/core/os/x86_64/core.db"


def test_other_failures_are_not_downloads(tmp_path: Path) -> None:
    tail = ["error: target not found: nothing"]
    assert pacman.download_failure(CommandError(["pacman"], 1, tail), REPOSITORIES, tmp_path, "x86_64") is None
