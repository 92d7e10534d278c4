"""Paths inside an image's tree, followed as the image itself would follow them.

An image's tree is full of symbolic links that only mean something inside the image: an absolute
target (`etc/localtime -> /usr/share/zoneinfo/UTC`) names a file of the image, not of the build
host. mkosi runs on the host, so every path it opens in a tree would follow such a link out of the
tree, and a link made by a project's `mkosi.extra` or scripts (`etc/machine-id -> /tmp/SOMEFILE`,
`etc/shadow -> /etc/shadow`) would make mkosi read or overwrite the host's own files. So mkosi
never opens a path inside a tree directly: links are followed here, component by component, as in a
chroot (an absolute target starts again at the tree's top, `..` never climbs above it), and what is
written replaces the file at the path instead of writing through it.

Nothing else changes a tree while mkosi works on it on the host (scripts and package managers run
before or after, never beside it), so resolving a path and then using it is safe.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path, PurePosixPath

from mkosi.errors import MkosiError

# The kernel's own limit on links followed while resolving one path.
MAX_LINKS = 40


def _parts(path: str | PurePosixPath) -> list[str]:
    return [part for part in PurePosixPath(path).parts if part not in ("/", ".")]


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return path.lstat()
    except FileNotFoundError:
        return None


def shown(path: str | PurePosixPath) -> str:
    """How messages name a path of the image: absolute, as the image sees it."""
    text = "/" + "/".join(_parts(path))
    return text if text.isprintable() else repr(text)


def resolve(root: Path, path: str | PurePosixPath, *, follow_last: bool = True) -> Path:
    """The host path of `path` (relative to the image's top, or absolute in the image) in the tree at
    `root`, every link on the way followed inside the tree; the last one only with `follow_last`.
    Components that do not exist are kept as they are."""
    pending = _parts(path)
    resolved: list[str] = []
    links = 0
    while pending:
        name = pending.pop(0)
        if name == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = root.joinpath(*resolved, name)
        if (pending or follow_last) and candidate.is_symlink():
            links += 1
            if links > MAX_LINKS:
                raise MkosiError(f"too many levels of symbolic links in the image at {shown(path)}")
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            pending = _parts(target) + pending
            continue
        resolved.append(name)
    return root.joinpath(*resolved)


def read_bytes(root: Path, path: str) -> bytes | None:
    """The content of the regular file at `path` in the image; None when there is none (a device
    node, a pipe or a directory there is never opened)."""
    found = resolve(root, path)
    st = _lstat(found)
    if st is None or not stat.S_ISREG(st.st_mode):
        return None
    fd = os.open(found, os.O_RDONLY | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        return f.read()


def write_bytes(root: Path, path: str, data: bytes, mode: int = 0o644) -> None:
    """A regular file with `data` at `path` in the image, replacing whatever non-directory is there:
    a link, a device node or a pipe is replaced, never written through. A regular file keeps its
    mode and owner."""
    target = resolve(root, path, follow_last=False)
    st = _lstat(target)
    owner = None
    if st is not None and stat.S_ISREG(st.st_mode):
        mode, owner = stat.S_IMODE(st.st_mode), (st.st_uid, st.st_gid)
    temporary = target.with_name(f".mkosi-new.{target.name}")
    try:
        _remove_non_directory(temporary)  # left by a build killed right here
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if owner is not None:
                os.fchown(f.fileno(), *owner)
            # After chown, which clears set-id bits, and whatever the umask.
            os.fchmod(f.fileno(), mode)
        os.rename(temporary, target)
    except OSError as e:
        temporary.unlink(missing_ok=True)
        raise MkosiError(f"cannot write {shown(path)} in the image: {e.strerror or e}") from None


def remove(root: Path, path: str) -> None:
    """Remove the non-directory at `path` in the image (a link itself, not what it points to)."""
    _remove_non_directory(resolve(root, path, follow_last=False))


def _remove_non_directory(path: Path) -> None:
    st = _lstat(path)
    if st is not None and not stat.S_ISDIR(st.st_mode):
        path.unlink()


def is_regular_file(root: Path, path: str) -> bool:
    """Whether `path` in the image is itself a regular file (not a link to one)."""
    st = _lstat(resolve(root, path, follow_last=False))
    return st is not None and stat.S_ISREG(st.st_mode)


def make_directories(root: Path, path: str) -> Path:
    """`path` in the image as a directory, made with its parents where missing; its host path."""
    target = resolve(root, path)
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MkosiError(f"cannot make the directory {shown(path)} in the image: {e.strerror or e}") from None
    # mkdir -p went through nothing but directories: resolve() left no link on the way.
    return target


def directory(root: Path, path: str) -> Path | None:
    """The host path of the directory at `path` in the image, links followed inside it; None when
    there is none."""
    target = resolve(root, path)
    st = _lstat(target)
    return target if st is not None and stat.S_ISDIR(st.st_mode) else None


def merge(source: Path, root: Path) -> None:
    """Move everything under `source` into the image at `root`, as `cp -a source/. root` would
    put it, but with the image's links followed inside the image. `source` is consumed: it must be
    on the same file system and hold nothing but what is to be moved (a fresh copy or $DESTDIR).

    A directory merges into the image's directory of that name (or the one its link leads to
    inside the image) and gives it its own mode, owner, times and extended attributes, as cp -a does;
    everything else (files, links, device nodes, pipes) is moved as it is, replacing a
    non-directory in its way. A directory never replaces a non-directory nor the other way round.
    """
    _merge(source, root, root)
    _copy_metadata(source, root)


def _merge(source: Path, destination: Path, root: Path) -> None:
    with os.scandir(source) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            _merge_entry(Path(entry.path), destination / entry.name, root)


def _merge_entry(source: Path, destination: Path, root: Path) -> None:
    inside = PurePosixPath(destination.relative_to(root))
    st = _lstat(destination)
    if not source.is_dir() or source.is_symlink():
        if st is not None and stat.S_ISDIR(st.st_mode):
            raise MkosiError(f"cannot replace the directory {shown(inside)} in the image with a non-directory")
        # rename() replaces a link or a device node itself; it never writes through it.
        os.rename(source, destination)
        return
    if st is None:
        os.rename(source, destination)
        return
    target = destination if stat.S_ISDIR(st.st_mode) else resolve(root, inside)
    found = _lstat(target)
    if found is None or not stat.S_ISDIR(found.st_mode):
        raise MkosiError(f"cannot merge a directory into {shown(inside)} in the image: it is not a directory")
    _merge(source, target, root)
    _copy_metadata(source, target)


def _copy_metadata(source: Path, destination: Path) -> None:
    st = source.lstat()
    os.chown(destination, st.st_uid, st.st_gid, follow_symlinks=False)
    # Mode, times and extended attributes (ACLs among them): last, once nothing more moves in.
    shutil.copystat(source, destination, follow_symlinks=False)
