#!/usr/bin/env python3
"""Cold `directory` build of Debian bookworm: ours against Debian's mkosi 14 and bare mmdebstrap.

Every contender builds the same package set from the same mirror with no package cache, several
runs each, alternating so that a noisy neighbour hurts everybody alike. Prints the medians, our
ratios against each peer, and the machine they were measured on.

    .venv/bin/python benchmarks/cold_directory.py [--runs 3] [--skip-mkosi14]

Needs root. Installs Debian's mkosi package (the peer) on first use.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from idle_disk import settle  # noqa: E402

from mkosi.distributions.debian import DEFAULT_MIRROR, host_mirrors  # noqa: E402
from mkosi.distributions.debian import PACKAGES as DEBIAN_PACKAGES  # noqa: E402

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


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.machine(),
    )
    memory = int(Path("/proc/meminfo").read_text().split()[1]) // 1024 // 1024
    return f"{os.cpu_count()} cores ({cpu}), {memory} GiB, Linux {platform.release()}"


def timed(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> float:
    settle()
    start = time.monotonic()
    result = subprocess.run(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.monotonic() - start
    if result.returncode != 0:
        raise SystemExit(f"{command[0]} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return elapsed


def ours(work: Path) -> float:
    project = work / "ours"
    project.mkdir()
    # Our base package set already holds what mkosi 14 has to be told to install.
    command = [sys.executable, "-m", "mkosi", *MKOSI_ARGS, "-p", ",".join(EXTRA_PACKAGES), "build"]
    return timed(command, project)


def mmdebstrap(work: Path, base: Path) -> float:
    target = Path(tempfile.mkdtemp(dir=base, prefix="bench-mmdebstrap."))
    try:
        return timed(
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
            work,
        )
    finally:
        subprocess.run(["rm", "-rf", "--one-file-system", str(target)], check=True)


def mkosi14(work: Path) -> float:
    project = work / "mkosi14"
    project.mkdir()
    wrappers = work / "wrappers"
    wrappers.mkdir(exist_ok=True)
    (wrappers / "systemd-nspawn").write_text(NSPAWN_WRAPPER)
    (wrappers / "systemd-nspawn").chmod(0o755)
    env = {**os.environ, "PATH": f"{wrappers}:{os.environ['PATH']}", "SYSTEMD_NSPAWN_LOCK": "0"}
    command = ["/usr/bin/mkosi", *MKOSI_ARGS, "-p", ",".join(PACKAGES), "-o", "image", "build"]
    return timed(command, project, env)


def ensure_mkosi14() -> None:
    if not Path("/usr/bin/mkosi").exists():
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", "mkosi"],
            check=True,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--skip-mkosi14", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("benchmarks need root")

    contenders: dict[str, Callable[[Path], float]] = {
        "ours (mkosi directory)": ours,
        "mmdebstrap into tmpfs": lambda work: mmdebstrap(work, Path("/dev/shm")),
        "mmdebstrap into disk": lambda work: mmdebstrap(work, work),
    }
    if not args.skip_mkosi14:
        ensure_mkosi14()
        contenders["Debian mkosi 14"] = mkosi14

    times: dict[str, list[float]] = {name: [] for name in contenders}
    for run in range(args.runs):
        for name, contender in contenders.items():
            work = Path(tempfile.mkdtemp(dir="/var/tmp", prefix="mkosi-bench."))
            try:
                times[name].append(contender(work))
            finally:
                subprocess.run(["rm", "-rf", "--one-file-system", str(work)], check=True)
            print(f"run {run + 1}/{args.runs}: {name}: {times[name][-1]:.1f} s", flush=True)

    medians = {name: statistics.median(values) for name, values in times.items()}
    ours_median = medians["ours (mkosi directory)"]
    print(f"\nCold Debian {RELEASE} directory build, {'+'.join(PACKAGES)}, medians of {args.runs}")
    print(f"Machine: {machine()}; mirror {MIRROR}")
    for name, median in medians.items():
        ratio = "" if median == ours_median else f"   ours/this = {ours_median / median:.2f}"
        print(f"  {name:<26} {median:6.1f} s{ratio}")
    fastest_bare = min(medians["mmdebstrap into tmpfs"], medians["mmdebstrap into disk"])
    bare_ratio = ours_median / fastest_bare
    print(f"Targets: ours/mkosi14 <= 0.40; ours/fastest bare bootstrap <= 1.20, now {bare_ratio:.2f}")
    if shutil.which("git"):
        commit = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        print(f"Commit: {commit}")


if __name__ == "__main__":
    main()
