"""The Architecture type: what users call an architecture, and what each consumer asks it for."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from mkosi.architecture import Architecture
from mkosi.config import parse_args
from mkosi.machine import qemu_command


@pytest.mark.parametrize(
    ("name", "expected"),
    [("x86-64", Architecture.x86_64), ("x86_64", Architecture.x86_64), ("amd64", Architecture.x86_64),
     (" AMD64 ", Architecture.x86_64), ("aarch64", Architecture.arm64), ("arm64", Architecture.arm64)],
)  # fmt: skip
def test_parse_takes_systemds_the_kernels_and_debians_names(name: str, expected: Architecture) -> None:
    assert Architecture.parse(name) is expected


def test_parse_refuses_an_unknown_architecture_naming_the_choices() -> None:
    with pytest.raises(ValueError, match=r"^unknown architecture 'riscv64' \(choose from x86-64, arm64\)$"):
        Architecture.parse("riscv64")


def test_exactly_the_hosts_own_architecture_is_native() -> None:
    host = Architecture.from_uname()
    assert [a for a in Architecture if a.native] == ([host] if host is not None else [])


def test_from_uname() -> None:
    assert Architecture.from_uname("x86_64") is Architecture.x86_64
    assert Architecture.from_uname("aarch64") is Architecture.arm64
    assert Architecture.from_uname("riscv64") is None
    host = subprocess.run(["uname", "-m"], capture_output=True, text=True, check=True).stdout.strip()
    assert Architecture.from_uname() is Architecture.from_uname(host)


def _systemd_partition_types() -> dict[str, uuid.UUID]:
    """systemd's own table of Discoverable Partitions types (`systemd-id128 show`)."""
    shown = subprocess.run(["systemd-id128", "show"], capture_output=True, text=True, check=True).stdout
    return {name: uuid.UUID(value) for name, value in (line.split() for line in shown.splitlines()[1:] if line.strip())}


@pytest.mark.parametrize("architecture", list(Architecture))
def test_partition_types_are_systemds(architecture: Architecture) -> None:
    known = _systemd_partition_types()
    assert architecture.root_type == known[f"root-{architecture}"]
    assert architecture.root_verity_type == known[f"root-{architecture}-verity"]
    assert architecture.usr_type == known[f"usr-{architecture}"]
    assert architecture.usr_verity_type == known[f"usr-{architecture}-verity"]


def test_boot_files_are_where_systemd_boot_efi_installs_them() -> None:
    # The host has Debian's systemd-boot-efi (setup.sh) for its own architecture.
    host = Architecture.from_uname()
    assert host is not None
    assert (Path("/") / host.systemd_boot).is_file()
    assert (Path("/") / host.uki_stub).is_file()
    assert Architecture.x86_64.boot_loader_name == "EFI/BOOT/BOOTX64.EFI"
    assert Architecture.arm64.boot_loader_name == "EFI/BOOT/BOOTAA64.EFI"


def test_debians_and_rpms_names_are_theirs() -> None:
    # dpkg's own table pairs each Debian CPU name with the GNU (kernel, rpm, pacman) one.
    table = {}
    for line in Path("/usr/share/dpkg/cputable").read_text().splitlines():
        if line and not line.startswith("#"):
            debian, gnu = line.split()[:2]
            table[debian] = gnu
    for architecture in Architecture:
        assert table[architecture.debian] == architecture.rpm == architecture.pacman
    host = Architecture.from_uname()
    assert host is not None

    def asked(*argv: str) -> str:
        return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()

    assert asked("rpm", "--eval", "%{_arch}") == host.rpm
    assert asked("dpkg", "--print-architecture") == host.debian
    # The emulator the boot verbs run for the host's images is the one Debian's qemu package installs.
    assert shutil.which(host.qemu_system) is not None


def test_oci_names_are_gos() -> None:
    assert (Architecture.x86_64.oci, Architecture.arm64.oci) == ("amd64", "arm64")


def test_booting_comes_from_the_architecture() -> None:
    # The serial console qemu's machine type gives the kernel, and the firmware Debian packages.
    assert (Architecture.x86_64.console, Architecture.arm64.console) == ("ttyS0", "ttyAMA0")
    assert Architecture.x86_64.firmware_code == Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
    assert Architecture.arm64.firmware_variables == Path("/usr/share/AAVMF/AAVMF_VARS.fd")
    # SMM guards only x86's Secure Boot variables.
    assert Architecture.x86_64.smm and not Architecture.arm64.smm
    # binutils that know each architecture's PE files.
    assert Architecture.arm64.binutil("objcopy") == "aarch64-linux-gnu-objcopy"
    assert Architecture.x86_64.binutil("objdump") == "x86_64-linux-gnu-objdump"


def test_qemu_boots_an_arm64_image_on_arm64s_machine_and_firmware(tmp_path: Path) -> None:
    config = parse_args(["-C", str(tmp_path), "--architecture=arm64", "-t", "raw_gpt", "--bootable"])[1]
    command = qemu_command(config, tmp_path / "vars.fd", "tcg", [])
    assert command[:5] == ["qemu-system-aarch64", "-machine", "virt,accel=tcg", "-cpu", "max"]
    assert "if=pflash,format=raw,readonly=on,file=/usr/share/AAVMF/AAVMF_CODE.fd" in command
    assert not any("smm" in word or "cfi.pflash01" in word for word in command)
