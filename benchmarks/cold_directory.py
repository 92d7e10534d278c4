#!/usr/bin/env python3
"""Cold `directory` build of Debian bookworm: ours against Debian's mkosi 14 and bare mmdebstrap.

Every contender builds the same package set from the same mirror with no package cache, several
runs each, alternating so that a noisy neighbour hurts everybody alike. Prints the medians, our
ratios against each peer, and the machine they were measured on.

    .venv/bin/python -m benchmarks.cold_directory [--runs 3] [--skip-mkosi14] [--results FILE]

Run from the repository root. Needs root. Installs Debian's mkosi package (the peer) on first use.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

from benchmarks import harness
from mkosi.distributions.debian import DEFAULT_MIRROR, host_mirrors
from mkosi.distributions.debian import PACKAGES as DEBIAN_PACKAGES

RELEASE = "bookworm"
EXTRA_PACKAGES = ("less",)
PACKAGES = (*DEBIAN_PACKAGES.base, *EXTRA_PACKAGES)
MIRROR = host_mirrors()[0] or DEFAULT_MIRROR
MERGED_USR_HOOKS = "/usr/share/mmdebstrap/hooks/merged-usr"
# The same command line for our mkosi and for Debian's mkosi 14, the 2017 tool's descendant.
MKOSI_ARGS = ["-d", "debian", "-r", RELEASE, "-t", "directory", "-m", MIRROR]
NSPAWN_WRAPPER = """#!/bin/sh
# These machines have no systemd as PID 1: nspawn must not try to register or make a scope.
exec /usr/bin/systemd-nspawn --register=no --keep-unit "$@"
"""
OURS = "ours (mkosi directory)"
BARE = ("mmdebstrap into tmpfs", "mmdebstrap into disk")


def ours(work: Path) -> float:
    project = work / "ours"
    project.mkdir()
    # Our base package set already holds what mkosi 14 has to be told to install.
    args = [*MKOSI_ARGS, "-p", ",".join(EXTRA_PACKAGES), "build"]
    return harness.build_ours(args, cwd=project, log=work / "ours.log").seconds


def mmdebstrap(work: Path, base: Path) -> float:
    with harness.scratch("bench-mmdebstrap.", base) as target:
        return harness.time_command(
            [
                "mmdebstrap",
                "--mode=unshare",
                "--variant=minbase",
                # Merged /usr by symlinks and usr-is-merged, as ours (and debootstrap) make it:
                # without the hook, mmdebstrap installs usrmerge, and perl with it.
                f"--hook-dir={MERGED_USR_HOOKS}",
                f"--include={','.join(PACKAGES)}",
                RELEASE,
                str(target),
                MIRROR,
            ],
            what="mmdebstrap",
            cwd=work,
            log=work / "mmdebstrap.log",
        )


def mkosi14(work: Path) -> float:
    project = work / "mkosi14"
    project.mkdir()
    wrappers = work / "wrappers"
    wrappers.mkdir(exist_ok=True)
    (wrappers / "systemd-nspawn").write_text(NSPAWN_WRAPPER)
    (wrappers / "systemd-nspawn").chmod(0o755)
    env = {**os.environ, "PATH": f"{wrappers}:{os.environ['PATH']}", "SYSTEMD_NSPAWN_LOCK": "0"}
    command = ["/usr/bin/mkosi", *MKOSI_ARGS, "-p", ",".join(PACKAGES), "-o", "image", "build"]
    return harness.time_command(command, what="mkosi 14", cwd=project, log=work / "mkosi14.log", env=env)


def ensure_mkosi14() -> None:
    if not Path("/usr/bin/mkosi").exists():
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", "mkosi"],
            check=True,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )


def main() -> None:
    parser = harness.argument_parser(__doc__, "cold_directory", runs=3)
    parser.add_argument("--skip-mkosi14", action="store_true")
    args = parser.parse_args()
    harness.require_root()

    contenders: dict[str, Callable[[Path], float]] = {
        OURS: ours,
        BARE[0]: lambda work: mmdebstrap(work, Path("/dev/shm")),
        BARE[1]: lambda work: mmdebstrap(work, work),
    }
    if not args.skip_mkosi14:
        ensure_mkosi14()
        contenders["Debian mkosi 14"] = mkosi14

    results = harness.Results("cold_directory", vars(args))
    for run in range(args.runs):
        for name, contender in contenders.items():
            with harness.scratch() as work:
                results.add(name, contender(work))
            print(f"run {run + 1}/{args.runs}: {name}: {results.runs[name][-1]:.1f} s", flush=True)

    print(f"\nCold Debian {RELEASE} directory build, {'+'.join(PACKAGES)}, medians of {args.runs}")
    print(f"Machine: {harness.machine()}; mirror {MIRROR}")
    for name, median in results.medians().items():
        ratio = "" if name == OURS else f"   ours/this = {results.ratio(f'ours/{name}', OURS, name):.2f}"
        print(f"  {name:<26} {median:6.1f} s{ratio}")
    fastest_bare = min(BARE, key=results.median)
    bare_ratio = results.ratio("ours/fastest bare bootstrap", OURS, fastest_bare)
    print(f"Targets: ours/mkosi14 <= 0.40; ours/fastest bare bootstrap <= 1.20, now {bare_ratio:.2f}")
    results.write(args.results)


if __name__ == "__main__":
    main()
