"""Small package repositories made at test time with each distribution's own tools.

Only Debian's mirror is reachable from the test machines, so Fedora, openSUSE, Arch and Ubuntu
builds are tested against local mirrors laid out like the real ones. Their base package is the
host's static busybox: it provides the names the distribution module installs as its base system,
so that mkosi's own package list resolves unchanged, and it gives the tree a shell to run commands
with. A second package, mkosi-test-hello, stands for the user's `Packages=`; it lives in the second
repository (updates, extra, ...) so that builds are shown to use more than one.

Repositories are built once and kept in the test cache under a name derived from their recipe
(and the busybox binary), so a changed recipe gets a new repository.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from mkosi.distributions.installer import PackageNames
from tests.integration.support import CACHE

BUSYBOX = Path("/bin/busybox")
BASE = "mkosi-test-base"
HELLO = "mkosi-test-hello"
HELLO_OUTPUT = "hello from mkosi-test-hello"
HELLO_SCRIPT = f'#!/bin/sh\necho "{HELLO_OUTPUT}"\n'
HELLO_DOC = "/usr/share/doc/mkosi-test-hello/README"
_HELLO_PRINTF = HELLO_SCRIPT.replace("\n", "\\n")


def _run(*argv: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None) -> None:
    process = subprocess.run(
        [str(a) for a in argv], cwd=cwd, capture_output=True, text=True, env={**os.environ, **(env or {})}
    )
    if process.returncode != 0:
        raise AssertionError(f"{argv} failed with {process.returncode}:\n{process.stdout}\n{process.stderr}")


def cached(name: str, recipe: str, build: Callable[[Path], None]) -> Path:
    """The repository `build` makes from `recipe`, made at most once per recipe."""
    digest = hashlib.sha256(recipe.encode() + BUSYBOX.read_bytes()).hexdigest()[:16]
    target = CACHE / "repositories" / f"{name}-{digest}"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        build(staging)
        staging.chmod(0o755)
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


# ---- rpm-md repositories (dnf, zypper) ----


def rpm_spec(name: str, provides: Sequence[str], os_id: str, arch: str = "x86_64") -> str:
    """A file-only package for `arch`: for aarch64 it holds the same (x86-64) busybox, labelled
    aarch64, which is all a package manager choosing and installing packages looks at. (rpmbuild
    takes another architecture than the host's from --target, and refuses it as BuildArch.)"""
    build_arch = "BuildArch: x86_64\n" if arch == "x86_64" else f"ExclusiveArch: {arch}\n"
    common = (
        f"Name: {name}\nVersion: 1\nRelease: 1\nLicense: GPL-2.0-only\n{build_arch}"
        "AutoReqProv: no\n%define debug_package %{nil}\n%define __os_install_post %{nil}\n"
    )
    if name == BASE:
        return common + (
            f"Summary: busybox as the base system\nProvides: {' '.join(provides)}\n"
            "%description\nbusybox as the base system\n"
            "%install\nmkdir -p %{buildroot}/usr/bin %{buildroot}/usr/lib %{buildroot}/etc\n"
            f"cp {BUSYBOX} %{{buildroot}}/usr/bin/busybox\n"
            "ln -s busybox %{buildroot}/usr/bin/sh\nln -s usr/bin %{buildroot}/bin\n"
            f"echo ID={os_id} > %{{buildroot}}/usr/lib/os-release\n"
            "%files\n%dir /etc\n/usr/bin/busybox\n/usr/bin/sh\n/bin\n/usr/lib/os-release\n"
        )
    return common + (
        f"Summary: says hello\nRequires: {BASE}\n%description\nsays hello\n"
        "%install\nmkdir -p %{buildroot}/usr/bin %{buildroot}/usr/share/doc/mkosi-test-hello\n"
        f"printf '{_HELLO_PRINTF}' > %{{buildroot}}/usr/bin/mkosi-hello\n"
        "chmod 755 %{buildroot}/usr/bin/mkosi-hello\n"
        f"echo documentation > %{{buildroot}}{HELLO_DOC}\n"
        f"%files\n/usr/bin/mkosi-hello\n%doc {HELLO_DOC}\n"
    )


def _rpm_package(directory: Path, spec: str, work: Path) -> None:
    spec_file = work / "package.spec"
    spec_file.write_text(spec)
    arch = next(line.split()[1] for line in spec.splitlines() if line.startswith(("BuildArch:", "ExclusiveArch:")))
    _run("rpmbuild", "-bb", f"--target={arch}", "--define", f"_topdir {work / 'top'}", spec_file)
    directory.mkdir(parents=True, exist_ok=True)
    for rpm in (work / "top/RPMS").rglob("*.rpm"):
        shutil.copy(rpm, directory)


def rpm_mirror(
    name: str, provides: Sequence[str], os_id: str, base_path: str, hello_path: str, arch: str = "x86_64"
) -> Path:
    """A mirror with the base package at `base_path` and mkosi-test-hello at `hello_path` (which
    may be the same repository), both built for `arch`."""
    specs = [(base_path, rpm_spec(BASE, provides, os_id, arch)), (hello_path, rpm_spec(HELLO, provides, os_id, arch))]

    def build(mirror: Path) -> None:
        for path, spec in specs:
            with tempfile.TemporaryDirectory() as work:
                _rpm_package(mirror / path, spec, Path(work))
        for path in {path for path, _ in specs}:
            _run("createrepo_c", "--quiet", mirror / path)

    return cached(name, repr(sorted(specs)), build)


# ---- bootable test mirrors: a real kernel, a stand-in for dracut, the host's systemd-boot ----

# Stands for dracut, run by mkosi as "dracut --force --kver VERSION OUTPUT" inside the image: its
# "initrd" is the dracut configuration it found there, which tests then look for in the UKI.
DRACUT_SCRIPT = '#!/bin/sh\nfor output; do :; done\ncat /etc/dracut.conf.d/*.conf > "$output"\n'
EFI = Path("/usr/lib/systemd/boot/efi")
BOOT_FILES = {f"{EFI}/{name}": EFI / name for name in ("systemd-bootx64.efi", "linuxx64.efi.stub")}


KERNEL_DOWNLOADS = CACHE / "packages" / "kernel"


def debian_kernel_packages() -> list[Path]:
    """Debian linux-image packages at hand: left in the test package pools by Debian bootable
    builds, or downloaded earlier by debian_kernel()."""
    pools = [*(CACHE / "packages").glob("debian~*"), KERNEL_DOWNLOADS]
    return sorted(p for pool in pools for p in pool.glob("linux-image-[0-9]*.deb"))


def _extracted_kernels() -> list[Path]:
    return sorted((CACHE / "repositories").glob("kernel-*/boot/vmlinuz-*"))


def kernel_at_hand() -> bool:
    """Whether debian_kernel() can do without Debian's mirror."""
    return bool(_extracted_kernels() or debian_kernel_packages())


def debian_kernel() -> tuple[str, Path]:
    """A real kernel image and its version: one extracted before (so that the bootable test mirrors
    stay as they are while package pools come and go), else from a Debian linux-image package at
    hand, else from one downloaded with the host's apt."""
    if extracted := _extracted_kernels():
        return extracted[-1].name.removeprefix("vmlinuz-"), extracted[-1]
    debs = debian_kernel_packages()
    if not debs:
        target = KERNEL_DOWNLOADS
        target.mkdir(parents=True, exist_ok=True)
        depends = subprocess.run(
            ["apt-cache", "depends", "--important", "linux-image-cloud-amd64"], capture_output=True, text=True
        ).stdout
        name = next(w for w in depends.split() if w.startswith("linux-image-") and w[12].isdigit())
        _run("apt-get", "download", name, cwd=target)
        debs = sorted(target.glob("linux-image-[0-9]*.deb"))
    deb = debs[-1]

    def extract(directory: Path) -> None:
        tar = subprocess.run(["dpkg-deb", "--fsys-tarfile", deb], capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", directory, "--wildcards", "./boot/vmlinuz-*"], input=tar, check=True)

    directory = cached("kernel", deb.name, extract)
    image = next(directory.glob("boot/vmlinuz-*"))
    image.chmod(0o644)
    (directory / "boot").chmod(0o755)
    return image.name.removeprefix("vmlinuz-"), image


def _digest(files: dict[str, Path]) -> str:
    return repr(sorted((dest, hashlib.sha256(source.read_bytes()).hexdigest()) for dest, source in files.items()))


def rpm_files_spec(name: str, provides: Sequence[str], files: dict[str, Path], script: dict[str, str]) -> str:
    """A package of host `files` and generated `script`s (both by their path in the image)."""
    install = [f"install -D -m 0644 {source} %{{buildroot}}{dest}" for dest, source in files.items()]
    for dest, text in script.items():
        install += [f"mkdir -p %{{buildroot}}{Path(dest).parent}",
                    f"printf '{text.replace(chr(10), chr(92) + 'n')}' > %{{buildroot}}{dest}",
                    f"chmod 755 %{{buildroot}}{dest}"]  # fmt: skip
    return (
        f"Name: {name}\nVersion: 1\nRelease: 1\nLicense: GPL-2.0-only\nBuildArch: x86_64\n"
        "AutoReqProv: no\n%define debug_package %{nil}\n%define __os_install_post %{nil}\n"
        f"Summary: {name}\nProvides: {' '.join(provides)}\nRequires: {BASE}\n%description\n{name}\n"
        "%install\n" + "\n".join(install) + "\n%files\n" + "\n".join([*files, *script]) + "\n"
    )


def rpm_boot_mirror(
    name: str, names: PackageNames, os_id: str, base_path: str, hello_path: str, kernel: tuple[str, Path]
) -> Path:
    """rpm_mirror's packages, and next to the base package one package each providing the kernel
    (at /usr/lib/modules/VERSION/vmlinuz, as Fedora and openSUSE have it), dracut and systemd-boot."""
    version, image = kernel
    packages = {
        "mkosi-test-kernel": (names.kernel[:1], {f"/usr/lib/modules/{version}/vmlinuz": image}, {}),
        "mkosi-test-dracut": (("dracut",), {}, {"/usr/bin/dracut": DRACUT_SCRIPT}),
        "mkosi-test-boot": (names.boot, BOOT_FILES, {}),
        "mkosi-test-fsck": ((names.filesystems["ext4"],), {}, {}),
    }
    specs = {
        hello_path: [rpm_spec(HELLO, names.base, os_id)],
        base_path: [rpm_spec(BASE, names.base, os_id)]
        + [rpm_files_spec(n, p, f, s) for n, (p, f, s) in packages.items()],
    }

    def build(mirror: Path) -> None:
        for path, path_specs in specs.items():
            for spec in path_specs:
                with tempfile.TemporaryDirectory() as work:
                    _rpm_package(mirror / path, spec, Path(work))
            _run("createrepo_c", "--quiet", mirror / path)

    files = {k: v for _, f, _ in packages.values() for k, v in f.items()}
    return cached(name, repr(sorted(specs.items())) + _digest(files), build)


# ---- pacman repositories ----


def pkgbuild(name: str, provides: Sequence[str]) -> str:
    head = f"pkgname={name}\npkgver=1\npkgrel=1\narch=(x86_64)\nlicense=(GPL2)\noptions=(!strip)\n"
    if name == BASE:
        return head + (
            f"pkgdesc='busybox as the base system'\nprovides=({' '.join(provides)})\n"
            "package() {\n"
            f'    install -Dm755 {BUSYBOX} "$pkgdir/usr/bin/busybox"\n'
            '    ln -s busybox "$pkgdir/usr/bin/sh"\n    ln -s usr/bin "$pkgdir/bin"\n'
            '    mkdir -p "$pkgdir/etc" "$pkgdir/usr/lib"\n'
            '    echo ID=arch > "$pkgdir/usr/lib/os-release"\n}\n'
        )
    return head + (
        f"pkgdesc='says hello'\ndepends=({BASE})\n"
        "package() {\n"
        f'    install -Dm755 /dev/stdin "$pkgdir/usr/bin/mkosi-hello" <<"EOF"\n{HELLO_SCRIPT}EOF\n'
        f'    install -Dm644 /dev/null "$pkgdir{HELLO_DOC}"\n}}\n'
    )


def _makepkg(recipe: str, work: Path) -> Path:
    """makepkg refuses to run as root: build as nobody in a directory nobody owns."""
    work.mkdir(parents=True)
    (work / "PKGBUILD").write_text(recipe)
    shutil.chown(work, "nobody")
    _run(
        "setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
        "makepkg", "--nodeps", "--force", cwd=work,
        env={"HOME": str(work), "PKGEXT": ".pkg.tar.zst", "PKGDEST": str(work)},
    )  # fmt: skip
    return next(work.glob("*.pkg.tar.zst"))


def pkgbuild_files(name: str, provides: Sequence[str], files: dict[str, Path], text: dict[str, str]) -> str:
    """A package of host `files` and generated `text` files (both by their path in the image)."""
    lines = [f'    install -Dm644 {source} "$pkgdir{dest}"' for dest, source in files.items()]
    lines += [f'    install -Dm755 /dev/stdin "$pkgdir{dest}" <<"EOF"\n{content}EOF' for dest, content in text.items()]
    return (
        f"pkgname={name}\npkgver=1\npkgrel=1\narch=(x86_64)\nlicense=(GPL2)\noptions=(!strip)\n"
        f"pkgdesc='{name}'\nprovides=({' '.join(provides)})\ndepends=({BASE})\n"
        "package() {\n" + "\n".join(lines or ["    :"]) + "\n}\n"
    )


def _pacman_mirror(name: str, recipes: Sequence[tuple[str, str]], key: str = "") -> Path:
    """A mirror holding, in each repository named in `recipes`, the package that recipe makes."""

    def build(mirror: Path) -> None:
        with tempfile.TemporaryDirectory() as work:
            os.chmod(work, 0o755)
            for number, (repository, recipe) in enumerate(recipes):
                package = _makepkg(recipe, Path(work) / str(number))
                directory = mirror / repository / "os/x86_64"
                directory.mkdir(parents=True, exist_ok=True)
                shutil.copy(package, directory)
                _run("repo-add", "--quiet", directory / f"{repository}.db.tar.gz", directory / package.name)

    return cached(name, repr(sorted(recipes)) + key, build)


def pacman_mirror(name: str, provides: Sequence[str]) -> Path:
    """An Arch mirror: the base package in core, mkosi-test-hello in extra."""
    return _pacman_mirror(name, [("core", pkgbuild(BASE, provides)), ("extra", pkgbuild(HELLO, provides))])


def pacman_boot_mirror(name: str, names: PackageNames, kernel: tuple[str, Path]) -> Path:
    """pacman_mirror's packages, and in core one package each providing the kernel (as Arch has it:
    /boot/vmlinuz-linux, and the package's name in /usr/lib/modules/VERSION/pkgbase), dracut and
    systemd-boot."""
    version, image = kernel
    pkgbase = {f"/usr/lib/modules/{version}/pkgbase": "linux\n"}
    recipes = [
        ("core", pkgbuild(BASE, names.base)),
        ("extra", pkgbuild(HELLO, names.base)),
        ("core", pkgbuild_files("mkosi-test-kernel", names.kernel[:1], {"/boot/vmlinuz-linux": image}, pkgbase)),
        ("core", pkgbuild_files("mkosi-test-dracut", ("dracut",), {}, {"/usr/bin/dracut": DRACUT_SCRIPT})),
        ("core", pkgbuild_files("mkosi-test-boot", names.boot, BOOT_FILES, {})),
        ("core", pkgbuild_files("mkosi-test-fsck", (names.filesystems["ext4"],), {}, {})),
    ]
    return _pacman_mirror(name, recipes, _digest({"kernel": image, **BOOT_FILES}))


# ---- apt repositories ----


def _hello_deb(directory: Path) -> None:
    package = directory / "hello"
    (package / "DEBIAN").mkdir(parents=True)
    (package / "DEBIAN/control").write_text(
        f"Package: {HELLO}\nVersion: 1\nArchitecture: all\nMaintainer: mkosi tests <tests@mkosi>\n"
        f"Description: says hello\n"
    )
    script = package / "usr/bin/mkosi-hello"
    script.parent.mkdir(parents=True)
    script.write_text(HELLO_SCRIPT)
    script.chmod(0o755)
    doc = package / HELLO_DOC.lstrip("/")
    doc.parent.mkdir(parents=True)
    doc.write_text("documentation\n")
    _run("dpkg-deb", "--root-owner-group", "--build", package, directory / f"{HELLO}_1_all.deb")
    shutil.rmtree(package)


def write_apt_indexes(mirror: Path, suite: str) -> None:
    """The Packages indexes of components main and universe and the suite's Release file, from
    what the mirror's pool holds (files are replaced, never written through a hard link)."""
    for component in ("main", "universe"):
        index = mirror / f"dists/{suite}/{component}/binary-amd64"
        index.mkdir(parents=True, exist_ok=True)
        listing = (
            subprocess.run(
                ["apt-ftparchive", "packages", f"pool/{component}"],
                cwd=mirror,
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            if (mirror / f"pool/{component}").exists()
            else ""
        )
        (index / "Packages").unlink(missing_ok=True)
        (index / "Packages").write_text(listing)
    release = subprocess.run(
        [
            "apt-ftparchive", "release",
            "-o", f"APT::FTPArchive::Release::Suite={suite}",
            "-o", f"APT::FTPArchive::Release::Codename={suite}",
            "-o", "APT::FTPArchive::Release::Components=main universe",
            "-o", "APT::FTPArchive::Release::Architectures=amd64",
            f"dists/{suite}",
        ],
        cwd=mirror, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    (mirror / f"dists/{suite}/Release").unlink(missing_ok=True)
    (mirror / f"dists/{suite}/Release").write_text(release)


def apt_mirror(name: str, suite: str, packages: Sequence[str], debian_mirror: str) -> Path:
    """An archive laid out like Ubuntu's, with suite `suite` and components main and universe.

    Its packages are Debian bookworm's (the bootstrap set and `packages`, downloaded with
    mmdebstrap) plus mkosi-test-hello, made with dpkg-deb.
    """
    recipe = f"{suite} {sorted(packages)} bookworm"

    def build(mirror: Path) -> None:
        pool = mirror / "pool/main"
        pool.mkdir(parents=True)
        with tempfile.TemporaryDirectory() as work:
            _run(
                "mmdebstrap", "--variant=minbase", f"--include={','.join(packages)}",
                "--skip=download/empty", "--skip=essential/unlink", "--skip=cleanup/apt",
                f"--customize-hook=cp \"$1\"/var/cache/apt/archives/*.deb {pool}",
                "bookworm", Path(work) / "tree", debian_mirror,
            )  # fmt: skip
        _hello_deb(pool)
        write_apt_indexes(mirror, suite)

    return cached(name, recipe, build)


# ---- signatures ----

KEY_NAME = "mkosi test"
# Where each signed mirror publishes its public key, armored and as a binary keyring (apt wants that).
ARMORED_KEY = "mkosi-test.asc"
BINARY_KEY = "mkosi-test.gpg"


@contextlib.contextmanager
def _throwaway_key() -> Iterator[dict[str, str]]:
    """An environment whose GNUPGHOME holds a new signing key and nothing else."""
    with tempfile.TemporaryDirectory() as gnupg:
        env = {"GNUPGHOME": gnupg}
        _run("gpg", "--batch", "--passphrase", "", "--quick-gen-key", f"{KEY_NAME} <test@mkosi.invalid>",
             "rsa3072", "sign", "never", env=env)  # fmt: skip
        try:
            yield env
        finally:
            # gpg-agent leaves the process group; it must not outlive the temporary home.
            subprocess.run(["gpgconf", "--kill", "all"], env={**os.environ, **env}, check=False)


def _export_key(env: dict[str, str], directory: Path) -> bytes:
    """Write the key as ARMORED_KEY and BINARY_KEY into `directory`; return the armored key."""
    full = {**os.environ, **env}
    armored = subprocess.run(["gpg", "--export", "--armor"], capture_output=True, check=True, env=full).stdout
    binary = subprocess.run(["gpg", "--export"], capture_output=True, check=True, env=full).stdout
    (directory / ARMORED_KEY).write_bytes(armored)
    (directory / BINARY_KEY).write_bytes(binary)
    return armored


def other_key() -> Path:
    """A directory with a key that signs none of the test mirrors, in both forms."""

    def build(directory: Path) -> None:
        with _throwaway_key() as env:
            _export_key(env, directory)

    return cached("other-key", "one throwaway key", build)


def signed_rpm_mirror(mirror: Path) -> Path:
    """A copy of an rpm-md mirror with every package and repository index signed by a test key.

    The public key is published next to each index as repodata/repomd.xml.key, where openSUSE
    publishes its own, and at the top as ARMORED_KEY and BINARY_KEY.
    """

    def build(signed: Path) -> None:
        shutil.copytree(mirror, signed, dirs_exist_ok=True)
        with _throwaway_key() as env:
            for rpm in signed.rglob("*.rpm"):
                _run("rpmsign", "--addsign", "--define", f"_gpg_name {KEY_NAME}", "--define",
                     "__gpg /usr/bin/gpg", "--define", f"_gpg_path {env['GNUPGHOME']}", rpm, env=env)  # fmt: skip
            key = _export_key(env, signed)
            for repomd in signed.rglob("repodata/repomd.xml"):
                _run("createrepo_c", "--quiet", repomd.parent.parent)
                _run("gpg", "--batch", "--yes", "--detach-sign", "--armor", repomd, env=env)
                (repomd.parent / "repomd.xml.key").write_bytes(key)

    return cached(mirror.name + "-signed", mirror.name + ", key published at the top", build)


def signed_pacman_mirror(mirror: Path) -> Path:
    """A copy of an Arch mirror whose packages are signed by a test key (detached .sig files, also
    in the repository databases, as Arch's mirrors have them); the key as in signed_rpm_mirror."""

    def build(signed: Path) -> None:
        shutil.copytree(mirror, signed, dirs_exist_ok=True)
        with _throwaway_key() as env:
            for directory in signed.glob("*/os/x86_64"):
                for old in [*directory.glob("*.db*"), *directory.glob("*.files*")]:
                    old.unlink()
                packages = sorted(directory.glob("*.pkg.tar.zst"))
                for package in packages:
                    _run("gpg", "--batch", "--yes", "--detach-sign", package, env=env)
                repository = directory.parent.parent.name
                _run("repo-add", "--quiet", directory / f"{repository}.db.tar.gz", *packages)
            _export_key(env, signed)

    return cached(mirror.name + "-signed", mirror.name, build)


def signed_apt_mirror(mirror: Path) -> Path:
    """A copy of an apt archive whose Release files are signed by a test key (InRelease and
    Release.gpg, as Ubuntu's are); the key as in signed_rpm_mirror."""

    def build(signed: Path) -> None:
        shutil.copytree(mirror, signed, dirs_exist_ok=True)
        with _throwaway_key() as env:
            for release in signed.glob("dists/*/Release"):
                _run("gpg", "--batch", "--yes", "--clearsign", "-o", release.with_name("InRelease"), release, env=env)
                _run("gpg", "--batch", "--yes", "--detach-sign", "-o", release.with_name("Release.gpg"), release,
                     env=env)  # fmt: skip
            _export_key(env, signed)

    return cached(mirror.name + "-signed", mirror.name, build)
