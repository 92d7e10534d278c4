"""Building one image: the stages, top to bottom, and the publication of their outputs."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import structlog

from mkosi import boot, buildscript, package_cache
from mkosi.boot import kernel_command_line
from mkosi.concurrency import exclusive, side_tasks
from mkosi.config import Config, OutputFormat, WorkspaceMode
from mkosi.context import Context, StageRecord
from mkosi.disk import luks
from mkosi.disk.layout import checked_filesystems, plan
from mkosi.distributions import DISTRIBUTIONS, Distribution, arch, debian, fedora, opensuse, ubuntu
from mkosi.errors import MkosiError, NotImplementedYet
from mkosi.log import build_log
from mkosi.outputs import CHECKS, WRITERS, disk, sidecars
from mkosi.package_managers import apt
from mkosi.pipeline import Stage, StageCache, hash_tree, run_stages, stage_keys
from mkosi.run import SubprocessClock, subprocess_clock
from mkosi.stage_cache import SnapshotCache, cached_keys, prune
from mkosi.tree import clean_tree, configure_system, install_extra_trees
from mkosi.workspace import TMPFS_DIR, choose_base, remove_tree, remove_trees, workspace

INSTALLERS: dict[Distribution, Callable[[Context], Awaitable[None]]] = {
    Distribution.debian: debian.install,
    Distribution.ubuntu: ubuntu.install,
    Distribution.fedora: fedora.install,
    Distribution.arch: arch.install,
    Distribution.opensuse: opensuse.install,
}


# Installing into an existing tree, as the build image's BuildPackages= need.
PACKAGE_INSTALLERS: dict[Distribution, buildscript.PackageInstaller] = {
    Distribution.debian: apt.install,
    Distribution.ubuntu: apt.install,
    Distribution.fedora: fedora.install_packages,
    Distribution.opensuse: opensuse.install_packages,
    Distribution.arch: arch.install_packages,
}


async def make_build_image(context: Context) -> None:
    await buildscript.make_build_image(context, PACKAGE_INSTALLERS.get(context.config.distribution))


async def install_distribution(context: Context) -> None:
    config = context.config
    if config.cache_path is None:
        await INSTALLERS[config.distribution](context)
        return
    # Concurrent bootstraps of one release would download the same packages twice and race to add
    # them to the pool: one at a time per pool, whichever process runs them.
    pool = package_cache.pool_for(config.cache_path, config.distribution, config.release, config.architecture)
    pool.mkdir(parents=True, exist_ok=True)
    async with exclusive(pool / ".bootstrap.lock"):
        await INSTALLERS[config.distribution](context)


async def write_output(context: Context) -> None:
    await WRITERS[context.config.format](context)


def _paths(path: Path | None) -> list[Path]:
    return [] if path is None else [path]


def _secret_digest(secret: str | None) -> str | None:
    return None if secret is None else hashlib.sha256(secret.encode()).hexdigest()


def _secure_boot_keys(c: Config) -> str | None:
    paths = [c.secure_boot_key, c.secure_boot_certificate]
    return hash_tree(p for p in paths if p is not None) if c.secure_boot else None


# Bumped whenever an installer changes what it puts into the tree, so that trees an older mkosi
# left in a stage cache are not taken for this one's. 2: Debian and Ubuntu without mmdebstrap.
# 3: their kernel installed after everything else, its initrd built once.
INSTALLER_REVISION = 3

STAGES: list[Stage] = [
    Stage(
        "bootstrap",
        install_distribution,
        inputs=lambda c: {
            "installer_revision": INSTALLER_REVISION,
            "distribution": c.distribution,
            "release": c.release,
            "mirror": c.mirror,
            "repositories": c.repositories,
            "repository_key_check": c.repository_key_check,
            "repository_keys": hash_tree(c.repository_keys),
            "architecture": c.architecture,
            "packages": c.packages,
            "with_docs": c.with_docs,
            # The initrd is built while the kernel installs, with this configuration.
            "initrd": boot.dracut_config(c) if c.bootable else None,
            # A bootable image gets the fsck of the file systems it mounts: they depend on the format.
            "filesystem_tools": checked_filesystems(c) if c.bootable else (),
        },
        checkpoint=True,
    ),
    Stage(
        "build-image",
        make_build_image,
        inputs=lambda c: {"build_packages": c.build_packages, "postinst": hash_tree(_paths(c.postinst_script))},
        enabled=lambda c: c.build_script is not None,
        checkpoint=True,
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
        },
        enabled=lambda c: c.build_script is not None,
        # No copy of its own for -i: the stages up to the next copy are quick, so a rebuild after a
        # source change, the common case, does not pay for one copy it will never use.
    ),
    Stage(
        "extra-trees",
        install_extra_trees,
        inputs=lambda c: {"trees": hash_tree(c.extra_trees)},
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
        inputs=lambda c: {"script": hash_tree(_paths(c.postinst_script)), "with_network": c.with_network},
        enabled=lambda c: c.postinst_script is not None,
    ),
    Stage(
        "configure",
        configure_system,
        inputs=lambda c: {"hostname": c.hostname, "password": _secret_digest(c.password)},
    ),
    Stage("clean", clean_tree, inputs=lambda c: {"with_docs": c.with_docs}),
    Stage(
        "filesystems",
        disk.make_filesystems,
        inputs=lambda c: {
            "partitions": [dataclasses.asdict(p) for p in plan(c)],
            "seed": c.seed,
            "encrypt": c.encrypt,
            "passphrase": _secret_digest(luks.read_passphrase(c).decode(errors="replace")) if c.encrypt else None,
            "key_derivation": [c.key_derivation, c.key_derivation_time],
        },
        enabled=lambda c: c.format.is_raw,
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
        },
        enabled=lambda c: c.bootable,
        cacheable=False,
    ),
    Stage(
        "output",
        write_output,
        inputs=lambda c: {"format": c.format, "compress": c.compress, "seed": c.seed},
        cacheable=False,
    ),
    Stage(
        "release-files",
        sidecars.write,
        inputs=lambda c: {"nspawn": c.nspawn_settings, "checksum": c.checksum, "sign": c.sign, "key": c.key},
        enabled=lambda c: c.checksum or c.nspawn_settings is not None,
        cacheable=False,
    ),
]


def check_supported(config: Config) -> None:
    info = DISTRIBUTIONS[config.distribution]
    if not info.implemented:
        raise NotImplementedYet(f"Distribution={config.distribution}: not implemented yet")
    if config.bootable and not info.bootable:
        raise NotImplementedYet(f"Bootable= for {config.distribution}: not implemented yet")


def output_paths(config: Config) -> list[Path]:
    """Everything a build of this configuration publishes."""
    return [config.output, log_path(config), *sidecars.release_files(config)]


def log_path(config: Config) -> Path:
    return config.output.with_name(config.output.name + ".log")


def set_aside_outputs(config: Config) -> list[Path]:
    """Move the outputs of an earlier build out of the way, under names remove_outputs() knows.

    Renaming is instant; removing a tree of thousands of files is not, and on ext4 it slows down
    creating files for a while after it returned (a directory output copied right after removing
    the previous one took 2-6 s instead of 0.5 s here, and as long when both ran side by side).
    So -f removes them only once the new tree has been created (see build()).
    """
    moved = []
    for path in output_paths(config):
        if path.exists() or path.is_symlink():
            aside = path.with_name(f".mkosi-old.{path.name}")
            if aside.exists() or aside.is_symlink():
                raise MkosiError(f"{aside} is in the way: remove it, or run mkosi clean")
            os.rename(path, aside)
            moved.append(aside)
    return moved


async def remove_outputs(config: Config) -> None:
    for path in output_paths(config):
        await remove_tree(path)
    await remove_outputs_of_killed_builds(config)


async def remove_outputs_of_killed_builds(config: Config) -> None:
    """Leftovers of builds that were killed too hard to clean up after themselves."""
    for path in output_paths(config):
        for leftover in path.parent.glob(f".mkosi-*.{path.name}*"):
            await remove_tree(leftover)


def stage_cache_dir(config: Config) -> Path:
    """Where -i keeps the stage snapshots of this project: next to its package cache."""
    if config.cache_path is None:
        raise MkosiError("Incremental= needs a cache directory: set Cache= or create mkosi.cache/")
    return config.cache_path / "stages"


async def remove_caches(config: Config) -> None:
    if config.build_dir is not None and config.build_dir.is_dir():
        # Emptied, not removed: the directory is what turns persistent build directories on.
        for child in list(config.build_dir.iterdir()):
            await remove_tree(child)
    if config.cache_path is not None:
        await remove_tree(stage_cache_dir(config))
        pool = package_cache.pool_for(config.cache_path, config.distribution, config.release, config.architecture)
        await remove_tree(pool)


def publish(context: Context) -> None:
    for final, staged in context.staged.items():
        os.rename(staged, final)
    context.staged.clear()


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


def tree_next_to_output(config: Config) -> str | None:
    """Whether an incremental `directory` build keeps the image's tree next to the output: the
    stage whose cached result puts it there when restored, or None when it stays in the workspace.

    tmpfs pays off while package managers install into the tree (see mkosi.workspace).
    When the stage cache already holds the tree with its packages installed, nothing but small
    changes (the build's output, mkosi.postinst, configuration) happen to it any more. Restored
    next to the output, it is then published by a rename instead of a copy of thousands of files,
    and it is restored there while the build image is restored into tmpfs, side by side.
    """
    if not (config.incremental and config.format is OutputFormat.directory):
        return None
    if config.workspace is not WorkspaceMode.auto or choose_base(config.workspace, config.output.parent) != TMPFS_DIR:
        return None
    return restored_until(config)


async def build(
    config: Config, cache: StageCache | None = None, observe: Callable[[Stage], None] | None = None
) -> list[StageRecord]:
    """Build and publish one image; returns what each stage did."""
    check_supported(config)
    checkpoints = incremental_checkpoints(config) if config.incremental else set()
    # Removing a tree slows down creating files on the same file system for a while (see
    # set_aside_outputs), so old outputs go once this build has created its tree: when the tree
    # is restored next to the output, right after that stage, beside the remaining ones; else at the end.
    remove_old_after = None
    if cache is None and config.incremental:
        cache = SnapshotCache(stage_cache_dir(config), STAGES, keep=checkpoints.__contains__)
        remove_old_after = tree_next_to_output(config)
    if check := CHECKS.get(config.format):
        await check(config, structlog.get_logger("mkosi"))
    if config.output.exists() or config.output.is_symlink():
        if not config.force:
            raise MkosiError(f"{config.output} already exists, use -f to replace it")
        await remove_outputs_of_killed_builds(config)
        old_outputs = set_aside_outputs(config)
    else:
        old_outputs = []

    clock = SubprocessClock()
    subprocess_clock.set(clock)
    started = time.monotonic()
    with build_log(config.output.name, log_path(config)) as log:
        try:
            async with contextlib.AsyncExitStack() as workspaces, side_tasks() as side:
                path = await workspaces.enter_async_context(workspace(config, log))
                tree = None
                if remove_old_after is not None:
                    tree = await workspaces.enter_async_context(workspace(config, log, config.output.parent))
                context = Context(config=config, workspace=path, log=log, tree_workspace=tree)

                def observed(stage: Stage) -> None:
                    if observe is not None:
                        observe(stage)
                    if old_outputs and context.stages and context.stages[-1].name == remove_old_after:
                        side.start_soon(remove_trees, old_outputs.copy())
                        old_outputs.clear()

                try:
                    await run_stages(context, STAGES, cache, observed)
                    publish(context)
                    if config.incremental:
                        await prune(stage_cache_dir(config), str(config.output), checkpoints, log)
                    # Emptying the workspace and removing the old outputs both take a while
                    # (thousands of files each): side by side, they take half as long.
                    await remove_trees([*(home / name for name, home in context.items().items()), *old_outputs])
                    old_outputs.clear()
                finally:
                    with anyio.CancelScope(shield=True):
                        for staged in context.staged.values():
                            await remove_tree(staged)
        finally:
            await remove_trees(old_outputs)
        elapsed = time.monotonic() - started
        log.info(
            "built",
            output=str(config.output),
            seconds=round(elapsed, 1),
            outside_subprocesses=round(elapsed - clock.busy, 2),
        )
    return context.stages
