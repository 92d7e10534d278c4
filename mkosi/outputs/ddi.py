"""Discoverable Disk Images that are not booted as a whole: system and configuration extensions and
portable services. One read-only file system in a root partition of the image's architecture, its
verity hash tree in a root-verity partition, both named by the root hash, in a GPT disk.

Why a root partition: systemd 252's systemd-sysext and portablectl dissect images with a generic
or root partition, or a /usr partition alone; only a root partition holds /opt (sysext), /etc
(confext) and a whole OS tree (portable). Upstream mkosi makes the same choice.
"""

from __future__ import annotations

from pathlib import Path

from mkosi.context import Context
from mkosi.disk import filesystems as fs
from mkosi.disk import verity
from mkosi.disk.partitions import Partition, Role, derive_uuid, partition_label, partition_type
from mkosi.outputs.disk import publish_disk, signer
from mkosi.settings import DDIFileSystem

DDI = "ddi"


async def write(context: Context, tree: Path) -> None:
    """`tree` as the image's read-only root (DDIFileSystem=) with verity, staged as the output with its
    `.roothash`."""
    config, log = context.config, context.log
    directory = context.workspace / DDI
    directory.mkdir()
    image = directory / f"{Role.root}.img"
    if config.ddi_file_system is DDIFileSystem.erofs:
        fs_uuid = derive_uuid(config.seed, f"{Role.root}-filesystem")
        await fs.make_erofs(tree, image, fs_uuid, log, config.source_date_epoch)
    else:
        await fs.make_squashfs(tree, image, log)
    root = Partition(
        role=Role.root,
        label=partition_label(Role.root, config.architecture),
        type=partition_type(Role.root, config.architecture),
        uuid=derive_uuid(config.seed, f"{Role.root}-partition"),
        # Padded to the partition's size: the hash tree then covers the whole partition.
        size=verity.pad(image),
        image=image,
        read_only=True,
    )
    hashes = directory / f"{Role.root_verity}.img"
    protected = await verity.protect(root, hashes, config.seed, config.architecture, log, signer(config))
    signature = [protected.signature] if protected.signature is not None else []
    await publish_disk(context, [protected.data, protected.hashes, *signature], protected.root_hash)
