"""Debian and its derivatives bootstrapped with apt and dpkg from a list of apt sources.

The steps, each chosen for a bootstrap that is fast as well as right:
1. The tree gets what dpkg and apt need to start with, and /bin, /sbin and /lib pointing into /usr
   (merged /usr, made as debootstrap makes it). The usr-is-merged package then satisfies what asks
   for usrmerge, which would otherwise convert the tree and leave perl in every image.
2. The build host's apt, under a configuration of ours that points every path into the tree and
   trusts only the given keyrings (none of the host's sources, keys or caches), fetches the package
   lists and downloads the whole package set at once: minbase (the Essential: yes and Priority:
   required packages and apt, as mmdebstrap and debootstrap define it) plus the packages asked for.
3. Every package is decompressed once, on all cores side by side, into a copy dpkg unpacks without
   decompressing (deb.py); the base system's files go into the tree on the way, so that dpkg and
   its maintainer scripts can run there. The other packages' copies are made while dpkg installs
   the base system, on the core it leaves idle. Control fields are read in-process.
4. dpkg installs the copies inside the tree (chroot, in mount and PID namespaces of its own, so
   that nothing started or mounted there outlives it): the base system in one run, the rest in as
   few runs as Pre-Depends allow (dpkg_order.py).
5. apt's record of which packages are dependencies only, and the cleanup of what the bootstrap
   itself left (package lists, downloads, logs).

The result has the same packages and files as mmdebstrap's minbase with its merged-/usr hook, in
about two thirds of the time (README, Benchmarks).
"""

from __future__ import annotations

import re
import shutil
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import anyio

from mkosi import package_cache
from mkosi.architecture import Architecture
from mkosi.checksums import sha256_file
from mkosi.concurrency import cpu_heavy, on_all_cores, side_tasks
from mkosi.context import Context
from mkosi.errors import MkosiError
from mkosi.package_lock import PackageRecord, check_locked, write_records
from mkosi.package_managers import (
    RETRIES,
    DamagedDownload,
    DownloadFailed,
    Fault,
    FaultWords,
    NoSuchPackage,
    deb,
    download_failed,
    dpkg_order,
    raise_missing,
    raise_untrusted,
)
from mkosi.run import CommandError, run

# What minbase consists of besides the packages asked for, in apt's pattern syntax. usr-is-merged
# only where the archive has it (?or never fails to match: ?essential always does).
MINBASE = ("?or(?essential,?priority(required),?exact-name(usr-is-merged))", "apt")
# apt's wording for a package that no source has.
MISSING = (
    r"Unable to locate package (\S+)",
    r"Package '?([^' ]+)'? has no installation candidate",
    r"Couldn't find any package by (?:glob|regex) '([^']+)'",
)
# apt's wording for a version that no source has.
MISSING_VERSION = r"Version '([^']+)' for '([^']+)' was not found"
# apt's wording for an archive whose Release file is unsigned, signed by an unknown key, or changed.
UNTRUSTED = (r"NO_PUBKEY", r"BADSIG", r"is not signed", r"signatures were invalid")
ARMOR = b"-----BEGIN PGP PUBLIC KEY BLOCK-----"
T = TypeVar("T")
# apt's words for a file it could not fetch: "E: Failed to fetch URL  REASON [IP: ADDRESS PORT]" (W:
# for a package list that `update` could not fetch).
FETCH_FAILED = r"^[EW]: Failed to fetch (\S+)\s+(.*?)(?:\s+\[IP: [^]]*\])?\s*$"


# apt's words for each fault; apt tries a file again after a network failure, never after one that
# came whole but damaged.
FETCH_FAILURES = (
    FaultWords(r"timed out", Fault.stalled),
    FaultWords(r"Connection reset by peer", Fault.reset),
    FaultWords(r"Remote end closed connection", Fault.closed),
    FaultWords(r"Could not connect|Connection failed|Connection refused", Fault.unreachable),
    FaultWords(r"File has unexpected size \((\d+) != (\d+)\)", Fault.short),
    FaultWords(r"Hash Sum mismatch", Fault.changed),
)

ARCHIVES = "var/cache/apt/archives"
# The uncompressed copies of the packages, where dpkg in the tree finds them; gone afterwards.
COPIES = "var/cache/mkosi-packages"
POLICY_RC_D = "usr/sbin/policy-rc.d"
NO_SERVICE_STARTS = "#!/bin/sh\nexit 101\n"
# What the bootstrap leaves that belongs to the build, not to the image (mmdebstrap removes the same).
BOOTSTRAP_LOGS = (
    "var/log/dpkg.log",
    "var/log/alternatives.log",
    "var/log/apt/history.log",
    "var/log/apt/term.log",
    "var/log/apt/eipp.log.xz",
    "var/cache/ldconfig/aux-cache",
    # apt creates it only when it downloads: a tree must not depend on what the package pool held.
    "var/cache/apt/archives/lock",
)
FSTAB = "# UNCONFIGURED FSTAB FOR BASE SYSTEM\n"

# Runs a command in the tree, from inside `unshare --mount --pid --fork --kill-child`: the mounts
# vanish with the namespace, and every process left there is killed when the command ends. The
# tree sees a read-only sysfs and a /dev of its own with the few devices maintainer scripts use,
# never the host's disks, firmware variables or shared memory (where other builds' trees live).
# The shell stays the namespace's PID 1, outside the chroot, instead of exec'ing into it: that is
# how maintainer scripts tell a chroot (ischroot compares / with /proc/1/root). Where PID 1 was
# dpkg in the tree, libc6's postinst took the tree for a booted system and ran `telinit u; sleep 1`.
IN_TREE_SCRIPT = """set -e
root=$1
shift
mount -t proc -o nosuid,nodev,noexec proc "$root/proc"
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$root/sys"
mount -t tmpfs -o nosuid,mode=0755 dev "$root/dev"
for node in null zero full random urandom tty; do
    touch "$root/dev/$node"
    mount --bind "/dev/$node" "$root/dev/$node"
done
mkdir "$root/dev/pts" "$root/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts "$root/dev/pts"
mount -t tmpfs -o nosuid,nodev,mode=1777 shm "$root/dev/shm"
ln -s pts/ptmx "$root/dev/ptmx"
ln -s /proc/self/fd "$root/dev/fd"
chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C.UTF-8 \
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
    # Installed in a dpkg run after all others (the kernel: its postinst builds the initrd).
    installed_last: tuple[str, ...] = ()
    # PackageLock=: exactly these versions, these files, and nothing else.
    lock: tuple[PackageRecord, ...] = ()
    lock_path: Path | None = None

    @property
    def request(self) -> list[str]:
        """What apt is asked to install: minbase and the packages, each locked one at its version."""
        return [*MINBASE, *self.packages, *(r.request for r in self.lock)]


def in_tree(root: Path, argv: Iterable[str]) -> list[str]:
    """The command line running `argv` inside `root` (see IN_TREE_SCRIPT)."""
    namespaces = ["unshare", "--mount", "--pid", "--fork", "--kill-child"]
    return [*namespaces, "sh", "-c", IN_TREE_SCRIPT, "in-tree", str(root), *argv]


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


def make_skeleton(root: Path, bootstrap: Bootstrap, architecture: Architecture) -> None:
    """What dpkg and apt need in the tree before the first package, and merged /usr."""
    for directory in (
        "etc/apt/apt.conf.d", "etc/apt/preferences.d", "etc/apt/sources.list.d", "etc/dpkg/dpkg.cfg.d",
        "var/lib/dpkg/info", "var/lib/dpkg/updates", "var/lib/apt/lists/partial", f"{ARCHIVES}/partial",
        "var/log/apt", "dev", "proc", "sys", "tmp", "run",
    ):  # fmt: skip
        (root / directory).mkdir(parents=True, exist_ok=True)
    (root / "tmp").chmod(0o1777)
    for name in architecture.merged_usr:
        (root / "usr" / name).mkdir(parents=True, exist_ok=True)
        (root / name).symlink_to(f"usr/{name}")
    (root / "var/lib/dpkg/status").touch()
    (root / "var/lib/dpkg/arch").write_text(f"{architecture.debian}\n")
    (root / "etc/fstab").write_text(FSTAB)
    trusted = not bootstrap.keyrings
    (root / "etc/apt/sources.list").write_text("".join(s.line(trusted) + "\n" for s in bootstrap.sources))
    if bootstrap.image_keys:
        install_keys(bootstrap.image_keys, root / "etc/apt/trusted.gpg.d")
    for path, content in bootstrap.files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(content)


def host_apt_config(root: Path, scratch: Path, architecture: str, timeout: int) -> str:
    """The build host's apt pointed at the tree, trusting only the keys in `scratch`/trusted.gpg.d,
    giving up on a mirror that sends nothing for `timeout` seconds (MirrorTimeout=)."""
    return "".join(
        f"{line}\n"
        for line in (
            *(f'{name} "{value}";' for name, value in mirror_options(timeout).items()),
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
            # apt's binary caches, which `update` builds and the next apt-get maps instead of
            # parsing the package lists again (0.5 s), are the build's, not the image's.
            f'Dir::Cache::pkgcache "{scratch}/pkgcache.bin";',
            f'Dir::Cache::srcpkgcache "{scratch}/srcpkgcache.bin";',
        )
    )


def mirror_options(timeout: int) -> dict[str, str]:
    """apt's limits for a mirror that stalls or fails: each wait for a connection or for more data
    ends after `timeout` seconds, and a file that failed to come for a network failure is tried
    RETRIES more times (apt waits 1, then 2 seconds in between) before apt gives up. A package list
    that did not come fails `update` (else apt only warns, and what the lists lack looks like
    packages that do not exist)."""
    return {
        "Acquire::http::Timeout": str(timeout),
        "Acquire::https::Timeout": str(timeout),
        "Acquire::Retries": str(RETRIES),
        "APT::Update::Error-Mode": "any",
    }


def requested_names(packages: Iterable[str]) -> set[str]:
    """Package names out of apt's package arguments (name=version, name/suite, name:arch)."""
    return {re.split(r"[=/:]", p, maxsplit=1)[0] for p in packages if not p.startswith("?")}


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


def download_failure(error: CommandError, timeout: int) -> DownloadFailed | None:
    """What apt says it could not fetch, as one error naming the first file (unquoted, as apt asked
    for it) and what went wrong; None if apt failed at something else."""
    failed: dict[str, str] = {}
    for line in error.tail:
        if match := re.match(FETCH_FAILED, line):
            failed.setdefault(urllib.parse.unquote(match[1]), match[2])
    if not failed:
        return None
    url, reason = next(iter(failed.items()))
    failure = download_failed(url, reason, FETCH_FAILURES, tool="apt", timeout=timeout, others=len(failed) - 1)
    # apt tried a file that failed for the network RETRIES times more.
    return failure.tried(1 + RETRIES) if failure.network else failure


def raise_download_failure(error: CommandError, timeout: int) -> None:
    if failure := download_failure(error, timeout):
        raise failure from error


async def _apt_get(context: Context, env: dict[str, str], arguments: list[str], capture: bool = False) -> str:
    config = context.config
    try:
        result = await run(["apt-get", "-q", *arguments], env=env, capture_stdout=capture, log=context.log)
    except CommandError as error:
        raise_untrusted(error, UNTRUSTED, f"the archives of {config.distribution} {config.release}")
        raise_download_failure(error, config.mirror_timeout)
        where = f"{config.distribution} {config.release}"
        if versions := [f"{m[2]}={m[1]}" for line in error.tail if (m := re.search(MISSING_VERSION, line))]:
            raise NoSuchPackage(f"no {', '.join(versions)} in {where} (a version PackageLock= asks for)") from error
        raise_missing(error, MISSING, where)
        raise
    return result.stdout


async def once_more_if_damaged(context: Context, attempt: Callable[[], Awaitable[T]]) -> T:
    """`attempt`, and once more if the mirror sent a damaged file: apt gives up on such a file at
    once, where the next request may get it whole (from another node of a content delivery network,
    or once the mirror's sync is done). apt downloads only what it still lacks."""
    try:
        return await attempt()
    except DamagedDownload as error:
        context.log.warning(f"the mirror sent {error.url} damaged: {error.what}; downloading it once more")
        try:
            return await attempt()
        except DamagedDownload as again:
            raise again.tried(2) from again


async def _download_only(context: Context, env: dict[str, str], request: list[str]) -> None:
    await once_more_if_damaged(context, lambda: _apt_get(context, env, ["install", "--download-only", *request]))


def _link_in_verified(pool: Path, archives: Path, wanted: dict[str, str]) -> dict[str, str]:
    verified: list[str] = []
    damaged: dict[str, str] = {}
    for name, sha256 in wanted.items():
        if sha256 and (pool / name).is_file():
            digest = sha256_file(pool / name)
            if digest == sha256:
                verified.append(name)
            else:
                damaged[name] = digest
    package_cache.link_in(pool, archives, verified)
    return damaged


async def link_in_verified(context: Context, pool: Path, archives: Path, wanted: dict[str, str]) -> dict[str, str]:
    """Link in the pool's copies of the `wanted` files (name -> SHA-256 from the signed index)
    whose contents are what the index says: apt takes a file of the right size in its archive
    without checking it, the pool is shared by every mirror of the release, and a disk may damage
    what it holds. Each damaged copy gets a warning; returns their SHA-256, by name."""
    damaged = await anyio.to_thread.run_sync(_link_in_verified, pool, archives, wanted)
    for name, digest in damaged.items():
        context.log.warning(
            package_cache.damaged_warning(
                pool / name, digest, wanted[name], named_by="the package index", then="downloading it again"
            )
        )
    return damaged


def parse_print_uris(listing: str, archives: Path) -> tuple[list[Path], dict[str, str]]:
    """From `apt-get --print-uris` ('URI' FILE SIZE SHA256:HEX lines): every package file apt
    would use, and for those it would download into `archives`, their SHA-256 ("" if unknown)."""
    files: list[Path] = []
    wanted: dict[str, str] = {}
    for line in listing.splitlines():
        if line.startswith("'"):
            uri, name, *rest = line.split()
            uri = uri.strip("'")
            if uri.startswith("file:"):
                files.append(Path(urllib.parse.unquote(urllib.parse.urlparse(uri).path)))
                continue
            files.append(archives / name)
            checksum = rest[1] if len(rest) > 1 else ""
            wanted[name] = checksum.removeprefix("SHA256:") if checksum.startswith("SHA256:") else ""
    return files, wanted


async def download(context: Context, env: dict[str, str], bootstrap: Bootstrap) -> tuple[list[Path], dict[str, str]]:
    """Download minbase and the bootstrap's packages; returns the package files, and the SHA-256
    of those the index gave one for (by file name).

    The quick way, when there is neither a package pool nor a local (file:) source: apt downloads
    the set into the tree's empty archive. Otherwise apt first lists the files it wants, with their
    checksums: those a pool has (checked) are linked in, and apt uses file: sources where they are,
    copying nothing into the archive."""
    config = context.config
    archives = context.root / ARCHIVES
    request = ["--yes", "--", *bootstrap.request]
    pool = None
    if config.cache_path is not None:
        pool = package_cache.pool_for(config.cache_path, config.distribution, config.release, config.architecture)
    if pool is None and not any(source.uri.startswith("file:") for source in bootstrap.sources):
        await _download_only(context, env, request)
        return sorted(archives.glob("*.deb")), {}

    # ForceHash: apt would print the MD5 sum where the index has one, and nothing where it has not
    # (Debian's security archive).
    listing = await _apt_get(
        context, env, ["install", "--print-uris", "-qq", "-o", "Acquire::ForceHash=SHA256", *request], capture=True
    )
    files, wanted = parse_print_uris(listing, archives)
    damaged = await link_in_verified(context, pool, archives, wanted) if pool is not None else {}
    if not all((archives / name).exists() for name in wanted):
        await _download_only(context, env, request)
        if pool is not None:
            await anyio.to_thread.run_sync(package_cache.link_out, archives, pool, damaged)
    return sorted(files, key=lambda path: path.name), wanted


async def package_records(
    packages: Mapping[str, tuple[Path, Mapping[str, str]]], digests: Mapping[str, str]
) -> list[PackageRecord]:
    """Each package's name, version, architecture and file digest: the index's SHA-256 where apt
    printed one, else the file's (local sources, downloads without a pool), hashed on all cores."""
    found: dict[str, str] = {}

    async def digest(path: Path) -> None:
        known = digests.get(path.name)
        found[path.name] = known if known else await anyio.to_thread.run_sync(sha256_file, path)

    await on_all_cores(digest, [path for path, _ in packages.values()])
    return [
        PackageRecord(name, fields["Version"], fields["Architecture"], found[path.name])
        for name, (path, fields) in sorted(packages.items())
    ]


async def read_control(context: Context, files: list[Path]) -> dict[str, tuple[Path, dict[str, str]]]:
    """Each package's control fields and file, by package name."""
    found: dict[str, tuple[Path, dict[str, str]]] = {}

    async def read(path: Path) -> None:
        fields = await deb.control_fields(path, log=context.log)
        found[fields["Package"]] = (path, fields)

    await on_all_cores(read, files)
    return found


async def unpack_and_install(
    context: Context, files: dict[str, Path], steps: list[dpkg_order.Step], excludes: tuple[str, ...]
) -> None:
    """Decompress every package once into an uncompressed copy in the tree, and install the copies
    with dpkg there, step by step.

    What dpkg installs without honouring dependencies (the base system) must have its files in the
    tree before dpkg runs at all: those packages are unpacked on the way, on all cores. The copies
    of the others are made while dpkg installs the base system, which keeps one core busy, on the
    cores it leaves free; each later step waits only for its own copies."""
    root = context.root
    (root / COPIES).mkdir(parents=True, exist_ok=True)
    copies = {name: root / COPIES / path.name for name, path in files.items()}
    unpack_first = {name for step in steps if step.force_depends for name in step.packages}

    async def copy(name: str) -> None:
        unpack_into = root if name in unpack_first else None
        await deb.uncompressed_copy(files[name], copies[name], unpack_into, excludes, log=context.log)

    async with cpu_heavy():
        await on_all_cores(copy, sorted(unpack_first))
    ready = [anyio.Event() for _ in steps]

    async def copy_the_rest() -> None:
        async with cpu_heavy():
            for step, done in zip(steps, ready, strict=True):
                await on_all_cores(copy, [n for n in step.packages if n not in unpack_first], leave_free=1)
                done.set()

    # A failing dpkg run comes out as itself (CommandError), as when the steps ran alone.
    async with side_tasks() as tg:
        tg.start_soon(copy_the_rest)
        for step, done in zip(steps, ready, strict=True):
            await done.wait()
            dpkg = ["dpkg", "--install", "--force-unsafe-io", *(["--force-depends"] if step.force_depends else [])]
            in_tree_copies = (str(Path("/", copies[n].relative_to(root))) for n in step.packages)
            try:
                # grace=0: the namespace's init ignores SIGTERM; the tree is thrown away anyway.
                await run(in_tree(root, [*dpkg, *in_tree_copies]), log=context.log, grace=0)
            except CommandError as error:
                raise dpkg_failure(error) from error


def dpkg_failure(error: CommandError) -> MkosiError:
    """What dpkg in the tree failed at, in its own words, without the in-tree wrapper's script
    (the build log has the whole command line)."""
    failed = sorted({m.group(1) for line in error.tail if (m := re.search(r"error processing package (\S+)", line))})
    what = f"could not install {', '.join(failed)}" if failed else "failed"
    tail = "".join(f"\n    {line}" for line in error.tail)
    return MkosiError(f"dpkg in the tree {what} (exit status {error.returncode}), last output:{tail}")


def check_installed(root: Path, names: Iterable[str]) -> None:
    installed = dpkg_order.installed_packages(root)
    broken = [n for n in names if installed.get(n, {}).get("Status") != "install ok installed"]
    if broken:
        raise MkosiError(f"dpkg left these packages not fully installed: {', '.join(sorted(broken))}")


async def install(context: Context, bootstrap: Bootstrap) -> None:
    root = context.root
    architecture = context.config.architecture
    # The host apt's configuration and keys: the build's, so in the workspace, and gone afterwards.
    scratch = context.workspace / "apt-bootstrap"
    scratch.mkdir()
    policy_rc_d = root / POLICY_RC_D
    try:
        make_skeleton(root, bootstrap, architecture)
        apt_conf = host_apt_config(root, scratch, architecture.debian, context.config.mirror_timeout)
        (scratch / "apt.conf").write_text(apt_conf)
        install_keys(bootstrap.keyrings, scratch / "trusted.gpg.d")
        env = {"APT_CONFIG": str(scratch / "apt.conf"), "LC_ALL": "C.UTF-8"}

        await _apt_get(context, env, ["update"])
        downloaded, digests = await download(context, env, bootstrap)
        packages = await read_control(context, downloaded)
        records = await package_records(packages, digests)
        if bootstrap.lock_path is not None:
            check_locked(records, bootstrap.lock, bootstrap.lock_path)
        write_records(context.workspace, records, [source.line(trusted=False) for source in bootstrap.sources])
        fields = {name: fields for name, (_, fields) in packages.items()}
        requested = requested_names(("apt", "usr-is-merged", *bootstrap.packages))
        steps = dpkg_order.install_steps(fields, last=requested_names(bootstrap.installed_last), asked=requested)
        # Services are not started while the image is built (invoke-rc.d and deb-systemd-invoke ask).
        policy_rc_d.write_text(NO_SERVICE_STARTS)
        policy_rc_d.chmod(0o755)
        files = {name: path for name, (path, _) in packages.items()}
        await unpack_and_install(context, files, steps, bootstrap.excludes)
        check_installed(root, packages)
        count = dpkg_order.mark_dependencies(root, requested, architecture.debian)
        context.log.info("bootstrap installed", packages=len(packages), dpkg_runs=len(steps), dependencies=count)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(root / COPIES, ignore_errors=True)
        # Unless a package brought a policy of its own.
        if policy_rc_d.is_file() and policy_rc_d.read_text() == NO_SERVICE_STARTS:
            policy_rc_d.unlink()
    remove_bootstrap_leftovers(root)
