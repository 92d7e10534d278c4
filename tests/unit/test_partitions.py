"""GPT assembly on plain files with the real sfdisk, mkfs and mtools; layout from settings."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import pytest
import structlog

from mkosi.architecture import Architecture
from mkosi.boot import find_kernel
from mkosi.config import parse_args
from mkosi.disk import filesystems
from mkosi.disk.layout import plan
from mkosi.disk.partitions import (
    MiB,
    Partition,
    Role,
    assemble,
    derive_uuid,
    find_partition,
    partition_label,
    partition_type,
    place,
)
from mkosi.distributions import Distribution
from mkosi.errors import MkosiError

pytestmark = pytest.mark.anyio
SEED = uuid.UUID("5a1d2b7c-0c43-4c9e-8d51-0d3d8f8e2a10")


def test_derived_uuids_are_stable_distinct_and_version_4() -> None:
    a, b = derive_uuid(SEED, "root-partition"), derive_uuid(SEED, "root-filesystem")
    assert a == derive_uuid(SEED, "root-partition")
    assert a != b
    assert a.version == 4 and a.variant == uuid.RFC_4122
    assert derive_uuid(uuid.uuid4(), "root-partition") != a


def test_types_and_labels_follow_the_discoverable_partitions_specification() -> None:
    assert partition_type(Role.root, Architecture.x86_64) == uuid.UUID("4f68bce3-e8cd-4db1-96e7-fbcaf984b709")
    assert partition_type(Role.root, Architecture.arm64) == uuid.UUID("b921b045-1df0-41c3-af44-4c6f280d3fae")
    assert partition_type(Role.root_verity, Architecture.arm64) == uuid.UUID("df3300ce-d69f-4c92-978c-9bfb0f38d820")
    assert partition_type(Role.esp, Architecture.arm64) == uuid.UUID("c12a7328-f81f-11d2-ba4b-00a0c93ec93b")
    assert partition_label(Role.root, Architecture.arm64) == "root-arm64"
    assert partition_label(Role.root_verity, Architecture.x86_64) == "root-x86-64-verity"


def test_placement_is_aligned_and_leaves_room_for_the_backup_table() -> None:
    parts = [
        Partition(Role.esp, "esp", partition_type(Role.esp, Architecture.x86_64), SEED, 3 * MiB, None),
        Partition(Role.root, "root", partition_type(Role.root, Architecture.x86_64), SEED, 5 * MiB, None),
    ]
    placed, total = place(parts)
    assert [p.start for p in placed] == [MiB, 4 * MiB]
    assert total == 10 * MiB
    with pytest.raises(ValueError, match="multiple of 1 MiB"):
        place([Partition(Role.root, "root", SEED, SEED, MiB + 512, None)])


def test_plan_follows_settings(tmp_path: Path) -> None:
    _, config, _ = parse_args(
        ["-C", str(tmp_path), "-t", "raw_btrfs", "--bootable", "--swap-size=1G", "--srv-size=10M"]
    )
    roles = [(p.role, p.filesystem, p.size) for p in plan(config)]
    assert roles == [
        (Role.esp, "vfat", 256 * MiB),
        (Role.root, "btrfs", None),
        (Role.swap, "swap", 1024 * MiB),
        (Role.srv, "btrfs", 10 * MiB),
    ]
    _, squash, _ = parse_args(["-C", str(tmp_path), "-t", "raw_squashfs"])
    (root,) = plan(squash)
    assert root.filesystem == "squashfs" and root.read_only


async def test_assembled_disk_has_the_table_and_the_filesystems(tmp_path: Path) -> None:
    log = structlog.get_logger("test")
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc/hello").write_text("hello\n")
    root_image, esp_image = tmp_path / "root.img", tmp_path / "esp.img"
    root_uuid = derive_uuid(SEED, "root-filesystem")
    await filesystems.make_ext4(tree, root_image, 16 * MiB, root_uuid, "root-x86-64", log)
    await filesystems.make_esp(esp_image, 8 * MiB, 0x1234ABCD, {"EFI/BOOT/BOOTX64.EFI": tree / "etc/hello"}, log)
    parts = [
        Partition(
            Role.esp, "esp", partition_type(Role.esp, Architecture.x86_64), derive_uuid(SEED, "e"), 8 * MiB, esp_image
        ),
        Partition(
            Role.root,
            "root-x86-64",
            partition_type(Role.root, Architecture.x86_64),
            derive_uuid(SEED, "r"),
            16 * MiB,
            root_image,
            read_only=True,
        ),
    ]
    disk = tmp_path / "disk.raw"
    await assemble(disk, parts, derive_uuid(SEED, "disk"), log)

    table = json.loads(subprocess.run(["sfdisk", "-J", str(disk)], capture_output=True, check=True).stdout)
    entries = table["partitiontable"]["partitions"]
    assert [e["name"] for e in entries] == ["esp", "root-x86-64"]
    assert [e["start"] * 512 for e in entries] == [MiB, 9 * MiB]
    assert "GUID:60" in entries[1]["attrs"]
    assert table["partitiontable"]["id"].lower() == str(derive_uuid(SEED, "disk"))

    offset, size = await find_partition(disk, Role.root, Architecture.x86_64)
    assert (offset, size) == (9 * MiB, 16 * MiB)
    blkid = subprocess.run(
        ["blkid", "-p", "-o", "export", "-O", str(offset), str(disk)], capture_output=True, text=True, check=True
    ).stdout
    assert "TYPE=ext4" in blkid and f"UUID={root_uuid}" in blkid
    esp = subprocess.run(
        ["blkid", "-p", "-o", "export", "-O", str(MiB), str(disk)], capture_output=True, text=True, check=True
    ).stdout
    assert "TYPE=vfat" in esp and "UUID=1234-ABCD" in esp
    content = subprocess.run(
        ["mtype", "-i", str(esp_image), "::EFI/BOOT/BOOTX64.EFI"],
        capture_output=True,
        text=True,
        check=True,
        env={"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin"},
    ).stdout
    assert content == "hello\n"


async def test_image_larger_than_its_partition_is_refused(tmp_path: Path) -> None:
    image = tmp_path / "big.img"
    image.write_bytes(b"x" * (2 * MiB))
    part = Partition(Role.root, "root", partition_type(Role.root, Architecture.x86_64), SEED, MiB, image)
    with pytest.raises(MkosiError, match="does not fit"):
        await assemble(tmp_path / "disk.raw", [part], SEED, structlog.get_logger("test"))


def test_minimum_size_grows_with_content(tmp_path: Path) -> None:
    empty = filesystems.minimum_size(tmp_path)
    (tmp_path / "blob").write_bytes(b"\1" * (8 * MiB))
    assert filesystems.minimum_size(tmp_path) >= empty + 8 * MiB
    assert filesystems.default_size(tmp_path, writable=True) > filesystems.default_size(tmp_path, writable=False)


DEBIAN_HOOKS = Distribution.debian.installer().initrd_paths


def test_a_tree_without_a_kernel_is_reported_clearly(tmp_path: Path) -> None:
    (tmp_path / "boot").mkdir()
    with pytest.raises(MkosiError, match="has no kernel in /usr/lib/modules"):
        find_kernel(tmp_path, DEBIAN_HOOKS)
    (tmp_path / "boot/vmlinuz-6.1.0-1-amd64").write_bytes(b"k")
    with pytest.raises(MkosiError, match=r"no initrd for kernel 6\.1\.0-1-amd64"):
        find_kernel(tmp_path, DEBIAN_HOOKS)
    (tmp_path / "boot/initrd.img-6.1.0-1-amd64").write_bytes(b"i")
    (tmp_path / "boot/vmlinuz-6.1.0-10-amd64").write_bytes(b"k")
    (tmp_path / "boot/initrd.img-6.1.0-10-amd64").write_bytes(b"i")
    assert find_kernel(tmp_path, DEBIAN_HOOKS).version == "6.1.0-10-amd64"  # the newest, by version, not by name
