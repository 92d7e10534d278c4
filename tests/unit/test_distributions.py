"""Each distribution's defaults, repositories, package names and package manager command lines."""

from __future__ import annotations

import functools
import hashlib
import platform
import shutil
from pathlib import Path
from typing import Any

import anyio
import pytest
import structlog

from mkosi.boot import Kernel, find_kernel, kernel_images, write_dracut_config
from mkosi.build import STAGES
from mkosi.config import Config, parse_args
from mkosi.context import Context
from mkosi.disk.layout import checked_filesystems
from mkosi.distributions import Distribution, arch, debian, fedora, opensuse, ubuntu
from mkosi.distributions.installer import DistributionInstaller, InitrdByMkosi, PackageNames, ensure_initrd
from mkosi.errors import ConfigError, MkosiError
from mkosi.package_managers import (
    RETRIES,
    NoSuchPackage,
    UntrustedRepository,
    apt_bootstrap,
    dnf,
    no_stray_copies,
    pacman,
    raise_missing,
    raise_untrusted,
    zypper,
)
from mkosi.package_managers.rpm import (
    RPMDB,
    NoPackageIndex,
    Repository,
    raise_no_index,
    repositories_named,
    rpm_environment,
)
from mkosi.package_managers.rpm import link_in as rpm_link_in
from mkosi.package_managers.rpm import link_out as rpm_link_out
from mkosi.pipeline import stage_keys
from mkosi.run import CommandError


def load(*argv: str) -> Config:
    return parse_args(list(argv))[1]


def context(config: Config, tmp_path: Path) -> Context:
    return Context(config=config, workspace=tmp_path / "ws", log=structlog.get_logger("test"))


# ---- defaults and releases ----


@pytest.mark.parametrize(
    ("distribution", "release"),
    [("debian", "bookworm"), ("ubuntu", "resolute"), ("fedora", "45"), ("arch", "rolling"),
     ("opensuse", "tumbleweed")],
)  # fmt: skip
def test_default_release(project: Path, distribution: str, release: str) -> None:
    assert load("-d", distribution).release == release


@pytest.mark.parametrize("distribution", list(Distribution))
def test_every_distribution_has_one_complete_installer(distribution: Distribution) -> None:
    installer = distribution.installer()
    assert installer.distribution is distribution
    assert installer is distribution.installer(), "one installer object per distribution"
    installer.check_release(installer.default_release)
    # It installs packages into a build image itself, not through the base class's placeholder.
    assert type(installer).install_packages is not DistributionInstaller.install_packages
    assert type(installer).install is not DistributionInstaller.install
    # The manifest records these tools' versions: each must be a real program setup.sh installs.
    missing = [tool for tool in installer.package_manager_tools if shutil.which(tool) is None]
    assert not missing, f"{distribution}: {missing} not on PATH"


@pytest.mark.parametrize(("distribution", "release"), [("fedora", "44"), ("fedora", "rawhide"), ("ubuntu", "noble")])
def test_known_releases(distribution: str, release: str) -> None:
    Distribution(distribution).installer().check_release(release)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-d", "fedora", "-r", "bookworm"], "fedora has no release 'bookworm' (use a release number or"),
        (["-d", "ubuntu", "-r", "hardy-ng"], "ubuntu has no release 'hardy-ng'"),
        (["-d", "arch", "-r", "2024"], "arch has no release '2024' (known: rolling)"),
        (["-d", "opensuse", "-r", "leap"], "opensuse has no release 'leap' (known: tumbleweed)"),
        (["-d", "slackware"], "-d: invalid value 'slackware'"),
    ],
)
def test_bad_distribution_or_release_is_refused_early(project: Path, argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as e:
        load(*argv)
    assert message in str(e.value)


def test_repository_key_check_is_on_by_default(project: Path) -> None:
    assert load().repository_key_check is True
    assert load("--repository-key-check=no").repository_key_check is False
    (project / "mkosi.default").write_text("[Distribution]\nRepositoryKeyCheck=no\n")
    assert load().repository_key_check is False


# ---- package names ----


@pytest.mark.parametrize("module", [debian, ubuntu, fedora, arch, opensuse])
def test_package_names_cover_a_bootable_image(module: object) -> None:
    names = module.PACKAGES  # type: ignore[attr-defined]
    # Debian names its kernel flavour per architecture (kernel_package()), the others by name.
    assert names.boot and (names.kernel or callable(getattr(module, "kernel_package", None)))
    # Every root file system a raw format makes can be checked at boot.
    assert {"ext4", "btrfs"} <= set(names.filesystems)


# ---- apt and dpkg: Debian and Ubuntu ----


def sources_list(ctx: Context, bootstrap: apt_bootstrap.Bootstrap) -> list[str]:
    apt_bootstrap.make_skeleton(ctx.root, bootstrap, ctx.config.architecture)
    return (ctx.root / "etc/apt/sources.list").read_text().splitlines()


def test_debian_uses_only_debians_keyring(project: Path, tmp_path: Path) -> None:
    ctx = context(load("-m", "http://m/debian"), tmp_path)
    bootstrap = debian.bootstrap(ctx.config)
    assert bootstrap.keyrings == (debian.KEYRING,)
    assert sources_list(ctx, bootstrap) == ["deb http://m/debian bookworm main"]


def test_ubuntu_default_sources(project: Path, tmp_path: Path) -> None:
    ctx = context(load("-d", "ubuntu", "--repository-key-check=no"), tmp_path)
    bootstrap = ubuntu.bootstrap(ctx.config)
    assert sources_list(ctx, bootstrap) == [
        "deb [trusted=yes] http://archive.ubuntu.com/ubuntu resolute main universe",
        "deb [trusted=yes] http://archive.ubuntu.com/ubuntu resolute-updates main universe",
        "deb [trusted=yes] http://security.ubuntu.com/ubuntu resolute-security main universe",
    ]
    assert bootstrap.packages == ("systemd", "systemd-sysv", "dbus", "libpam-systemd", "apt")
    assert bootstrap.keyrings == ()


def test_ubuntu_mirror_repositories_and_arm64(project: Path, tmp_path: Path) -> None:
    config = load("-d", "ubuntu", "-r", "noble", "--repository-key-check=no", "--architecture=arm64",
                  "--repositories=main,restricted", "-m", "http://local/ubuntu", "-p", "vim")  # fmt: skip
    ctx = context(config, tmp_path)
    bootstrap = ubuntu.bootstrap(ctx.config)
    assert sources_list(ctx, bootstrap) == ["deb [trusted=yes] http://local/ubuntu noble main restricted"]
    assert (ctx.root / "var/lib/dpkg/arch").read_text() == "arm64\n"
    # arm64 has no /lib64 to merge into /usr.
    assert (ctx.root / "lib").readlink() == Path("usr/lib") and not (ctx.root / "lib64").exists()
    assert bootstrap.packages[-2:] == ("apt", "vim")
    ports = ubuntu.sources(load("-d", "ubuntu", "--architecture=arm64"))[0]
    assert ports.uri == "http://ports.ubuntu.com/ubuntu-ports"


@pytest.mark.parametrize(("module", "kernel"), [(debian, "linux-image-amd64"), (ubuntu, "linux-image-generic")])
def test_bootable_images_get_a_kernel_and_the_dracut_configuration(
    project: Path, tmp_path: Path, module: Any, kernel: str
) -> None:
    distribution = module.__name__.rsplit(".", 1)[1]
    ctx = context(load("-d", distribution, "-t", "raw_gpt", "--bootable", "--repository-key-check=no"), tmp_path)
    bootable = module.bootstrap(ctx.config)
    packages = ",".join(bootable.packages)
    assert f",{kernel},dracut,zstd,udev,systemd-boot-efi" in packages
    assert set(bootable.files) == {"etc/dracut.conf.d/50-mkosi.conf", debian.DPKG_NO_DOCUMENTATION}
    plain = module.bootstrap(load("-d", distribution, "--repository-key-check=no"))
    # Only dpkg's path excludes for documentation, and the same as tar patterns for unpacking.
    assert list(plain.files) == [debian.DPKG_NO_DOCUMENTATION]
    assert "path-exclude=/usr/share/man/*" in plain.files[debian.DPKG_NO_DOCUMENTATION]
    assert "./usr/share/man/*" in plain.excludes
    with_docs = module.bootstrap(load("-d", distribution, "--repository-key-check=no", "--with-docs"))
    assert not with_docs.files and not with_docs.excludes


class _Recording(InitrdByMkosi):
    """An installer of the shared rpm/pacman kind whose package manager only records what it is asked."""

    packages = PackageNames(
        base=("base-files",), kernel=("kernel",), boot=("boot-loader",), filesystems={"ext4": "e2fsprogs"}
    )

    def __init__(self) -> None:
        self.asked: list[tuple[Path, tuple[str, ...]]] = []

    async def install_packages(self, context: Context, root: Path, packages: tuple[str, ...]) -> None:
        self.asked.append((root, packages))
        # What a kernel package whose hook builds the initrd leaves behind.
        _touch(root / "usr/lib/modules/6.17.1/vmlinuz")
        _touch(root / "boot/initramfs-6.17.1.img")


def test_rpm_and_pacman_installers_write_dracut_config_then_install_what_booting_needs(
    project: Path, tmp_path: Path
) -> None:
    installer = _Recording()
    ctx = context(load("-d", "fedora", "-t", "raw_gpt", "--bootable", "-p", "vim"), tmp_path)
    anyio.run(installer.install, ctx)
    assert installer.asked == [(ctx.root, ("base-files", "kernel", "boot-loader", "e2fsprogs", "vim"))]
    assert (ctx.root / "etc/dracut.conf.d/50-mkosi.conf").is_file()
    plain = _Recording()
    ctx = context(load("-d", "fedora", "-p", "vim"), tmp_path / "plain")
    anyio.run(plain.install, ctx)
    assert plain.asked == [(ctx.root, ("base-files", "vim"))]
    assert not (ctx.root / "etc/dracut.conf.d").exists()


@pytest.mark.parametrize(
    ("argv", "tools"),
    [(("-t", "raw_gpt"), ("e2fsprogs",)), (("-t", "raw_btrfs"), ("btrfs-progs",)),
     (("-t", "raw_squashfs"), ()), (("-t", "raw_squashfs", "--home-size=64M"), ("e2fsprogs",)),
     (("-t", "raw_btrfs", "--srv-size=64M"), ("btrfs-progs",))],
)  # fmt: skip
def test_bootable_images_get_the_fsck_of_their_writable_file_systems(
    project: Path, argv: tuple[str, ...], tools: tuple[str, ...]
) -> None:
    config = load("-d", "debian", "--bootable", *argv)
    assert tuple(p for p in debian.packages(config) if p in ("e2fsprogs", "btrfs-progs")) == tools
    assert fedora.PACKAGES.filesystem_tools(checked_filesystems(config)) == tools
    plain = load("-d", "debian", *argv)
    assert not {"e2fsprogs", "btrfs-progs"} & set(debian.packages(plain))


def test_fsck_tools_are_part_of_the_bootstrap_key(project: Path) -> None:
    def bootstrap_key(*argv: str) -> str:
        return stage_keys(load("-d", "debian", *argv), STAGES)[0][1]

    assert bootstrap_key("-t", "raw_gpt", "--bootable") != bootstrap_key("-t", "raw_btrfs", "--bootable")
    # Without booting, every format shares one bootstrap.
    assert bootstrap_key("-t", "raw_gpt") == bootstrap_key("-t", "raw_btrfs") == bootstrap_key("-t", "tar")


def _touch(path: Path, text: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_kernel_layouts(tmp_path: Path) -> None:
    debian_root, fedora_root, arch_root = tmp_path / "debian", tmp_path / "fedora", tmp_path / "arch"
    _touch(debian_root / "usr/lib/modules/6.1.0-9-amd64/modules.dep")
    for version in ("6.1.0-9-amd64", "6.1.0-10-amd64"):
        _touch(debian_root / f"boot/vmlinuz-{version}")
        _touch(debian_root / f"boot/initrd.img-{version}")
    # The newest by version, not by name: 10 > 9.
    assert find_kernel(debian_root, Distribution.debian.installer().initrd_paths) == Kernel(
        "6.1.0-10-amd64", debian_root / "boot/vmlinuz-6.1.0-10-amd64", debian_root / "boot/initrd.img-6.1.0-10-amd64"
    )
    image = _touch(fedora_root / "usr/lib/modules/6.17.1-300.fc45.x86_64/vmlinuz")
    assert kernel_images(fedora_root) == {"6.17.1-300.fc45.x86_64": image}
    with pytest.raises(MkosiError, match=r"no initrd for kernel 6\.17\.1-300\.fc45\.x86_64"):
        find_kernel(fedora_root, Distribution.fedora.installer().initrd_paths)
    initrd = _touch(fedora_root / "boot/initramfs-6.17.1-300.fc45.x86_64.img")
    assert find_kernel(fedora_root, Distribution.fedora.installer().initrd_paths).initrd == initrd
    # Each distribution's hooks have their own place; mkosi's own initrd is found for every one.
    with pytest.raises(MkosiError, match="no initrd"):
        find_kernel(fedora_root, Distribution.debian.installer().initrd_paths)
    mkosi_initrd = _touch(fedora_root / "usr/lib/modules/6.17.1-300.fc45.x86_64/initrd")
    assert find_kernel(fedora_root, Distribution.arch.installer().initrd_paths).initrd == mkosi_initrd
    _touch(arch_root / "usr/lib/modules/6.17.1-arch1-1/pkgbase", "linux\n")
    image = _touch(arch_root / "boot/vmlinuz-linux")
    assert kernel_images(arch_root) == {"6.17.1-arch1-1": image}
    with pytest.raises(MkosiError, match=r"no kernel in /usr/lib/modules/\*/vmlinuz or /boot/vmlinuz-\*"):
        find_kernel(tmp_path / "empty", ())


def test_kernel_files_are_found_inside_the_image_never_through_a_link_to_the_host(tmp_path: Path) -> None:
    root, host = tmp_path / "root", _touch(tmp_path / "host/vmlinuz-6.1.0-10-amd64", "the host's kernel")
    (root / "boot").mkdir(parents=True)
    (root / "boot/vmlinuz-6.1.0-10-amd64").symlink_to(host)
    (root / "boot/initrd.img-6.1.0-10-amd64").symlink_to(tmp_path / "host/initrd")
    with pytest.raises(MkosiError, match="no kernel"):
        find_kernel(root, Distribution.debian.installer().initrd_paths)
    # The same absolute link, to where the image itself has the kernel, is the image's kernel.
    inside = _touch(root.joinpath(*host.parts[1:]), "the image's kernel")
    _touch(root.joinpath(*host.parts[1:-1], "initrd"))
    assert find_kernel(root, Distribution.debian.installer().initrd_paths).image == inside


def test_dracut_configuration_goes_into_bootable_trees_only(project: Path, tmp_path: Path) -> None:
    write_dracut_config(tmp_path / "plain", load("-d", "fedora"))
    assert not (tmp_path / "plain").exists()
    write_dracut_config(tmp_path / "root", load("-d", "fedora", "-t", "raw_gpt", "--bootable"))
    assert 'hostonly="no"' in (tmp_path / "root/etc/dracut.conf.d/50-mkosi.conf").read_text()


def test_missing_initrd_without_dracut_is_named(project: Path, tmp_path: Path) -> None:
    ctx = context(load("-d", "fedora", "-t", "raw_gpt", "--bootable"), tmp_path)
    _touch(ctx.root / "usr/lib/modules/6.17.1/vmlinuz")
    with pytest.raises(MkosiError, match=r"kernel 6\.17\.1 has no initrd and the image has no dracut"):
        anyio.run(ensure_initrd, ctx)


def test_ubuntu_without_its_keyring_says_what_to_do(project: Path, tmp_path: Path) -> None:
    with pytest.raises(MkosiError, match=r"ubuntu-keyring.*RepositoryKeyCheck=no"):
        ubuntu.keyrings(load("-d", "ubuntu"), tmp_path / "missing.gpg")
    present = tmp_path / "ubuntu.gpg"
    present.write_bytes(b"")
    assert ubuntu.keyrings(load("-d", "ubuntu"), present) == (present,)


def test_repository_keys_replace_the_distributions_own(project: Path, tmp_path: Path) -> None:
    key = project / "mirror.gpg"
    key.write_bytes(b"key")
    given = ("-m", "http://m/", f"--repository-key={key}")
    assert ubuntu.keyrings(load("-d", "ubuntu", *given), tmp_path / "missing.gpg") == (key,)
    assert ubuntu.keyrings(load("-d", "ubuntu", *given, "--repository-key-check=no")) == ()
    ctx = context(load("-d", "debian", *given), tmp_path)
    bootstrap = debian.bootstrap(ctx.config)
    assert bootstrap.keyrings == (key,) == bootstrap.image_keys
    # The image's apt gets the key too, named so that apt reads it.
    sources_list(ctx, bootstrap)
    copied = ctx.root / "etc/apt/trusted.gpg.d/mkosi-repository-key-0.gpg"
    assert copied.read_bytes() == b"key" and copied.stat().st_mode & 0o777 == 0o644
    assert {r.gpgkeys for r in fedora.repositories(load("-d", "fedora", *given))} == {(key.as_uri(),)}
    assert {r.gpgkeys for r in opensuse.repositories(load("-d", "opensuse", *given))} == {(key.as_uri(),)}


def test_pacman_trusts_the_primary_keys_of_given_keys() -> None:
    shown = (
        "pub:-:255:22:AAAA:1:::-:::scSC::::::23::0:\nfpr:::::::::PRIMARY1:\n"
        "uid:-::::1::X::mkosi test::::::::::0:\nsub:-:255:18:BBBB:1::::::e::::::23:\nfpr:::::::::SUBKEY:\n"
        "pub:-:255:22:CCCC:1:::-:::scSC::::::23::0:\nfpr:::::::::PRIMARY2:\n"
    )
    assert pacman.fingerprints(shown) == ["PRIMARY1", "PRIMARY2"]


# ---- dnf: Fedora ----


def test_fedora_repositories_from_a_mirror(project: Path) -> None:
    repos = fedora.repositories(load("-d", "fedora", "-m", "http://m/fedora/"))
    assert [(r.id, r.baseurl) for r in repos] == [
        ("fedora", "http://m/fedora/releases/45/Everything/x86_64/os/"),
        ("updates", "http://m/fedora/updates/45/Everything/x86_64/"),
    ]
    assert all(r.gpgkeys for r in repos)


def test_fedora_default_metalinks_and_rawhide(project: Path) -> None:
    repos = fedora.repositories(load("-d", "fedora", "--architecture=arm64"))
    assert repos[0].metalink == f"{fedora.METALINK}?repo=fedora-45&arch=aarch64"
    assert repos[1].metalink == f"{fedora.METALINK}?repo=updates-released-f45&arch=aarch64"
    rawhide = fedora.repositories(load("-d", "fedora", "-r", "rawhide"))
    assert [r.id for r in rawhide] == ["fedora"] and "repo=rawhide" in (rawhide[0].metalink or "")


def test_fedora_keys(tmp_path: Path) -> None:
    assert fedora.gpg_keys("45", tmp_path) == (f"{fedora.FEDORA_REPOS_KEYS}/RPM-GPG-KEY-fedora-45-primary",)
    assert fedora.gpg_keys("rawhide", tmp_path)[0].endswith("RPM-GPG-KEY-fedora-46-primary")
    (tmp_path / "RPM-GPG-KEY-fedora-44-primary").write_text("key")
    assert fedora.gpg_keys("44", tmp_path) == ((tmp_path / "RPM-GPG-KEY-fedora-44-primary").as_uri(),)


def test_unknown_repository_is_named(project: Path) -> None:
    with pytest.raises(MkosiError, match="fedora 45 has no repository extras"):
        fedora.repositories(load("-d", "fedora", "--repositories=fedora,extras"))
    with pytest.raises(MkosiError, match="opensuse has no repository oss for x86-64"):
        opensuse.repositories(load("-d", "opensuse", "--repositories=oss"))
    with pytest.raises(MkosiError, match="arch has no repository community"):
        arch.repositories(load("-d", "arch", "--repositories=community"))


def test_dnf_configuration_is_isolated_from_the_host(project: Path, tmp_path: Path) -> None:
    config = load("-d", "fedora", "-m", "http://m", "-p", "vim")
    ctx = context(config, tmp_path)
    text = dnf.config_text(ctx, fedora.repositories(config), workspace=tmp_path / "ws/dnf")
    assert f"reposdir={tmp_path}/ws/dnf/repos.d" in text and f"varsdir={tmp_path}/ws/dnf/vars" in text
    assert "gpgcheck=1" in text and "tsflags=nodocs" in text and "keepcache=1" in text
    # A stalled mirror is given up on after MirrorTimeout=, and dnf's retries are bounded (0 is forever).
    assert "\ntimeout=60\n" in text and f"\nretries={RETRIES}\n" in text and RETRIES > 0
    packages = fedora.PACKAGES.image(bootable=False, extra=("vim",))
    argv = dnf.command(ctx, ctx.root, tmp_path / "ws/dnf/dnf.conf", packages)
    # No host plugins, no host configuration.
    assert "--noplugins" in argv and f"--config={tmp_path}/ws/dnf/dnf.conf" in argv
    # dnf 4 takes these as host paths only from the command line.
    assert f"--setopt=cachedir={tmp_path}/ws/dnf/cache" in argv
    assert f"--setopt=persistdir={tmp_path}/ws/root/var/lib/dnf" in argv
    assert f"--installroot={tmp_path}/ws/root" in argv and "--releasever=45" in argv
    assert argv[-5:] == ["install", "fedora-release", "systemd", "util-linux", "vim"]


def test_dnf_without_key_check(project: Path, tmp_path: Path) -> None:
    config = load("-d", "fedora", "-m", "http://m", "--repository-key-check=no", "--with-docs")
    text = dnf.config_text(context(config, tmp_path), fedora.repositories(config), workspace=tmp_path)
    assert "gpgcheck=1" not in text and "gpgkey" not in text and "tsflags" not in text


def test_repository_section() -> None:
    repo = Repository("r", "R", baseurl="http://m/r/", gpgkeys=("https://k1", "file:///k2"))
    assert repo.section(key_check=True, keep_packages=True) == (
        "[r]\nname=R\nenabled=1\ngpgcheck=1\nbaseurl=http://m/r/\ngpgkey=https://k1 file:///k2\nkeeppackages=1\n"
    )
    with pytest.raises(ValueError, match="exactly one"):
        Repository("r", "R")


def test_rpm_database_goes_where_the_distribution_keeps_it(tmp_path: Path) -> None:
    env = rpm_environment(tmp_path)
    assert (Path(env["HOME"]) / ".rpmmacros").read_text() == f"%_dbpath {RPMDB}\n"
    assert Path(env["HOME"]).is_relative_to(tmp_path)


# ---- zypper: openSUSE ----


def test_opensuse_repositories(project: Path) -> None:
    repos = opensuse.repositories(load("-d", "opensuse"))
    assert [(r.id, r.baseurl) for r in repos] == [
        ("repo-oss", "https://download.opensuse.org/tumbleweed/repo/oss/"),
        ("repo-update", "https://download.opensuse.org/update/tumbleweed/"),
    ]
    local = opensuse.repositories(load("-d", "opensuse", "-m", "http://local/"))
    assert local[0].gpgkeys == ("http://local/tumbleweed/repo/oss/repodata/repomd.xml.key",)


def test_opensuse_ports_and_arch_on_arm64(project: Path) -> None:
    repos = opensuse.repositories(load("-d", "opensuse", "--architecture=arm64"))
    assert [(r.id, r.baseurl) for r in repos] == [
        ("repo-oss", "https://download.opensuse.org/ports/aarch64/tumbleweed/repo/oss/")
    ]
    with pytest.raises(MkosiError, match="no repository repo-update for arm64"):
        opensuse.repositories(load("-d", "opensuse", "--architecture=arm64", "--repositories=repo-update"))
    with pytest.raises(MkosiError, match=r"^arch is built for x86-64 only, not arm64$"):
        arch.repositories(load("-d", "arch", "--architecture=arm64"))


def test_zypper_commands(project: Path, tmp_path: Path) -> None:
    ctx = context(load("-d", "opensuse", "-p", "vim"), tmp_path)
    packages = opensuse.PACKAGES.image(bootable=False, extra=ctx.config.packages)
    refresh, install = zypper.commands(ctx, ctx.root, tmp_path / "repos.d", packages)
    # Isolated from the host: every path zypper is given lies in the build's own directories.
    for argv in (refresh, install):
        paths = [a.split("=", 1)[1] for a in argv if a.startswith(("--config=", "--root=", "--reposd-dir="))]
        assert len(paths) == 3 and all(Path(p).is_relative_to(tmp_path) for p in paths), argv
        assert "--non-interactive" in argv
    assert refresh[-1] == "refresh"
    # Everything is downloaded before anything is installed: a failed download leaves the root alone.
    assert install[install.index("install") :] == ["install", "--no-recommends", "--download-in-advance", *packages]
    unchecked = context(load("-d", "opensuse", "--repository-key-check=no"), tmp_path)
    assert "--no-gpg-checks" in zypper.commands(unchecked, tmp_path, tmp_path, ())[0]
    # Keys given: imported into the rpm database beforehand, and no key the repository offers is trusted.
    (project / "mirror.asc").write_text("key")
    keyed = context(load("-d", "opensuse", "--repository-key=mirror.asc"), tmp_path)
    refresh = zypper.commands(keyed, tmp_path, tmp_path, ())[0]
    assert "--gpg-auto-import-keys" not in refresh and "--no-gpg-checks" not in refresh
    assert "rpm.install.excludedocs = yes" in zypper.zypp_conf(ctx)
    stalling = context(load("-d", "opensuse", "--mirror-timeout=9"), tmp_path)
    assert "\ndownload.transfer_timeout = 9\ndownload.connect_timeout = 9\n" in zypper.zypp_conf(stalling)


ON_X86_64 = pytest.mark.skipif(platform.machine() != "x86_64", reason="arm64 is foreign on an x86-64 host only")


@ON_X86_64
def test_dnf_is_forced_to_aarch64_for_arm64_only(project: Path, tmp_path: Path) -> None:
    def argv(*args: str) -> list[str]:
        ctx = context(load("-d", "fedora", *args), tmp_path)
        return dnf.command(ctx, ctx.root, tmp_path / "dnf.conf", ["systemd"])

    native = argv()
    assert not [a for a in native if a.startswith("--forcearch")]
    # The same command with one option more, before the verb (dnf 4 takes it as a general option).
    assert argv("--architecture=arm64") == [*native[:-2], "--forcearch=aarch64", *native[-2:]]


@ON_X86_64
def test_zypp_conf_names_aarch64_for_arm64_only(project: Path, tmp_path: Path) -> None:
    native = zypper.zypp_conf(context(load("-d", "opensuse"), tmp_path))
    assert "arch" not in native.replace("[main]", "")
    assert (
        zypper.zypp_conf(context(load("-d", "opensuse", "--architecture=arm64"), tmp_path))
        == native + "arch = aarch64\n"
    )


@ON_X86_64
def test_a_package_missing_for_a_foreign_architecture_names_it(project: Path) -> None:
    assert repositories_named(load("-d", "fedora")) == "the repositories of fedora 45"
    assert (
        repositories_named(load("-d", "fedora", "--architecture=arm64")) == "the repositories of fedora 45 for aarch64"
    )


# ---- pacman: Arch ----


def test_pacman_configuration(project: Path, tmp_path: Path) -> None:
    config = load("-d", "arch")
    ctx = context(config, tmp_path)
    text = pacman.config_text(ctx, ctx.root, arch.repositories(config), workspace=tmp_path / "p")
    assert f"RootDir = {tmp_path}/ws/root\n" in text
    assert f"DBPath = {tmp_path}/ws/root/var/lib/pacman/\n" in text
    assert f"GPGDir = {tmp_path}/p/gnupg/\n" in text and f"CacheDir = {tmp_path}/p/cache/\n" in text
    assert "SigLevel = Required DatabaseOptional\n" in text
    # Named once for each try: pacman tries a failed file at the repository's next Server=.
    server = "Server = https://geo.mirror.pkgbuild.com/$repo/os/$arch\n"
    assert f"[core]\n{server * (1 + RETRIES)}\n[" in text
    assert "[extra]\n" in text and "NoExtract = usr/share/doc/*" in text
    unchecked = load("-d", "arch", "--repository-key-check=no", "-m", "http://l/")
    text = pacman.config_text(context(unchecked, tmp_path), tmp_path, arch.repositories(unchecked), workspace=tmp_path)
    assert "SigLevel = Never\n" in text and "Server = http://l/$repo/os/$arch" in text


def test_pool_keeps_each_repositorys_packages_apart(tmp_path: Path) -> None:
    cache, pool = tmp_path / "cache", tmp_path / "pool"
    (cache / "fedora-1234/packages").mkdir(parents=True)
    (cache / "fedora-1234/packages/a-1.rpm").write_text("a")
    (cache / "fedora-1234/repodata").mkdir()
    anyio.run(rpm_link_out, context(load("-d", "fedora"), tmp_path), cache, pool, {}, "dnf")
    assert sorted(p.relative_to(pool).as_posix() for p in pool.rglob("*.rpm")) == ["fedora-1234/a-1.rpm"]
    fresh = tmp_path / "fresh"
    anyio.run(rpm_link_in, pool, fresh)
    assert (fresh / "fedora-1234/packages/a-1.rpm").read_text() == "a"
    # zypper keeps packages directly in a directory per repository.
    anyio.run(rpm_link_in, pool, tmp_path / "zypp", "")
    assert (tmp_path / "zypp/fedora-1234/a-1.rpm").exists()


def test_a_pool_file_the_package_manager_downloaded_again_is_replaced_with_a_warning(
    project: Path, tmp_path: Path
) -> None:
    pool, cache = tmp_path / "pool", tmp_path / "cache"
    (pool / "fedora-1234").mkdir(parents=True)
    for name in ("a-1.rpm", "b-1.rpm", "c-1.rpm"):
        (pool / "fedora-1234" / name).write_text(f"{name} as the pool has it")
    seeded = anyio.run(rpm_link_in, pool, cache)
    packages = cache / "fedora-1234/packages"
    # As dnf does with a file that has not the metadata's checksum: a new file in its place.
    (packages / "a-1.rpm").unlink()
    (packages / "a-1.rpm").write_text("a-1.rpm as the mirror has it")
    # Written again with the same contents, or left alone: the pool's copy was good.
    (packages / "b-1.rpm").unlink()
    (packages / "b-1.rpm").write_text("b-1.rpm as the pool has it")
    with structlog.testing.capture_logs() as logs:
        anyio.run(rpm_link_out, context(load("-d", "fedora"), tmp_path), cache, pool, seeded, "zypper")
    assert [entry["event"] for entry in logs] == [
        f"package pool file {pool / 'fedora-1234/a-1.rpm'} is damaged: its SHA-256 is "
        f"{_sha256('a-1.rpm as the pool has it')}, the repository's metadata names "
        f"{_sha256('a-1.rpm as the mirror has it')}; replaced by zypper's download"
    ]
    assert (pool / "fedora-1234/a-1.rpm").read_text() == "a-1.rpm as the mirror has it"
    assert (pool / "fedora-1234/c-1.rpm").read_text() == "c-1.rpm as the pool has it"


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_dnf_gets_copies_so_a_download_it_writes_in_place_never_writes_into_the_pool(
    project: Path, tmp_path: Path
) -> None:
    # The pool and the cache on one file system, as with --workspace=disk, where links would be made.
    pool, cache = tmp_path / "pool", tmp_path / "cache"
    (pool / "fedora-1234").mkdir(parents=True)
    pooled = pool / "fedora-1234/a-1.rpm"
    pooled.write_text("a-1.rpm damaged in the pool")
    inode = pooled.stat().st_ino
    seeded = anyio.run(functools.partial(rpm_link_in, pool, cache, copies=True))
    given = cache / "fedora-1234/packages/a-1.rpm"
    assert given.stat().st_ino != inode
    # As librepo does with a file that has not the metadata's checksum: the download written into it.
    with given.open("r+") as f:
        f.truncate(0)
        f.write("a-1.rpm as the mirror has it, longer")
    assert pooled.read_text() == "a-1.rpm damaged in the pool"
    with structlog.testing.capture_logs() as logs:
        anyio.run(rpm_link_out, context(load("-d", "fedora"), tmp_path), cache, pool, seeded, "dnf")
    assert [entry["event"] for entry in logs] == [
        f"package pool file {pooled} is damaged: its SHA-256 is {_sha256('a-1.rpm damaged in the pool')}, the "
        f"repository's metadata names {_sha256('a-1.rpm as the mirror has it, longer')}; replaced by dnf's download"
    ]
    # Replaced by a rename: another inode, never the damaged file rewritten where readers may see half.
    assert pooled.read_text() == "a-1.rpm as the mirror has it, longer" and pooled.stat().st_ino != inode


def test_pacman_names_the_corrupted_files_it_deleted() -> None:
    error = CommandError(["pacman"], 1, [
        "checking package integrity...",
        ":: File /ws/pacman/cache/base-1-1-x86_64.pkg.tar.zst is corrupted (invalid or corrupted package (checksum)).",
        "Do you want to delete it? [Y/n] ",
        "error: failed to commit transaction (invalid or corrupted package (checksum))",
    ])  # fmt: skip
    assert pacman.corrupted_files(error) == {"base-1-1-x86_64.pkg.tar.zst": "invalid or corrupted package (checksum)"}
    assert pacman.corrupted_files(CommandError(["pacman"], 1, ["error: target not found: x"])) == {}


def test_pacman_keyring_cache_is_named_after_the_keyring_files(tmp_path: Path) -> None:
    keyrings = tmp_path / "keyrings"
    keyrings.mkdir()
    (keyrings / "archlinux.gpg").write_bytes(b"keys")
    first = pacman.keyring_cache(tmp_path / "cache", "archlinux", keyrings)
    assert first.parent == tmp_path / "cache/keyrings" and first.name.startswith("pacman-archlinux-")
    (keyrings / "archlinux-revoked").write_text("ABCD\n")
    assert pacman.keyring_cache(tmp_path / "cache", "archlinux", keyrings) != first


# ---- errors named by the package manager ----


@pytest.mark.parametrize(
    ("module", "line"),
    [
        (dnf, "No match for argument: nopkg"),
        (zypper, "No provider of 'nopkg' found."),
        (pacman, "error: target not found: nopkg"),
        (apt_bootstrap, "E: Unable to locate package nopkg"),
    ],
)
def test_missing_package_is_named(module: object, line: str) -> None:
    error = CommandError(["x"], 1, ["noise", line])
    with pytest.raises(NoSuchPackage, match="no package nopkg in the repositories"):
        raise_missing(error, module.MISSING, "the repositories")  # type: ignore[attr-defined]


def test_untrusted_repository_is_explained() -> None:
    error = CommandError(["dnf"], 1, ["Package mkosi-test-base-1-1.x86_64.rpm is not signed"])
    with pytest.raises(UntrustedRepository, match="RepositoryKeyCheck=no"):
        raise_untrusted(error, dnf.UNTRUSTED, "the repositories of fedora 45")
    raise_untrusted(CommandError(["dnf"], 1, ["other"]), dnf.UNTRUSTED, "x")  # nothing to say


def test_stray_copies_of_host_paths_are_removed(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "tmp").mkdir(parents=True)
    host = tmp_path / "ws" / "log"
    with no_stray_copies(root, [host]):
        leaked = root / host.relative_to("/")
        leaked.mkdir(parents=True)
        (leaked / "dnf.log").write_text("x")
    assert not (root / host.relative_to("/")).exists()
    assert (root / "tmp").is_dir()  # the image's own directory stays


@ON_X86_64
def test_a_repository_without_an_index_is_named_with_its_url(project: Path) -> None:
    config = load("-d", "fedora", "--architecture=arm64")
    url = "http://m/releases/45/Everything/aarch64/os/repodata/repomd.xml"
    dnf_said = CommandError(["dnf"], 1, [
        "Errors during downloading metadata for repository 'fedora':",
        f"  - Status code: 404 for {url} (IP: 127.0.0.1)",
        "Error: Failed to download metadata for repo 'fedora': Cannot download repomd.xml: All mirrors were tried",
    ])  # fmt: skip
    with pytest.raises(
        NoPackageIndex, match=rf"^no package index for repository fedora of fedora 45 for aarch64 at {url}$"
    ):
        raise_no_index(dnf_said, config, dnf.NO_INDEX)
    # A timeout is the network's: left to the download errors.
    timed_out = CommandError(["dnf"], 1, [
        f"  - Curl error (28): Timeout was reached for {url} [Operation too slow]",
        "Error: Failed to download metadata for repo 'fedora': Cannot download repomd.xml: All mirrors were tried",
    ])  # fmt: skip
    raise_no_index(timed_out, config, dnf.NO_INDEX)
    zypper_said = CommandError(["zypper"], 4, [
        "[repo-oss|http://m/ports/aarch64/tumbleweed/repo/oss/] Valid metadata not found at specified URL",
    ])  # fmt: skip
    with pytest.raises(NoPackageIndex, match=r"^no package index for repository repo-oss of opensuse tumbleweed"):
        raise_no_index(zypper_said, load("-d", "opensuse", "--architecture=arm64"), zypper.NO_INDEX)
