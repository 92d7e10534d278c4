"""Raw GPT images: partition tables, filesystems and content, checked with sfdisk, blkid and the
filesystems' own tools; bootable images booted in qemu (TCG) to a marker a unit in the image prints.

The three bootable images (one per raw format) are built once per session and shared; only the
ext4 one is booted here (the others boot in test_compat and test_protected).
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest

from mkosi.disk.partitions import derive_uuid
from tests.integration.support import boot, mkosi

MiB = 1 << 20
ROOT_TYPE = "4f68bce3-e8cd-4db1-96e7-fbcaf984b709"
ESP_TYPE = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
SWAP_TYPE = "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f"
HOME_TYPE = "933ac7e1-2eb4-4f13-b844-0e14e2aef915"
SRV_TYPE = "3b8f8425-20e0-4f3b-907f-1a25a76f98e8"
MARKER = "MKOSI-BOOT-OK"
BOOT_TIMEOUT = 240  # TCG on two shared cores: a boot takes 20-60 s

MARKER_UNIT = f"""\
[Unit]
Description=Tell the test harness that the image booted
After=multi-user.target

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'echo "{MARKER} root=$(findmnt -no FSTYPE /) fstab=$(grep -cv "^#" /etc/fstab)" > /dev/kmsg'

[Install]
WantedBy=multi-user.target
"""


@pytest.fixture(scope="session")
def boot_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    project = tmp_path_factory.mktemp("boot-project")
    extra = project / "mkosi.extra"
    units = extra / "etc/systemd/system"
    (units / "multi-user.target.wants").mkdir(parents=True)
    (units / "mkosi-marker.service").write_text(MARKER_UNIT)
    (units / "multi-user.target.wants/mkosi-marker.service").symlink_to("../mkosi-marker.service")
    (extra / "etc/mkosi-test-marker").write_text("on the root\n")
    (extra / "srv/data").mkdir(parents=True)
    (extra / "srv/data/file").write_text("on srv\n")
    (extra / "home/user").mkdir(parents=True)
    (extra / "home/user/file").write_text("on home\n")
    return project


def _build(project: Path, fmt: str, *extra: str) -> Path:
    output = project / f"{fmt}.raw"
    mkosi(
        "-d", "debian", "-r", "bookworm", "-t", fmt, "--bootable", "-o", output.name, "-f", *extra, "build", cwd=project
    )
    return output


@pytest.fixture(scope="session")
def gpt_image(boot_project: Path) -> Path:
    return _build(boot_project, "raw_gpt", "--swap-size=64M", "--home-size=64M", "--srv-size=64M")


@pytest.fixture(scope="session")
def btrfs_image(boot_project: Path) -> Path:
    return _build(boot_project, "raw_btrfs")


@pytest.fixture(scope="session")
def squashfs_image(boot_project: Path) -> Path:
    return _build(boot_project, "raw_squashfs")


def _table(image: Path) -> list[dict[str, object]]:
    out = subprocess.run(["sfdisk", "-J", str(image)], capture_output=True, text=True, check=True).stdout
    partitions: list[dict[str, object]] = json.loads(out)["partitiontable"]["partitions"]
    return partitions


def _by_type(image: Path) -> dict[str, dict[str, object]]:
    return {str(p["type"]).lower(): p for p in _table(image)}


def _blkid(image: Path, partition: dict[str, object]) -> dict[str, str]:
    offset = int(str(partition["start"])) * 512
    out = subprocess.run(
        ["blkid", "-p", "-o", "export", "-O", str(offset), str(image)], capture_output=True, text=True, check=True
    ).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def _extract(image: Path, partition: dict[str, object], destination: Path) -> Path:
    start, size = int(str(partition["start"])), int(str(partition["size"]))
    subprocess.run(
        ["dd", f"if={image}", f"of={destination}", "bs=512", f"skip={start}", f"count={size}", "status=none"],
        check=True,
    )
    return destination


def _debugfs_cat(filesystem: Path, path: str) -> str:
    return subprocess.run(
        ["debugfs", "-R", f"cat {path}", str(filesystem)], capture_output=True, text=True, check=True
    ).stdout


def test_partitions_are_aligned_typed_and_named(gpt_image: Path) -> None:
    table = _table(gpt_image)
    assert [str(p["type"]).lower() for p in table] == [ESP_TYPE, ROOT_TYPE, SWAP_TYPE, HOME_TYPE, SRV_TYPE]
    assert [p["name"] for p in table] == ["esp", "root-x86-64", "swap", "home", "srv"]
    for partition in table:
        assert int(str(partition["start"])) * 512 % MiB == 0
    assert "attrs" not in _by_type(gpt_image)[ROOT_TYPE]  # writable root: no read-only flag


def test_filesystems_are_what_they_should_be(gpt_image: Path) -> None:
    parts = _by_type(gpt_image)
    assert _blkid(gpt_image, parts[ESP_TYPE])["TYPE"] == "vfat"
    assert _blkid(gpt_image, parts[ROOT_TYPE])["TYPE"] == "ext4"
    assert _blkid(gpt_image, parts[SWAP_TYPE])["TYPE"] == "swap"
    assert _blkid(gpt_image, parts[HOME_TYPE])["TYPE"] == "ext4"
    assert _blkid(gpt_image, parts[SRV_TYPE])["TYPE"] == "ext4"


def test_root_home_and_srv_hold_the_tree(gpt_image: Path, tmp_path: Path) -> None:
    parts = _by_type(gpt_image)
    root = _extract(gpt_image, parts[ROOT_TYPE], tmp_path / "root.img")
    assert _debugfs_cat(root, "/etc/mkosi-test-marker") == "on the root\n"
    assert "VERSION_CODENAME=bookworm" in _debugfs_cat(root, "/usr/lib/os-release")
    # /home and /srv live on their own partitions; the root keeps empty mount points.
    listing = subprocess.run(["debugfs", "-R", "ls -p /srv", str(root)], capture_output=True, text=True).stdout
    assert "data" not in listing
    srv = _extract(gpt_image, parts[SRV_TYPE], tmp_path / "srv.img")
    assert _debugfs_cat(srv, "/data/file") == "on srv\n"
    home = _extract(gpt_image, parts[HOME_TYPE], tmp_path / "home.img")
    assert _debugfs_cat(home, "/user/file") == "on home\n"


def test_esp_has_boot_loader_and_uki_without_root_argument(gpt_image: Path, tmp_path: Path) -> None:
    esp = _extract(gpt_image, _by_type(gpt_image)[ESP_TYPE], tmp_path / "esp.img")
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    listing = subprocess.run(
        ["mdir", "-i", str(esp), "-/", "-b", "::"], capture_output=True, text=True, check=True, env=env
    ).stdout
    assert "::/EFI/BOOT/BOOTX64.EFI" in listing
    ukis = [line for line in listing.splitlines() if line.startswith("::/EFI/Linux/") and line.endswith(".efi")]
    assert len(ukis) == 1
    uki = tmp_path / "uki.efi"
    subprocess.run(["mcopy", "-i", str(esp), ukis[0], str(uki)], check=True, env=env)
    cmdline = tmp_path / "cmdline"
    subprocess.run(["objcopy", "--dump-section", f".cmdline={cmdline}", str(uki)], check=True)
    words = cmdline.read_text().split()
    assert "rw" in words and not any(w.startswith("root=") for w in words)
    sections = subprocess.run(["objdump", "-h", str(uki)], capture_output=True, text=True, check=True).stdout
    for section in (".osrel", ".cmdline", ".linux", ".initrd"):
        assert section in sections


def test_btrfs_and_squashfs_roots(btrfs_image: Path, squashfs_image: Path, tmp_path: Path) -> None:
    btrfs = _by_type(btrfs_image)
    assert set(btrfs) == {ESP_TYPE, ROOT_TYPE}  # no swap, home or srv unless asked for
    assert _blkid(btrfs_image, btrfs[ROOT_TYPE])["TYPE"] == "btrfs"
    squashfs = _by_type(squashfs_image)
    assert set(squashfs) == {ESP_TYPE, ROOT_TYPE}
    assert _blkid(squashfs_image, squashfs[ROOT_TYPE])["TYPE"] == "squashfs"
    # squashfs is read-only: the GPT says so (attribute bit 60)
    assert "GUID:60" in str(squashfs[ROOT_TYPE].get("attrs", ""))
    root = _extract(squashfs_image, squashfs[ROOT_TYPE], tmp_path / "root.squashfs")
    content = subprocess.run(
        ["unsquashfs", "-cat", str(root), "etc/mkosi-test-marker"], capture_output=True, text=True, check=True
    ).stdout
    assert content == "on the root\n"


def test_mkosi_shell_runs_in_a_raw_image(gpt_image: Path) -> None:
    options = ("-t", "raw_gpt", "--bootable", "-o", gpt_image.name)
    result = mkosi(*options, "shell", "cat", "/etc/mkosi-test-marker", cwd=gpt_image.parent)
    assert "on the root" in result.stdout
    # The loop device and the mount are gone again.
    assert str(gpt_image) not in subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    assert "mkosi-root." not in Path("/proc/mounts").read_text()


def test_uuids_derive_from_the_seed(gpt_image: Path) -> None:
    summary = mkosi("-t", "raw_gpt", "-o", gpt_image.name, "summary", cwd=gpt_image.parent).stdout
    seed = uuid.UUID(next(line.split()[-1] for line in summary.splitlines() if line.strip().startswith("Seed:")))
    root = _by_type(gpt_image)[ROOT_TYPE]
    assert uuid.UUID(str(root["uuid"])) == derive_uuid(seed, "root-partition")
    assert uuid.UUID(_blkid(gpt_image, root)["UUID"]) == derive_uuid(seed, "root-filesystem")


def _boot(image: Path) -> str:
    """Boot with `mkosi qemu -snapshot` until the marker; qemu must be gone afterwards."""
    options = ("-t", image.stem, "--bootable", "-o", image.name)
    console = boot(image.parent, *options, until=[MARKER], timeout=BOOT_TIMEOUT)
    assert subprocess.run(["pgrep", "-f", f"file={image}"], capture_output=True).returncode == 1, "qemu left behind"
    return console


def test_image_boots_without_root_argument_and_empty_fstab(gpt_image: Path) -> None:
    # The ext4 root with swap, /home and /srv beside it; the btrfs root boots in test_compat, the
    # squashfs root (with verity) in test_protected: one boot per property.
    console = _boot(gpt_image)
    line = next((line for line in console.splitlines() if MARKER in line), None)
    assert line is not None, console[-3000:]
    assert "root=ext4 fstab=0" in line


def test_too_small_root_is_refused(boot_project: Path) -> None:
    result = mkosi(
        "-d", "debian", "-t", "raw_gpt", "--root-size=64M", "-o", "small.raw", "build", cwd=boot_project, check=False
    )
    assert result.returncode != 0
    assert "RootSize=64M is too small" in result.stderr
    assert not (boot_project / "small.raw").exists()


def test_bootable_needs_a_raw_format(tmp_path: Path) -> None:
    result = mkosi("-t", "tar", "--bootable", "build", cwd=tmp_path, check=False)
    assert result.returncode == 2
    assert "--bootable" in result.stderr and "raw" in result.stderr
    assert list(tmp_path.iterdir()) == []
