"""The architectures images are built for, and what each consumer calls them.

One `Architecture` value travels through the configuration, the stage keys and the pipeline; every
package manager, partition table, boot loader and emulator asks it for its own name or identifier
instead of keeping a map of its own.
"""

from __future__ import annotations

import enum
import platform
import uuid
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class _Facts:
    debian: str  # dpkg's name (amd64)
    rpm: str  # rpm's, dnf's and pacman's name: the kernel's (x86_64)
    go: str  # Go's GOARCH, which OCI image configs and registries use (amd64)
    efi: str  # the suffix of UEFI's removable-media boot loader and systemd-boot's binaries (x64)
    qemu_system: str  # the qemu binary that emulates a whole machine
    qemu_machine: str  # qemu's machine type for UEFI guests
    gnu: str  # the GNU triplet: binutils for its PE files are {gnu}-objcopy, {gnu}-objdump
    console: str  # the serial console qemu's machine gives the kernel
    # UEFI firmware (Debian's ovmf, qemu-efi-aarch64): its code, the template of its variable store,
    # and the code that enforces Secure Boot.
    firmware_code: Path
    firmware_variables: Path
    firmware_secure_code: Path
    smm: bool  # whether Secure Boot's variable store is guarded by System Management Mode
    # Discoverable Partitions Specification type UUIDs.
    root_type: uuid.UUID
    root_verity_type: uuid.UUID
    root_verity_sig_type: uuid.UUID
    usr_type: uuid.UUID
    usr_verity_type: uuid.UUID
    usr_verity_sig_type: uuid.UUID
    # The directories a merged-/usr tree links into /usr (lib64 is only x86-64's dynamic loader's).
    merged_usr: tuple[str, ...]


class Architecture(enum.StrEnum):
    """systemd's architecture names, which are also what `Architecture=` takes."""

    x86_64 = "x86-64"
    arm64 = "arm64"

    @classmethod
    def parse(cls, value: str) -> Architecture:
        """systemd's name, or the kernel's or Debian's for the same architecture."""
        found = _ALIASES.get(value.strip().lower())
        if found is None:
            raise ValueError(f"unknown architecture {value.strip()!r} (choose from {', '.join(cls)})")
        return found

    @classmethod
    def from_uname(cls, machine: str | None = None) -> Architecture | None:
        """The host's architecture (uname -m), or None when mkosi knows no images for it."""
        return _ALIASES.get((machine or platform.machine()).lower())

    @property
    def native(self) -> bool:
        """Whether this host runs the architecture's programs by itself (no emulation, KVM possible)."""
        return Architecture.from_uname() is self

    @property
    def _facts(self) -> _Facts:
        return _FACTS[self]

    @property
    def debian(self) -> str:
        return self._facts.debian

    @property
    def rpm(self) -> str:
        return self._facts.rpm

    @property
    def pacman(self) -> str:
        return self._facts.rpm

    @property
    def oci(self) -> str:
        """The `architecture` of an OCI image config: Go's name."""
        return self._facts.go

    @property
    def efi(self) -> str:
        return self._facts.efi

    @property
    def qemu_user(self) -> str:
        """The binfmt_misc handler qemu-user-static registers for running this architecture's programs."""
        return f"qemu-{self._facts.rpm}"

    @property
    def qemu_system(self) -> str:
        return self._facts.qemu_system

    @property
    def qemu_machine(self) -> str:
        return self._facts.qemu_machine

    def binutil(self, tool: str) -> str:
        """The binutils program that reads and writes this architecture's files (objcopy, objdump):
        the host's own only knows the host's PE format."""
        return f"{self._facts.gnu}-{tool}"

    @property
    def console(self) -> str:
        return self._facts.console

    @property
    def firmware_code(self) -> Path:
        return self._facts.firmware_code

    @property
    def firmware_variables(self) -> Path:
        return self._facts.firmware_variables

    @property
    def firmware_secure_code(self) -> Path:
        return self._facts.firmware_secure_code

    @property
    def smm(self) -> bool:
        return self._facts.smm

    @property
    def root_type(self) -> uuid.UUID:
        return self._facts.root_type

    @property
    def root_verity_type(self) -> uuid.UUID:
        return self._facts.root_verity_type

    @property
    def root_verity_sig_type(self) -> uuid.UUID:
        return self._facts.root_verity_sig_type

    @property
    def usr_type(self) -> uuid.UUID:
        return self._facts.usr_type

    @property
    def usr_verity_type(self) -> uuid.UUID:
        return self._facts.usr_verity_type

    @property
    def usr_verity_sig_type(self) -> uuid.UUID:
        return self._facts.usr_verity_sig_type

    @property
    def merged_usr(self) -> tuple[str, ...]:
        return self._facts.merged_usr

    @property
    def boot_loader_name(self) -> str:
        """Where UEFI firmware looks for a removable medium's boot loader, below the ESP."""
        return f"EFI/BOOT/BOOT{self.efi.upper()}.EFI"

    @property
    def systemd_boot(self) -> str:
        """systemd-boot's EFI binary, as systemd-boot-efi installs it in a tree."""
        return f"usr/lib/systemd/boot/efi/systemd-boot{self.efi}.efi"

    @property
    def uki_stub(self) -> str:
        """systemd's EFI stub for unified kernel images, as systemd-boot-efi installs it in a tree."""
        return f"usr/lib/systemd/boot/efi/linux{self.efi}.efi.stub"


_FACTS = {
    Architecture.x86_64: _Facts(
        debian="amd64",
        rpm="x86_64",
        go="amd64",
        efi="x64",
        qemu_system="qemu-system-x86_64",
        qemu_machine="q35",
        gnu="x86_64-linux-gnu",
        console="ttyS0",
        firmware_code=Path("/usr/share/OVMF/OVMF_CODE_4M.fd"),
        firmware_variables=Path("/usr/share/OVMF/OVMF_VARS_4M.fd"),
        firmware_secure_code=Path("/usr/share/OVMF/OVMF_CODE_4M.secboot.fd"),
        smm=True,
        root_type=uuid.UUID("4f68bce3-e8cd-4db1-96e7-fbcaf984b709"),
        root_verity_type=uuid.UUID("2c7357ed-ebd2-46d9-aec1-23d437ec2bf5"),
        root_verity_sig_type=uuid.UUID("41092b05-9fc8-4523-994f-2def0408b176"),
        usr_type=uuid.UUID("8484680c-9521-48c6-9c11-b0720656f69e"),
        usr_verity_type=uuid.UUID("77ff5f63-e7b6-4633-acf4-1565b864c0e6"),
        usr_verity_sig_type=uuid.UUID("e7bb33fb-06cf-4e81-8273-e543b413e2e2"),
        merged_usr=("bin", "sbin", "lib", "lib64"),
    ),
    Architecture.arm64: _Facts(
        debian="arm64",
        rpm="aarch64",
        go="arm64",
        efi="aa64",
        qemu_system="qemu-system-aarch64",
        qemu_machine="virt",
        gnu="aarch64-linux-gnu",
        console="ttyAMA0",
        firmware_code=Path("/usr/share/AAVMF/AAVMF_CODE.fd"),
        firmware_variables=Path("/usr/share/AAVMF/AAVMF_VARS.fd"),
        # AAVMF's code verifies signatures once keys are enrolled: no separate Secure Boot build.
        firmware_secure_code=Path("/usr/share/AAVMF/AAVMF_CODE.fd"),
        smm=False,
        root_type=uuid.UUID("b921b045-1df0-41c3-af44-4c6f280d3fae"),
        root_verity_type=uuid.UUID("df3300ce-d69f-4c92-978c-9bfb0f38d820"),
        root_verity_sig_type=uuid.UUID("6db69de6-29f4-4758-a7a5-962190f00ce3"),
        usr_type=uuid.UUID("b0e01050-ee5f-4390-949a-9101b17104e9"),
        usr_verity_type=uuid.UUID("6e11a4e7-fbca-4ded-b9e9-e1a512bb664e"),
        usr_verity_sig_type=uuid.UUID("c23ce4ff-44bd-4b00-b2d4-b41b3419e02a"),
        merged_usr=("bin", "sbin", "lib"),
    ),
}

# What users and hosts call them: systemd's name, the kernel's (uname -m, rpm) and Debian's.
_ALIASES = {name: arch for arch in Architecture for name in (arch.value, _FACTS[arch].rpm, _FACTS[arch].debian)}
