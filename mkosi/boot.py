"""Making images boot on UEFI: a unified kernel image and systemd-boot in the ESP.

The kernel, the initrd (dracut, systemd-based, so the root is found by partition type and verity
and LUKS roots can be opened) and systemd-boot's EFI binaries all come from the image itself, so
they match the image's systemd, not the build host's.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mkosi.config import Config, OutputFormat
from mkosi.context import Context
from mkosi.errors import MkosiError
from mkosi.run import run

# Written into the image before packages are installed, so that the kernel package's own initrd
# hook builds the one initrd the image needs, and only once.
DRACUT_CONFIG = """\
# Written by mkosi: a generic, systemd-based initrd that finds the root by partition type.
hostonly="no"
hostonly_cmdline="no"
# dracut turns a bare "zstd" into level 15, which takes most of the initrd's build time; level 3
# compresses a little less and many times faster.
compress="zstd -3 -q -T0"
"""
# Only when needed: a distribution's dracut may lack these modules, and asking for a missing one fails.
PROTECTED_ROOT_MODULES = 'add_dracutmodules+=" systemd-veritysetup crypt "\n'
DRACUT_CONFIG_PATH = "etc/dracut.conf.d/50-mkosi.conf"


def opens_protected_root(config: Config) -> bool:
    """Whether the initrd must open a verity or LUKS root (or /home, /srv: same modules)."""
    return config.verity or config.encrypt is not None


def dracut_config(config: Config) -> str:
    return DRACUT_CONFIG + (PROTECTED_ROOT_MODULES if opens_protected_root(config) else "")


EFI_ARCHITECTURES = {"x86-64": "x64", "arm64": "aa64"}
PAGE = 4096


def kernel_command_line(config: Config) -> str:
    """No root=: the initrd finds the root partition by its type. Then the user's words."""
    words = [
        "console=ttyS0",
        "ro" if config.read_only or config.format is OutputFormat.raw_squashfs else "rw",
    ]
    return " ".join([*words, *config.kernel_command_line])


@dataclass(frozen=True)
class Kernel:
    version: str
    image: Path
    initrd: Path


def find_kernel(root: Path) -> Kernel:
    kernels = sorted(root.glob("boot/vmlinuz-*"))
    if not kernels:
        raise MkosiError("Bootable=yes: the image has no kernel in /boot (is the kernel package installed?)")
    # With several kernels installed, boot the newest.
    image = max(kernels, key=lambda p: [int(n) if n.isdigit() else n for n in re.split(r"(\d+)", p.name)])
    version = image.name.removeprefix("vmlinuz-")
    initrd = root / f"boot/initrd.img-{version}"
    if not initrd.exists():
        raise MkosiError(f"Bootable=yes: no initrd for kernel {version} in /boot")
    return Kernel(version, image, initrd)


async def section_end(stub: Path, log: Any) -> int:
    """The first address after the stub's own sections."""
    result = await run(["objdump", "-h", "-w", stub], capture_stdout=True, log=log)
    end = 0
    for line in result.stdout.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[0].isdigit():
            end = max(end, int(fields[3], 16) + int(fields[2], 16))
    return end


async def build_uki(context: Context, kernel: Kernel, output: Path, extra_cmdline: Sequence[str] = ()) -> None:
    """stub + .osrel + .cmdline + .linux + .initrd, each section placed after the previous one.

    `extra_cmdline` holds what is only known once the filesystems exist (roothash=).
    """
    root, log = context.root, context.log
    efi_arch = EFI_ARCHITECTURES[context.config.architecture]
    stub = root / f"usr/lib/systemd/boot/efi/linux{efi_arch}.efi.stub"
    if not stub.exists():
        raise MkosiError(f"Bootable=yes: the image has no EFI stub at /{stub.relative_to(root)}")
    cmdline = context.workspace / "cmdline"
    cmdline.write_text(" ".join([kernel_command_line(context.config), *extra_cmdline]) + "\n")
    initrd = kernel.initrd
    if context.config.initrds:
        # The kernel unpacks concatenated cpio archives one after the other, later files winning.
        initrd = context.workspace / "initrd"
        with initrd.open("wb") as combined:
            for part in (kernel.initrd, *context.config.initrds):
                with part.open("rb") as f:
                    shutil.copyfileobj(f, combined)
    sections = [
        (".osrel", root / "usr/lib/os-release"),
        (".cmdline", cmdline),
        (".linux", kernel.image),
        (".initrd", initrd),
    ]
    address = await section_end(stub, log)
    arguments: list[str] = []
    for name, path in sections:
        address = -(-address // PAGE) * PAGE
        arguments += [f"--add-section={name}={path}", f"--change-section-vma={name}={address:#x}"]
        address += path.stat().st_size
    await run(["objcopy", *arguments, stub, output], log=log)


def boot_loader(context: Context) -> Path:
    """systemd-boot's EFI binary, from the image."""
    efi_arch = EFI_ARCHITECTURES[context.config.architecture]
    path = context.root / f"usr/lib/systemd/boot/efi/systemd-boot{efi_arch}.efi"
    if not path.exists():
        raise MkosiError(f"Bootable=yes: the image has no systemd-boot at /{path.relative_to(context.root)}")
    return path


def esp_files(context: Context, uki: Path, kernel: Kernel, loader: Path) -> dict[str, Path]:
    """systemd-boot (`loader`) as the removable-media boot loader, and the UKI where it finds it by itself."""
    efi_arch = EFI_ARCHITECTURES[context.config.architecture]
    loader_conf = context.workspace / "loader.conf"
    loader_conf.write_text("timeout 0\n")
    return {
        f"EFI/BOOT/BOOT{efi_arch.upper()}.EFI": loader,
        f"EFI/systemd/systemd-boot{efi_arch}.efi": loader,
        f"EFI/Linux/{context.config.output.name.split('.')[0]}-{kernel.version}.efi": uki,
        "loader/loader.conf": loader_conf,
    }
