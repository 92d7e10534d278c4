"""Making images boot on UEFI: a unified kernel image and systemd-boot in the ESP.

The kernel, the initrd (dracut, systemd-based, so the root is found by partition type and verity
and LUKS roots can be opened) and systemd-boot's EFI binaries all come from the image itself, so
they match the image's systemd, not the build host's.
"""

from __future__ import annotations

import gzip
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mkosi import intree, naming
from mkosi.architecture import Architecture
from mkosi.config import Config
from mkosi.context import Context
from mkosi.disk.layout import slot_label
from mkosi.errors import MkosiError
from mkosi.reproducibility import frozen_clock
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
    return bool(config.verity) or config.encrypt is not None


# dracut then sorts the initrd's files and stamps them with SOURCE_DATE_EPOCH, which every
# subprocess of the build gets (the kernel's postinst runs dracut).
REPRODUCIBLE = 'reproducible="yes"\n'


def dracut_config(config: Config) -> str:
    protected = PROTECTED_ROOT_MODULES if opens_protected_root(config) else ""
    return DRACUT_CONFIG + protected + (REPRODUCIBLE if config.source_date_epoch is not None else "")


PAGE = 4096


def kernel_command_line(config: Config) -> str:
    """No root=: the initrd finds the root partition by its type. Then the user's words."""
    words = [
        f"console={config.architecture.console}",
        "ro" if config.read_only or config.format.has_read_only_root else "rw",
    ]
    return " ".join([*words, *config.kernel_command_line])


@dataclass(frozen=True)
class Kernel:
    version: str
    image: Path
    initrd: Path


def _version_key(version: str) -> list[int | str]:
    return [int(n) if n.isdigit() else n for n in re.split(r"(\d+)", version)]


def kernel_images(root: Path) -> dict[str, Path]:
    """Each installed kernel's version and image, in the layouts distributions put them in:

    - /usr/lib/modules/VERSION/vmlinuz: Fedora, openSUSE, Arch (the kernel next to its modules);
    - /boot/vmlinuz-NAME with /usr/lib/modules/VERSION/pkgbase saying NAME: Arch, where
      mkinitcpio's hook copies the kernel of package NAME ("linux", "linux-lts") to /boot;
    - /boot/vmlinuz-VERSION: Debian and Ubuntu.
    """
    images: dict[str, Path] = {}
    names: set[str] = set()
    for version in _names(root, "usr/lib/modules"):
        pkgbase = intree.read_bytes(root, f"usr/lib/modules/{version}/pkgbase")
        base = pkgbase.decode(errors="replace").strip() if pkgbase is not None else None
        # Next to its modules, or in /boot under its package's name (Arch).
        candidates = [f"usr/lib/modules/{version}/vmlinuz", *([f"boot/vmlinuz-{base}"] if base else [])]
        if image := next(filter(None, (_regular_file(root, c) for c in candidates)), None):
            images[version] = image
        if base is not None:
            names.add(f"vmlinuz-{base}")
    for name in _names(root, "boot"):
        if name.startswith("vmlinuz-") and name not in names and (image := _regular_file(root, f"boot/{name}")):
            images.setdefault(name.removeprefix("vmlinuz-"), image)
    return images


# What mkosi reads from the image for booting is found inside the image: a link there to an
# absolute path (boot/vmlinuz-6.1 -> /etc/shadow) must not put the host's file into the ESP.
def _names(root: Path, path: str) -> list[str]:
    directory = intree.directory(root, path)
    return sorted(entry.name for entry in directory.iterdir()) if directory is not None else []


def _regular_file(root: Path, path: str) -> Path | None:
    found = intree.resolve(root, path)
    return found if found.is_file() else None


def initrd_candidates(root: Path, version: str, hook_paths: Sequence[str]) -> list[Path]:
    """Where the distribution's kernel hooks leave a kernel's initrd (its installer's
    `initrd_paths`), then where mkosi builds one (host paths, found inside the image)."""
    return [intree.resolve(root, path.format(version=version)) for path in (*hook_paths, MKOSI_INITRD)]


# Where mkosi puts the initrd it builds itself: next to the kernel's modules, inside the image, so an
# incremental build's copy of the bootstrapped tree keeps it.
MKOSI_INITRD = "usr/lib/modules/{version}/initrd"


def newest_kernel(root: Path) -> tuple[str, Path]:
    images = kernel_images(root)
    if not images:
        raise MkosiError(
            "Bootable=yes: the image has no kernel in /usr/lib/modules/*/vmlinuz or /boot/vmlinuz-* "
            "(is the kernel package installed?)"
        )
    # With several kernels installed, boot the newest.
    version = max(images, key=_version_key)
    return version, images[version]


def find_kernel(root: Path, hook_paths: Sequence[str]) -> Kernel:
    version, image = newest_kernel(root)
    initrd = next((p for p in initrd_candidates(root, version, hook_paths) if p.is_file()), None)
    if initrd is None:
        raise MkosiError(f"Bootable=yes: no initrd for kernel {version} in /boot")
    return Kernel(version, image, initrd)


def write_dracut_config(root: Path, config: Config) -> None:
    """mkosi's dracut configuration, put into the tree before any package is installed, so that an
    initrd built by a kernel package's hook is already the one the image needs."""
    if config.bootable:
        path = root / DRACUT_CONFIG_PATH
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(dracut_config(config))


async def section_end(stub: Path, architecture: Architecture, log: Any) -> int:
    """The first address after the stub's own sections."""
    result = await run([architecture.binutil("objdump"), "-h", "-w", stub], capture_stdout=True, log=log)
    end = 0
    for line in result.stdout.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[0].isdigit():
            end = max(end, int(fields[3], 16) + int(fields[2], 16))
    return end


GZIP_MAGIC = b"\x1f\x8b"


def bootable_kernel_image(image: Path, workspace: Path) -> Path:
    """The kernel as systemd-stub starts it: an EFI program. Debian's arm64 vmlinuz is the Image
    compressed with gzip, which the stub does not unpack (x86-64's bzImage is an EFI program as it is)."""
    with image.open("rb") as f:
        if f.read(2) != GZIP_MAGIC:
            return image
    unpacked = workspace / "vmlinux.efi"
    with gzip.open(image, "rb") as compressed, unpacked.open("wb") as out:
        shutil.copyfileobj(compressed, out)
    return unpacked


async def build_uki(context: Context, kernel: Kernel, output: Path, extra_cmdline: Sequence[str] = ()) -> None:
    """stub + .osrel + .cmdline + .linux + .initrd, each section placed after the previous one.

    `extra_cmdline` holds what is only known once the filesystems exist (roothash=).
    """
    root, log = context.root, context.log
    stub_path = context.config.architecture.uki_stub
    stub = _regular_file(root, stub_path)
    if stub is None:
        raise MkosiError(f"Bootable=yes: the image has no EFI stub at {intree.shown(stub_path)}")
    os_release = _regular_file(root, "usr/lib/os-release")
    if os_release is None:
        raise MkosiError("Bootable=yes: the image has no /usr/lib/os-release for the unified kernel image")
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
        (".osrel", os_release),
        (".cmdline", cmdline),
        (".linux", bootable_kernel_image(kernel.image, context.workspace)),
        (".initrd", initrd),
    ]
    address = await section_end(stub, context.config.architecture, log)
    arguments: list[str] = []
    for name, path in sections:
        address = -(-address // PAGE) * PAGE
        arguments += [f"--add-section={name}={path}", f"--change-section-vma={name}={address:#x}"]
        address += path.stat().st_size
    prefix, env = frozen_clock(context.config.source_date_epoch)
    await run([*prefix, context.config.architecture.binutil("objcopy"), *arguments, stub, output], env=env, log=log)


def boot_loader(context: Context) -> Path:
    """systemd-boot's EFI binary, from the image."""
    inside = context.config.architecture.systemd_boot
    path = _regular_file(context.root, inside)
    if path is None:
        raise MkosiError(f"Bootable=yes: the image has no systemd-boot at {intree.shown(inside)}")
    return path


def uki_name(config: Config, kernel: Kernel) -> str:
    """The UKI's name in EFI/Linux/: ImageId_ImageVersion.efi when both are set (what
    systemd-sysupdate's `ID_@v.efi` matches, and systemd-boot sorts by version), else the
    output's stem and the kernel's version."""
    label = slot_label(config)
    return f"{label}.efi" if label else f"{naming.image_stem(config.output)}-{kernel.version}.efi"


def esp_files(context: Context, uki: Path, kernel: Kernel, loader: Path) -> dict[str, Path]:
    """systemd-boot (`loader`) as the removable-media boot loader, and the UKI where it finds it by itself."""
    architecture = context.config.architecture
    loader_conf = context.workspace / "loader.conf"
    loader_conf.write_text("timeout 0\n")
    return {
        architecture.boot_loader_name: loader,
        f"EFI/systemd/{Path(architecture.systemd_boot).name}": loader,
        f"EFI/Linux/{uki_name(context.config, kernel)}": uki,
        "loader/loader.conf": loader_conf,
    }
