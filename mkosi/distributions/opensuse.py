"""openSUSE Tumbleweed: installed with zypper from download.opensuse.org or `--mirror`."""

from __future__ import annotations

from pathlib import Path

from mkosi.config import Architecture, Config
from mkosi.context import Context
from mkosi.distributions import Distribution
from mkosi.distributions.installer import InitrdByMkosi, PackageNames
from mkosi.errors import MkosiError
from mkosi.package_managers import zypper
from mkosi.package_managers.rpm import Repository

DEFAULT_MIRROR = "https://download.opensuse.org"
# Each repository's path below a mirror.
REPOSITORIES = {
    "repo-oss": "tumbleweed/repo/oss/",
    "repo-non-oss": "tumbleweed/repo/non-oss/",
    "repo-update": "update/tumbleweed/",
}
DEFAULT_REPOSITORIES = ("repo-oss", "repo-update")
# Other architectures than x86-64 are published below ports/, without a separate update repository.
PORTS = {Architecture.arm64: "ports/aarch64/"}
PACKAGES = PackageNames(
    base=("openSUSE-release", "systemd", "util-linux"),
    kernel=("kernel-default", "dracut"),
    boot=("systemd-boot",),
    filesystems={"ext4": "e2fsprogs", "btrfs": "btrfsprogs", "xfs": "xfsprogs", "erofs": "erofs-utils"},
)


def repositories(config: Config) -> list[Repository]:
    ports = PORTS.get(config.architecture, "")
    known = {n: ports + path for n, path in REPOSITORIES.items() if not (ports and n == "repo-update")}
    wanted = config.repositories or tuple(r for r in DEFAULT_REPOSITORIES if r in known)
    unknown = [r for r in wanted if r not in known]
    if unknown:
        raise MkosiError(
            f"opensuse has no repository {', '.join(unknown)} for {config.architecture} (known: {', '.join(known)})"
        )
    mirror = (config.mirror or DEFAULT_MIRROR).rstrip("/")
    # Debian has no openSUSE keys: the signing key is the one published next to the main
    # repository's metadata, fetched from the configured mirror.
    keys = tuple(k.absolute().as_uri() for k in config.repository_keys) or (
        f"{mirror}/{known['repo-oss']}repodata/repomd.xml.key",
    )
    return [Repository(n, f"openSUSE Tumbleweed {n}", baseurl=f"{mirror}/{known[n]}", gpgkeys=keys) for n in wanted]


class Installer(InitrdByMkosi, distribution=Distribution.opensuse):
    default_release = "tumbleweed"
    releases = frozenset({"tumbleweed"})
    package_manager_tools = ("zypper", "rpm")
    initrd_paths = ("boot/initrd-{version}",)
    packages = PACKAGES

    async def install_packages(self, context: Context, root: Path, packages: tuple[str, ...]) -> None:
        await zypper.install(context, root, repositories(context.config), packages)
