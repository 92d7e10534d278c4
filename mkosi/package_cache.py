"""A pool of downloaded packages shared by builds, safe under concurrency.

Bind-mounting one apt archive into two builds collides on apt's lock, so each build gets its own
archive directory: pool files are linked (or copied across filesystems) into it before the package
manager runs, and new downloads are linked back afterwards. Files only ever enter the pool by an
atomic rename, so a concurrent reader never sees half a package.

Package managers' hooks call this module as a program:
    python -m mkosi.package_cache link-in POOL ARCHIVE_DIR
    python -m mkosi.package_cache link-out ARCHIVE_DIR POOL
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

PACKAGE_SUFFIXES = (".deb", ".rpm", ".pkg.tar.zst", ".pkg.tar.xz")


def _packages(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return [p for p in directory.iterdir() if p.is_file() and p.name.endswith(PACKAGE_SUFFIXES)]


def _place(source: Path, destination: Path) -> None:
    """Put a copy of `source` at `destination` atomically: hard link if possible, else copy+rename."""
    temporary = destination.with_name(f".{destination.name}.{os.getpid()}.tmp")
    try:
        os.link(source, temporary)
    except OSError:
        shutil.copyfile(source, temporary)
    os.replace(temporary, destination)


@contextlib.contextmanager
def locked(pool: Path) -> Iterator[None]:
    """Serialise writers of one pool, across processes (flock on the pool's lock file)."""
    pool.mkdir(parents=True, exist_ok=True)
    with open(pool / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def link_in(pool: Path, archive: Path) -> int:
    archive.mkdir(parents=True, exist_ok=True)
    count = 0
    for package in _packages(pool):
        target = archive / package.name
        if not target.exists():
            _place(package, target)
            count += 1
    return count


def link_out(archive: Path, pool: Path) -> int:
    count = 0
    with locked(pool):
        for package in _packages(archive):
            target = pool / package.name
            if not target.exists():
                _place(package, target)
                count += 1
    return count


def pool_for(cache: Path, distribution: str, release: str, architecture: str) -> Path:
    return cache / f"{distribution}~{release}~{architecture}"


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] not in ("link-in", "link-out"):
        print(__doc__, file=sys.stderr)
        return 2
    verb, source, destination = argv[0], Path(argv[1]), Path(argv[2])
    count = link_in(source, destination) if verb == "link-in" else link_out(source, destination)
    print(f"{verb}: {count} packages")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
