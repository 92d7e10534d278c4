"""Debian and its derivatives bootstrapped with apt and dpkg from a list of apt sources.

The steps, each chosen for a bootstrap that is fast as well as right:
1. The tree gets what dpkg and apt need to start with, and /bin, /sbin and /lib pointing into /usr
   (merged /usr, made as debootstrap makes it). The usr-is-merged package then satisfies what asks
   for usrmerge, which would otherwise convert the tree and leave perl in every image.
2. The build host's apt, under a configuration of ours that points every path into the tree and
   trusts only the given keyrings (none of the host's sources, keys or caches), fetches the package
   lists and downloads the whole package set at once: minbase (the Essential: yes and Priority:
   required packages and apt, as mmdebstrap and debootstrap define it) plus the packages asked for.
3. Every package is unpacked into the tree, on all cores side by side (deb.py), so that dpkg and
   every maintainer script find what they need whatever order dpkg takes.
4. dpkg installs the whole set in one run inside the tree (chroot, in mount and PID namespaces of
   its own, so that nothing started or mounted there outlives it), from uncompressed copies of the
   packages: it unpacks each package again, then configures them in dependency order.
5. apt's record of which packages are dependencies only, and the cleanup of what the bootstrap
   itself left (package lists, downloads, logs).

The result has the same packages, files and dpkg database as mmdebstrap's minbase with its
merged-/usr hook, in about two thirds of the time (README, Benchmarks).
"""

from __future__ import annotations

import os
import platform
import re
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from mkosi import package_cache
from mkosi.concurrency import cpu_heavy
from mkosi.context import Context
from mkosi.errors import MkosiError
from mkosi.package_managers import deb, raise_missing, raise_untrusted
from mkosi.run import CommandError, run

ARCHITECTURES = {"x86-64": "amd64", "arm64": "arm64"}
# Maintainer scripts run inside the tree: for another architecture than the host's, through the
# qemu-user handler the kernel has registered for it (qemu-user-static, binfmt-support).
HOST_ARCHITECTURES = {"x86_64": "x86-64", "aarch64": "arm64"}
BINFMT_HANDLERS = {"x86-64": "qemu-x86_64", "arm64": "qemu-aarch64"}
BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")
# The top-level directories that are symlinks into /usr in a merged-/usr tree, by dpkg architecture.
MERGED_USR = {"amd64": ("bin", "sbin", "lib", "lib64"), "arm64": ("bin", "sbin", "lib")}
# What minbase consists of besides the packages asked for, in apt's pattern syntax. usr-is-merged
# only where the archive has it (?or never fails to match: ?essential always does).
MINBASE = ("?or(?essential,?priority(required),?exact-name(usr-is-merged))", "apt")
# apt's wording for a package that no source has.
MISSING = (
    r"Unable to locate package (\S+)",
    r"Package '?([^' ]+)'? has no installation candidate",
    r"Couldn't find any package by (?:glob|regex) '([^']+)'",
)
# apt's wording for an archive whose Release file is unsigned, signed by an unknown key, or changed.
UNTRUSTED = (r"NO_PUBKEY", r"BADSIG", r"is not signed", r"signatures were invalid")
ARMOR = b"-----BEGIN PGP PUBLIC KEY BLOCK-----"

ARCHIVES = "var/cache/apt/archives"
# The uncompressed copies of the packages, where dpkg in the tree finds them; gone afterwards.
COPIES = "var/cache/mkosi-packages"
POLICY_RC_D = "usr/sbin/policy-rc.d"
# What the bootstrap leaves that belongs to the build, not to the image (mmdebstrap removes the same).
BOOTSTRAP_LOGS = (
    "var/log/dpkg.log",
    "var/log/alternatives.log",
    "var/log/apt/history.log",
    "var/log/apt/term.log",
    "var/log/apt/eipp.log.xz",
    "var/cache/ldconfig/aux-cache",
)
FSTAB = "# UNCONFIGURED FSTAB FOR BASE SYSTEM\n"

# Runs a command in the tree, from inside `unshare --mount --pid --fork --kill-child`: the mounts
# vanish with the namespace, and every process left there is killed when the command ends.
IN_TREE_SCRIPT = """root=$1
shift
mount -t proc proc "$root/proc" &&
mount --rbind /sys "$root/sys" &&
mount --rbind /dev "$root/dev" &&
exec chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C.UTF-8 \
    DEBIAN_FRONTEND=noninteractive DEBCONF_NONINTERACTIVE_SEEN=true "$@"
"""


@dataclass(frozen=True)
class Source:
    """One apt source line: deb URI SUITE COMPONENTS."""

    uri: str
    suite: str
    components: tuple[str, ...]

    def line(self, trusted: bool) -> str:
        options = "[trusted=yes] " if trusted else ""
        return f"deb {options}{self.uri} {self.suite} {' '.join(self.components)}"


@dataclass(frozen=True)
class Bootstrap:
    """What a distribution asks of the bootstrap."""

    sources: tuple[Source, ...]
    # Everything to install on top of minbase, the user's packages included.
    packages: tuple[str, ...]
    # Empty when signature checking is off: then every source is trusted as is.
    keyrings: tuple[Path, ...]
    # Keys the image's own apt trusts too (RepositoryKey=): apt in the image (BuildPackages=, later
    # updates) needs them for the same sources.
    image_keys: tuple[Path, ...] = ()
    # Files of mkosi's (path in the tree -> content) that must be in place before dpkg installs
    # anything: dpkg's own configuration, the initrd generator's.
    files: Mapping[str, str] = field(default_factory=dict)
    # tar patterns of files left out when unpacking by hand, as dpkg leaves them out by `files`.
    excludes: tuple[str, ...] = ()


def in_tree(root: Path, argv: Iterable[str]) -> list[str]:
    """The command line running `argv` inside `root` (see IN_TREE_SCRIPT)."""
    namespaces = ["unshare", "--mount", "--pid", "--fork", "--kill-child"]
    return [*namespaces, "sh", "-c", IN_TREE_SCRIPT, "in-tree", str(root), *argv]


def check_runnable(architecture: str) -> None:
    """Refuse, before downloading anything, a tree whose programs this host cannot run."""
    if HOST_ARCHITECTURES.get(platform.machine()) == architecture:
        return
    handler = BINFMT_HANDLERS[architecture]
    if not (BINFMT_DIR / handler).exists():
        raise MkosiError(
            f"Architecture={architecture} on this {platform.machine()} host: the packages' maintainer scripts "
            f"run inside the tree, which needs the kernel's {handler} binfmt handler (install qemu-user-static)"
        )


def key_name(key: Path, number: int) -> str:
    """A name apt reads `key` under: .asc for an armored key, .gpg for a binary keyring."""
    suffix = "asc" if key.read_bytes().lstrip().startswith(ARMOR) else "gpg"
    return f"mkosi-repository-key-{number}.{suffix}"


def install_keys(keys: Iterable[Path], directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for number, key in enumerate(keys):
        target = directory / key_name(key, number)
        shutil.copyfile(key, target)
        target.chmod(0o644)


def make_skeleton(root: Path, bootstrap: Bootstrap, architecture: str) -> None:
    """What dpkg and apt need in the tree before the first package, and merged /usr."""
    for directory in (
        "etc/apt/apt.conf.d", "etc/apt/preferences.d", "etc/apt/sources.list.d", "etc/dpkg/dpkg.cfg.d",
        "var/lib/dpkg/info", "var/lib/dpkg/updates", "var/lib/apt/lists/partial", f"{ARCHIVES}/partial",
        "var/log/apt", "dev", "proc", "sys", "tmp", "run",
    ):  # fmt: skip
        (root / directory).mkdir(parents=True, exist_ok=True)
    (root / "tmp").chmod(0o1777)
    for name in MERGED_USR[architecture]:
        (root / "usr" / name).mkdir(parents=True, exist_ok=True)
        (root / name).symlink_to(f"usr/{name}")
    (root / "var/lib/dpkg/status").touch()
    (root / "var/lib/dpkg/arch").write_text(f"{architecture}\n")
    (root / "etc/fstab").write_text(FSTAB)
    trusted = not bootstrap.keyrings
    (root / "etc/apt/sources.list").write_text("".join(s.line(trusted) + "\n" for s in bootstrap.sources))
    if bootstrap.image_keys:
        install_keys(bootstrap.image_keys, root / "etc/apt/trusted.gpg.d")
    for path, content in bootstrap.files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(content)


def host_apt_config(root: Path, scratch: Path, architecture: str) -> str:
    """The build host's apt pointed at the tree, trusting only the keys in `scratch`/trusted.gpg.d."""
    return "".join(
        f"{line}\n"
        for line in (
            f'Dir "{root}/";',
            f'Dir::State::Status "{root}/var/lib/dpkg/status";',
            f'Dir::Etc::Trusted "{scratch}/trusted.gpg";',  # never created: no key but ours
            f'Dir::Etc::TrustedParts "{scratch}/trusted.gpg.d";',
            f'APT::Architecture "{architecture}";',
            f'APT::Architectures "{architecture}";',
            'APT::Install-Recommends "false";',
            'Acquire::Languages "none";',
            # The tree is root's: apt's download sandbox user could not write to it.
            'APT::Sandbox::User "root";',
            # apt's binary caches are rebuilt whenever needed; the image need not carry them.
            'Dir::Cache::pkgcache "";',
            'Dir::Cache::srcpkgcache "";',
        )
    )


def requested_names(packages: Iterable[str]) -> set[str]:
    """Package names out of apt's package arguments (name=version, name/suite, name:arch)."""
    return {re.split(r"[=/:]", p, maxsplit=1)[0] for p in packages if not p.startswith("?")}


def _installed(root: Path) -> dict[str, dict[str, str]]:
    """dpkg's database: the fields of every package, by name."""
    packages = {}
    for stanza in (root / "var/lib/dpkg/status").read_text().split("\n\n"):
        fields = dict(re.findall(r"^([A-Za-z-]+): (.*)$", stanza, re.MULTILINE))
        if "Package" in fields:
            packages[fields["Package"]] = fields
    return packages


def _relations(fields: dict[str, str], *keys: str) -> list[str]:
    """Every package name in the relation fields `keys`, alternatives included."""
    text = ",".join(fields.get(key, "") for key in keys)
    return re.findall(r"(?:^|[,|])\s*([^\s,|:(]+)", text)


def essential_closure(packages: dict[str, dict[str, str]]) -> set[str]:
    """The Essential: yes packages and what they depend on, as installed."""
    providers: dict[str, set[str]] = {}
    for name, fields in packages.items():
        for provided in [name, *_relations(fields, "Provides")]:
            providers.setdefault(provided, set()).add(name)
    pending = [name for name, fields in packages.items() if fields.get("Essential") == "yes"]
    closure: set[str] = set()
    while pending:
        name = pending.pop()
        if name not in closure:
            closure.add(name)
            for dependency in _relations(packages[name], "Pre-Depends", "Depends"):
                pending += providers.get(dependency, ())
    return closure


def mark_dependencies(root: Path, requested: set[str]) -> int:
    """Write apt's record of the packages that are there only as dependencies (apt autoremove's
    candidates once nothing needs them), as debootstrap and mmdebstrap leave it: the essential
    packages, the Priority: required ones and those asked for are not. Returns how many are."""
    packages = _installed(root)
    required = {name for name, fields in packages.items() if fields.get("Priority") == "required"}
    manual = essential_closure(packages) | required | requested
    automatic = sorted(name for name in packages if name not in manual)
    (root / "var/lib/apt/extended_states").write_text(
        "".join(
            f"Package: {name}\nArchitecture: {packages[name].get('Architecture', 'all')}\nAuto-Installed: 1\n\n"
            for name in automatic
        )
    )
    return len(automatic)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def remove_bootstrap_leftovers(root: Path) -> None:
    for path in BOOTSTRAP_LOGS:
        _remove(root / path)
    for package in (root / ARCHIVES).glob("*.deb"):
        _remove(package)
    for item in (root / "var/lib/apt/lists").iterdir():
        if item.name not in ("lock", "partial"):
            _remove(item)
    # What maintainer scripts left in the tree's runtime directories belongs to no booted system.
    for directory in ("run", "tmp"):
        for item in (root / directory).iterdir():
            _remove(item)


async def _apt_get(context: Context, env: dict[str, str], arguments: list[str], capture: bool = False) -> str:
    config = context.config
    try:
        result = await run(["apt-get", "-q", *arguments], env=env, capture_stdout=capture, log=context.log)
    except CommandError as error:
        raise_untrusted(error, UNTRUSTED, f"the archives of {config.distribution} {config.release}")
        raise_missing(error, MISSING, f"{config.distribution} {config.release}")
        raise
    return result.stdout


async def download(context: Context, env: dict[str, str], packages: tuple[str, ...]) -> list[Path]:
    """Download minbase and `packages` into the tree's apt archive; returns the package files.

    With a package pool, apt first lists the files it wants, and those the pool has are linked in:
    the pool holds other builds' packages too, and only apt's choice may be installed."""
    config = context.config
    archives = context.root / ARCHIVES
    request = ["--yes", "--", *MINBASE, *packages]
    if config.cache_path is None:
        await _apt_get(context, env, ["install", "--download-only", *request])
        return sorted(archives.glob("*.deb"))
    pool = package_cache.pool_for(config.cache_path, config.distribution, config.release, config.architecture)
    listing = await _apt_get(context, env, ["install", "--print-uris", "-qq", *request], capture=True)
    # One line per file: 'URI' FILE SIZE HASH
    files = sorted(line.split()[1] for line in listing.splitlines() if line.startswith("'"))
    package_cache.link_in(pool, archives, files)
    if not all((archives / name).exists() for name in files):
        await _apt_get(context, env, ["install", "--download-only", *request])
        package_cache.link_out(archives, pool)
    return [archives / name for name in files]


async def unpack_all(context: Context, packages: list[Path], excludes: tuple[str, ...]) -> list[Path]:
    """Unpack every package into the tree, on all cores; returns the uncompressed copies."""
    root = context.root
    (root / COPIES).mkdir(parents=True, exist_ok=True)
    copies = [root / COPIES / p.name for p in packages]
    limiter = anyio.CapacityLimiter(os.cpu_count() or 1)

    async def unpack(package: Path, copy: Path) -> None:
        async with limiter:
            await deb.unpack(package, root, copy, excludes, log=context.log)

    async with cpu_heavy(), anyio.create_task_group() as tg:
        for package, copy in zip(packages, copies, strict=True):
            tg.start_soon(unpack, package, copy)
    return copies


async def install(context: Context, bootstrap: Bootstrap) -> None:
    root = context.root
    check_runnable(context.config.architecture)
    architecture = ARCHITECTURES[context.config.architecture]
    # The host apt's configuration and keys: the build's, so in the workspace, and gone afterwards.
    scratch = context.workspace / "apt-bootstrap"
    scratch.mkdir()
    try:
        make_skeleton(root, bootstrap, architecture)
        (scratch / "apt.conf").write_text(host_apt_config(root, scratch, architecture))
        install_keys(bootstrap.keyrings, scratch / "trusted.gpg.d")
        env = {"APT_CONFIG": str(scratch / "apt.conf"), "LC_ALL": "C.UTF-8"}

        await _apt_get(context, env, ["update"])
        packages = await download(context, env, bootstrap.packages)
        copies = await unpack_all(context, packages, bootstrap.excludes)
        # Services are not started while the image is built (invoke-rc.d and deb-systemd-invoke ask).
        (root / POLICY_RC_D).write_text("#!/bin/sh\nexit 101\n")
        (root / POLICY_RC_D).chmod(0o755)
        # --force-depends: dpkg unpacks in the order given and would refuse a package whose
        # Pre-Depends are unpacked but not configured yet. Every file being in place already, it
        # then configures the whole set in dependency order, the essential packages' circles too.
        dpkg = ["dpkg", "--install", "--force-depends", "--force-unsafe-io"]
        await run(in_tree(root, [*dpkg, *(f"/{copy.relative_to(root)}" for copy in copies)]), log=context.log)
        count = mark_dependencies(root, requested_names(("apt", "usr-is-merged", *bootstrap.packages)))
        context.log.info("bootstrap installed", packages=len(packages), dependencies=count)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(root / COPIES, ignore_errors=True)
        (root / POLICY_RC_D).unlink(missing_ok=True)
    remove_bootstrap_leftovers(root)
