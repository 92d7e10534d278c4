"""Two-phase builds: the project's `mkosi.build` runs in a build image, its output goes into the final one.

The build image starts as a copy of the bootstrapped tree (the distribution is installed once for
both images), gets the build packages, a copy of the sources and the script, and runs it isolated
in systemd-nspawn. Whatever the script installed into $DESTDIR is kept; the build image is thrown
away, so compilers and sources never reach the final image.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from mkosi import intree, naming, ownership
from mkosi.config import Config, GitFiles
from mkosi.context import Context
from mkosi.errors import MkosiError
from mkosi.nspawn import NSPAWN_BUILD, NSPAWN_ENV
from mkosi.pipeline import hash_tree
from mkosi.run import CommandError, run
from mkosi.tree import install_tree

BUILD_ROOT = "build-root"
BUILD_OUTPUT = "build-output"
# Where things live inside the build image.
SRCDIR = "/root/src"
DESTDIR = "/root/dest"
BUILDDIR = "/root/build"
SCRIPT = "/root/mkosi.build"


class ScriptError(MkosiError):
    """A project script failed; mkosi exits with the script's own status."""

    def __init__(self, script: Path, error: CommandError) -> None:
        self.exit_status = error.returncode
        tail = "".join(f"\n    {line}" for line in error.tail)
        super().__init__(f"{script.name} failed with exit status {error.returncode}, last output:{tail}")


def _flag(value: bool) -> str:
    return "1" if value else "0"


def nspawn_command(
    config: Config, root: Path, command: Sequence[str], *, env: dict[str, str], binds: dict[Path, str] | None = None
) -> list[str]:
    """systemd-nspawn running `command` in `root`, with networking only if WithNetwork= says so, and
    each host directory of `binds` mounted at its path inside."""
    return [
        *NSPAWN_BUILD,
        f"--directory={root}",
        f"--machine=mkosi-{os.getpid()}",
        *([] if config.with_network else ["--private-network"]),
        # nspawn keeps both by default, and root in the same user namespace as the host's with them
        # reaches outside: CAP_SYS_ADMIN mounts a fresh /proc whose /proc/sys is writable (the host's
        # kernel.core_pattern runs a program of the script's choice on the host), CAP_MKNOD makes
        # nodes of the host's loop devices and terminals that no device policy guards here.
        "--drop-capability=CAP_SYS_ADMIN,CAP_MKNOD",
        *(f"--bind={host}:{inside}" for host, inside in (binds or {}).items()),
        *(f"--setenv={key}={value}" for key, value in env.items()),
        # Scripts that honour the reproducible-builds convention stamp their outputs with it.
        *([f"--setenv=SOURCE_DATE_EPOCH={config.source_date_epoch}"] if config.source_date_epoch is not None else []),
        *command,
    ]


async def run_script(
    context: Context,
    root: Path,
    script: Path,
    args: Sequence[str],
    *,
    env: dict[str, str],
    binds: dict[Path, str] | None = None,
) -> None:
    """Copy `script` into the tree and run it there; the tree keeps no trace of it."""
    env = {**script_environment(context.config), **env}
    inside = f"/root/{script.name}"
    # Through intree: the tree's /root may be a link an earlier script or mkosi.extra made.
    intree.make_directories(root, "/root")
    intree.write_bytes(root, inside, script.read_bytes(), mode=0o755)
    command = nspawn_command(context.config, root, [inside, *args], env=env, binds=binds)
    try:
        await run(command, env=NSPAWN_ENV, log=context.log)
    except CommandError as error:
        raise ScriptError(script, error) from None
    finally:
        intree.remove(root, inside)


def script_environment(config: Config) -> dict[str, str]:
    """Environment= for every project script."""
    return dict(word.split("=", 1) for word in config.environment)


def _excluded(config: Config) -> set[str]:
    """What never counts as a source: mkosi's own outputs, caches and scratch space."""
    names = {".git", config.output.name, naming.log_path(config.output).name, "mkosi.cache", "mkosi.builddir"}
    if config.build_dir is not None and config.build_dir.parent == config.build_sources:
        names.add(config.build_dir.name)
    return names | {naming.staged_path(config.output).name}


def sources_digest(config: Config) -> str:
    """What determines the build script's input: every file under BuildSources=, mkosi's own excepted.

    Deliberately coarser than what gets copied (git decides that, at build time): a change to an
    ignored file can cause a needless rebuild, but a build is never stale.
    """
    excluded = _excluded(config)
    top = config.build_sources
    paths = sorted(p for p in top.iterdir() if p.name not in excluded and not p.name.startswith(".mkosi-"))
    return hash_tree(paths)


async def source_files(context: Context) -> list[Path] | None:
    """The files git tracks (and, with GitFiles=others, untracked files it does not ignore)."""
    config = context.config
    if not config.use_git_files:
        return None
    sources = str(config.build_sources)
    # Reading the file list of a checkout owned by another user (mkosi runs as root) is safe.
    command = ["git", "-c", f"safe.directory={sources}", "-C", sources, "ls-files", "-z", "--cached"]
    if config.git_files is GitFiles.others:
        command += ["--others", "--exclude-standard"]
    result = await run(command, capture_stdout=True, log=context.log)
    return [Path(name) for name in result.stdout.split("\0") if name]


async def copy_sources(context: Context, destination: Path) -> None:
    config = context.config
    files = await source_files(context)
    if files is None:
        excluded = _excluded(config)
        shutil.copytree(
            config.build_sources,
            destination,
            symlinks=True,
            ignore=lambda _, names: [n for n in names if n in excluded or n.startswith(".mkosi-")],
        )
        return
    destination.mkdir(parents=True)
    for name in files:
        source = config.build_sources / name
        if not (source.exists() or source.is_symlink()):
            continue  # deleted in the work tree but not yet in git's index
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target, follow_symlinks=False)


async def make_build_image(context: Context) -> None:
    """A copy of the bootstrapped tree with the build packages, and mkosi.postinst run as "build"."""
    config = context.config
    root = context.workspace / BUILD_ROOT
    await run(["cp", "-a", "--reflink=auto", "--no-target-directory", context.root, root], log=context.log)
    if config.build_packages:
        await config.distribution.installer().install_packages(context, root, config.build_packages)
    if config.prepare_script is not None:
        await run_script(context, root, config.prepare_script, ["build"], env={})
    if config.postinst_script is not None:
        await run_script(context, root, config.postinst_script, ["build"], env={})


async def build(context: Context) -> None:
    """Run the build script in the build image and keep what it installed into $DESTDIR."""
    config = context.config
    assert config.build_script is not None
    root = context.workspace / BUILD_ROOT
    # mkosi.postinst ran in the build image before: its links are followed inside the image.
    sources = intree.resolve(root, SRCDIR)
    if ownership.exists(sources):
        raise MkosiError(f"{SRCDIR} already exists in the build image (made by mkosi.postinst?): the sources go there")
    intree.make_directories(root, str(PurePosixPath(SRCDIR).parent))
    await copy_sources(context, sources)
    for directory in (DESTDIR, BUILDDIR):
        intree.make_directories(root, directory)
    env = {
        "SRCDIR": SRCDIR,
        "DESTDIR": DESTDIR,
        "BUILDDIR": BUILDDIR,
        "WITH_DOCS": _flag(config.with_docs),
        "WITH_TESTS": _flag(config.with_tests),
        "WITH_NETWORK": _flag(config.with_network),
    }
    # A persistent build directory is deliberately not an input of the stage: it holds the build
    # system's intermediate files, which it is the project's build system's job to keep consistent
    # (as make does by timestamps). That is what makes incremental compiles possible.
    binds: dict[Path, str] = {}
    if config.build_dir is not None:
        ownership.claim_directory(config.build_dir, ownership.BUILD_DIRECTORY)
        binds[config.build_dir] = BUILDDIR
    await run_script(context, root, config.build_script, [], env=env, binds=binds)
    os.rename(installed_files(root, config.build_script), context.workspace / BUILD_OUTPUT)
    # The build image has served its purpose; nothing of it may reach the final image.
    await run(["rm", "-rf", "--one-file-system", "--", root], log=context.log)


def installed_files(root: Path, script: Path) -> Path:
    """$DESTDIR as the build script left it: a directory of the build image, never a link (whose
    target, outside the build image, mkosi would otherwise move or copy into the image)."""
    destination = intree.resolve(root, DESTDIR, follow_last=False)
    if not destination.is_dir() or destination.is_symlink():
        raise MkosiError(f"{script.name} replaced $DESTDIR ({DESTDIR}) with something that is not a directory")
    return destination


async def install_build_output(context: Context) -> None:
    """What the build script installed, copied into the image as extra trees are."""
    output = context.workspace / BUILD_OUTPUT
    await install_tree(context, output)
    await run(["rm", "-rf", "--one-file-system", "--", output], log=context.log)


async def prepare(context: Context) -> None:
    """mkosi.prepare in the final image once its packages are installed, told so by its argument."""
    assert context.config.prepare_script is not None
    await run_script(context, context.root, context.config.prepare_script, ["final"], env={})


async def finalize(context: Context) -> None:
    """mkosi.finalize on the host, as mkosi v5-v14 ran it: $BUILDROOT is the image's tree."""
    config = context.config
    assert config.finalize_script is not None
    env = {**script_environment(config), "BUILDROOT": str(context.root), "OUTPUTDIR": str(config.output.parent)}
    try:
        await run([str(config.finalize_script), "final"], env=env, log=context.log)
    except CommandError as error:
        raise ScriptError(config.finalize_script, error) from None


async def postinst(context: Context) -> None:
    """mkosi.postinst in the final image, told so by its argument."""
    assert context.config.postinst_script is not None
    await run_script(context, context.root, context.config.postinst_script, ["final"], env={})
