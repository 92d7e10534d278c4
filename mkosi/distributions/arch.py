"""Arch Linux: installed with pacman from the Arch mirrors or `--mirror`."""

from __future__ import annotations

from mkosi.config import Config
from mkosi.context import Context
from mkosi.distributions import PackageNames
from mkosi.errors import MkosiError
from mkosi.package_managers import pacman

DEFAULT_MIRROR = "https://geo.mirror.pkgbuild.com"
KNOWN_REPOSITORIES = ("core", "extra", "multilib", "core-testing", "extra-testing")
DEFAULT_REPOSITORIES = ("core", "extra")
# The keyring pacman-key populates the image's trust from: Debian's archlinux-keyring package.
KEYRING = "archlinux"
PACKAGES = PackageNames(
    base=("base",),
    kernel=("linux", "mkinitcpio"),
    # systemd-boot is part of the systemd package on Arch.
    boot=("systemd",),
    filesystems={"ext4": "e2fsprogs", "btrfs": "btrfs-progs", "xfs": "xfsprogs", "erofs": "erofs-utils"},
)


def repositories(config: Config) -> list[pacman.Repository]:
    if config.architecture != "x86-64":
        # Arch Linux ARM is a separate project, with mirrors, keys and repositories of its own.
        raise MkosiError(f"arch is built for x86-64 only, not {config.architecture}")
    wanted = config.repositories or DEFAULT_REPOSITORIES
    unknown = [r for r in wanted if r not in KNOWN_REPOSITORIES]
    if unknown:
        raise MkosiError(f"arch has no repository {', '.join(unknown)} (known: {', '.join(KNOWN_REPOSITORIES)})")
    mirror = (config.mirror or DEFAULT_MIRROR).rstrip("/")
    return [pacman.Repository(name, f"{mirror}/$repo/os/$arch") for name in wanted]


async def install(context: Context) -> None:
    await pacman.install(context, repositories(context.config), PACKAGES.base, keyring=KEYRING)
