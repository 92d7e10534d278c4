"""Debian: bootstrapped with mmdebstrap from the configured mirror."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from mkosi import boot, package_cache
from mkosi.config import Config
from mkosi.context import Context
from mkosi.run import run
from mkosi.tree import DOCUMENTATION

DEFAULT_MIRROR = "http://deb.debian.org/debian"
# Enough for an image that boots as a container or a VM with systemd as PID 1.
BASE_PACKAGES = ("systemd", "systemd-sysv", "dbus", "libpam-systemd")
# Stable releases get their point-release updates and security fixes when the default mirror is used.
SUPPORTED_STABLE = {"bookworm", "trixie"}
ARCHITECTURES = {"x86-64": "amd64", "arm64": "arm64"}
# What a bootable image needs on top: a kernel, dracut for a systemd-based initrd (zstd to compress
# it quickly), udev, and systemd-boot's EFI binaries for the ESP and the unified kernel image.
BOOT_PACKAGES = ("dracut", "zstd", "udev", "systemd-boot-efi")
# systemd-cryptsetup and systemd-veritysetup, which the initrd uses to open LUKS and verity roots, are
# part of the systemd package up to bookworm and a package of their own since.
CRYPTSETUP_PACKAGES = {"bookworm": ()}
SPLIT_CRYPTSETUP_PACKAGES = ("systemd-cryptsetup",)


def host_mirrors(apt_dir: Path = Path("/etc/apt")) -> tuple[str | None, str | None]:
    """The Debian mirror and security mirror the host's apt uses, if it uses any."""
    uris: list[tuple[str, str]] = []  # (uri, suite)
    for path in sorted(apt_dir.glob("sources.list.d/*.sources")):
        for stanza in path.read_text().split("\n\n"):
            fields = dict(
                (m.group(1).lower(), m.group(2).strip())
                for m in re.finditer(r"^([A-Za-z-]+):(.*)$", stanza, re.MULTILINE)
            )
            if "deb" in fields.get("types", "").split():
                uris += [(u, s) for u in fields.get("uris", "").split() for s in fields.get("suites", "").split()]
    legacy = apt_dir / "sources.list"
    if legacy.exists():
        for line in legacy.read_text().splitlines():
            m = re.match(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+(\S+)", line)
            if m:
                uris.append((m.group(1), m.group(2)))
    mirror = next((u for u, s in uris if "debian" in u and not s.endswith("-security")), None)
    security = next((u for u, s in uris if "debian" in u and s.endswith("-security")), None)
    return mirror, security


def sources(mirror: str | None, release: str, components: str) -> list[str]:
    """The apt source lines of the image, first the main archive."""
    if mirror:
        return [f"deb {mirror} {release} {components}"]
    host_mirror, host_security = host_mirrors()
    main = host_mirror or DEFAULT_MIRROR
    lines = [f"deb {main} {release} {components}"]
    if release in SUPPORTED_STABLE:
        security = host_security or main.removesuffix("/debian") + "/debian-security"
        lines += [
            f"deb {main} {release}-updates {components}",
            f"deb {security} {release}-security {components}",
        ]
    return lines


def packages(config: Config) -> list[str]:
    boot_packages = []
    if config.bootable:
        cryptsetup = CRYPTSETUP_PACKAGES.get(config.release, SPLIT_CRYPTSETUP_PACKAGES)
        boot_packages = [f"linux-image-{ARCHITECTURES[config.architecture]}", *BOOT_PACKAGES, *cryptsetup]
    return [*BASE_PACKAGES, *boot_packages, *config.packages]


def mmdebstrap_command(context: Context) -> list[str]:
    config = context.config
    components = ",".join(config.repositories) or "main"
    command = [
        "mmdebstrap",
        # Even as root: a private mount namespace, so an interrupted bootstrap leaves no mounts behind.
        "--mode=unshare",
        "--variant=minbase",
        f"--architectures={ARCHITECTURES[config.architecture]}",
        f"--include={','.join(packages(config))}",
    ]
    if config.bootable:
        # Before the kernel is installed, so that its initrd hook builds the initrd we want, once.
        dracut_config = context.workspace / Path(boot.DRACUT_CONFIG_PATH).name
        destination = Path("/", boot.DRACUT_CONFIG_PATH).parent
        command += [
            f'--essential-hook=mkdir -p "$1{destination}"',
            f"--essential-hook=copy-in {dracut_config} {destination}",
        ]
    if config.cache_path is not None:
        pool = package_cache.pool_for(config.cache_path, "debian", config.release, config.architecture)
        hook = f"{sys.executable} -m mkosi.package_cache"
        command += [
            # Keep the packages the bootstrap installs first, so they reach the pool too.
            "--skip=essential/unlink",
            "--skip=download/empty",
            f'--setup-hook={hook} link-in {pool} "$1/var/cache/apt/archives"',
            f'--customize-hook={hook} link-out "$1/var/cache/apt/archives" {pool}',
        ]
    return [*command, config.release, str(context.root), *sources(config.mirror, config.release, components)]


def exclude_documentation(root: Path) -> None:
    """Make dpkg leave documentation out of every package installed in the image from now on.

    Not passed to mmdebstrap as --dpkgopt: with path filters it extracts the essential packages
    much more slowly (18.5 s instead of 11.5 s here); the clean stage removes what the bootstrap
    installed instead.
    """
    config = root / "etc/dpkg/dpkg.cfg.d/mkosi-nodoc"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text("".join(f"path-exclude={pattern}\n" for pattern in DOCUMENTATION))


async def install(context: Context) -> None:
    if context.config.bootable:
        (context.workspace / Path(boot.DRACUT_CONFIG_PATH).name).write_text(boot.DRACUT_CONFIG)
    await run(mmdebstrap_command(context), log=context.log)
    if not context.config.with_docs:
        exclude_documentation(context.root)
