"""Building one image: the stages, top to bottom, and the publication of their outputs."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import structlog

from mkosi import base_image, binfmt, boot, buildscript, naming, ownership, package_cache
from mkosi.boot import kernel_command_line
from mkosi.concurrency import claimed, exclusive
from mkosi.config import Config, OutputFormat, WorkspaceMode, discovered_path
from mkosi.context import Context, StageRecord
from mkosi.disk.layout import checked_filesystems, plan, slot_label
from mkosi.errors import MkosiError
from mkosi.events import ArtifactPublished, BuildFinished, BuildStarted, Monitor
from mkosi.log import build_log
from mkosi.outputs import CHECKS, WRITERS, disk, sidecars
from mkosi.package_lock import Installed, read_records
from mkosi.pipeline import Stage, StageCache, hash_tree, run_stages, stage_keys
from mkosi.remote_cache import remote_cache
from mkosi.run import SubprocessClock, build_environment, subprocess_clock
from mkosi.space import out_of_space, out_of_space_error
from mkosi.stage_cache import SnapshotCache, cached_keys, prune
from mkosi.tree import (
    clean_tree,
    configure_system,
    install_extra_trees,
    install_skeleton_trees,
    make_reproducible,
    root_password,
    tree_digest_paths,
)
from mkosi.workspace import TMPFS_DIR, choose_base, remove_abandoned_workspaces, remove_tree, remove_trees, workspace


async def install_distribution(context: Context) -> None:
    config = context.config
    installer = config.distribution.installer()
    await install_skeleton_trees(context)
    if config.cache_path is None:
        await installer.install(context)
        return
    # Concurrent bootstraps of one release would download the same packages twice and race to add
    # them to the pool: one at a time per pool, whichever process runs them.
    pool = package_cache.pool_for(config.cache_path, config.distribution, config.release, config.architecture)
    pool.mkdir(parents=True, exist_ok=True)
    async with exclusive(pool / ".bootstrap.lock"):
        await installer.install(context)


async def start_from_base(context: Context) -> None:
    """The tree of BaseImage= instead of a bootstrap, recorded for extensions (what they keep is
    what differs from it), with Packages= installed on top by the distribution's package manager."""
    config = context.config
    await base_image.unpack(context)
    if scope := base_image.SCOPES.get(config.format):
        base_image.record(context, scope)
    if config.packages:
        await config.distribution.installer().install_packages(context, context.root, config.packages)


async def write_output(context: Context) -> None:
    await WRITERS[context.config.format](context)


def _paths(path: Path | None) -> list[Path]:
    return [] if path is None else [path]


@functools.lru_cache(maxsize=4)
def _secret_digest(secret: str | None) -> str | None:
    """What stands for a secret in a stage key. Keys are published (a matrix's manifest records
    them): a plain SHA-256 would let anyone test billions of guesses a second against it, so it is
    scrypt, memory-hard and slower per guess than the crypt(3) hash the image's /etc/shadow holds."""
    if secret is None:
        return None
    return hashlib.scrypt(secret.encode(), salt=b"mkosi stage key", n=2**15, r=8, p=1, maxmem=64 * 1024**2).hex()


def _secure_boot_keys(c: Config) -> str | None:
    paths = [c.secure_boot_key, c.secure_boot_certificate]
    return hash_tree(p for p in paths if p is not None) if c.secure_boot else None


def _verity_signing_keys(c: Config) -> str:
    signer = disk.signer(c)
    assert signer is not None
    return hash_tree([signer.key, signer.certificate])


# Bumped whenever an installer changes what it puts into the tree, so that trees an older mkosi
# left in a stage cache are not taken for this one's. 2: Debian and Ubuntu without mmdebstrap.
# 3: their kernel installed after everything else, its initrd built once. 4: the packages recorded.
# 5: no apt download lock left in the tree.
INSTALLER_REVISION = 5

STAGES: list[Stage] = [
    Stage(
        "bootstrap",
        install_distribution,
        inputs=lambda c: {
            "installer_revision": INSTALLER_REVISION,
            # Maintainer scripts see it (timestamps they write), and every later stage inherits it.
            # Only when set: the keys of builds without one stay what they were.
            **({"source_date_epoch": c.source_date_epoch} if c.source_date_epoch is not None else {}),
            "distribution": c.distribution,
            "release": c.release,
            "mirror": c.mirror,
            "repositories": c.repositories,
            "repository_key_check": c.repository_key_check,
            "repository_keys": hash_tree(c.repository_keys),
            "architecture": c.architecture,
            "packages": c.packages,
            **({"package_lock": hash_tree([c.package_lock])} if c.package_lock is not None else {}),
            "with_docs": c.with_docs,
            # Only when set: the keys of builds without skeleton trees stay what they were.
            **(
                {"skeleton": [hash_tree(t.source for t in c.skeleton_trees), tree_digest_paths(c.skeleton_trees)]}
                if c.skeleton_trees
                else {}
            ),
            # The initrd is built while the kernel installs, with this configuration.
            "initrd": boot.dracut_config(c) if c.bootable else None,
            # A bootable image gets the fsck of the file systems it mounts: they depend on the format.
            "filesystem_tools": checked_filesystems(c) if c.bootable else (),
        },
        enabled=lambda c: c.base_image is None,
        checkpoint=True,
    ),
    Stage(
        "base",
        start_from_base,
        inputs=lambda c: {
            "base": base_image.digest(c.base_image),
            # What the base's record covers.
            "scope": base_image.SCOPES.get(c.format),
            # Installed with the base's own package sources, by the distribution's installer, whose
            # maintainer scripts see the epoch.
            "installer_revision": INSTALLER_REVISION,
            "distribution": c.distribution,
            **({"source_date_epoch": c.source_date_epoch} if c.source_date_epoch is not None else {}),
            "packages": c.packages,
            "with_docs": c.with_docs,
            "architecture": c.architecture,
        },
        enabled=lambda c: c.base_image is not None,
        checkpoint=True,
    ),
    Stage(
        "build-image",
        buildscript.make_build_image,
        # mkosi.postinst runs in the build image too, online only with WithNetwork=.
        inputs=lambda c: {
            "build_packages": c.build_packages,
            "postinst": hash_tree(_paths(c.postinst_script)),
            "with_network": c.with_network,
            **({"prepare": hash_tree(_paths(c.prepare_script))} if c.prepare_script is not None else {}),
            **({"environment": c.environment} if c.environment else {}),
        },
        enabled=lambda c: c.build_script is not None,
        checkpoint=True,
    ),
    Stage(
        "prepare",
        buildscript.prepare,
        # After the build image is copied from the tree: the build image runs it once, told "build".
        inputs=lambda c: {"script": hash_tree(_paths(c.prepare_script)), "environment": c.environment},
        enabled=lambda c: c.prepare_script is not None,
    ),
    Stage(
        "build-script",
        buildscript.build,
        inputs=lambda c: {
            "script": hash_tree(_paths(c.build_script)),
            "sources": buildscript.sources_digest(c),
            "use_git_files": c.use_git_files,
            "git_files": c.git_files,
            "with_docs": c.with_docs,
            "with_tests": c.with_tests,
            "with_network": c.with_network,
            **({"environment": c.environment} if c.environment else {}),
        },
        enabled=lambda c: c.build_script is not None,
        # No copy of its own for -i: the stages up to the next copy are quick, so a rebuild after a
        # source change, the common case, does not pay for one copy it will never use.
    ),
    Stage(
        "extra-trees",
        install_extra_trees,
        inputs=lambda c: {
            "trees": hash_tree(t.source for t in c.extra_trees),
            **(
                {"targets": tree_digest_paths(c.extra_trees)}
                if any(str(t.target) != "/" for t in c.extra_trees)
                else {}
            ),
        },
        enabled=lambda c: bool(c.extra_trees),
    ),
    Stage(
        "install-build",
        buildscript.install_build_output,
        inputs=lambda c: {},
        enabled=lambda c: c.build_script is not None,
    ),
    Stage(
        "postinst",
        buildscript.postinst,
        inputs=lambda c: {
            "script": hash_tree(_paths(c.postinst_script)),
            "with_network": c.with_network,
            **({"environment": c.environment} if c.environment else {}),
        },
        enabled=lambda c: c.postinst_script is not None,
    ),
    Stage(
        "configure",
        configure_system,
        inputs=lambda c: {
            "hostname": c.hostname,
            "password": _secret_digest(root_password(c)),
            **({"password_is_hashed": True} if c.password_is_hashed else {}),
            **({"autologin": True} if c.autologin else {}),
            **({"image": [c.image_id, c.image_version]} if c.image_id or c.image_version else {}),
        },
        # An extension's base is configured already; what this stage writes under /etc would be
        # taken for changes of a confext's.
        enabled=lambda c: not c.format.is_extension,
    ),
    Stage(
        "clean",
        clean_tree,
        inputs=lambda c: {
            "with_docs": c.with_docs,
            **({"remove_files": c.remove_files} if c.remove_files else {}),
            **({"package_metadata": c.clean_package_metadata} if c.clean_package_metadata.value != "auto" else {}),
        },
    ),
    Stage(
        "finalize",
        buildscript.finalize,
        # Last before the image is packed, as mkosi v14 ran it: nothing mkosi does undoes it.
        inputs=lambda c: {"script": hash_tree(_paths(c.finalize_script)), "environment": c.environment},
        enabled=lambda c: c.finalize_script is not None,
    ),
    Stage(
        "reproducible",
        make_reproducible,
        inputs=lambda c: {"epoch": c.source_date_epoch},
        enabled=lambda c: c.source_date_epoch is not None,
    ),
    Stage(
        "filesystems",
        disk.make_filesystems,
        inputs=lambda c: {
            "partitions": [dataclasses.asdict(p) for p in plan(c)],
            "seed": c.seed,
            "encrypt": c.encrypt,
            # Never cached (cacheable=False), so the key needs no digest of the passphrase, which a
            # published key would let anyone test guesses against more cheaply than LUKS itself.
            "passphrase": c.passphrase is not None if c.encrypt else None,
            "key_derivation": [c.key_derivation, c.key_derivation_time],
            # Only when signed: the keys of unsigned builds stay what they were.
            **({"verity_signing": _verity_signing_keys(c)} if c.signed_verity else {}),
        },
        # An esp image's only partition comes later (boot-files): this stage makes none for it.
        enabled=lambda c: c.format.is_disk,
        # Making the file systems again costs about as much as storing and restoring a copy of the
        # tree together with its images would, so neither -i nor a matrix keeps one.
        cacheable=False,
    ),
    # After the filesystems: the kernel command line carries the root's verity hash.
    Stage(
        "boot-files",
        disk.build_boot_files,
        inputs=lambda c: {
            "cmdline": kernel_command_line(c),
            "architecture": c.architecture,
            "secure_boot": _secure_boot_keys(c),
            "initrds": hash_tree(c.initrds),
            # The UKI's name in the ESP.
            "output": c.output.name,
            **({"slot": slot_label(c)} if slot_label(c) else {}),
        },
        enabled=lambda c: c.bootable,
        cacheable=False,
    ),
    Stage(
        "output",
        write_output,
        inputs=lambda c: {
            "format": c.format,
            "compress": c.compress,
            "seed": c.seed,
            **({"ddi_file_system": c.ddi_file_system} if c.format.is_ddi else {}),
            # The slots' partition names, and the empty second slot.
            **({"slot": slot_label(c)} if slot_label(c) else {}),
            **({"ab_layout": True} if c.ab_layout else {}),
        },
        cacheable=False,
    ),
    Stage(
        "release-files",
        sidecars.write,
        inputs=lambda c: {
            "nspawn": c.nspawn_settings,
            "checksum": c.checksum,
            "sign": c.sign,
            "key": c.key,
            **({"bmap": True} if c.bmap else {}),
        },
        enabled=lambda c: c.checksum or c.nspawn_settings is not None or c.bmap,
        cacheable=False,
    ),
]


def earlier_outputs(config: Config) -> list[Path]:
    """What earlier builds of this output published, checked before any work starts.

    Only what mkosi published for this output (see mkosi.ownership) is ever replaced or removed.
    A path this configuration would publish that mkosi did not make (a directory given to -o by
    mistake, the user's own SHA256SUMS) is refused; one it would not publish is left alone.
    """
    found = []
    for path, written in naming.published_paths(config).items():
        if not ownership.exists(path):
            continue
        if written or ownership.owner_of(path) == config.output.name:
            ownership.check_replaceable(path, config.output.name)
            found.append(path)
    return found


def written_paths(config: Config) -> list[Path]:
    """Every path a build of this configuration publishes (the output, its log, its sidecars)."""
    return [path for path, written in naming.published_paths(config).items() if written]


def set_aside_outputs(paths: list[Path]) -> dict[Path, Path]:
    """Move earlier outputs out of the way; returns where each went, by its published path.

    Renaming is instant, and nothing is lost yet: see settle_set_aside(). Removing a tree of
    thousands of files is not instant, and on ext4 it slows down creating files for a while after it
    returned (see the README's Benchmarks section), so the removal waits until the new tree exists.
    """
    in_the_way = [aside for path in paths if ownership.exists(aside := naming.aside_path(path))]
    if in_the_way:
        raise MkosiError(f"{in_the_way[0]} is in the way (left by an earlier build): move it elsewhere or remove it")
    moved: dict[Path, Path] = {}
    try:
        for path in paths:
            os.rename(path, naming.aside_path(path))
            moved[path] = naming.aside_path(path)
    except OSError:
        for final, aside in moved.items():
            os.rename(aside, final)
        raise
    return moved


def settle_set_aside(output: Path, moved: dict[Path, Path]) -> list[Path]:
    """Decide for all the set-aside outputs at once, by whether a new `output` was published: if it
    was, they are all left to remove; if not, each goes back where nothing replaced it (a failed
    build's log stays, saying why). Never a new image with an earlier one's checksums. Returns what
    is left to remove."""
    if ownership.exists(output):
        return list(moved.values())
    left = []
    for final, aside in moved.items():
        if ownership.exists(final):
            left.append(aside)
        else:
            os.rename(aside, final)
    return left


async def remove_outputs(config: Config) -> None:
    """`mkosi clean`: remove what builds of this output published; refuse, before removing anything,
    when something there was not published by mkosi."""
    paths = earlier_outputs(config)
    await remove_trees(paths)
    await remove_outputs_of_killed_builds(config)


def _killed_builds_leftovers(config: Config) -> tuple[list[Path], dict[Path, Path]]:
    """What builds of this configuration killed too hard to clean up left: their staged files, and
    what -f had set aside, by its published path. Only the paths this configuration writes (a
    sibling output in the same directory may be staging its own SHA256SUMS right now), and only
    set-aside files of this output."""
    paths = written_paths(config)
    staged = [naming.staged_path(path) for path in paths if ownership.exists(naming.staged_path(path))]
    aside = {
        path: naming.aside_path(path)
        for path in paths
        if ownership.owner_of(naming.aside_path(path)) == config.output.name
    }
    return staged, aside


async def remove_outputs_of_killed_builds(config: Config) -> None:
    staged, aside = _killed_builds_leftovers(config)
    await remove_trees([*staged, *aside.values()])


async def recover_from_killed_builds(config: Config, log: Any) -> None:
    """Before a build, holding the claims on what it writes (so no live build of it is half-way):
    what a killed build staged goes; what its -f had set aside is settled as a failed build's would
    be (settle_set_aside). So a build killed at any moment loses nothing."""
    await remove_abandoned_workspaces([TMPFS_DIR, config.output.parent], log)
    staged, aside = _killed_builds_leftovers(config)
    if aside:
        log.warning("settling what a killed build had set aside", paths=[str(p) for p in aside])
    await remove_trees([*staged, *settle_set_aside(config.output, aside)])


def stage_cache_dir(config: Config) -> Path:
    """Where -i keeps the stage snapshots of this project: next to its package cache."""
    if config.cache_path is None:
        raise MkosiError("Incremental= needs a cache directory: set Cache= or create mkosi.cache/")
    return config.cache_path / "stages"


def check_caches_removable(config: Config) -> None:
    """Refuse `mkosi -ff clean`, in one line and before anything is removed, when the build
    directory or the stage cache is a directory mkosi did not make: BuildDirectory=$HOME or
    Cache=/srv (whose stages/ would go) must not be emptied."""
    advice = "empty it yourself, or name a directory of its own"
    # The project's own mkosi.builddir/ and mkosi.cache/ are mkosi's by name, marked or not.
    if config.build_dir is not None and config.build_dir != discovered_path(config, "build_dir"):
        ownership.check_replaceable(config.build_dir, ownership.BUILD_DIRECTORY, advice)
    if config.cache_path is not None and config.cache_path != discovered_path(config, "cache_path"):
        ownership.check_replaceable(stage_cache_dir(config), ownership.STAGE_CACHE, advice)


async def remove_caches(config: Config) -> None:
    """What `mkosi -ff clean` removes besides the outputs; check_caches_removable first."""
    if config.build_dir is not None and config.build_dir.is_dir():
        # Emptied, not removed: the directory is what turns persistent build directories on.
        for child in list(config.build_dir.iterdir()):
            await remove_tree(child)
    if config.cache_path is not None:
        await remove_tree(stage_cache_dir(config))
        pool = package_cache.pool_for(config.cache_path, config.distribution, config.release, config.architecture)
        await remove_tree(pool)


def publish(context: Context) -> None:
    owner = context.config.output.name
    for final, staged in context.staged.items():
        # A read-only subvolume was marked before it became read-only.
        if ownership.owner_of(staged) != owner and not ownership.mark(staged, owner):
            context.log.warning(
                f"{final.parent} keeps no extended attributes: mkosi will not recognise {final.name} "
                "as its own, and -f and clean will refuse to replace it"
            )
        os.rename(staged, final)
        context.emit(ArtifactPublished(str(final)))
    context.staged.clear()


def reproducible_environment(config: Config) -> dict[str, str]:
    """What every subprocess of the build gets for SourceDateEpoch=: the variable the tools of the
    reproducible-builds convention honour (dpkg's maintainer scripts, mksquashfs, tar, mtools), and
    the one e2fsprogs 1.47.0 reads instead for the times it writes."""
    if config.source_date_epoch is None:
        return {}
    epoch = str(config.source_date_epoch)
    return {"SOURCE_DATE_EPOCH": epoch, "E2FSPROGS_FAKE_TIME": epoch}


# The settings that never change an image, so no stage's key includes them: how a build runs and
# reports (force, verbosity, the workspace's place), where its settings came from (their values are
# inputs themselves), and the package cache and the mirror's timeout, which change how fast packages
# come or how long a build waits for them, never which (they are pinned by the mirror's signed index).
NOT_IMAGE_INPUTS = frozenset(
    {"directory", "default_path", "force", "incremental", "verbose", "log_format", "workspace", "cache_path"}
    # Where else stage results come from: each entry is its stage's key, whoever built it.
    | {"remote_cache", "remote_cache_insecure"}
    | {"mirror_timeout"}
    # Where the default output goes (its name is an input where it matters), where host tools are
    # found, and what the summary warns of.
    | {"output_dir", "extra_search_paths", "warnings"}
    # Checks before the build: they refuse a configuration, they never change what it makes.
    | {"reproducible", "deterministic_scripts"}
    # Only what mkosi genkey writes.
    | {"secure_boot_common_name", "secure_boot_valid_days"}
)


def incremental_checkpoints(config: Config) -> set[str]:
    """The stage keys -i keeps copies for: after the slow stages, and after the last cacheable one, so
    that a rebuild with nothing changed only restores one copy and writes the output."""
    cacheable = [(stage, key) for stage, key in stage_keys(config, STAGES) if stage.cacheable]
    keys = {key for stage, key in cacheable if stage.checkpoint}
    if cacheable:
        keys.add(cacheable[-1][1])
    return keys


def restored_until(config: Config) -> str | None:
    """The name of the last stage whose result the -i cache holds (restored, not run), if any."""
    cached = cached_keys(stage_cache_dir(config))
    hits = [stage.name for stage, key in stage_keys(config, STAGES) if stage.cacheable and key in cached]
    return hits[-1] if hits else None


def tree_next_to_output(config: Config) -> bool:
    """Whether an incremental `directory` build keeps the image's tree next to the output instead of
    in the workspace.

    tmpfs pays off while package managers install into the tree (see mkosi.workspace).
    When the stage cache already holds the tree with its packages installed, nothing but small
    changes (the build's output, mkosi.postinst, configuration) happen to it any more. Restored
    next to the output, it is then published by a rename instead of a copy of thousands of files,
    and it is restored there while the build image is restored into tmpfs, side by side.
    """
    if not (config.incremental and config.format is OutputFormat.directory):
        return False
    if config.workspace is not WorkspaceMode.auto or choose_base(config.workspace, config.output.parent) != TMPFS_DIR:
        return False
    return restored_until(config) is not None


async def check_before_work(config: Config) -> list[Path]:
    """Everything that can be refused before anything is written; returns the earlier outputs this
    build will replace."""
    log = structlog.get_logger("mkosi")
    if check := CHECKS.get(config.format):
        await check(config, log)
    await recover_from_killed_builds(config, log)
    earlier = earlier_outputs(config)
    if ownership.exists(config.output) and not config.force:
        raise MkosiError(f"{config.output} already exists, use -f to replace it")
    return earlier


@contextlib.asynccontextmanager
async def replacing(config: Config, earlier: list[Path]) -> AsyncIterator[dict[Path, Path]]:
    """Earlier outputs moved aside by -f, by their published path; settled when the build ends. The
    build may remove them itself once its outputs are published (and empty the dict)."""
    aside = set_aside_outputs(earlier)
    try:
        yield aside
    finally:
        await remove_trees(settle_set_aside(config.output, aside))


@contextlib.asynccontextmanager
async def build_context(config: Config, log: Any, monitor: Monitor | None) -> AsyncIterator[Context]:
    """The build's workspaces (and a second one next to the output for a tree restored there); what
    a failed build staged is removed with them."""
    async with contextlib.AsyncExitStack() as workspaces:
        path = await workspaces.enter_async_context(workspace(config, log))
        tree = None
        if tree_next_to_output(config):
            tree = await workspaces.enter_async_context(workspace(config, log, config.output.parent))
        context = Context(config=config, workspace=path, log=log, tree_workspace=tree, monitor=monitor)
        try:
            yield context
        finally:
            with anyio.CancelScope(shield=True):
                for staged in context.staged.values():
                    await remove_tree(staged)


@dataclasses.dataclass(frozen=True)
class Built:
    """What a build did, stage by stage, and what it installed."""

    stages: list[StageRecord]
    installed: Installed


async def build(config: Config, cache: StageCache | None = None, monitor: Monitor | None = None) -> Built:
    """Build and publish one image; returns what each stage did. `monitor` hears of every event."""
    checkpoints = incremental_checkpoints(config) if config.incremental else set()
    # A cache given (a matrix's) brings its own remote side; -i opens this configuration's.
    registry = config.remote_cache if cache is None and config.incremental else None
    async with remote_cache(registry, config.remote_cache_insecure, structlog.get_logger("mkosi")) as remote:
        if cache is None and config.incremental:
            cache = SnapshotCache(stage_cache_dir(config), keep=checkpoints.__contains__, remote=remote)
        with claimed(written_paths(config)):
            return await _build(config, cache, monitor, checkpoints)


def search_path_environment(config: Config) -> dict[str, str]:
    """ExtraSearchPaths=: host tools found there before $PATH."""
    if not config.extra_search_paths:
        return {}
    return {"PATH": ":".join([*map(str, config.extra_search_paths), os.environ.get("PATH", os.defpath)])}


@contextlib.contextmanager
def subprocesses_of(config: Config) -> Iterator[SubprocessClock]:
    """What every subprocess of this build shares: its clock and its environment. Reset when the
    build ends: later subprocesses of the same task are not this build's."""
    clock = SubprocessClock()
    clock_token = subprocess_clock.set(clock)
    environment = {**reproducible_environment(config), **search_path_environment(config)}
    environment_token = build_environment.set(tuple(environment.items()))
    try:
        yield clock
    finally:
        subprocess_clock.reset(clock_token)
        build_environment.reset(environment_token)


async def _build(config: Config, cache: StageCache | None, monitor: Monitor | None, checkpoints: set[str]) -> Built:
    earlier = await check_before_work(config)
    started = time.monotonic()
    with subprocesses_of(config) as clock:
        async with binfmt.emulation(config.architecture, structlog.get_logger("mkosi")):
            return await _publish_build(config, cache, monitor, checkpoints, earlier, clock, started)


async def _publish_build(
    config: Config,
    cache: StageCache | None,
    monitor: Monitor | None,
    checkpoints: set[str],
    earlier: list[Path],
    clock: SubprocessClock,
    started: float,
) -> Built:
    async with replacing(config, earlier) as aside:
        with build_log(config.output.name, naming.log_path(config.output)) as log:
            if not ownership.mark(naming.log_path(config.output), config.output.name):
                log.warning(f"{config.output.parent} keeps no extended attributes: -f will refuse this log later")
            async with build_context(config, log, monitor) as context:
                context.emit(BuildStarted(str(config.output)))
                try:
                    await run_stages(context, STAGES, cache)
                    publish(context)
                except Exception as error:
                    if out_of_space(error):
                        # Measured now: the workspace is about to go.
                        places = [("the workspace", context.workspace), ("the output", config.output.parent)]
                        raise out_of_space_error(places, context.root, error) from error
                    raise
                installed = read_records(context.workspace)
                if config.incremental:
                    await prune(stage_cache_dir(config), str(config.output), checkpoints, log)
                # Emptying the workspace and removing the old outputs both take a while (thousands of
                # files each): side by side, they take half as long.
                items = [home / name for name, home in context.items().items()]
                await remove_trees([*items, *aside.values()])
                aside.clear()
                elapsed = time.monotonic() - started
                finished = BuildFinished(str(config.output), round(elapsed, 1), round(elapsed - clock.busy, 2))
                context.emit(finished)
    return Built(context.stages, installed)
