"""GPT disk images (raw_gpt, raw_btrfs, raw_squashfs, raw_erofs, esp) and the UKI: boot, filesystems, disk."""

from __future__ import annotations

import json
import os
import shutil
import stat
import uuid
from pathlib import Path

import anyio

from mkosi import naming, ownership, secure_boot
from mkosi.boot import Kernel, boot_loader, build_uki, esp_files, find_kernel
from mkosi.config import Compression, Config
from mkosi.context import Context
from mkosi.disk import filesystems as fs
from mkosi.disk import luks, verity
from mkosi.disk.layout import PartitionPlan, plan, slots
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
ROOT_HASH = "roothash"


def _split_off(context: Context, role: Role) -> Path:
    """Move /home or /srv out of the root tree; the root keeps an empty mount point."""
    inside = context.root / str(role)
    tree = context.workspace / f"{role}-tree"
    st = inside.lstat() if ownership.exists(inside) else None
    if st is None:
        tree.mkdir()
    elif stat.S_ISDIR(st.st_mode):
        os.rename(inside, tree)
        inside.mkdir(mode=stat.S_IMODE(st.st_mode))
    else:
        # Never followed: a link to the host's /home would put the host's files into the partition.
        raise MkosiError(f"/{role} in the image is not a directory, so it cannot become the {role} partition")
    return tree


async def _make(context: Context, item: PartitionPlan, trees: dict[Role, Path]) -> Partition:
    config, log = context.config, context.log
    directory = context.workspace / FILESYSTEMS
    image = directory / f"{item.role}.img"
    label = partition_label(item.role, config.architecture)
    fs_uuid = derive_uuid(config.seed, f"{item.role}-filesystem")
    size = item.size
    # An encrypted partition's filesystem leaves room for the LUKS2 header at the partition's end.
    encrypted = item.role in luks.encrypted_roles(config)
    slack = luks.SLACK if encrypted else 0
    if item.filesystem == "swap":
        assert size is not None
        await fs.make_swap(image, size, fs_uuid, label, log)
    elif item.filesystem in ("squashfs", "erofs"):
        if item.filesystem == "squashfs":
            await fs.make_squashfs(trees[item.role], image, log)
        else:
            await fs.make_erofs(trees[item.role], image, fs_uuid, log, config.source_date_epoch)
        # Padded to the partition's size: a verity hash tree then covers the whole partition.
        size = verity.pad(image) + slack
    else:
        tree = trees[item.role]
        needed = fs.minimum_size(tree) + slack
        if size is None:
            size = fs.default_size(tree, writable=not item.read_only) + slack
        elif size < needed:
            raise MkosiError(
                f"{item.role.capitalize()}Size={size >> 20}M is too small for the content of "
                f"/{'' if item.role is Role.root else item.role}"
                + (" and a LUKS header" if encrypted else "")
                + f": it needs about {needed >> 20}M"
            )
        if item.filesystem == "btrfs":
            await fs.make_btrfs(tree, image, size - slack, fs_uuid, label, log)
        else:
            await fs.make_ext4(tree, image, size - slack, fs_uuid, label, log, config.source_date_epoch)
        # mkfs.btrfs grows an image file that is too small for the tree rather than failing.
        size = max(size, align(image.stat().st_size) + slack)
    if encrypted:
        with image.open("r+b") as f:
            f.truncate(size)
        await luks.encrypt(image, config, derive_uuid(config.seed, f"{item.role}-luks"), label, log)
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
    """Every partition's filesystem as a file, built side by side; then the root's hash tree.

    The ESP comes later (boot-files): the kernel command line it carries needs the root hash.
    """
    later = (Role.esp, Role.root_verity, Role.root_verity_sig)
    plans = [p for p in plan(context.config) if p.role not in later]
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
    if context.config.verity:
        made.update(await _add_verity(context, made[Role.root]))
    _save(context, list(made.values()))


async def _add_verity(context: Context, root: Partition) -> dict[Role, Partition]:
    config = context.config
    hashes = context.workspace / FILESYSTEMS / f"{Role.root_verity}.img"
    protected = await verity.protect(root, hashes, config.seed, config.architecture, context.log, signer(config))
    (context.workspace / ROOT_HASH).write_text(protected.root_hash + "\n")
    added = {Role.root: protected.data, Role.root_verity: protected.hashes}
    if protected.signature is not None:
        added[Role.root_verity_sig] = protected.signature
    return added


def signer(config: Config) -> verity.Signer | None:
    """Who signs the root hash: nobody, unless Verity=signed."""
    if not config.signed_verity:
        return None
    assert config.verity_key is not None and config.verity_certificate is not None
    return verity.Signer(config.verity_key, config.verity_certificate)


def root_hash(context: Context) -> str | None:
    path = context.workspace / ROOT_HASH
    return path.read_text().strip() if path.exists() else None


async def build_boot_files(context: Context) -> None:
    """The unified kernel image (signed for Secure Boot if asked) and, for a disk, the ESP that boots it."""
    config = context.config
    kernel = find_kernel(context.root, config.distribution.installer().initrd_paths)
    found = root_hash(context)
    unsigned = context.workspace / "uki.unsigned.efi"
    await build_uki(context, kernel, unsigned, [f"roothash={found}"] if found else [])
    # Where the ESP and the `uki` output take it from, signed or not.
    os.rename(await _signed(context, unsigned, context.workspace / "uki.signed.efi"), context.workspace / UKI)
    if config.format.is_disk:
        await _make_esp(context, context.workspace / UKI, kernel)


async def _signed(context: Context, source: Path, signed: Path) -> Path:
    """`source`, or `signed`, its copy signed for Secure Boot, when that is asked for."""
    config = context.config
    if not config.secure_boot:
        return source
    assert config.secure_boot_key is not None and config.secure_boot_certificate is not None
    await secure_boot.sign(
        source, signed, config.secure_boot_key, config.secure_boot_certificate, context.log, config.source_date_epoch
    )
    return signed


async def _make_esp(context: Context, uki: Path, kernel: Kernel) -> None:
    config = context.config
    loader = await _signed(context, boot_loader(context), context.workspace / "systemd-boot.signed.efi")
    esp = next(p for p in plan(config) if p.role is Role.esp)
    assert esp.size is not None
    image = context.workspace / FILESYSTEMS / f"{Role.esp}.img"
    fs_uuid = derive_uuid(config.seed, f"{Role.esp}-filesystem")
    files = esp_files(context, uki, kernel, loader)
    await fs.make_esp(image, esp.size, fs_uuid.int & 0xFFFFFFFF, files, context.log, config.source_date_epoch)
    partition = Partition(
        role=Role.esp,
        label=partition_label(Role.esp, config.architecture),
        type=partition_type(Role.esp, config.architecture),
        uuid=derive_uuid(config.seed, f"{Role.esp}-partition"),
        size=esp.size,
        image=image,
    )
    _save(context, [*_load(context), partition])


def _save(context: Context, partitions: list[Partition]) -> None:
    (context.workspace / PARTITIONS).write_text(json.dumps([_encode(p) for p in partitions], indent=2))


def _load(context: Context) -> list[Partition]:
    records = json.loads((context.workspace / PARTITIONS).read_text())
    return [_decode(p, context.workspace / FILESYSTEMS) for p in records]


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


async def write_uki(context: Context) -> None:
    """The `uki` output: the unified kernel image that a bootable disk's ESP would hold."""
    config = context.config
    staged = context.stage_output(config.output)
    uki = context.workspace / UKI
    if config.compress is Compression.none:
        shutil.copyfile(uki, staged)
    else:
        await compress_file(config.compress, uki, staged, context.log)


async def write(context: Context) -> None:
    config = context.config
    # In the plan's order (ESP, root, root-verity, swap, home, srv), whichever stage made them.
    order = [item.role for item in plan(config)]
    partitions = sorted(_load(context), key=lambda p: order.index(p.role))
    await publish_disk(context, slots(config, partitions), root_hash(context))


async def publish_disk(context: Context, partitions: list[Partition], found_root_hash: str | None) -> None:
    """The GPT disk of `partitions` staged as the output (compressed per Compress=), with the root
    hash as `<image>.roothash` next to it."""
    config = context.config
    staged = context.stage_output(config.output)
    disk = staged if config.compress is Compression.none else context.workspace / "disk.raw"
    await assemble(disk, partitions, derive_uuid(config.seed, "disk"), context.log)
    if config.compress is not Compression.none:
        await compress_file(config.compress, disk, staged, context.log)
    if found_root_hash is not None:
        context.stage_output(naming.sidecar(config.output, naming.ROOT_HASH_SUFFIX)).write_text(found_root_hash + "\n")
