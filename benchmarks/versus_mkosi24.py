#!/usr/bin/env python3
"""Ours against mkosi 24.3 (bookworm-backports), side by side on identical inputs.

Four scenarios, Debian bookworm from the mirror the host's apt uses (bookworm, -updates, -security,
deb only), base packages systemd, systemd-sysv, dbus, libpam-systemd and apt on both sides:

- cold `directory`, no package cache;
- cold bootable disk image with a unified kernel image and systemd-boot, no package cache (ours
  `-t raw_gpt --bootable`, theirs `Format=disk Bootable=yes UnifiedKernelImages=yes`; both add a
  kernel, udev and systemd-boot-efi, and each its own initrd tooling: dracut for ours, mkosi 24's
  default initrd image for theirs). Every image is checked afterwards, outside the timing: a GPT
  with a root partition and an ESP holding systemd-boot and a UKI with .linux and .initrd sections;
- `-i` rebuild after a one-line change to the example C project's sources, `directory`, and
- the same for the bootable image (the cold `-i` builds before them are reported, not compared).

Runs alternate between the two tools (which one goes first alternates too), one build at a time.
Prints medians, ratios ours/theirs against the targets of issue 8, where our wall time goes stage
by stage, our peak RSS (largest single process, from wait4) and the peak size of our tmpfs
workspace (sampled every 2 s).

    .venv/bin/python -m benchmarks.versus_mkosi24 [--runs 3] [--only directory,bootable,incr-dir,incr-boot]
        [--results FILE]

Run from the repository root. Needs root; sets up mkosi 24.3 in its own tree on first use (see
peer_mkosi24.py).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from benchmarks import harness, peer_mkosi24
from mkosi.distributions.debian import PACKAGES as DEBIAN_PACKAGES

BASE = (*DEBIAN_PACKAGES.base, "apt")  # mmdebstrap's minbase brings apt on our side
# What the peer's image needs to boot with a UKI; ours adds its own (dracut, zstd) by itself.
PEER_BOOT = ("linux-image-amd64", "udev", "systemd-boot-efi")
BUILD_PACKAGES = ("gcc", "make", "libc6-dev")
# The same steps as the example project's mkosi.build, without its postinst evidence: the peer's
# build script must do exactly the same work.
BUILD_SCRIPT = """#!/bin/sh
set -e
cd "$SRCDIR"
make
if [ "$WITH_TESTS" = 1 ]; then
    make check
fi
make install DESTDIR="$DESTDIR"
"""
SCENARIOS = {
    "directory": ("cold directory", 0.6),
    "bootable": ("cold bootable disk + UKI", 0.6),
    "incr-dir": ("-i rebuild, directory", 0.5),
    "incr-boot": ("-i rebuild, bootable", 0.5),
}
ESP_TYPE = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
ROOT_TYPE = "4f68bce3-e8cd-4db1-96e7-fbcaf984b709"
TMPFS = Path("/dev/shm")


@dataclass(frozen=True)
class Ours:
    build: harness.OurBuild
    tmpfs_peak_kib: int


class TmpfsSampler:
    """Peak size of the workspaces our build makes in /dev/shm while it runs."""

    def __init__(self) -> None:
        self.before = set(TMPFS.glob(".mkosi-workspace.*"))
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(2.0):
            ours = [str(p) for p in TMPFS.glob(".mkosi-workspace.*") if p not in self.before]
            if not ours:
                continue
            du = subprocess.run(["du", "-skc", *ours], capture_output=True, text=True)
            lines = du.stdout.splitlines()
            if lines and lines[-1].endswith("total"):
                self.peak_kib = max(self.peak_kib, int(lines[-1].split()[0]))

    def __enter__(self) -> TmpfsSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_ours(project: Path, args: list[str]) -> Ours:
    with TmpfsSampler() as sampler:
        build = harness.build_ours([*args, "build"], cwd=project, log=project.parent / "ours.log")
    return Ours(build, sampler.peak_kib)


def run_theirs(scratch: Path, project: Path, args: list[str]) -> float:
    packages = scratch / "peer-packages"
    packages.mkdir(exist_ok=True)
    workspace = scratch / "peer-workspace"
    workspace.mkdir(exist_ok=True)
    pkgmngr = scratch / "peer-pkgmngr"
    if not pkgmngr.exists():
        peer_mkosi24.write_package_manager_tree(pkgmngr)
    inside = peer_mkosi24.INSIDE
    log = scratch / "theirs.log"
    result = peer_mkosi24.run(
        scratch,
        project,
        [
            f"--package-manager-tree={inside}/{pkgmngr.name}",
            # A package cache of this run's own, so that a cold build downloads like ours does.
            f"--package-cache-dir={inside}/{packages.name}",
            # On the same mount as the output: otherwise mkosi 24 copies the finished tree.
            f"--workspace-dir={inside}/{workspace.name}",
            *args,
            "build",
        ],
        log,
    )
    harness.check(result, "mkosi 24", log)
    return result.seconds


def our_project(scratch: Path, build: bool) -> Path:
    project = scratch / "ours"
    project.mkdir()
    default = "[Distribution]\nDistribution=debian\nRelease=bookworm\n"
    if build:
        add_build(project, "mkosi.build")
        default += f"\n[Packages]\nBuildPackages={' '.join(BUILD_PACKAGES)}\n"
    (project / "mkosi.default").write_text(default)
    return project


def their_project(scratch: Path, bootable: bool, build: bool) -> Path:
    project = scratch / "theirs"
    project.mkdir()
    packages = (*BASE, *(PEER_BOOT if bootable else ()))
    conf = "[Distribution]\nDistribution=debian\nRelease=bookworm\n\n[Output]\n"
    conf += "Format=disk\n" if bootable else "Format=directory\n"
    conf += f"\n[Content]\nPackages={','.join(packages)}\n"
    if bootable:
        conf += "Bootable=yes\nBootloader=systemd-boot\nUnifiedKernelImages=yes\n"
    if build:
        # .chroot: mkosi 24 runs it inside the build image, as ours runs mkosi.build.
        add_build(project, "mkosi.build.chroot")
        conf += f"BuildPackages={','.join(BUILD_PACKAGES)}\n"
    (project / "mkosi.conf").write_text(conf)
    return project


def add_build(project: Path, script_name: str) -> None:
    """The example project's sources and build script, a package cache, all committed to git."""
    copy_sources(project)
    script = project / script_name
    script.write_text(BUILD_SCRIPT)
    script.chmod(0o755)
    (project / "mkosi.cache").mkdir()
    harness.commit_all(project)


def copy_sources(project: Path) -> None:
    for path in harness.EXAMPLE.iterdir():
        if path.suffix in (".c", ".h") or path.name == "Makefile":
            shutil.copy(path, project / path.name)


def check_bootable(image: Path) -> None:
    """A GPT with a root partition and an ESP with systemd-boot and a UKI holding kernel and initrd."""
    table = json.loads(subprocess.run(["sfdisk", "-J", str(image)], capture_output=True, text=True,
                                      check=True).stdout)["partitiontable"]  # fmt: skip
    if table["label"] != "gpt":
        raise SystemExit(f"{image}: not a GPT disk")
    types = {p["type"].lower(): p for p in table["partitions"]}
    if ROOT_TYPE not in types or ESP_TYPE not in types:
        raise SystemExit(f"{image}: no root partition or no ESP: {sorted(types)}")
    esp = f"{image}@@{types[ESP_TYPE]['start'] * table.get('sectorsize', 512)}"
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    listing = subprocess.run(["mdir", "-i", esp, "-/", "-b", "::"], capture_output=True, text=True, env=env,
                             check=True).stdout  # fmt: skip
    files = [line.strip() for line in listing.splitlines()]
    if not any(re.fullmatch(r"::/EFI/BOOT/BOOTX64\.EFI", f, re.IGNORECASE) for f in files):
        raise SystemExit(f"{image}: no EFI/BOOT/BOOTX64.EFI in the ESP: {files}")
    ukis = [f for f in files if re.fullmatch(r"::/EFI/Linux/[^/]+\.efi", f, re.IGNORECASE)]
    if not ukis:
        raise SystemExit(f"{image}: no UKI in EFI/Linux: {files}")
    with tempfile.TemporaryDirectory(dir="/var/tmp", prefix="mkosi-bench-uki.") as tmp:
        uki = Path(tmp) / "uki.efi"
        subprocess.run(["mcopy", "-i", esp, ukis[0], str(uki)], check=True, env=env)
        headers = subprocess.run(["objdump", "-h", str(uki)], capture_output=True, text=True, check=True).stdout
    sections = set(re.findall(r"^\s*\d+\s+(\.\w+)", headers, re.MULTILINE))
    if not {".linux", ".initrd"} <= sections:
        raise SystemExit(f"{image}: UKI {ukis[0]} lacks .linux or .initrd: {sorted(sections)}")


def their_image(project: Path) -> Path:
    return project / "image.raw"


def one(scenario: str, side: str) -> tuple[float, Ours | None, float | None]:
    """One run of a scenario by one side: (compared seconds, our details, cold -i seconds)."""
    bootable = scenario in ("bootable", "incr-boot")
    build = scenario.startswith("incr")
    our_args = ["-t", "raw_gpt", "--bootable"] if bootable else ["-t", "directory"]
    with harness.scratch("mkosi-bench-vs.") as scratch:
        if side == "ours":
            project = our_project(scratch, build)
            if not build:
                result = run_ours(project, our_args)
                if bootable:
                    check_bootable(result.build.built.output)
                return result.build.seconds, result, None
            cold = run_ours(project, [*our_args, "-i", "-f"])
            harness.change_one_line(project)
            result = run_ours(project, [*our_args, "-i", "-f"])
            if bootable:
                check_bootable(result.build.built.output)
            return result.build.seconds, result, cold.build.seconds
        project = their_project(scratch, bootable, build)
        if not build:
            seconds = run_theirs(scratch, project, ["-f"])
            if bootable:
                check_bootable(their_image(project))
            return seconds, None, None
        cold_seconds = run_theirs(scratch, project, ["-i", "-f"])
        harness.change_one_line(project)
        seconds = run_theirs(scratch, project, ["-i", "-f"])
        if bootable:
            check_bootable(their_image(project))
        return seconds, None, cold_seconds


def main() -> None:
    parser = harness.argument_parser(__doc__, "versus_mkosi24", runs=3)
    parser.add_argument("--only", default=",".join(SCENARIOS), help="comma-separated: " + ", ".join(SCENARIOS))
    args = parser.parse_args()
    harness.require_root()
    scenarios = [s for s in args.only.split(",") if s]
    if unknown := set(scenarios) - set(SCENARIOS):
        raise SystemExit(f"unknown scenarios: {', '.join(sorted(unknown))}")
    peer_mkosi24.ensure_tree()

    # Series "SCENARIO/SIDE" (the compared builds), "SCENARIO/SIDE/cold -i" and, for ours,
    # "SCENARIO/ours/stage NAME", ".../not in a stage" and ".../outside subprocesses".
    results = harness.Results("versus_mkosi24", vars(args))
    fates: dict[str, dict[str, str]] = defaultdict(dict)  # scenario -> stage -> done|reused
    details: dict[str, list[Ours]] = defaultdict(list)
    for run in range(args.runs):
        for scenario in scenarios:
            sides = ("ours", "theirs") if run % 2 == 0 else ("theirs", "ours")
            for side in sides:
                seconds, ours, cold = one(scenario, side)
                results.add(f"{scenario}/{side}", seconds)
                if cold is not None:
                    results.add(f"{scenario}/{side}/cold -i", cold)
                if ours is not None:
                    details[scenario].append(ours)
                    stages = ours.build.stages
                    for name, stage in stages.items():
                        results.add(f"{scenario}/ours/stage {name}", stage.seconds)
                        fates[scenario][name] = stage.fate
                    # Wall time no stage accounts for: interpreter start, removing the previous
                    # output (-f), making and removing the workspace, pruning the -i cache.
                    other = ours.build.seconds - sum(stage.seconds for stage in stages.values())
                    results.add(f"{scenario}/ours/not in a stage", other)
                    results.add(f"{scenario}/ours/outside subprocesses", ours.build.built.outside_subprocesses)
                print(f"run {run + 1}/{args.runs}: {scenario}: {side}: {seconds:.1f} s", flush=True)

    print(f"\nOurs vs mkosi {peer_mkosi24.version()}, Debian bookworm, medians of {args.runs} run(s)")
    print(f"Machine: {harness.machine()}; load average now {os.getloadavg()[0]:.1f}")
    print(f"  {'scenario':<26} {'ours':>7} {'mkosi 24':>9} {'ratio':>6} {'target':>7}")
    for scenario in scenarios:
        title, target = SCENARIOS[scenario]
        ours_s, theirs_s = results.median(f"{scenario}/ours"), results.median(f"{scenario}/theirs")
        ratio = results.ratio(f"{scenario}: ours/theirs", f"{scenario}/ours", f"{scenario}/theirs")
        verdict = "met" if ratio <= target else "MISSED"
        print(f"  {title:<26} {ours_s:6.1f}s {theirs_s:8.1f}s {ratio:6.2f} {'<= ' + str(target):>7} {verdict}")
    for scenario in scenarios:
        if f"{scenario}/ours/cold -i" in results.runs:
            print(f"  (cold -i build before {scenario}: ours {results.median(f'{scenario}/ours/cold -i'):.1f} s, "
                  f"mkosi 24 {results.median(f'{scenario}/theirs/cold -i'):.1f} s)")  # fmt: skip

    print("\nWhere our wall time goes (medians; stage seconds as logged, 'reused' = from the -i cache):")
    for scenario in scenarios:
        parts = ", ".join(
            f"{name} {results.median(f'{scenario}/ours/stage {name}'):.1f}" + (" (reused)" if fate == "reused" else "")
            for name, fate in fates[scenario].items()
        )
        total = results.median(f"{scenario}/ours")
        other = results.median(f"{scenario}/ours/not in a stage")
        outside = results.median(f"{scenario}/ours/outside subprocesses")
        rss = max(r.build.max_rss_kib for r in details[scenario]) / 1024
        shm = max(r.tmpfs_peak_kib for r in details[scenario]) / 1024
        results.facts[scenario] = {"peak_rss_mib": round(rss), "peak_tmpfs_mib": round(shm)}
        print(f"  {SCENARIOS[scenario][0]}: {total:.1f} s = {parts}, not in a stage {other:.1f}; "
              f"outside subprocesses (as logged) {outside:.1f} s")  # fmt: skip
        print(f"    peak RSS of one process {rss:.0f} MiB, peak tmpfs workspace {shm:.0f} MiB")
    results.write(args.results)


if __name__ == "__main__":
    main()
