"""What mkosi published, so that `-f` and `clean` never replace or remove anything else.

Every path a build publishes (the image, its sidecars, SHA256SUMS, its log) and every release
directory carries the extended attribute `user.mkosi.output`, naming the output it belongs to. A
path is only ever replaced or removed when it carries that attribute with the right name: a
directory the user made, or the host's /usr after a typo in `-o /usr -f`, has none. The attribute
lives on the inode, so it survives renames and `cp -a`, and nothing else sets it by accident.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from mkosi.errors import MkosiError

ATTRIBUTE = "user.mkosi.output"
# What a file system without user extended attributes (vfat, some network file systems) answers.
_UNSUPPORTED = (errno.ENOTSUP, errno.EOPNOTSUPP)


def mark(path: Path, owner: str) -> bool:
    """Record that mkosi published `path` for the output called `owner`. False when the file system
    keeps no extended attributes: mkosi will not be able to recognise the path later."""
    try:
        os.setxattr(path, ATTRIBUTE, owner.encode(), follow_symlinks=False)
    except OSError as e:
        if e.errno in _UNSUPPORTED:
            return False
        raise
    return True


def owner_of(path: Path) -> str | None:
    """The output `path` was published for, or None when mkosi did not publish it."""
    try:
        return os.getxattr(path, ATTRIBUTE, follow_symlinks=False).decode(errors="replace")
    except OSError as e:
        if e.errno in (errno.ENODATA, errno.ENOENT, *_UNSUPPORTED):
            return None
        raise


def exists(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def check_replaceable(path: Path, owner: str, advice: str = "remove it yourself or choose another output") -> None:
    """Refuse, in one line, to replace or remove `path` unless it is absent or mkosi published it
    for `owner`."""
    if not exists(path):
        return
    shown = str(path) if str(path).isprintable() else repr(str(path))
    if path.is_symlink():
        raise MkosiError(f"{shown} is a symbolic link, not something mkosi published: {advice}")
    found = owner_of(path)
    if found is None:
        raise MkosiError(f"{shown} was not made by mkosi (it has no {ATTRIBUTE} attribute): {advice}")
    if found != owner:
        raise MkosiError(f"{shown} belongs to mkosi's output {found}, not to {owner}: {advice}")


# The owners of the directories mkosi keeps between builds and empties on `mkosi -ff clean`.
BUILD_DIRECTORY = "(build directory)"
STAGE_CACHE = "(stage cache)"


def claim_directory(path: Path, owner: str) -> None:
    """Create `path`, or take it as it is when empty, as a directory mkosi may empty later: what
    it holds then was put there by builds. One that held something already is never marked."""
    path.mkdir(parents=True, exist_ok=True)
    if owner_of(path) is None and not any(path.iterdir()):
        mark(path, owner)
