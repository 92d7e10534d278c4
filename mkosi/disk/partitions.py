"""GPT partition tables on plain files, with the Discoverable Partitions Specification's types.

Every partition's filesystem is built as a file first; the disk is a sparse file that sfdisk
partitions and the filesystem images are copied into at their 1 MiB-aligned offsets.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mkosi.architecture import Architecture
from mkosi.errors import MkosiError
from mkosi.run import run

MiB = 1 << 20
# Room for the backup GPT header and partition array at the end of the disk.
GPT_TRAILER = MiB


class Role(enum.StrEnum):
    esp = "esp"
    root = "root"
    root_verity = "root-verity"
    root_verity_sig = "root-verity-sig"
    swap = "swap"
    home = "home"
    srv = "srv"


_COMMON_TYPES = {
    Role.esp: "c12a7328-f81f-11d2-ba4b-00a0c93ec93b",
    Role.swap: "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f",
    Role.home: "933ac7e1-2eb4-4f13-b844-0e14e2aef915",
    Role.srv: "3b8f8425-20e0-4f3b-907f-1a25a76f98e8",
}
# GPT attribute bit 60: the Discoverable Partitions Specification's "mount read-only".
READ_ONLY_ATTRIBUTE = 60


def partition_type(role: Role, architecture: Architecture) -> uuid.UUID:
    if role is Role.root:
        return architecture.root_type
    if role is Role.root_verity:
        return architecture.root_verity_type
    if role is Role.root_verity_sig:
        return architecture.root_verity_sig_type
    return uuid.UUID(_COMMON_TYPES[role])


def partition_label(role: Role, architecture: Architecture) -> str:
    """systemd-repart's naming: root-x86-64, root-x86-64-verity(-sig), esp, swap, home, srv."""
    if role is Role.root:
        return f"root-{architecture}"
    if role is Role.root_verity:
        return f"root-{architecture}-verity"
    if role is Role.root_verity_sig:
        return f"root-{architecture}-verity-sig"
    return str(role)


def derive_uuid(seed: uuid.UUID, purpose: str) -> uuid.UUID:
    """A random-looking (version 4) UUID that only depends on the seed and what it is for."""
    digest = hmac.new(seed.bytes, purpose.encode(), hashlib.sha256).digest()
    return uuid.UUID(bytes=digest[:16], version=4)


def align(size: int, to: int = MiB) -> int:
    return -(-size // to) * to


@dataclass(frozen=True)
class Partition:
    role: Role
    label: str
    type: uuid.UUID
    uuid: uuid.UUID
    size: int  # bytes, a multiple of 1 MiB
    image: Path | None  # the filesystem to copy in; None leaves the partition empty
    read_only: bool = False


@dataclass(frozen=True)
class Placed:
    partition: Partition
    start: int


def place(partitions: Sequence[Partition]) -> tuple[list[Placed], int]:
    """Each partition's 1 MiB-aligned start, and the size of the whole disk."""
    offset = MiB  # the primary GPT lives in the first MiB
    placed = []
    for partition in partitions:
        if partition.size % MiB:
            raise ValueError(f"partition {partition.label}: size {partition.size} is not a multiple of 1 MiB")
        placed.append(Placed(partition, offset))
        offset += partition.size
    return placed, offset + GPT_TRAILER


def sfdisk_script(placed: Sequence[Placed], disk_uuid: uuid.UUID) -> str:
    lines = ["label: gpt", f"label-id: {disk_uuid}", "unit: sectors", "first-lba: 2048", ""]
    for item in placed:
        p = item.partition
        fields = [
            f"start={item.start // 512}",
            f"size={p.size // 512}",
            f"type={p.type}",
            f"uuid={p.uuid}",
            f'name="{p.label}"',
        ]
        if p.read_only:
            fields.append(f'attrs="GUID:{READ_ONLY_ATTRIBUTE}"')
        lines.append(", ".join(fields))
    return "\n".join(lines) + "\n"


async def assemble(disk: Path, partitions: Sequence[Partition], disk_uuid: uuid.UUID, log: Any) -> list[Placed]:
    """Write the partition table and every filesystem image into `disk`, a new sparse file."""
    placed, total = place(partitions)
    with disk.open("wb") as f:
        f.truncate(total)
    await run(
        ["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", disk],
        input=sfdisk_script(placed, disk_uuid).encode(),
        log=log,
    )
    for item in placed:
        image = item.partition.image
        if image is None:
            continue
        if image.stat().st_size > item.partition.size:
            raise MkosiError(f"{image.name} does not fit into partition {item.partition.label}")
        # Sparse: zero blocks of the filesystem image stay holes in the disk image.
        await run(
            [
                "dd",
                f"if={image}",
                f"of={disk}",
                "bs=1M",
                f"seek={item.start // MiB}",
                "conv=notrunc,sparse",
                "status=none",
            ],
            log=log,
        )
    return placed


async def read_table(disk: Path, log: Any = None) -> dict[str, Any]:
    """The partition table as `sfdisk -J` reports it."""
    result = await run(["sfdisk", "-J", disk], capture_stdout=True, log=log)
    table: dict[str, Any] = json.loads(result.stdout)["partitiontable"]
    return table


async def find_partition(disk: Path, role: Role, architecture: Architecture, log: Any = None) -> tuple[int, int]:
    """The byte offset and size of the image's partition with the role's type."""
    wanted = partition_type(role, architecture)
    table = await read_table(disk, log)
    sector = int(table.get("sectorsize", 512))
    for entry in table["partitions"]:
        if uuid.UUID(entry["type"]) == wanted:
            return int(entry["start"]) * sector, int(entry["size"]) * sector
    raise LookupError(f"{disk} has no {partition_label(role, architecture)} partition")
