#!/usr/bin/env python3
"""mkosi 24.3, the peer to beat, run from a throwaway Debian tree and never installed on the host.

The tree is bookworm with bookworm-backports preferred (mkosi 24.3, systemd 254 with repart
`--offline`, systemd-boot, ukify, bubblewrap), made once with mmdebstrap under
/var/cache/mkosi-bench and reused. Each run enters it through `unshare --mount --pid --fork
--kill-child`: the bind mounts (/dev, /proc, /sys, a tmpfs /run, the run's scratch directory) live in
a private mount namespace whose processes all die with the unshare process, so no mount survives a
run, a failure, Ctrl-C or a killed benchmark.

    .venv/bin/python -m benchmarks.peer_mkosi24 setup            # make the tree (about a minute)
    .venv/bin/python -m benchmarks.peer_mkosi24 run DIR -- ARGS   # mkosi ARGS in project DIR

Run from the repository root. A run, like every timed build, starts from dropped caches and an
idle disk (benchmarks/harness.py).
"""

from __future__ import annotations

import argparse
import ctypes
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from benchmarks import harness
from mkosi.distributions.debian import sources

TREE = Path("/var/cache/mkosi-bench/mkosi24-tree")
# Written last: a tree without it is a half-made one from an interrupted setup.
COMPLETE = ".mkosi-bench-complete"
# Where the run's scratch directory appears inside the tree.
INSIDE = "/work/bench"
TOOLS = (
    "mkosi", "systemd", "systemd-container", "systemd-boot", "systemd-boot-efi", "python3-pefile",
    "bubblewrap", "debian-archive-keyring", "dosfstools", "mtools", "e2fsprogs", "cpio", "zstd",
    "xz-utils", "binutils", "kmod", "fdisk", "util-linux", "openssl", "ca-certificates", "man-db",
    "uidmap", "squashfs-tools", "python3",
)  # fmt: skip
BACKPORTS_FIRST = "Package: *\nPin: release n=bookworm-backports\nPin-Priority: 990\n"
MIRROR = "http://deb.debian.org/debian"

# $1 tree, $2 scratch directory (host path), $3 working directory inside the tree, then mkosi's
# arguments. Runs as PID 1 of a fresh PID namespace in a private mount namespace.
ENTER = r"""
set -e
tree=$1 scratch=$2 cwd=$3
shift 3
mount --bind "$tree" "$tree"
mount --rbind /dev "$tree/dev"
mount -t proc proc "$tree/proc"
mount --rbind /sys "$tree/sys"
mount -t tmpfs tmpfs "$tree/run"
mount --bind "$scratch" "$tree/work/bench"
cd /
exec chroot "$tree" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 TERM=dumb \
    /bin/sh -c 'cd "$0" && exec mkosi "$@"' "$cwd" "$@"
"""


def version() -> str:
    status = (TREE / "var/lib/dpkg/status").read_text()
    for stanza in status.split("\n\n"):
        if stanza.startswith("Package: mkosi\n"):
            return next(line.split(": ", 1)[1] for line in stanza.splitlines() if line.startswith("Version: "))
    return "unknown"


def ensure_tree() -> Path:
    """The peer's tree, made on first use."""
    if (TREE / COMPLETE).exists():
        return TREE
    partial = TREE.with_name(TREE.name + ".partial")
    subprocess.run(["rm", "-rf", "--one-file-system", str(partial)], check=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    prefs = partial.with_name("backports.pref")
    prefs.write_text(BACKPORTS_FIRST)
    try:
        subprocess.run(
            [
                "mmdebstrap",
                "--mode=unshare",
                "--variant=apt",
                f'--setup-hook=mkdir -p "$1/etc/apt/preferences.d" && cp {prefs} "$1/etc/apt/preferences.d/"',
                f"--include={','.join(TOOLS)}",
                "bookworm",
                str(partial),
                f"deb {MIRROR} bookworm main",
                f"deb {MIRROR} bookworm-backports main",
            ],
            check=True,
        )
        (partial / INSIDE.lstrip("/")).mkdir(parents=True, exist_ok=True)
        (partial / COMPLETE).write_text(version_of(partial) + "\n")
        subprocess.run(["rm", "-rf", "--one-file-system", str(TREE)], check=True)
        partial.rename(TREE)
    finally:
        prefs.unlink(missing_ok=True)
        subprocess.run(["rm", "-rf", "--one-file-system", str(partial)], check=True)
    return TREE


def version_of(tree: Path) -> str:
    result = subprocess.run(["chroot", str(tree), "dpkg-query", "-W", "-f=${Version}", "mkosi"],
                            capture_output=True, text=True, check=True)  # fmt: skip
    return result.stdout.strip()


def write_package_manager_tree(directory: Path, release: str = "bookworm") -> None:
    """apt sources for the peer: the host's mirror, exactly the suites our mkosi uses.

    mkosi 24 otherwise adds debian-debug (unreachable here) and deb-src lines we do not fetch.
    """
    stanzas = [
        f"Types: deb\nURIs: {s.uri}\nSuites: {s.suite}\nComponents: {' '.join(s.components)}\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
        for s in sources(None, release, ("main",))
    ]
    path = directory / "etc/apt/sources.list.d/mkosi.sources"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(stanzas))


def _die_with_parent() -> None:
    # Even a SIGKILLed benchmark then takes unshare, and through --kill-child the whole namespace
    # with its mounts, down with it.
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def run(scratch: Path, project: Path, args: list[str], log: Path) -> harness.Finished:
    """A timed `mkosi ARGS` in PROJECT (inside SCRATCH) with the peer; output and errors go to LOG."""
    tree = ensure_tree()
    cwd = f"{INSIDE}/{project.relative_to(scratch)}"
    command = [
        "unshare", "--mount", "--propagation=private", "--pid", "--fork", "--kill-child",
        "sh", "-c", ENTER, "enter", str(tree), str(scratch), cwd, *args,
    ]  # fmt: skip
    # Ctrl-C reaches the whole foreground process group; should the benchmark die instead,
    # --kill-child takes the namespace's processes, and with them its mounts, down too.
    with harness.timed():
        return harness.run(command, log=log, stdout_to_log=True, preexec_fn=_die_with_parent)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peer_mkosi24", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="verb", required=True)
    sub.add_parser("setup")
    runner = sub.add_parser("run")
    runner.add_argument("project", type=Path)
    runner.add_argument("args", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    harness.require_root()
    ensure_tree()
    print(f"mkosi {version()} in {TREE}")
    if args.verb == "run":
        project = args.project.resolve()
        log = project / "mkosi24.log"
        result = run(project.parent, project, [a for a in args.args if a != "--"], log)
        sys.stdout.write(log.read_text()[-3000:])
        print(f"\nrc {result.returncode} in {result.seconds:.1f} s")
        raise SystemExit(result.returncode)


if __name__ == "__main__":
    if shutil.which("unshare") is None:
        raise SystemExit("needs util-linux's unshare")
    main()
