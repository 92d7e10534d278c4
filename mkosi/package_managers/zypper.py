"""zypper: an install root filled from rpm-md repositories, the openSUSE way.

zypper keeps its caches inside the root it works on (`--root`), which is where openSUSE has them
too. What would otherwise come from the host is named explicitly: zypper's own configuration
(--config, else the host's /etc/zypp/zypper.conf), libzypp's (ZYPP_CONF), the log (ZYPP_LOGFILE,
else the host's /var/log/zypper.log), temporary files (ZYPPTMPDIR, else /var/tmp), the repository
definitions and the rpm database path.

The same code installs into the image (the bootstrap) and into the build image (BuildPackages=).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from mkosi import package_cache
from mkosi.context import Context
from mkosi.package_managers import (
    CURL_FAULTS,
    RETRIES,
    DownloadFailed,
    Fault,
    FaultWords,
    contained,
    download_failed,
    raise_missing,
    raise_untrusted,
)
from mkosi.package_managers.rpm import (
    Repository,
    Seeded,
    foreign_architecture,
    link_in,
    link_out,
    raise_no_index,
    repositories_named,
    rpm_environment,
)
from mkosi.run import CommandError, run
from mkosi.workspace import remove_tree

MISSING = (r"No provider of '([^']+)' found", r"Package '([^']+)' not found")
NO_INDEX = (r"^\[(?P<repository>[^|\]]+)\|(?P<url>[^\]]+)\] Valid metadata not found at specified URL",)
UNTRUSTED = (r"Signature verification failed", r"is unsigned", r"NOKEY", r"Bad GPG signature")
# zypper's words for a file that did not come: a line naming it (its URL, or for a damaged package
# its file name), and the reason, on that line or on an "Error message:" line after it.
NAMED = (
    r"^(Timeout exceeded) when accessing '([^']+)'",
    r"^(Download \(curl\) error) for '([^']+)'",
    r"^Warning: (Digest verification failed) for file '([^']+)'",
)
ERROR_MESSAGE = r"^Error message: (.+?)\s*$"
FETCH_FAILURES = (
    FaultWords(r"Timeout exceeded", Fault.stalled),
    *CURL_FAULTS,
    FaultWords(r"Digest verification failed", Fault.changed),
)
# After a timeout, zypper --non-interactive waits 30 seconds and tries again, three times (both fixed
# in zypper: no setting changes them). mkosi ends it at that line and tries again itself, at once.
WAITS = r"^Retrying in \d+ seconds"
# zypper's cache inside the root; the downloaded packages are moved to the shared pool instead.
CACHE = "var/cache/zypp"


def zypp_conf(context: Context) -> str:
    lines = [
        "[main]",
        "solver.onlyRequires = true",
        # libzypp gives up on a transfer that received nothing for this long, and on a connection
        # not made in that time; zypper would then wait (WAITS).
        f"download.transfer_timeout = {context.config.mirror_timeout}",
        f"download.connect_timeout = {context.config.mirror_timeout}",
    ]
    if not context.config.with_docs:
        lines.append("rpm.install.excludedocs = yes")
    if foreign := foreign_architecture(context.config):
        # The repository URLs already name the ports for it.
        lines.append(f"arch = {foreign}")
    return "\n".join(lines) + "\n"


def base_command(context: Context, root: Path, repos_dir: Path) -> list[str]:
    argv = [
        "zypper",
        f"--config={repos_dir.parent / 'zypper.conf'}",
        f"--root={root}",
        f"--reposd-dir={repos_dir}",
        "--non-interactive",
    ]
    config = context.config
    if not config.repository_key_check:
        argv.append("--no-gpg-checks")
    elif not config.repository_keys:
        # Without RepositoryKey=, zypper cannot be told which keys to trust without asking: the
        # repository's signing key (the gpgkey= of its definition, else the key the repository
        # publishes) is trusted when first seen. Signatures are still checked.
        argv.append("--gpg-auto-import-keys")
    # With RepositoryKey=, those keys are imported into the root's rpm database first, which is
    # where libzypp takes its trusted keys from, and no other key is accepted.
    return argv


ARMOR = b"-----BEGIN PGP PUBLIC KEY BLOCK-----"


async def import_keys(context: Context, root: Path, keys: Sequence[Path], env: dict[str, str]) -> None:
    """Import `keys` into the root's rpm database (where `env`'s rpm macros put it).

    rpm only reads armored keys; a binary keyring is armored first by gpg, in a home of its own.
    """
    workspace = context.workspace / "zypper" / "keys"
    workspace.mkdir(parents=True, exist_ok=True)
    for number, key in enumerate(keys):
        armored = key
        if not key.read_bytes().lstrip().startswith(ARMOR):
            gnupg = workspace / f"gnupg-{number}"
            gnupg.mkdir(mode=0o700)
            gpg = ["gpg", f"--homedir={gnupg}", "--batch", "--quiet"]
            await run(contained([*gpg, "--import", key]), log=context.log)
            exported = await run(contained([*gpg, "--armor", "--export"]), capture_stdout=True, log=context.log)
            armored = workspace / f"{number}.asc"
            armored.write_text(exported.stdout)
        await run(["rpm", f"--root={root}", "--import", armored], env=env, log=context.log)


def commands(context: Context, root: Path, repos_dir: Path, packages: Sequence[str]) -> list[list[str]]:
    """Refresh first: an unreachable or badly signed repository is an error, not a skipped one."""
    base = base_command(context, root, repos_dir)
    # Every package is downloaded before any is installed: a download that fails, or that mkosi
    # ends, leaves the root as it was.
    return [[*base, "refresh"], [*base, "install", "--no-recommends", "--download-in-advance", *packages]]


def download_failure(error: CommandError, timeout: int) -> DownloadFailed | None:
    """What zypper says it could not download, as one error naming the first file and what went
    wrong; None if zypper failed at something else."""
    failed: dict[str, str] = {}
    url = None
    for line in error.tail:
        if named := next((m for pattern in NAMED if (m := re.match(pattern, line))), None):
            url = named[2]
            failed.setdefault(url, named[1])
        elif url is not None and (message := re.match(ERROR_MESSAGE, line)):
            failed[url] = message[1]
    if not failed:
        return None
    url, reason = next(iter(failed.items()))
    return download_failed(url, reason, FETCH_FAILURES, tool="zypper", timeout=timeout, others=len(failed) - 1)


async def run_trying_again(context: Context, root: Path, argv: list[str], env: dict[str, str], where: str) -> None:
    """Run zypper; after a download that failed for the network, RETRIES times more (zypper itself
    would wait, or not try again at all after a reset)."""
    for attempt in range(1, 2 + RETRIES):
        try:
            await run(contained(argv), env=env, log=context.log, give_up=WAITS)
            return
        except CommandError as error:
            raise_untrusted(error, UNTRUSTED, where)
            failure = download_failure(error, context.config.mirror_timeout)
            if failure is None:
                raise_no_index(error, context.config, NO_INDEX)
                raise_missing(error, MISSING, where)
                raise
            if not failure.network or attempt > RETRIES:
                raise failure.tried(attempt) from error
            context.log.info(f"{failure}; trying again")
            # Left by the zypper mkosi ended, whose PID namespace is gone with it.
            (root / "run/zypp.pid").unlink(missing_ok=True)


def write_repositories(directory: Path, repositories: Sequence[Repository], *, key_check: bool, keep: bool) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for repository in repositories:
        (directory / f"{repository.id}.repo").write_text(repository.section(key_check=key_check, keep_packages=keep))


async def install(context: Context, root: Path, repositories: Sequence[Repository], packages: Sequence[str]) -> None:
    """Install `packages` into `root`, the image's tree or the build image's."""
    config = context.config
    workspace = context.workspace / "zypper"
    workspace.mkdir(parents=True, exist_ok=True)
    # For the build, the definitions also keep downloaded packages, so they can reach the shared pool;
    # the image gets the same repositories without that.
    repos_dir = workspace / "repos.d"
    write_repositories(repos_dir, repositories, key_check=config.repository_key_check, keep=True)
    write_repositories(root / "etc/zypp/repos.d", repositories, key_check=config.repository_key_check, keep=False)
    (workspace / "zypp.conf").write_text(zypp_conf(context))
    (workspace / "zypper.conf").write_text("")
    env = {
        **rpm_environment(context.workspace),
        "ZYPP_CONF": str(workspace / "zypp.conf"),
        "ZYPP_LOGFILE": str(workspace / "zypper.log"),
        # libzypp's temporary keyrings, else in the host's /var/tmp.
        "ZYPPTMPDIR": str(workspace / "tmp"),
    }
    (workspace / "tmp").mkdir(exist_ok=True)
    cache = root / CACHE / "packages"
    pool = None
    seeded: Seeded = {}
    if config.cache_path is not None:
        pool = package_cache.pool_for(config.cache_path, config.distribution, config.release, config.architecture)
        seeded = await link_in(pool, cache, packages="")
    if config.repository_key_check and config.repository_keys:
        await import_keys(context, root, config.repository_keys, env)
    refresh, install_packages = commands(context, root, repos_dir, packages)
    where = repositories_named(config)
    for argv in (refresh, install_packages):
        await run_trying_again(context, root, argv, env, where)
    if pool is not None:
        await link_out(context, cache, pool, seeded, "zypper", packages="")
    await remove_tree(root / CACHE)
    (root / "run/zypp.pid").unlink(missing_ok=True)
