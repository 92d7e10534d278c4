"""Ubuntu, Fedora, openSUSE and Arch images built by the real package managers from local mirrors.

The mirrors are made at test time (see repositories.py) and laid out like the distributions' own,
so the builds go through exactly the code a build from the real mirror takes; `--mirror` points
there. Builds from the real mirrors run where those resolve and are skipped with the reason where
they do not.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import pytest

from mkosi.architecture import Architecture
from mkosi.distributions import Distribution, arch, fedora, opensuse, ubuntu
from mkosi.distributions.debian import DEFAULT_MIRROR as DEBIAN_MIRROR
from mkosi.distributions.debian import host_mirrors
from mkosi.package_managers import RETRIES
from mkosi.package_managers.rpm import RPMDB
from tests.integration import repositories
from tests.integration.faulty_mirror import Fault, faulty_mirror
from tests.integration.repositories import BASE, HELLO, HELLO_DOC, HELLO_OUTPUT
from tests.integration.support import CACHE, Result, log_events, mkosi

# Only the Ubuntu mirror is made of Debian's packages; it checks for Debian's mirror itself.
NEEDS_DEBIAN_MIRROR = False

# What a package manager could write on the build host if it were not isolated from it.
HOST_STATE = (
    "/var/cache/dnf", "/var/lib/dnf", "/var/log/dnf.log", "/var/log/dnf.rpm.log", "/root/.rpmdb",
    "/var/lib/rpm", "/var/cache/zypp", "/var/lib/zypp", "/var/log/zypper.log", "/etc/zypp/repos.d",
    "/var/lib/pacman", "/var/cache/pacman", "/var/log/pacman.log", "/etc/pacman.d/gnupg",
)  # fmt: skip


def host_state() -> dict[str, tuple[int, int] | None]:
    state: dict[str, tuple[int, int] | None] = {}
    for name in HOST_STATE:
        path = Path(name)
        try:
            st = path.stat()
            state[name] = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            state[name] = None
    return state


def rpm_query(tree: Path) -> list[str]:
    return ["rpm", f"--root={tree}", f"--dbpath={RPMDB}", "-q", BASE, HELLO]


def pacman_query(tree: Path) -> list[str]:
    return ["pacman", f"--root={tree}", f"--dbpath={tree / 'var/lib/pacman'}", "-Q", BASE, HELLO]


def dpkg_query(tree: Path) -> list[str]:
    return ["dpkg-query", f"--root={tree}", "-W", HELLO, "systemd"]


def fedora_mirror() -> Path:
    release = Distribution.fedora.installer().default_release
    paths = fedora._paths(release, "x86_64")
    return repositories.rpm_mirror("fedora", fedora.PACKAGES.base, "fedora", paths["fedora"][0], paths["updates"][0])


def opensuse_mirror() -> Path:
    paths = opensuse.REPOSITORIES
    return repositories.rpm_mirror(
        "opensuse", opensuse.PACKAGES.base, "opensuse-tumbleweed", paths["repo-oss"], paths["repo-update"]
    )


def arch_mirror() -> Path:
    return repositories.pacman_mirror("arch", arch.PACKAGES.base)


def ubuntu_mirror() -> Path:
    release = Distribution.ubuntu.installer().default_release
    debian = host_mirrors()[0] or DEBIAN_MIRROR
    if reason := _resolves(debian):
        pytest.skip(f"the Ubuntu test mirror is made of Debian's packages: {reason}")
    return repositories.apt_mirror("ubuntu", release, ubuntu.PACKAGES.base, debian)


@dataclass(frozen=True)
class Case:
    mirror: Callable[[], Path]
    query: Callable[[Path], list[str]]
    # What the build names when signature checking is on and the local repository is unsigned.
    unsigned: str


CASES = {
    "fedora": Case(fedora_mirror, rpm_query, "not signed by a trusted key"),
    "opensuse": Case(opensuse_mirror, rpm_query, "not signed by a trusted key"),
    "arch": Case(arch_mirror, pacman_query, "not signed by a trusted key"),
    # Debian ships no Ubuntu keyring, so the build stops before it fetches anything.
    "ubuntu": Case(ubuntu_mirror, dpkg_query, "ubuntu-archive-keyring.gpg"),
}


@dataclass(frozen=True)
class Built:
    distribution: str
    mirror: Path
    tree: Path
    before: dict[str, tuple[int, int] | None]
    after: dict[str, tuple[int, int] | None]
    cache: Path


@pytest.fixture(scope="session")
def served() -> Iterator[str]:
    """The test mirrors over HTTP, as real mirrors are: package managers copy nothing from file://
    repositories into their caches, so the package pool would go untested."""
    root = CACHE / "repositories"
    root.mkdir(parents=True, exist_ok=True)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory", str(root), str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait()


# The test packages bring no rpm, dnf, zypper or pacman, so CleanPackageMetadata=auto would remove the
# databases these tests read to see what the installer installed.
KEEP_DATABASE = ("--clean-package-metadata=no",)


def build(distribution: str, mirror: Path, served: str, directory: Path, *args: str, check: bool = True) -> Result:
    # A package pool per test mirror: test packages of one name and version differ between recipes.
    cache = mirror.with_name(mirror.name + ".packages")
    url = f"{served}/{mirror.relative_to(CACHE / 'repositories')}"
    return mkosi(
        "-d", distribution, "-t", "directory", f"--mirror={url}", f"--cache={cache}", *KEEP_DATABASE, *args, "build",
        cwd=directory, check=check,
    )  # fmt: skip


@pytest.fixture(scope="session", params=sorted(CASES))
def built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, served: str) -> Built:
    distribution: str = request.param
    mirror = CASES[distribution].mirror()
    directory = tmp_path_factory.mktemp(distribution)
    before = host_state()
    build(distribution, mirror, served, directory, "--repository-key-check=no", "-p", HELLO, "-o", "tree")
    return Built(
        distribution, mirror, directory / "tree", before, host_state(),
        mirror.with_name(mirror.name + ".packages"),
    )  # fmt: skip


def test_package_database_lists_the_packages(built: Built) -> None:
    result = subprocess.run(CASES[built.distribution].query(built.tree), capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert HELLO in result.stdout


def test_files_are_installed_without_documentation(built: Built) -> None:
    assert (built.tree / "usr/bin/mkosi-hello").is_file()
    assert not (built.tree / HELLO_DOC.lstrip("/")).exists()


def test_a_command_runs_inside_the_tree(built: Built) -> None:
    result = subprocess.run(["chroot", built.tree, "/usr/bin/mkosi-hello"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == HELLO_OUTPUT
    assert subprocess.run(["chroot", built.tree, "/bin/sh", "-c", "true"]).returncode == 0


def test_the_host_is_left_alone(built: Built) -> None:
    assert built.after == built.before


def test_downloaded_packages_reach_the_pool(built: Built) -> None:
    assert any(HELLO in p.name for p in built.cache.rglob("*") if p.is_file())


def test_workspace_paths_do_not_leak_into_the_tree(built: Built) -> None:
    # Package managers given host paths under --root tend to recreate them inside the root.
    assert not list(built.tree.rglob(".mkosi-workspace*"))


@pytest.mark.parametrize("distribution", sorted(CASES))
def test_unsigned_repository_is_refused_by_default(distribution: str, tmp_path: Path, served: str) -> None:
    case = CASES[distribution]
    result = build(distribution, case.mirror(), served, tmp_path, check=False)
    assert result.returncode != 0
    assert case.unsigned in result.stderr and "RepositoryKeyCheck=no" in result.stderr, result.stderr
    assert not (tmp_path / "image").exists()
    if distribution == "arch":
        # The populated keyring is kept for the next build.
        cache = case.mirror().with_name(case.mirror().name + ".packages")
        assert list(cache.glob("keyrings/pacman-archlinux-*/pubring.gpg"))


@pytest.mark.parametrize("distribution", sorted(CASES))
def test_missing_package_is_named(distribution: str, tmp_path: Path, served: str) -> None:
    mirror = CASES[distribution].mirror()
    args = ("--repository-key-check=no", "-p", "no-such-pkg")
    result = build(distribution, mirror, served, tmp_path, *args, check=False)
    assert result.returncode != 0
    assert "no package no-such-pkg in" in result.stderr, result.stderr


def test_signed_mirror_is_checked_and_accepted(tmp_path: Path, served: str) -> None:
    signed = repositories.signed_rpm_mirror(opensuse_mirror())
    # A name no other build has: the workspace, where libzypp's keyrings are, is named after it.
    output = f"signed-{os.getpid()}-{tmp_path.name}"
    build("opensuse", signed, served, tmp_path, "-p", HELLO, "-o", output)
    query = subprocess.run(
        ["rpm", f"--root={tmp_path / output}", f"--dbpath={RPMDB}", "-qa"], capture_output=True, text=True
    )
    # The gpg-agent that importing the key started ended with the build.
    assert subprocess.run(["pgrep", "-f", f"gpg-agent.*{output}"], capture_output=True).returncode == 1
    assert HELLO in query.stdout
    # The repository's key was imported into the image's rpm database, as on openSUSE.
    assert "gpg-pubkey-" in query.stdout


def test_package_not_matching_the_signed_index_is_refused(tmp_path: Path, served: str) -> None:
    signed = repositories.signed_rpm_mirror(opensuse_mirror())
    tampered = tmp_path / "mirror"
    shutil.copytree(signed, tampered)
    hello = next(tampered.rglob(f"{HELLO}-*.rpm"))
    shutil.copy(next(tampered.rglob(f"{BASE}-*.rpm")), hello)
    result = mkosi("-d", "opensuse", "-t", "directory", f"--mirror={tampered.as_uri()}",
                   f"--cache={tmp_path / 'cache'}", "-p", HELLO, "build", cwd=tmp_path, check=False)  # fmt: skip
    assert result.returncode != 0
    # One line naming the file (zypper gives its name, not its URL, for a damaged one).
    said = f"mkosi: could not download {hello.name}: the file has another SHA-256 than the package index names"
    assert said in result.stderr, result.stderr
    assert not (tmp_path / "image").exists()


def _resolves(url: str) -> str | None:
    host = urlparse(url).hostname or url
    try:
        socket.getaddrinfo(host, 443)
    except OSError as error:
        return f"{host} does not resolve from here ({error})"
    return None


@pytest.mark.parametrize(
    ("distribution", "url"),
    [
        ("fedora", fedora.METALINK),
        ("opensuse", opensuse.DEFAULT_MIRROR),
        ("arch", arch.DEFAULT_MIRROR),
    ],
)
def test_default_mirror(distribution: str, url: str, tmp_path: Path) -> None:
    if reason := _resolves(url):
        pytest.skip(f"needs {distribution}'s real mirror: {reason}")
    mkosi("-d", distribution, "-t", "directory", "build", cwd=tmp_path)
    assert (tmp_path / "image/usr/lib/os-release").exists()


@pytest.mark.parametrize("built", ["ubuntu"], indirect=True)
def test_ubuntu_tree_is_configured_for_its_release(built: Built) -> None:
    sources = (built.tree / "etc/apt/sources.list").read_text()
    release = Distribution.ubuntu.installer().default_release
    assert f" {release} main universe" in sources


# ---- BuildPackages=: dnf, zypper and pacman installing into the build image ----

BUILD_SCRIPT = '#!/bin/sh\nset -e\nmkosi-hello > "$DESTDIR/hello-output"\n'


@pytest.mark.parametrize("distribution", ["arch", "fedora", "opensuse", "ubuntu"])
def test_build_packages_reach_the_build_image_only(distribution: str, tmp_path: Path, served: str) -> None:
    case = CASES[distribution]
    mirror = case.mirror()
    script = tmp_path / "mkosi.build"
    script.write_text(BUILD_SCRIPT)
    script.chmod(0o755)
    before = host_state()
    # A package pool of its own: only the build image's install can have put mkosi-test-hello there.
    pool = tmp_path / "cache"
    args = ("--repository-key-check=no", f"--build-package={HELLO}", "-o", "tree", f"--cache={pool}")
    build(distribution, mirror, served, tmp_path, *args)
    assert any(HELLO in p.name for p in pool.rglob("*") if p.is_file())
    tree = tmp_path / "tree"
    # The build script ran mkosi-hello in the build image; its output is all that reached the image.
    assert (tree / "hello-output").read_text().strip() == HELLO_OUTPUT
    assert not (tree / "usr/bin/mkosi-hello").exists()
    query = subprocess.run(case.query(tree), capture_output=True, text=True)
    # The database lists the base system (busybox's package, or Ubuntu's systemd) and not
    # mkosi-test-hello, which rpm would list as "mkosi-test-hello-1-1.x86_64", pacman as
    # "mkosi-test-hello 1-1", dpkg-query as "mkosi-test-hello<TAB>1".
    assert not re.search(rf"^{HELLO}[- \t]1", query.stdout, re.MULTILINE), query.stdout
    assert re.search(rf"^({BASE}|systemd)", query.stdout, re.MULTILINE), query.stdout
    assert host_state() == before
    assert not list(tree.rglob(".mkosi-workspace*"))


@pytest.mark.parametrize("distribution", ["arch", "fedora", "opensuse", "ubuntu"])
def test_missing_build_package_is_named(distribution: str, tmp_path: Path, served: str) -> None:
    script = tmp_path / "mkosi.build"
    script.write_text(BUILD_SCRIPT)
    script.chmod(0o755)
    mirror = CASES[distribution].mirror()
    args = ("--repository-key-check=no", "--build-package=no-such-build-pkg")
    result = build(distribution, mirror, served, tmp_path, *args, check=False)
    assert result.returncode != 0
    assert "no package no-such-build-pkg in" in result.stderr, result.stderr
    assert not (tmp_path / "image").exists()


# ---- Bootable=: a real kernel in the UKI, systemd-boot in the ESP ----

ESP_TYPE = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
ROOT_X86_64 = "4f68bce3-e8cd-4db1-96e7-fbcaf984b709"


def _kernel() -> tuple[str, Path]:
    """The real kernel the bootable test mirrors package: Debian's."""
    if not repositories.kernel_at_hand() and (reason := _resolves(host_mirrors()[0] or DEBIAN_MIRROR)):
        pytest.skip(f"the bootable test mirrors hold a kernel from Debian's mirror: {reason}")
    return repositories.debian_kernel()


def fedora_boot_mirror() -> Path:
    paths = fedora._paths(Distribution.fedora.installer().default_release, "x86_64")
    names = fedora.PACKAGES
    return repositories.rpm_boot_mirror(
        "fedora-boot", names, "fedora", paths["fedora"][0], paths["updates"][0], _kernel()
    )


def opensuse_boot_mirror() -> Path:
    paths = opensuse.REPOSITORIES
    names = opensuse.PACKAGES
    return repositories.rpm_boot_mirror(
        "opensuse-boot", names, "opensuse-tumbleweed", paths["repo-oss"], paths["repo-update"], _kernel()
    )


def arch_boot_mirror() -> Path:
    return repositories.pacman_boot_mirror("arch-boot", arch.PACKAGES, _kernel())


BOOT_MIRRORS = {"arch": arch_boot_mirror, "fedora": fedora_boot_mirror, "opensuse": opensuse_boot_mirror}


def _esp_offset(image: Path) -> str:
    table = json.loads(subprocess.run(["sfdisk", "-J", image], capture_output=True, text=True, check=True).stdout)
    partitions = table["partitiontable"]["partitions"]
    assert {p["type"].lower() for p in partitions} == {ESP_TYPE, ROOT_X86_64}, partitions
    esp = next(p for p in partitions if p["type"].lower() == ESP_TYPE)
    return f"{image}@@{esp['start'] * 512}"


def _esp_file(esp: str, name: str, destination: Path) -> Path:
    """Copy the ESP's file `name` (in mtools' notation, ::/DIR/FILE) out of the disk image."""
    subprocess.run(["mcopy", "-n", "-i", esp, name, destination], check=True, env=MTOOLS_ENV)
    return destination


def _section(uki: Path, name: str, destination: Path) -> bytes:
    subprocess.run(["objcopy", "-O", "binary", f"--only-section={name}", uki, destination], check=True)
    return destination.read_bytes()


MTOOLS_ENV = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}


@pytest.mark.parametrize("distribution", sorted(BOOT_MIRRORS))
def test_bootable_image_boots_the_kernel_package(distribution: str, tmp_path: Path, served: str) -> None:
    mirror = BOOT_MIRRORS[distribution]()
    _, kernel = _kernel()
    args = ("--repository-key-check=no", "-t", "raw_gpt", "--bootable", "-o", "image.raw")
    build(distribution, mirror, served, tmp_path, *args)
    esp = _esp_offset(tmp_path / "image.raw")
    listing = subprocess.run(["mdir", "-b", "-i", esp, "::/EFI/Linux"], capture_output=True, text=True, env=MTOOLS_ENV)
    ukis = [line for line in listing.stdout.split() if line.endswith(".efi")]
    assert len(ukis) == 1, listing.stdout + listing.stderr
    uki = _esp_file(esp, ukis[0], tmp_path / "uki.efi")
    # The kernel of the distribution's kernel package, found in its layout.
    assert _section(uki, ".linux", tmp_path / "linux") == kernel.read_bytes()
    # The initrd mkosi had the image's dracut build, with mkosi's dracut configuration.
    assert 'hostonly="no"' in _section(uki, ".initrd", tmp_path / "initrd").decode()
    # The image's os-release, which the test base package writes with the distribution's ID.
    os_id = "opensuse-tumbleweed" if distribution == "opensuse" else distribution
    assert f"ID={os_id}" in _section(uki, ".osrel", tmp_path / "osrel").decode()
    # systemd-boot of the distribution's boot loader package, as the removable-media boot loader.
    loader = _esp_file(esp, "::/EFI/BOOT/BOOTX64.EFI", tmp_path / "BOOTX64.EFI")
    assert loader.read_bytes() == (repositories.EFI / "systemd-bootx64.efi").read_bytes()


@pytest.mark.parametrize("distribution", sorted(BOOT_MIRRORS))
def test_bootable_image_without_a_kernel_package_names_it(distribution: str, tmp_path: Path, served: str) -> None:
    # The plain test mirror has no kernel, dracut or boot loader packages.
    mirror = CASES[distribution].mirror()
    module = {"arch": arch, "fedora": fedora, "opensuse": opensuse}[distribution]
    args = ("--repository-key-check=no", "-t", "raw_gpt", "--bootable")
    result = build(distribution, mirror, served, tmp_path, *args, check=False)
    assert result.returncode != 0
    assert "no package" in result.stderr and module.PACKAGES.kernel[0] in result.stderr, result.stderr
    assert not (tmp_path / "image.raw").exists()


# ---- Signed repositories: accepted with their key, refused with another or when tampered with ----


@dataclass(frozen=True)
class Signed:
    mirror: Callable[[], Path]
    # Change a copy of the signed mirror as someone without the key could.
    tamper: Callable[[Path], None]


def _unsigned_rpm(unsigned: Callable[[], Path]) -> Callable[[Path], None]:
    """What a mirror without the key could serve: the package rebuilt unsigned (here: the unsigned
    mirror's), with repository metadata regenerated to match it."""

    def tamper(mirror: Path) -> None:
        package = next(mirror.rglob(f"{HELLO}-1-*.rpm"))
        shutil.copy(next(unsigned().rglob(package.name)), package)
        subprocess.run(["createrepo_c", "--quiet", package.parent], check=True)

    return tamper


def _changed_pacman_package(mirror: Path) -> None:
    """The package changed and the database made anew to match it, with the old signature."""
    package = next(mirror.rglob(f"{HELLO}-1-*.pkg.tar.zst"))
    # Recompressed: the same files, other bytes.
    tar = subprocess.run(["zstd", "-d", "-c", package], capture_output=True, check=True).stdout
    package.write_bytes(subprocess.run(["zstd", "-1", "-c"], input=tar, capture_output=True, check=True).stdout)
    directory = package.parent
    for old in [*directory.glob("*.db*"), *directory.glob("*.files*")]:
        old.unlink()
    packages = sorted(directory.glob("*.pkg.tar.zst"))
    subprocess.run(["repo-add", "--quiet", directory / "extra.db.tar.gz", *packages], check=True, capture_output=True)


def _changed_release(mirror: Path) -> None:
    """A signed index whose text no longer matches its signature."""
    for release in mirror.glob("dists/*/InRelease"):
        text = release.read_text()
        release.write_text(re.sub(r"^Date: .*$", "Date: Thu, 01 Jan 2026 00:00:00 UTC", text, count=1, flags=re.M))


SIGNED = {
    "fedora": Signed(
        lambda: repositories.signed_rpm_mirror(fedora_mirror()),
        _unsigned_rpm(fedora_mirror),
    ),
    "opensuse": Signed(lambda: repositories.signed_rpm_mirror(opensuse_mirror()), _unsigned_rpm(opensuse_mirror)),
    "arch": Signed(
        lambda: repositories.signed_pacman_mirror(arch_mirror()),
        _changed_pacman_package,
    ),
    "ubuntu": Signed(
        lambda: repositories.signed_apt_mirror(ubuntu_mirror()),
        _changed_release,
    ),
}


def _signed_build(distribution: str, mirror: Path, tmp_path: Path, key: Path, served: str) -> Result:
    # Tampered mirrors are copies outside the served directory: read as files.
    url = f"{served}/{mirror.relative_to(CACHE / 'repositories')}" if mirror.is_relative_to(CACHE) else mirror.as_uri()
    return mkosi(
        "-d", distribution, "-t", "directory", f"--mirror={url}", f"--cache={tmp_path / 'cache'}", *KEEP_DATABASE,
        f"--repository-key={key}", "-p", HELLO, "-o", "tree", "build", cwd=tmp_path, check=False,
    )  # fmt: skip


@pytest.mark.parametrize("distribution", sorted(SIGNED))
def test_signed_repository_is_accepted_with_its_key(distribution: str, tmp_path: Path, served: str) -> None:
    mirror = SIGNED[distribution].mirror()
    result = _signed_build(distribution, mirror, tmp_path, mirror / repositories.BINARY_KEY, served)
    assert result.returncode == 0, result.stderr[-3000:]
    query = subprocess.run(CASES[distribution].query(tmp_path / "tree"), capture_output=True, text=True)
    assert HELLO in query.stdout, query.stdout + query.stderr
    if distribution == "ubuntu":
        # The image's apt trusts the key too, for the same sources (BuildPackages=, updates).
        keys = list((tmp_path / "tree/etc/apt/trusted.gpg.d").glob("mkosi-repository-key-*.gpg"))
        release = next(mirror.glob("dists/*/InRelease"))
        assert subprocess.run(["gpgv", f"--keyring={keys[0]}", release], capture_output=True).returncode == 0


@pytest.mark.parametrize("distribution", sorted(SIGNED))
def test_signed_repository_is_refused_with_another_key(distribution: str, tmp_path: Path, served: str) -> None:
    mirror = SIGNED[distribution].mirror()
    other = repositories.other_key() / repositories.BINARY_KEY
    result = _signed_build(distribution, mirror, tmp_path, other, served)
    assert result.returncode != 0
    assert "not signed by a trusted key" in result.stderr, result.stderr[-3000:]
    assert not (tmp_path / "tree").exists()


@pytest.mark.parametrize("distribution", sorted(SIGNED))
def test_signed_repository_is_refused_when_tampered_with(distribution: str, tmp_path: Path, served: str) -> None:
    tampered = tmp_path / "mirror"
    shutil.copytree(SIGNED[distribution].mirror(), tampered)
    SIGNED[distribution].tamper(tampered)
    result = _signed_build(distribution, tampered, tmp_path, tampered / repositories.BINARY_KEY, served)
    assert result.returncode != 0
    assert "not signed by a trusted key" in result.stderr, result.stderr[-3000:]
    assert not (tmp_path / "tree").exists()


def test_apt_installs_from_a_local_file_mirror(tmp_path: Path) -> None:
    # apt copies nothing from file: sources into its archive: the bootstrap takes them where they are.
    mirror = ubuntu_mirror()
    mkosi("-d", "ubuntu", "-t", "directory", f"--mirror={mirror.as_uri()}", "--repository-key-check=no", "-p", HELLO,
          "-o", "tree", "build", cwd=tmp_path)  # fmt: skip
    result = subprocess.run(["chroot", tmp_path / "tree", "/usr/bin/mkosi-hello"], capture_output=True, text=True)
    assert result.stdout.strip() == HELLO_OUTPUT, result.stderr


def test_a_failing_maintainer_script_fails_the_bootstrap_clearly(tmp_path: Path) -> None:
    # The mirror as a hard-linked copy, with one package more whose postinst fails.
    mirror = tmp_path / "mirror"
    subprocess.run(["cp", "-al", ubuntu_mirror(), mirror], check=True)
    package = tmp_path / "broken"
    (package / "DEBIAN").mkdir(parents=True)
    (package / "DEBIAN/control").write_text(
        "Package: mkosi-test-broken\nVersion: 1\nArchitecture: all\nMaintainer: t <t@mkosi>\nDescription: fails\n"
    )
    (package / "DEBIAN/postinst").write_text("#!/bin/sh\necho 'mkosi-test-broken refuses to configure' >&2\nexit 1\n")
    (package / "DEBIAN/postinst").chmod(0o755)
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", package, mirror / "pool/main"],
                   check=True, capture_output=True)  # fmt: skip
    repositories.write_apt_indexes(mirror, Distribution.ubuntu.installer().default_release)
    project = tmp_path / "project"
    project.mkdir()
    result = mkosi("-d", "ubuntu", "-t", "directory", f"--mirror={mirror.as_uri()}", "--repository-key-check=no",
                   "-p", "mkosi-test-broken", "build", cwd=project, check=False)  # fmt: skip
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    # What failed, in dpkg's words, and not the script that runs it in the tree.
    assert "mkosi: dpkg in the tree could not install mkosi-test-broken (exit status 1)" in result.stderr
    assert "mkosi-test-broken refuses to configure" in result.stderr and "mount -t proc" not in result.stderr
    assert sorted(p.name for p in project.iterdir()) == ["image.log"]


def test_a_pool_package_not_matching_the_index_is_downloaded_again(tmp_path: Path, served: str) -> None:
    url = f"{served}/{ubuntu_mirror().relative_to(CACHE / 'repositories')}"
    cache = tmp_path / "packages"
    args = (
        "-d",
        "ubuntu",
        "-t",
        "directory",
        f"--mirror={url}",
        f"--cache={cache}",
        "--repository-key-check=no",
        "-p",
        HELLO,
    )
    for build_number in (1, 2):
        directory = tmp_path / str(build_number)
        directory.mkdir()
        mkosi(*args, "-o", "tree", "build", cwd=directory)
        if build_number == 1:
            # Same name and size, other contents (tampering, or another mirror's build of it): apt
            # would take it by its size alone, and dpkg would fail on it.
            hello = next((cache / "ubuntu~resolute~x86-64").glob(f"{HELLO}_*.deb"))
            data = bytearray(hello.read_bytes())
            data[-200:-100] = bytes(100)
            hello.unlink()  # a hard link into the first build's pool: replace, do not write through
            hello.write_bytes(bytes(data))
    result = subprocess.run(["chroot", tmp_path / "2/tree", "/usr/bin/mkosi-hello"], capture_output=True, text=True)
    assert result.stdout.strip() == HELLO_OUTPUT, result.stderr


def test_a_damaged_pool_file_of_a_build_package_is_reported_and_replaced(tmp_path: Path, served: str) -> None:
    # apt in the build image would take a pool file of the right size without checking it.
    mirror = ubuntu_mirror()
    script = tmp_path / "mkosi.build"
    script.write_text(BUILD_SCRIPT)
    script.chmod(0o755)
    good = mirror / "pool/main" / f"{HELLO}_1_all.deb"
    damaged = tmp_path / "cache" / "ubuntu~resolute~x86-64" / good.name
    damaged.parent.mkdir(parents=True)
    data = bytearray(good.read_bytes())
    data[-100] ^= 0x01
    damaged.write_bytes(bytes(data))
    bad, good_digest = hashlib.sha256(data).hexdigest(), hashlib.sha256(good.read_bytes()).hexdigest()
    url = f"{served}/{mirror.relative_to(CACHE / 'repositories')}"
    result = mkosi("-d", "ubuntu", "-t", "directory", f"--mirror={url}", f"--cache={tmp_path / 'cache'}",
                   "--repository-key-check=no", f"--build-package={HELLO}", "-o", "tree", "build",
                   cwd=tmp_path)  # fmt: skip
    warnings = [str(e["event"]) for e in log_events(result.stderr) if e.get("level") == "warning"]
    assert warnings == [
        f"package pool file {damaged} is damaged: its SHA-256 is {bad}, "
        f"the package index names {good_digest}; downloading it again"
    ]
    assert hashlib.sha256(damaged.read_bytes()).hexdigest() == good_digest
    assert (tmp_path / "tree/hello-output").read_text().strip() == HELLO_OUTPUT


@pytest.mark.parametrize(
    ("distribution", "workspace"),
    [("arch", "tmpfs"), ("fedora", "tmpfs"), ("fedora", "disk"), ("opensuse", "tmpfs")],
    ids=["arch", "fedora", "fedora-disk", "opensuse"],
)
def test_a_damaged_pool_file_is_reported_and_replaced(
    distribution: str, workspace: str, tmp_path: Path, served: str
) -> None:
    # A pool of its own, filled by a first build, then the base package's file damaged there.
    # --workspace=disk puts the workspace on the pool's file system, where links could be made.
    cache = tmp_path / "cache"
    mirror = CASES[distribution].mirror()
    args = ("--repository-key-check=no", f"--cache={cache}", f"--workspace={workspace}")
    (tmp_path / "1").mkdir()
    build(distribution, mirror, served, tmp_path / "1", *args)
    (pooled,) = (p for p in cache.rglob(f"{BASE}-1-1*") if p.is_file())
    good = pooled.read_bytes()
    damaged = bytearray(good)
    damaged[len(damaged) // 2] ^= 0x01
    pooled.unlink()  # a hard link into the first build's tree: replace, do not write through
    pooled.write_bytes(bytes(damaged))
    (tmp_path / "2").mkdir()
    # Held open, so that its inode cannot be taken by another file meanwhile.
    with pooled.open("rb") as held:
        result = build(distribution, mirror, served, tmp_path / "2", *args)
        # Replaced by the download, never repaired where readers may see half: the damaged file is intact.
        assert pooled.stat().st_ino != os.fstat(held.fileno()).st_ino
        assert held.read() == damaged
    warnings = [str(e["event"]) for e in log_events(result.stderr) if e.get("level") == "warning"]
    assert len(warnings) == 1 and warnings[0].startswith(f"package pool file {pooled} is damaged"), warnings
    if distribution != "arch":
        digests = hashlib.sha256(damaged).hexdigest(), hashlib.sha256(good).hexdigest()
        assert f"its SHA-256 is {digests[0]}, the repository's metadata names {digests[1]}; " in warnings[0]
    assert pooled.read_bytes() == good
    query = subprocess.run(CASES[distribution].query(tmp_path / "2/image"), capture_output=True, text=True)
    assert re.search(rf"^{BASE}", query.stdout, re.MULTILINE), query.stdout


# ---- A mirror that fails: dnf, zypper and pacman behind the faulty mirror ----


@dataclass(frozen=True)
class Faulty:
    tool: str
    # How many times the file is tried: librepo tries a mirror four times by itself (dnf has no
    # setting for it); zypper is run again by mkosi, RETRIES times more; pacman tries each of the
    # 1 + RETRIES Server= lines mkosi gives a repository.
    tries: int
    package: str  # how the package file's name ends


FAULTY = {
    "arch": Faulty("pacman", 1 + RETRIES, ".pkg.tar.zst"),
    "fedora": Faulty("dnf", 4, ".rpm"),
    "opensuse": Faulty("zypper", 1 + RETRIES, ".rpm"),
}
MIRROR_TIMEOUT = 3
# A failing build ends well within this (a dnf stall: four tries of MirrorTimeout= and the 4 s curl
# takes to see the rate fall below dnf's minrate).
FAILING_BOUND = 45.0
# pacman's own limit for a stall, 10 s of less than 1 byte/s (14 s measured), cannot be shortened:
# three stalled tries (42 s) would not fit the suite's time; one, then a good answer, proves it bounded.
FAILING = [(d, f) for d in sorted(FAULTY) for f in (Fault.stall, Fault.reset) if (d, f) != ("arch", Fault.stall)]


def _faulty_target(distribution: str, served: str) -> tuple[Path, str, str]:
    """The test mirror of `distribution`, the start of its HELLO package's path and its URL below `served`."""
    mirror = CASES[distribution].mirror()
    hello = next(mirror.rglob(f"{HELLO}-*{FAULTY[distribution].package}"))
    target = f"/{hello.parent.relative_to(mirror).as_posix()}/{HELLO}-"
    return hello, target, f"{served}/{mirror.relative_to(CACHE / 'repositories')}"


@pytest.mark.parametrize(("distribution", "fault"), FAILING, ids=[f"{d}-{f.value}" for d, f in FAILING])
def test_a_failing_mirror_fails_dnf_zypper_and_pacman_in_bounded_time_naming_the_file(
    distribution: str, fault: Fault, tmp_path: Path, served: str
) -> None:
    _, target, upstream = _faulty_target(distribution, served)
    cache = tmp_path / "cache"  # a pool of its own, to see that nothing of the package reached it
    project = tmp_path / "project"
    project.mkdir()
    with faulty_mirror(upstream, target, fault, resumable=True) as faulty:
        started = time.monotonic()
        result = mkosi(
            "-d", distribution, "-t", "directory", f"--mirror={faulty.url}", f"--cache={cache}",
            f"--mirror-timeout={MIRROR_TIMEOUT}", "--repository-key-check=no", "-p", HELLO, "build",
            cwd=project, check=False, timeout=3 * FAILING_BOUND,
        )  # fmt: skip
        seconds = time.monotonic() - started
    assert result.returncode == 1, result.stderr[-3000:]
    assert seconds < FAILING_BOUND
    tool, tries = FAULTY[distribution].tool, FAULTY[distribution].tries
    # Bounded retries: the mirror saw as many requests for the file as the error says there were tries.
    assert len(faulty.requests) == tries
    what = (
        f"the mirror sent nothing for {MIRROR_TIMEOUT} s (MirrorTimeout={MIRROR_TIMEOUT})"
        if fault is Fault.stall
        else "the mirror reset the connection"
    )
    error = [line for line in result.stderr.splitlines() if line.startswith("mkosi: ")]
    assert len(error) == 1 and error[0].startswith(
        f"mkosi: could not download {faulty.target_url}: {what}, after {tries} tries ({tool}: "
    ), result.stderr[-3000:]
    # Nothing left behind but the log; nothing of the package in the pool.
    assert sorted(p.name for p in project.iterdir()) == ["image.log"]
    workspaces = [str(e["path"]) for e in log_events(result.stderr) if e.get("event") == "workspace"]
    assert len(workspaces) == 1 and not Path(workspaces[0]).exists()
    assert not [p for p in cache.rglob(f"*{HELLO}*") if p.is_file()]


ONCE = [("arch", Fault.stall), ("fedora", Fault.reset), ("opensuse", Fault.stall)]


@pytest.mark.parametrize(("distribution", "fault"), ONCE, ids=[d for d, _ in ONCE])
def test_a_fault_that_happens_once_is_tried_past_by_dnf_zypper_and_pacman(
    distribution: str, fault: Fault, tmp_path: Path, served: str
) -> None:
    # dnf (librepo) tries again by itself; zypper, ended where it would wait, is run again by mkosi;
    # pacman resumes the file from the next Server= line, after its own limit for a stall.
    hello, target, upstream = _faulty_target(distribution, served)
    cache = tmp_path / "cache"
    with faulty_mirror(upstream, target, fault, 1, resumable=True) as faulty:
        mkosi(
            "-d", distribution, "-t", "directory", f"--mirror={faulty.url}", f"--cache={cache}", *KEEP_DATABASE,
            f"--mirror-timeout={MIRROR_TIMEOUT}", "--repository-key-check=no", "-p", HELLO, "-o", "tree", "build",
            cwd=tmp_path, timeout=3 * FAILING_BOUND,
        )  # fmt: skip
    assert len(faulty.requests) == 2
    query = subprocess.run(CASES[distribution].query(tmp_path / "tree"), capture_output=True, text=True)
    assert re.search(rf"^{HELLO}[- ]1-1", query.stdout, re.MULTILINE), query.stdout + query.stderr
    # What finally came is what the repository's metadata names, and only that entered the pool.
    (pooled,) = (p for p in cache.rglob(f"{HELLO}-*{FAULTY[distribution].package}") if p.is_file())
    assert pooled.read_bytes() == hello.read_bytes()


# ---- Architecture=arm64: dnf and zypper choose and install aarch64 packages ----


def _arm64_mirror(distribution: str, arch: str) -> Path:
    """A mirror laid out like the distribution's for aarch64 (Fedora's $basearch directories,
    openSUSE's ports, which have no update repository), its packages built for `arch`."""
    if distribution == "fedora":
        paths = fedora._paths(Distribution.fedora.installer().default_release, "aarch64")
        base, hello = paths["fedora"][0], paths["updates"][0]
        names, os_id = fedora.PACKAGES.base, "fedora"
    else:
        base = hello = opensuse.PORTS[Architecture.arm64] + opensuse.REPOSITORIES["repo-oss"]
        names, os_id = opensuse.PACKAGES.base, "opensuse-tumbleweed"
    return repositories.rpm_mirror(f"{distribution}-ports-{arch}", names, os_id, base, hello, arch=arch)


ARM64 = ("--architecture=arm64", "--repository-key-check=no", "-p", HELLO)


@pytest.mark.parametrize("distribution", ["fedora", "opensuse"])
def test_an_arm64_tree_holds_aarch64_packages(distribution: str, tmp_path: Path, served: str) -> None:
    build(distribution, _arm64_mirror(distribution, "aarch64"), served, tmp_path, *ARM64, "-o", "tree")
    query = ["rpm", f"--root={tmp_path / 'tree'}", f"--dbpath={RPMDB}", "-qa", "--qf", "%{NAME} %{ARCH}\n"]
    listed = subprocess.run(query, capture_output=True, text=True, check=True).stdout
    assert sorted(listed.splitlines()) == [f"{BASE} aarch64", f"{HELLO} aarch64"]


@pytest.mark.parametrize("distribution", ["fedora", "opensuse"])
def test_an_arm64_build_from_x86_64_packages_names_the_package(distribution: str, tmp_path: Path, served: str) -> None:
    result = build(distribution, _arm64_mirror(distribution, "x86_64"), served, tmp_path, *ARM64, check=False)
    assert result.returncode != 0
    release = Distribution[distribution].installer().default_release
    said = [line for line in result.stderr.splitlines() if line.startswith("mkosi: ")]
    # The base system's names, which only the x86-64 base package provides.
    assert len(said) == 1 and said[0].startswith("mkosi: no packages "), result.stderr
    assert "systemd" in said[0] and said[0].endswith(f" in the repositories of {distribution} {release} for aarch64")
    assert not (tmp_path / "image").exists()


@pytest.mark.parametrize("distribution", ["fedora", "opensuse"])
def test_an_arm64_build_from_an_x86_64_mirror_names_the_repository(
    distribution: str, tmp_path: Path, served: str
) -> None:
    mirror = CASES[distribution].mirror()
    result = build(distribution, mirror, served, tmp_path, *ARM64, check=False)
    assert result.returncode != 0
    release = Distribution[distribution].installer().default_release
    # Fedora's first repository and where dnf looked for its index; openSUSE's ports repository.
    repository, path = {
        "fedora": ("fedora", f"releases/{release}/Everything/aarch64/os/repodata/repomd.xml"),
        "opensuse": ("repo-oss", "ports/aarch64/tumbleweed/repo/oss/"),
    }[distribution]
    url = f"{served}/{mirror.relative_to(CACHE / 'repositories')}/{path}"
    said = [line for line in result.stderr.splitlines() if line.startswith("mkosi: ")]
    expected = f"mkosi: no package index for repository {repository} of {distribution} {release} for aarch64 at {url}"
    assert said == [expected], result.stderr
    assert not (tmp_path / "image").exists()
