"""The boot files alone: `uki` (the unified kernel image) and `esp` (a disk with only the ESP),
what boots a machine whose root comes from elsewhere; and `mkosi genkey`, whose key signs them.

One bootstrap for all three builds (-i, a stage cache of this module's own: the formats share
every stage up to the boot files), one boot: the esp image with a root image on a second disk.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from tests.integration.support import ModuleDir, boot, mkosi, own_cache
from tests.integration.test_disk import ESP_TYPE, ROOT_TYPE, _by_type, _extract

MARKER = "MKOSI-ESP-BOOTED"
MARKER_UNIT = f"""\
[Unit]
Description=Tell the test harness which disk the root came from
After=multi-user.target

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'echo "{MARKER} root=$(findmnt -no SOURCE /)" > /dev/kmsg'

[Install]
WantedBy=multi-user.target
"""
ENV = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}


@pytest.fixture(scope="module")
def project(module_dir: ModuleDir) -> Path:
    project = module_dir("boot-formats")
    units = project / "mkosi.extra/etc/systemd/system"
    (units / "multi-user.target.wants").mkdir(parents=True)
    (units / "mkosi-marker.service").write_text(MARKER_UNIT)
    (units / "multi-user.target.wants/mkosi-marker.service").symlink_to("../mkosi-marker.service")
    (project / "mkosi.default").write_text(
        "[Distribution]\nDistribution=debian\nRelease=bookworm\n\n[Output]\nIncremental=yes\n"
    )
    return project


@pytest.fixture(scope="module")
def cache(project: Path) -> Path:
    return own_cache(project / "cache")


def _build(project: Path, cache: Path, *args: str) -> None:
    # After the support module's own --cache: the stage cache is this module's.
    mkosi(f"--cache={cache}", *args, "-f", "build", cwd=project)


@pytest.fixture(scope="module")
def root_image(project: Path, cache: Path) -> Path:
    """The root the esp boots: a read-only squashfs disk, whose bootstrap the boot files share."""
    _build(project, cache, "-t", "raw_squashfs", "--bootable", "-o", "root.raw")
    return project / "root.raw"


def _root_partuuid(image: Path) -> str:
    return str(_by_type(image)[ROOT_TYPE]["uuid"]).lower()


@pytest.fixture(scope="module")
def keys(project: Path) -> tuple[Path, Path]:
    mkosi("--secure-boot-common-name=boot formats test", "genkey", cwd=project)
    return project / "mkosi.secure-boot.key", project / "mkosi.secure-boot.crt"


@pytest.fixture(scope="module")
def esp_image(project: Path, cache: Path, root_image: Path) -> Path:
    # The initrd finds a root by partition type on the disk it booted from only: one on another
    # disk is named.
    cmdline = f"root=PARTUUID={_root_partuuid(root_image)} ro"
    _build(project, cache, "-t", "esp", "-o", "esp.raw", "--checksum", f"--kernel-command-line={cmdline}")
    return project / "esp.raw"


@pytest.fixture(scope="module")
def uki(project: Path, cache: Path, root_image: Path, keys: tuple[Path, Path]) -> Path:
    _build(project, cache, "-t", "uki", "-o", "kernel.efi", "--secure-boot", "--kernel-command-line=quiet")
    return project / "kernel.efi"


def test_genkey_writes_a_private_key_and_refuses_to_replace_it(project: Path, keys: tuple[Path, Path]) -> None:
    key, certificate = keys
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    subject = subprocess.run(
        ["openssl", "x509", "-in", str(certificate), "-noout", "-subject"], capture_output=True, text=True, check=True
    ).stdout
    assert "boot formats test" in subject
    # The key belongs to the certificate.
    of_key = subprocess.run(["openssl", "pkey", "-in", str(key), "-pubout"], capture_output=True, check=True)
    of_certificate = subprocess.run(
        ["openssl", "x509", "-in", str(certificate), "-noout", "-pubkey"], capture_output=True, check=True
    )
    assert of_key.stdout == of_certificate.stdout
    before = key.read_bytes()
    again = mkosi("genkey", cwd=project, check=False)
    assert again.returncode != 0
    refusal = f"mkosi: {key} already exists: mkosi genkey never replaces a key or certificate"
    assert again.stderr.strip().splitlines()[-1] == refusal
    assert key.read_bytes() == before


def _section(binary: Path, name: str, tmp_path: Path) -> str:
    dumped = tmp_path / name.strip(".")
    # objcopy rewrites its input when given no output file, which would drop the signature.
    subprocess.run(
        ["objcopy", "--dump-section", f"{name}={dumped}", str(binary), str(tmp_path / "scratch")], check=True
    )
    return dumped.read_text()


def test_uki_is_the_signed_kernel_image_with_the_command_line(
    uki: Path, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    headers = subprocess.run(["objdump", "-h", str(uki)], capture_output=True, text=True, check=True).stdout
    for section in (".osrel", ".cmdline", ".linux", ".initrd"):
        assert section in headers
    cmdline = _section(uki, ".cmdline", tmp_path).split()
    assert cmdline[:2] == ["console=ttyS0", "rw"] and cmdline[-1] == "quiet"
    assert not any(word.startswith("roothash=") for word in cmdline)  # no root of its own to protect
    assert "ID=debian" in _section(uki, ".osrel", tmp_path).splitlines()
    _, certificate = keys
    assert subprocess.run(["sbverify", "--cert", str(certificate), str(uki)], capture_output=True).returncode == 0
    unsigned = tmp_path / "unsigned.efi"
    unsigned.write_bytes(uki.read_bytes())
    subprocess.run(["sbattach", "--remove", str(unsigned)], check=True, capture_output=True)
    assert subprocess.run(["sbverify", "--cert", str(certificate), str(unsigned)], capture_output=True).returncode != 0


def _esp_listing(image: Path, tmp_path: Path) -> list[str]:
    esp = _extract(image, _by_type(image)[ESP_TYPE], tmp_path / "esp.img")
    return subprocess.run(
        ["mdir", "-i", str(esp), "-/", "-b", "::"], capture_output=True, text=True, check=True, env=ENV
    ).stdout.split()


def test_esp_image_is_one_esp_with_the_boot_loader_and_the_uki(esp_image: Path, tmp_path: Path) -> None:
    assert list(_by_type(esp_image)) == [ESP_TYPE]
    listing = _esp_listing(esp_image, tmp_path)
    assert "::/EFI/BOOT/BOOTX64.EFI" in listing
    assert [p for p in listing if p.startswith("::/EFI/Linux/esp-") and p.endswith(".efi")]
    sums = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=esp_image.parent, capture_output=True, text=True)
    assert sums.returncode == 0 and "esp.raw: OK" in sums.stdout


def test_esp_image_boots_a_root_on_a_second_disk(project: Path, esp_image: Path, root_image: Path) -> None:
    console = boot(
        project, "-t", "esp", "-o", "esp.raw", until=[MARKER], timeout=300,
        qemu_args=["-drive", f"if=virtio,format=raw,file={root_image},snapshot=on"],
    )  # fmt: skip
    # The first disk (vda) holds only the ESP: the root came from the second.
    assert f"{MARKER} root=/dev/vdb" in console, console[-3000:]


def test_boot_files_formats_refuse_what_cannot_boot(project: Path) -> None:
    for args, problem in (
        (["-t", "uki", "--bootable=no"], "--bootable: cannot be no with Format=uki: its whole content is what boots"),
        (["-t", "esp", "--verity"], "--verity: only supported with raw formats"),
        (["-t", "tar", "--bootable"], "--bootable: only supported with formats that boot"),
    ):
        result = mkosi(*args, "-o", "refused.out", "build", cwd=project, check=False)
        assert result.returncode == 2
        assert result.stderr.strip().startswith(f"mkosi: {problem}"), result.stderr
        assert not list(project.glob("refused.out*"))
