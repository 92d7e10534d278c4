"""Arch Linux: installed with pacman from the Arch mirrors or `--mirror`."""

from __future__ import annotations

from pathlib import Path

from mkosi.config import Architecture, Config
from mkosi.context import Context
from mkosi.distributions import Distribution
from mkosi.distributions.installer import InitrdByMkosi, PackageNames
from mkosi.errors import MkosiError
from mkosi.package_managers import pacman

DEFAULT_MIRROR = "https://geo.mirror.pkgbuild.com"
KNOWN_REPOSITORIES = ("core", "extra", "multilib", "core-testing", "extra-testing")
DEFAULT_REPOSITORIES = ("core", "extra")
# The keyring pacman-key populates the image's trust from: Debian's archlinux-keyring package.
KEYRING = "archlinux"
PACKAGES = PackageNames(
    base=("base",),
    # dracut rather than Arch's default mkinitcpio: the same systemd-based initrd as on every other
    # distribution (root found by partition type, verity and LUKS roots). It satisfies the kernel's
    # dependency on an initramfs generator; mkosi runs it itself (Arch has no dracut hook).
    kernel=("linux", "dracut"),
    # systemd-boot is part of the systemd package on Arch.
    boot=("systemd",),
    filesystems={"ext4": "e2fsprogs", "btrfs": "btrfs-progs", "xfs": "xfsprogs", "erofs": "erofs-utils"},
)


def repositories(config: Config) -> list[pacman.Repository]:
    if config.architecture is not Architecture.x86_64:
        # Arch Linux ARM is a separate project, with mirrors, keys and repositories of its own.
        raise MkosiError(f"arch is built for x86-64 only, not {config.architecture}")
    wanted = config.repositories or DEFAULT_REPOSITORIES
    unknown = [r for r in wanted if r not in KNOWN_REPOSITORIES]
    if unknown:
        raise MkosiError(f"arch has no repository {', '.join(unknown)} (known: {', '.join(KNOWN_REPOSITORIES)})")
    mirror = (config.mirror or DEFAULT_MIRROR).rstrip("/")
    return [pacman.Repository(name, f"{mirror}/$repo/os/$arch") for name in wanted]


class Installer(InitrdByMkosi, distribution=Distribution.arch):
    default_release = "rolling"
    releases = frozenset({"rolling"})
    package_manager_tools = ("pacman",)
    packages = PACKAGES

    async def install_packages(self, context: Context, root: Path, packages: tuple[str, ...]) -> None:
        await pacman.install(context, root, repositories(context.config), packages, keyring=KEYRING)
