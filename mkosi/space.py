"""Running out of space: which file system filled up, how big it is, and what the build needed.

A full disk shows up as whatever the tool that hit it says (dpkg, tar, cp, mkfs, Python's own
writes); the build turns every such failure into one line that names the file system, its size and
what is free, and about how much the image's tree needed, before its workspace is removed.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable
from pathlib import Path

from mkosi.disk.filesystems import content_size
from mkosi.errors import MkosiError

NO_SPACE = "No space left on device"
MiB = 1 << 20


def out_of_space(error: BaseException) -> bool:
    """Whether the error, or any error of a group, is a file system that filled up."""
    if isinstance(error, BaseExceptionGroup):
        return any(out_of_space(e) for e in error.exceptions)
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return True
    return NO_SPACE in str(error)


def mount_point(path: Path) -> Path:
    """The directory the file system holding `path` is mounted at."""
    path = path.resolve()
    device = path.stat().st_dev
    while path.parent != path and path.parent.stat().st_dev == device:
        path = path.parent
    return path


def _describe(path: Path) -> str:
    st = os.statvfs(path)
    size, free = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
    return f"{mount_point(path)} ({size // MiB} MiB, {free // MiB} MiB free)"


class OutOfSpace(MkosiError):
    """A file system the build writes to filled up."""


def _culprit(error: BaseException) -> str:
    """Which program hit the full file system, when a program did."""
    if isinstance(error, BaseExceptionGroup):
        return next((c for e in error.exceptions if out_of_space(e) and (c := _culprit(e))), "")
    argv = getattr(error, "argv", None)
    return f" ({Path(argv[0]).name} failed)" if argv else ""


def out_of_space_error(places: Iterable[tuple[str, Path]], tree: Path | None, error: BaseException) -> OutOfSpace:
    """`places` are what the build writes where (the workspace, the output): one line naming each
    file system once, the program that found it full, and how far the image's tree had got."""
    seen: dict[int, list[str]] = {}
    paths: dict[int, Path] = {}
    for what, path in places:
        if path.exists():
            device = path.stat().st_dev
            seen.setdefault(device, []).append(what)
            paths[device] = path
    where = "; ".join(f"{' and '.join(whats)} on {_describe(paths[d])}" for d, whats in seen.items())
    reached = f"; the image's tree had reached {content_size(tree) // MiB} MiB" if tree and tree.is_dir() else ""
    return OutOfSpace(f"no space left on device{_culprit(error)}: {where}{reached}")
