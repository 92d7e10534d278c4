"""Which partitions an image gets, from its settings: ESP, root, swap, home, srv."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from mkosi import naming
from mkosi.config import Config, OutputFormat
from mkosi.disk.partitions import MiB, Partition, Role, align, derive_uuid

DEFAULT_ESP_SIZE = 256 * MiB


@dataclass(frozen=True)
class PartitionPlan:
    """A partition before its filesystem exists: the size may still be unknown (None: from content)."""

    role: Role
    filesystem: str  # ext4, btrfs, squashfs, erofs, swap, vfat, verity, verity-signature
    size: int | None
    read_only: bool = False


def root_filesystem(config: Config) -> str:
    formats = {OutputFormat.raw_btrfs: "btrfs", OutputFormat.raw_squashfs: "squashfs", OutputFormat.raw_erofs: "erofs"}
    return formats.get(config.format, "ext4")


def data_filesystem(config: Config) -> str:
    """/home and /srv stay writable: btrfs next to a btrfs root, ext4 otherwise."""
    return "btrfs" if config.format is OutputFormat.raw_btrfs else "ext4"


def checked_filesystems(config: Config) -> tuple[str, ...]:
    """The writable file systems a booted image mounts, and so checks with its own fsck at boot."""
    if not config.format.is_raw:
        return ()
    return tuple(dict.fromkeys(p.filesystem for p in plan(config) if p.filesystem in ("ext4", "btrfs", "xfs")))


def plan(config: Config) -> list[PartitionPlan]:
    plans = []
    if config.bootable and config.format.is_disk:
        plans.append(PartitionPlan(Role.esp, "vfat", align(config.esp_size or DEFAULT_ESP_SIZE)))
    if config.format is OutputFormat.esp:
        return plans
    root_size = align(config.root_size) if config.root_size else None
    plans.append(PartitionPlan(Role.root, root_filesystem(config), root_size, read_only=config.read_only))
    if config.verity:
        # Sized by the root's content: veritysetup writes the hash tree of whatever the root holds.
        plans.append(PartitionPlan(Role.root_verity, "verity", None, read_only=True))
    if config.signed_verity:
        plans.append(PartitionPlan(Role.root_verity_sig, "verity-signature", None, read_only=True))
    if config.swap_size:
        plans.append(PartitionPlan(Role.swap, "swap", align(config.swap_size)))
    if config.home_size:
        plans.append(PartitionPlan(Role.home, data_filesystem(config), align(config.home_size)))
    if config.srv_size:
        plans.append(PartitionPlan(Role.srv, data_filesystem(config), align(config.srv_size)))
    return plans


# What an update replaces, a slot: the root with its hash tree and signature.
SLOT_ROLES = (Role.root, Role.root_verity, Role.root_verity_sig)
# The Discoverable Partitions Specification's name of a partition that holds nothing yet: systemd
# ignores it when it looks for a root, systemd-sysupdate writes the next version into it.
EMPTY_LABEL = "_empty"


def slot_label(config: Config) -> str | None:
    """ImageId_ImageVersion, the slot's partition name in which systemd-sysupdate finds its version."""
    if config.image_id is None or config.image_version is None:
        return None
    return naming.versioned_stem(config.image_id, config.image_version)


def slots(config: Config, partitions: Sequence[Partition]) -> list[Partition]:
    """The disk's partitions as published: the slot's named ImageId_ImageVersion when both are set,
    and with ABLayout=yes a second, empty slot of the same types and sizes right after the first."""
    label = slot_label(config)
    named = [dataclasses.replace(p, label=label) if label and p.role in SLOT_ROLES else p for p in partitions]
    if not config.ab_layout:
        return named
    empty = [
        dataclasses.replace(p, label=EMPTY_LABEL, uuid=derive_uuid(config.seed, f"{p.role}-partition-b"), image=None)
        for p in named
        if p.role in SLOT_ROLES
    ]
    last = max(i for i, p in enumerate(named) if p.role in SLOT_ROLES)
    return [*named[: last + 1], *empty, *named[last + 1 :]]
