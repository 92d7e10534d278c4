"""A pool of downloaded packages shared by builds, safe under concurrency.

Bind-mounting one apt archive into two builds collides on apt's lock, so each build gets its own
archive directory: pool files are linked (or copied across filesystems) into it before the package
manager runs, and new downloads are linked back afterwards. Files only ever enter the pool by an
atomic rename, so a concurrent reader never sees half a package. A pool file found damaged (by the
caller, which knows the checksums its package manager was given) is replaced by the same rename.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from mkosi.checksums import sha256_file

PACKAGE_SUFFIXES = (".deb", ".rpm", ".pkg.tar.zst", ".pkg.tar.xz")
# A file as it is now: inode, size and modification time.
Stamp = tuple[int, int, int]


def _packages(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return [p for p in directory.iterdir() if p.is_file() and p.name.endswith(PACKAGE_SUFFIXES)]


def _place(source: Path, destination: Path, copy: bool = False) -> None:
    """Put a copy of `source` at `destination` atomically: hard link if possible (unless `copy`),
    else copy+rename."""
    temporary = destination.with_name(f".{destination.name}.{os.getpid()}.tmp")
    if copy or not _linked(source, temporary):
        shutil.copyfile(source, temporary)
    os.replace(temporary, destination)


def _linked(source: Path, link: Path) -> bool:
    try:
        os.link(source, link)
    except OSError:  # another file system, or one without hard links
        return False
    return True


@contextlib.contextmanager
def locked(pool: Path) -> Iterator[None]:
    """Serialise writers of one pool, across processes (flock on the pool's lock file)."""
    pool.mkdir(parents=True, exist_ok=True)
    with open(pool / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def link_in(pool: Path, archive: Path, names: Iterable[str] | None = None, *, copies: bool = False) -> int:
    """Put the pool's packages (those called `names`, if given) into `archive`; returns how many.
    With `copies`, never as hard links: for a package manager that writes a download into the
    file it was given, which would write into the pool."""
    archive.mkdir(parents=True, exist_ok=True)
    wanted = None if names is None else set(names)
    count = 0
    for package in _packages(pool):
        if wanted is not None and package.name not in wanted:
            continue
        target = archive / package.name
        if not target.exists():
            _place(package, target, copy=copies)
            count += 1
    return count


def link_out(archive: Path, pool: Path, replacing: Iterable[str] = ()) -> int:
    """Put the packages of `archive` that the pool lacks into it; returns how many.

    The pool's copies of the packages named in `replacing`, found damaged, are replaced by the
    archive's (fresh downloads): by a rename, so that a reader sees the damaged file or the good one,
    never half of either. Everything else in the pool is kept as it is."""
    damaged = set(replacing)
    count = 0
    with locked(pool):
        for package in _packages(archive):
            target = pool / package.name
            if not target.exists() or (package.name in damaged and not os.path.samefile(package, target)):
                _place(package, target)
                count += 1
    return count


def _stamp(path: Path) -> Stamp:
    st = path.stat()
    return st.st_ino, st.st_size, st.st_mtime_ns


def stamps(archive: Path) -> dict[str, Stamp]:
    """Each package file of `archive` as it is now (after link_in), to tell afterwards which ones
    the package manager wrote again: dnf and zypper check every file they are given against the
    repository's checksum, and download one that does not match again, without a word."""
    return {package.name: _stamp(package) for package in _packages(archive)}


def rejected(archive: Path, pool: Path, before: Mapping[str, Stamp]) -> dict[str, tuple[str, str]]:
    """The pool's packages that the package manager downloaded again: those whose file in
    `archive` is another than `before` says, with other contents than the pool's copy; by name,
    the SHA-256 of the pool's copy and of the download."""
    digests = {}
    for name, stamp in before.items():
        path = archive / name
        if path.is_file() and _stamp(path) != stamp and (pool / name).is_file():
            pooled, downloaded = sha256_file(pool / name), sha256_file(path)
            if pooled != downloaded:
                digests[name] = (pooled, downloaded)
    return digests


def damaged_warning(path: Path, digest: str, expected: str, *, named_by: str, then: str) -> str:
    """The warning for a pool file whose SHA-256 is `digest` where the repository (`named_by`)
    names `expected`, and what is done about it (`then`)."""
    return f"package pool file {path} is damaged: its SHA-256 is {digest}, {named_by} names {expected}; {then}"


def drop(pool: Path, names: Iterable[str]) -> None:
    """Remove the pool's copies of `names` (found damaged, and no good copy at hand)."""
    with locked(pool):
        for name in names:
            (pool / name).unlink(missing_ok=True)


def pool_for(cache: Path, distribution: str, release: str, architecture: str) -> Path:
    return cache / f"{distribution}~{release}~{architecture}"
