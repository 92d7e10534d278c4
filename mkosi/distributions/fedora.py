"""Fedora: installed with dnf from Fedora's mirrors (found through its metalink) or `--mirror`."""

from __future__ import annotations

from pathlib import Path

from mkosi import boot
from mkosi.config import Config
from mkosi.context import Context
from mkosi.distributions import DISTRIBUTIONS, Distribution, PackageNames
from mkosi.errors import MkosiError
from mkosi.package_managers import dnf
from mkosi.package_managers.rpm import ARCHITECTURES, Repository

METALINK = "https://mirrors.fedoraproject.org/metalink"
# Each release's signing key as the fedora-repos package ships it (/etc/pki/rpm-gpg in Fedora),
# from the package's sources over HTTPS; the host's distribution-gpg-keys package, where it has one,
# has the same files locally.
FEDORA_REPOS_KEYS = "https://src.fedoraproject.org/rpms/fedora-repos/raw/rawhide/f"
LOCAL_KEYS = Path("/usr/share/distribution-gpg-keys/fedora")
DEFAULT_REPOSITORIES = ("fedora", "updates")
PACKAGES = PackageNames(
    base=("fedora-release", "systemd", "util-linux"),
    kernel=("kernel-core", "dracut"),
    boot=("systemd-boot-unsigned",),
    filesystems={"ext4": "e2fsprogs", "btrfs": "btrfs-progs", "xfs": "xfsprogs", "erofs": "erofs-utils"},
)


def _paths(release: str, arch: str) -> dict[str, tuple[str, str]]:
    """Each repository's path below a mirror and its metalink name."""
    if release == "rawhide":
        return {"fedora": (f"development/rawhide/Everything/{arch}/os/", "rawhide")}
    return {
        "fedora": (f"releases/{release}/Everything/{arch}/os/", f"fedora-{release}"),
        "updates": (f"updates/{release}/Everything/{arch}/", f"updates-released-f{release}"),
        "updates-testing": (f"updates/testing/{release}/Everything/{arch}/", f"updates-testing-f{release}"),
    }


def gpg_keys(release: str, local_keys: Path = LOCAL_KEYS) -> tuple[str, ...]:
    number = release
    if release == "rawhide":
        # Rawhide is signed with the key of the release it will become.
        number = str(int(DISTRIBUTIONS[Distribution.fedora].default_release) + 1)
    name = f"RPM-GPG-KEY-fedora-{number}-primary"
    local = local_keys / name
    return (local.as_uri(),) if local.exists() else (f"{FEDORA_REPOS_KEYS}/{name}",)


def repositories(config: Config) -> list[Repository]:
    arch = ARCHITECTURES[config.architecture]
    paths = _paths(config.release, arch)
    wanted = config.repositories or tuple(r for r in DEFAULT_REPOSITORIES if r in paths)
    unknown = [r for r in wanted if r not in paths]
    if unknown:
        raise MkosiError(f"fedora {config.release} has no repository {', '.join(unknown)} (known: {', '.join(paths)})")
    keys = tuple(k.absolute().as_uri() for k in config.repository_keys) or gpg_keys(config.release)
    result = []
    for name in wanted:
        path, metalink = paths[name]
        if config.mirror:
            url = f"{config.mirror.rstrip('/')}/{path}"
            result.append(Repository(name, f"Fedora {config.release} {name}", baseurl=url, gpgkeys=keys))
        else:
            link = f"{METALINK}?repo={metalink}&arch={arch}"
            result.append(Repository(name, f"Fedora {config.release} {name}", metalink=link, gpgkeys=keys))
    return result


async def install(context: Context) -> None:
    async def into_image(packages: tuple[str, ...]) -> None:
        await dnf.install(context, context.root, repositories(context.config), packages)

    await boot.install_image(context, PACKAGES, into_image)


async def install_packages(context: Context, root: Path, packages: tuple[str, ...]) -> None:
    """BuildPackages= into the build image, from the image's own repositories."""
    await dnf.install(context, root, repositories(context.config), packages)
