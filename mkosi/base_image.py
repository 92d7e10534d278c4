"""The image a build starts from instead of a bootstrap (BaseImage=), and what the build changed in it.

A base is a published image: a directory, a tar archive (compressed or not), or a raw GPT disk
whose root partition is ext4 (read with debugfs) or squashfs (unsquashfs): neither needs a mount
or device-mapper. The base's tree becomes the build's tree; the distribution's package manager
installs `Packages=` on top. Before anything else changes it, every entry under the directories an
extension may hold is recorded (type, mode, owner, size, content digest or link target), so that
the output keeps exactly what differs from the base.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import hashlib
import json
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mkosi import ownership
from mkosi.config import Config, OutputFormat
from mkosi.context import Context
from mkosi.disk.partitions import Role, find_partition
from mkosi.errors import MkosiError
from mkosi.pipeline import hash_tree
from mkosi.run import Argument, CommandError, run

MANIFEST = "base-manifest.json"
# The directories each extension format may hold: what systemd-sysext and systemd-confext overlay.
SCOPES = {OutputFormat.sysext: ("usr", "opt"), OutputFormat.confext: ("etc",)}
_TAR_MAGIC = {b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd", b"\x1f\x8b": "gzip"}


class BaseKind(enum.StrEnum):
    directory = "directory"
    tar = "tar"
    raw = "raw"


def kind_of(path: Path) -> BaseKind:
    """What the base is, from what it holds (never its name), or a one-line refusal."""
    try:
        st = path.stat()
    except OSError as e:
        raise MkosiError(f"BaseImage={path}: {e.strerror or e}") from None
    if stat.S_ISDIR(st.st_mode):
        return BaseKind.directory
    if not stat.S_ISREG(st.st_mode):
        raise MkosiError(f"BaseImage={path}: not a directory or a regular file")
    with path.open("rb") as f:
        head = f.read(1024)
    if head[512:520] == b"EFI PART":
        return BaseKind.raw
    if head[257:262] == b"ustar" or any(head.startswith(magic) for magic in _TAR_MAGIC):
        return BaseKind.tar
    raise MkosiError(f"BaseImage={path}: neither a tar archive nor a GPT disk image")


async def root_filesystem(path: Path, config: Config, log: Any) -> tuple[int, int, str]:
    """The offset, size and file system type of a raw base's root partition."""
    try:
        offset, size = await find_partition(path, Role.root, config.architecture, log)
    except (LookupError, CommandError):
        raise MkosiError(f"BaseImage={path}: no {config.architecture} root partition in its partition table") from None
    probe = await run(
        ["blkid", "-p", "-O", str(offset), "-s", "TYPE", "-o", "value", path], capture_stdout=True, check=False, log=log
    )
    fstype = probe.stdout.strip()
    if fstype not in ("ext4", "squashfs"):
        found = f"a {fstype} root" if fstype else "a root of no known file system (encrypted?)"
        raise MkosiError(f"BaseImage={path}: {found}, mkosi reads ext4 and squashfs roots without mounting them")
    return offset, size, fstype


async def check(config: Config, log: Any) -> None:
    """Before any work: the base exists and mkosi can read it."""
    if config.base_image is None:
        return
    if kind_of(config.base_image) is BaseKind.raw:
        await root_filesystem(config.base_image, config, log)


@functools.lru_cache(maxsize=8)
def _digest(path: Path, signature: tuple[int, int, int, int]) -> str:
    return hash_tree([path])


def digest(path: Path | None) -> str | None:
    """What stands for the base in stage keys: a digest of its content (hashed once per process for
    an unchanged file, every time for a directory; a base that does not exist yet, another matrix
    cell's, is "missing")."""
    if path is None:
        return None
    try:
        st = path.stat()
    except OSError:
        return hash_tree([path])
    # A file's identity and size stand for its content; a directory's say nothing of the files in it.
    if not stat.S_ISREG(st.st_mode):
        return hash_tree([path])
    return _digest(path, (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))


async def _unpack_raw(context: Context, base: Path) -> None:
    offset, size, fstype = await root_filesystem(base, context.config, context.log)
    partition = context.workspace / "base-root.img"
    try:
        # Byte offsets: a foreign disk's partitions need not be aligned to anything dd's blocks are.
        window = [f"skip={offset}", f"count={size}", "iflag=skip_bytes,count_bytes"]
        command: list[Argument] = ["dd", f"if={base}", f"of={partition}", "bs=1M", *window, "conv=sparse"]
        await run([*command, "status=none"], log=context.log)
        if fstype == "squashfs":
            command = ["unsquashfs", "-quiet", "-no-progress", "-force", "-dest", context.root, partition]
            await run(command, log=context.log)
        else:
            context.root.mkdir()
            # rdump keeps modes, owners and times; it writes <dest>/<name of the dumped directory>.
            await run(["debugfs", "-R", f"rdump / {context.root}", partition], log=context.log)
    finally:
        partition.unlink(missing_ok=True)


async def unpack(context: Context) -> None:
    """The base's tree as the build's tree."""
    base = context.config.base_image
    assert base is not None
    kind = kind_of(base)
    log = context.log
    if kind is BaseKind.directory:
        await run(["cp", "-a", "--reflink=auto", "--no-target-directory", base, context.root], log=log)
        # mkosi's mark of what it published belongs to the published tree, not to this image's root.
        with contextlib.suppress(OSError):
            os.removexattr(context.root, ownership.ATTRIBUTE)
    elif kind is BaseKind.tar:
        context.root.mkdir()
        options = ["--numeric-owner", "--xattrs", "--xattrs-include=*", "--acls", "--same-permissions"]
        await run(["tar", "--extract", f"--file={base}", f"--directory={context.root}", *options], log=log)
    else:
        await _unpack_raw(context, base)


@dataclass(frozen=True)
class Entry:
    """What an overlay shows of one path: its type and permissions, owner, and content."""

    mode: int
    uid: int
    gid: int
    content: str  # a regular file's SHA-256, a link's target, a device's numbers; "" for a directory

    def as_json(self) -> list[object]:
        return [self.mode, self.uid, self.gid, self.content]


def _content(path: Path, st: os.stat_result) -> str:
    if stat.S_ISREG(st.st_mode):
        with path.open("rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    if stat.S_ISLNK(st.st_mode):
        return os.readlink(path)
    if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        return f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    return ""


def entry(path: Path) -> Entry:
    st = path.lstat()
    return Entry(st.st_mode, st.st_uid, st.st_gid, _content(path, st))


def walk(root: Path, scope: tuple[str, ...]) -> Iterator[str]:
    """Every path under the scope's directories, relative to `root`, parents first; links to
    directories are entries, never followed."""
    for top in scope:
        if not (root / top).is_dir() or (root / top).is_symlink():
            continue
        yield top
        for directory, dirnames, filenames in os.walk(root / top):
            dirnames.sort()
            relative = os.path.relpath(directory, root)
            for name in sorted([*dirnames, *filenames]):
                yield os.path.join(relative, name)


def record(context: Context, scope: tuple[str, ...]) -> None:
    """Remember the base's entries under `scope`, before the build changes anything."""
    entries = {path: entry(context.root / path).as_json() for path in walk(context.root, scope)}
    (context.workspace / MANIFEST).write_text(json.dumps(entries))


def recorded(context: Context) -> frozenset[str]:
    """The base's paths the record covers (none when the build has no base): what the later tree
    stages leave alone, since the base is configured and cleaned already, and an overlay cannot
    take away what they would remove from it."""
    path = context.workspace / MANIFEST
    return frozenset(json.loads(path.read_text())) if path.exists() else frozenset()


def load(context: Context) -> dict[str, Entry]:
    data = json.loads((context.workspace / MANIFEST).read_text())
    return {path: Entry(*fields) for path, fields in data.items()}


def changed(context: Context, scope: tuple[str, ...]) -> list[str]:
    """The paths under `scope` the build added or changed, relative to the tree, parents first; a
    path of the base the build removed is refused, since an overlay cannot take it away."""
    base = load(context)
    root = context.root
    removed = [path for path in base if not os.path.lexists(root / path)]
    if removed:
        more = f" (and {len(removed) - 1} more)" if len(removed) > 1 else ""
        raise MkosiError(
            f"the build removed /{removed[0]}{more} from BaseImage=: an extension can only add or change "
            "files, systemd overlays it on the base"
        )
    return [path for path in walk(root, scope) if base.get(path) != entry(root / path)]
