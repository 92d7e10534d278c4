"""Filesystem images made from a tree, as plain files: ext4, btrfs, squashfs, erofs, swap and the FAT ESP."""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mkosi.concurrency import cpu_heavy
from mkosi.disk.partitions import MiB, align
from mkosi.errors import MkosiError
from mkosi.run import Argument, run

BLOCK = 4096
# Per-inode cost in an ext4 image (inode table entry plus directory entry), generously.
INODE_OVERHEAD = 512


def content_size(tree: Path) -> int:
    """Bytes the tree occupies in 4 KiB blocks, counting every inode's metadata too."""
    total = 0
    for directory, dirnames, filenames in os.walk(tree):
        total += BLOCK + INODE_OVERHEAD * (len(dirnames) + len(filenames))
        for name in filenames:
            st = os.lstat(os.path.join(directory, name))
            total += align(st.st_blocks * 512 if st.st_nlink == 1 else st.st_size, BLOCK)
    return total


def minimum_size(tree: Path) -> int:
    """The least a filesystem holding the tree can have: content, metadata and a small journal."""
    return align(content_size(tree) * 11 // 10 + 8 * MiB)


def default_size(tree: Path, writable: bool) -> int:
    """Room for the content plus filesystem metadata, and for a writable root some space to grow."""
    content = content_size(tree)
    size = content * 6 // 5 + 64 * MiB
    if writable:
        size += max(content // 2, 512 * MiB)
    return align(size)


def _allocate(image: Path, size: int) -> None:
    with image.open("wb") as f:
        f.truncate(size)


async def make_ext4(
    tree: Path, image: Path, size: int, fs_uuid: uuid.UUID, label: str, log: Any, epoch: int | None = None
) -> None:
    """An ext4 image of `tree`. With `epoch` (SourceDateEpoch=) the same tree gives the same bytes:
    mkfs.ext4 stamps what it makes itself with E2FSPROGS_FAKE_TIME, and set_inode_times() the rest."""
    _allocate(image, size)
    await run(
        [
            "mkfs.ext4",
            "-q",
            "-F",
            "-L",
            label,
            "-U",
            str(fs_uuid),
            "-d",
            tree,
            # The same inputs give the same filesystem: no random hash seed, no creation-time UUIDs.
            "-E",
            f"hash_seed={fs_uuid},root_owner=0:0",
            image,
        ],
        log=log,
    )
    if epoch is not None:
        await set_inode_times(image, epoch, log)


def used_inodes(dumpe2fs: str) -> list[int]:
    """The inodes in use, from dumpe2fs's "Inode count" and each group's "Free inodes" ranges; of the
    reserved ones (1-10) only the root directory's (2), which mkfs.ext4 -d fills from the tree."""
    found = re.search(r"^Inode count:\s+(\d+)$", dumpe2fs, re.MULTILINE)
    if found is None:
        raise MkosiError(f"dumpe2fs printed no inode count:\n{dumpe2fs[:500]}")
    count = int(found[1])
    free: set[int] = set()
    for ranges in re.findall(r"^\s+Free inodes: (.*)$", dumpe2fs, re.MULTILINE):
        for part in filter(None, (r.strip() for r in ranges.split(","))):
            first, _, last = part.partition("-")
            free.update(range(int(first), int(last or first) + 1))
    return [n for n in range(1, count + 1) if n not in free and (n == 2 or n > 10)]


async def set_inode_times(image: Path, epoch: int, log: Any) -> None:
    """Every inode's change and access time set to the epoch. mkfs.ext4 1.47.0 copies both from the
    tree: the change time is when the build wrote the file, the access time when it last read it
    (relatime), and neither can be set on the tree itself. Inodes are named by number, so that no
    file name has to survive debugfs's command parser."""
    listing = await run(["dumpe2fs", image], capture_stdout=True, log=log)
    commands = image.with_name(image.name + ".debugfs")
    commands.write_text(
        "".join(f"sif <{n}> {field} @{epoch}\n" for n in used_inodes(listing.stdout) for field in ("ctime", "atime"))
    )
    try:
        await run(["debugfs", "-w", "-f", commands, image], log=log)
    finally:
        commands.unlink()


async def make_btrfs(tree: Path, image: Path, size: int, fs_uuid: uuid.UUID, label: str, log: Any) -> None:
    _allocate(image, size)
    await run(["mkfs.btrfs", "-q", "-f", "-L", label, "-U", str(fs_uuid), "--rootdir", tree, image], log=log)


async def make_squashfs(tree: Path, image: Path, log: Any) -> None:
    # zstd's level 15, mksquashfs's default, took 37.5 s for a 670 MB bootable tree here; level 6
    # took 4.1 s for an image 6 % larger (level 3: 2.0 s, 12 % larger).
    command: list[Argument] = ["mksquashfs", tree, image, "-noappend", "-quiet", "-no-progress", "-xattrs"]
    # mksquashfs compresses on every core.
    async with cpu_heavy():
        await run([*command, "-comp", "zstd", "-Xcompression-level", "6"], log=log)


async def make_erofs(tree: Path, image: Path, fs_uuid: uuid.UUID, log: Any, epoch: int | None = None) -> None:
    # lz4hc: what the kernel reads fastest among erofs-utils 1.5's two compressors. Its UUID is the
    # seed's; with SourceDateEpoch= every inode and the superblock get the epoch (-T), since 1.5
    # otherwise stamps the superblock with the time of the build.
    command: list[Argument] = ["mkfs.erofs", "--quiet", "-zlz4hc", f"-U{fs_uuid}"]
    if epoch is not None:
        command.append(f"-T{epoch}")
    async with cpu_heavy():
        await run([*command, image, tree], log=log)


async def make_swap(image: Path, size: int, fs_uuid: uuid.UUID, label: str, log: Any) -> None:
    _allocate(image, size)
    await run(["mkswap", "-q", "-L", label, "-U", str(fs_uuid), image], log=log)


def _fat_bits(size: int) -> str:
    # mtools fails on small FAT32 filesystems, mkfs.vfat refuses FAT16 below 16 MiB; UEFI reads all three.
    return "32" if size >= 256 * MiB else "16" if size >= 16 * MiB else "12"


async def make_esp(
    image: Path, size: int, volume_id: int, files: Mapping[str, Path], log: Any, epoch: int | None = None
) -> None:
    """A FAT ESP filled with mtools, since vfat cannot be mounted on every build host.

    `files` maps paths inside the ESP ("EFI/BOOT/BOOTX64.EFI") to host files. With `epoch`
    (SourceDateEpoch=) the same files give the same bytes: see _make_reproducible_esp().
    """
    if epoch is not None:
        await _make_reproducible_esp(image, size, volume_id, files, log, epoch)
        return
    fat = _fat_bits(size)
    await run(
        ["mkfs.vfat", "-C", "-F", fat, "-n", "ESP", "-i", f"{volume_id:08X}", image, str(size // 1024)],
        log=log,
    )
    env = {"MTOOLS_SKIP_CHECK": "1"}
    # Every directory on the way to every file, parents first.
    directories = {"/".join(Path(t).parts[:i]) for t in files for i in range(1, len(Path(t).parts))}
    if directories:
        ordered = sorted(directories, key=lambda d: (d.count("/"), d))
        await run(["mmd", "-i", image, *(f"::{d}" for d in ordered)], env=env, log=log)
    for target, source in sorted(files.items()):
        await run(["mcopy", "-i", image, source, f"::{target}"], env=env, log=log)


async def _make_reproducible_esp(
    image: Path, size: int, volume_id: int, files: Mapping[str, Path], log: Any, epoch: int
) -> None:
    """mtools 4.0.32 stamps the directories mmd makes with the time of day, and mkfs.vfat its
    boot sector. So: mkfs.vfat --invariant, and one recursive `mcopy -s -m` of a staged tree whose
    every time is the epoch, in which mcopy makes each directory with its source's time."""
    fat = _fat_bits(size)
    command: list[Argument] = ["mkfs.vfat", "--invariant", "-C", "-F", fat, "-n", "ESP", "-i", f"{volume_id:08X}"]
    await run([*command, image, str(size // 1024)], log=log)
    staged = image.with_name(image.name + ".tree")
    staged.mkdir()
    try:
        for target, source in files.items():
            (staged / target).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, staged / target)
        for path in [*staged.rglob("*")]:
            os.utime(path, (epoch, epoch))
        tops = sorted(staged.iterdir())
        await run(["mcopy", "-s", "-m", "-i", image, *tops, "::"], env={"MTOOLS_SKIP_CHECK": "1"}, log=log)
    finally:
        shutil.rmtree(staged)
