"""Raw GPT disk images (raw_gpt, raw_btrfs, raw_squashfs): the boot, filesystems and disk stages."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import anyio

from mkosi.boot import build_uki, esp_files, find_kernel
from mkosi.config import Compression
from mkosi.context import Context
from mkosi.disk import filesystems as fs
from mkosi.disk.layout import PartitionPlan, plan
from mkosi.disk.partitions import (
    Partition,
    Role,
    align,
    assemble,
    derive_uuid,
    partition_label,
    partition_type,
)
from mkosi.errors import MkosiError
from mkosi.outputs.compress import compress_file

UKI = "uki.efi"
FILESYSTEMS = "filesystems"
PARTITIONS = "partitions.json"


async def build_boot_files(context: Context) -> None:
    await build_uki(context, find_kernel(context.root), context.workspace / UKI)


def _split_off(context: Context, role: Role) -> Path:
    """Move /home or /srv out of the root tree; the root keeps an empty mount point."""
    inside = context.root / str(role)
    tree = context.workspace / f"{role}-tree"
    if inside.is_dir():
        mode = inside.stat().st_mode
        os.rename(inside, tree)
        inside.mkdir(mode=mode & 0o7777)
    else:
        tree.mkdir()
    return tree


async def _make(context: Context, item: PartitionPlan, trees: dict[Role, Path]) -> Partition:
    config, log = context.config, context.log
    directory = context.workspace / FILESYSTEMS
    image = directory / f"{item.role}.img"
    label = partition_label(item.role, config.architecture)
    fs_uuid = derive_uuid(config.seed, f"{item.role}-filesystem")
    size = item.size
    if item.role is Role.esp:
        assert size is not None
        kernel = find_kernel(context.root)
        files = esp_files(context, context.workspace / UKI, kernel)
        await fs.make_esp(image, size, fs_uuid.int & 0xFFFFFFFF, files, log)
    elif item.filesystem == "swap":
        assert size is not None
        await fs.make_swap(image, size, fs_uuid, label, log)
    elif item.filesystem == "squashfs":
        await fs.make_squashfs(trees[item.role], image, log)
        size = align(image.stat().st_size)
    else:
        tree = trees[item.role]
        needed = fs.minimum_size(tree)
        if size is None:
            size = fs.default_size(tree, writable=not item.read_only)
        elif size < needed:
            raise MkosiError(
                f"{item.role.capitalize()}Size={size >> 20}M is too small for the content of "
                f"/{'' if item.role is Role.root else item.role}: it needs about {needed >> 20}M"
            )
        make = fs.make_btrfs if item.filesystem == "btrfs" else fs.make_ext4
        await make(tree, image, size, fs_uuid, label, log)
    return Partition(
        role=item.role,
        label=label,
        type=partition_type(item.role, config.architecture),
        uuid=derive_uuid(config.seed, f"{item.role}-partition"),
        size=size,
        image=image,
        read_only=item.read_only,
    )


async def make_filesystems(context: Context) -> None:
    """Every partition's filesystem as a file, built side by side."""
    plans = plan(context.config)
    (context.workspace / FILESYSTEMS).mkdir()
    trees = {Role.root: context.root}
    for item in plans:
        if item.role in (Role.home, Role.srv):
            trees[item.role] = _split_off(context, item.role)

    made: dict[Role, Partition] = {}

    async def make(item: PartitionPlan) -> None:
        made[item.role] = await _make(context, item, trees)

    async with anyio.create_task_group() as tg:
        for item in plans:
            tg.start_soon(make, item)
    partitions = [made[item.role] for item in plans]
    (context.workspace / PARTITIONS).write_text(json.dumps([_encode(p) for p in partitions], indent=2))


def _encode(partition: Partition) -> dict[str, object]:
    return {
        "role": str(partition.role),
        "label": partition.label,
        "type": str(partition.type),
        "uuid": str(partition.uuid),
        "size": partition.size,
        # Relative, so that a cached copy of the workspace works wherever it is restored.
        "image": partition.image.name if partition.image else None,
        "read_only": partition.read_only,
    }


def _decode(data: dict[str, object], directory: Path) -> Partition:
    return Partition(
        role=Role(str(data["role"])),
        label=str(data["label"]),
        type=uuid.UUID(str(data["type"])),
        uuid=uuid.UUID(str(data["uuid"])),
        size=int(str(data["size"])),
        image=directory / str(data["image"]) if data["image"] else None,
        read_only=bool(data["read_only"]),
    )


async def write(context: Context) -> None:
    config = context.config
    records = json.loads((context.workspace / PARTITIONS).read_text())
    partitions = [_decode(p, context.workspace / FILESYSTEMS) for p in records]
    staged = context.stage_output(config.output)
    disk = staged if config.compress is Compression.none else context.workspace / "disk.raw"
    await assemble(disk, partitions, derive_uuid(config.seed, "disk"), context.log)
    if config.compress is not Compression.none:
        await compress_file(config.compress, disk, staged, context.log)
