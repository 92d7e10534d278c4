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

    .venv/bin/python benchmarks/versus_mkosi24.py [--runs 3] [--only directory,bootable,incr-dir,incr-boot]

Needs root; sets up mkosi 24.3 in its own tree on first use (see peer_mkosi24.py).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent
REPO = BENCHMARKS.parent
sys.path[:0] = [str(REPO), str(BENCHMARKS)]

import peer_mkosi24  # noqa: E402
from harness import machine  # noqa: E402
from idle_disk import settle  # noqa: E402

from mkosi.distributions.debian import PACKAGES as DEBIAN_PACKAGES  # noqa: E402

EXAMPLE = REPO / "tests/integration/example-project"
BASE = (*DEBIAN_PACKAGES.base, "apt")  # mmdebstrap's minbase brings apt on our side
# What the peer's image needs to boot with a UKI; ours adds its own (dracut, zstd) by itself.
PEER_BOOT = ("linux-image-amd64", "udev", "systemd-boot-efi")
BUILD_PACKAGES = ("gcc", "make", "libc6-dev")
GIT = ["git", "-c", "user.name=bench", "-c", "user.email=bench@example.org", "-c", "init.defaultBranch=main"]
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


@dataclass
class Ours:
    seconds: float
    stages: dict[str, tuple[str, float]] = field(default_factory=dict)  # stage -> (done|reused, s)
    outside: float = 0.0
    max_rss_kib: int = 0
    tmpfs_peak_kib: int = 0
    output: Path | None = None


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
    stderr = project.parent / "ours.stderr"
    command = [sys.executable, "-m", "mkosi", "--log-format=json", *args, "build"]
    settle()
    start = time.monotonic()
    with TmpfsSampler() as sampler, stderr.open("wb") as err:
        process = subprocess.Popen(command, cwd=project, stdout=subprocess.DEVNULL, stderr=err)
        try:
            # wait4 instead of wait: the child's rusage, whose maxrss is its largest descendant's.
            _, status, usage = os.wait4(process.pid, 0)
        except BaseException:
            process.terminate()
            process.wait()
            raise
        process.returncode = os.waitstatus_to_exitcode(status)
    elapsed = time.monotonic() - start
    text = stderr.read_text()
    if process.returncode != 0:
        raise SystemExit(f"our build failed ({process.returncode}) in {project}:\n{text[-3000:]}")
    result = Ours(elapsed, max_rss_kib=usage.ru_maxrss, tmpfs_peak_kib=sampler.peak_kib)
    for line in text.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        name = event.get("event", "")
        if name.endswith((": done", ": reused")):
            stage, fate = name.rsplit(": ", 1)
            result.stages[stage] = (fate, float(event.get("seconds", 0.0)))
        elif name == "built":
            result.outside = float(event["outside_subprocesses"])
            result.output = Path(event["output"])
    return result


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
    settle()
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
    if result.returncode != 0:
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-40:])
        raise SystemExit(f"mkosi 24 failed ({result.returncode}) in {project}:\n{tail}")
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
    commit(project)


def copy_sources(project: Path) -> None:
    for path in EXAMPLE.iterdir():
        if path.suffix in (".c", ".h") or path.name == "Makefile":
            shutil.copy(path, project / path.name)


def commit(project: Path) -> None:
    subprocess.run([*GIT, "init", "-q", str(project)], check=True)
    subprocess.run([*GIT, "-C", str(project), "add", "-A"], check=True)
    subprocess.run([*GIT, "-C", str(project), "commit", "-qm", "bench"], check=True)


def change_one_line(project: Path) -> None:
    source = project / "greeting.c"
    source.write_text(source.read_text().replace("Hello from", "Hello again from"))


@contextmanager
def scratch_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(dir="/var/tmp", prefix="mkosi-bench-vs."))
    try:
        yield path
    finally:
        subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=True)


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
    with scratch_dir() as scratch:
        if side == "ours":
            project = our_project(scratch, build)
            if not build:
                result = run_ours(project, our_args)
                if bootable:
                    assert result.output is not None
                    check_bootable(result.output)
                return result.seconds, result, None
            cold = run_ours(project, [*our_args, "-i", "-f"])
            change_one_line(project)
            result = run_ours(project, [*our_args, "-i", "-f"])
            if bootable:
                assert result.output is not None
                check_bootable(result.output)
            return result.seconds, result, cold.seconds
        project = their_project(scratch, bootable, build)
        if not build:
            seconds = run_theirs(scratch, project, ["-f"])
            if bootable:
                check_bootable(their_image(project))
            return seconds, None, None
        cold_seconds = run_theirs(scratch, project, ["-i", "-f"])
        change_one_line(project)
        seconds = run_theirs(scratch, project, ["-i", "-f"])
        if bootable:
            check_bootable(their_image(project))
        return seconds, None, cold_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", default=",".join(SCENARIOS), help="comma-separated: " + ", ".join(SCENARIOS))
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("benchmarks need root")
    scenarios = [s for s in args.only.split(",") if s]
    if unknown := set(scenarios) - set(SCENARIOS):
        raise SystemExit(f"unknown scenarios: {', '.join(sorted(unknown))}")
    peer_mkosi24.ensure_tree()

    times: dict[tuple[str, str], list[float]] = defaultdict(list)
    colds: dict[tuple[str, str], list[float]] = defaultdict(list)
    details: dict[str, list[Ours]] = defaultdict(list)
    for run in range(args.runs):
        for scenario in scenarios:
            sides = ("ours", "theirs") if run % 2 == 0 else ("theirs", "ours")
            for side in sides:
                seconds, ours, cold = one(scenario, side)
                times[scenario, side].append(seconds)
                if cold is not None:
                    colds[scenario, side].append(cold)
                if ours is not None:
                    details[scenario].append(ours)
                print(f"run {run + 1}/{args.runs}: {scenario}: {side}: {seconds:.1f} s", flush=True)

    print(f"\nOurs vs mkosi {peer_mkosi24.version()}, Debian bookworm, medians of {args.runs} run(s)")
    print(f"Machine: {machine()}; load average now {os.getloadavg()[0]:.1f}")
    print(f"  {'scenario':<26} {'ours':>7} {'mkosi 24':>9} {'ratio':>6} {'target':>7}")
    for scenario in scenarios:
        title, target = SCENARIOS[scenario]
        ours_s, theirs_s = statistics.median(times[scenario, "ours"]), statistics.median(times[scenario, "theirs"])
        ratio = ours_s / theirs_s
        verdict = "met" if ratio <= target else "MISSED"
        print(f"  {title:<26} {ours_s:6.1f}s {theirs_s:8.1f}s {ratio:6.2f} {'<= ' + str(target):>7} {verdict}")
    for scenario in scenarios:
        if colds[scenario, "ours"]:
            print(f"  (cold -i build before {scenario}: ours {statistics.median(colds[scenario, 'ours']):.1f} s, "
                  f"mkosi 24 {statistics.median(colds[scenario, 'theirs']):.1f} s)")  # fmt: skip

    print("\nWhere our wall time goes (medians; stage seconds as logged, 'reused' = from the -i cache):")
    for scenario in scenarios:
        runs = details[scenario]
        stages: dict[str, list[float]] = defaultdict(list)
        fates: dict[str, str] = {}
        for r in runs:
            for name, (fate, seconds) in r.stages.items():
                stages[name].append(seconds)
                fates[name] = fate
        parts = ", ".join(
            f"{name} {statistics.median(values):.1f}" + (" (reused)" if fates[name] == "reused" else "")
            for name, values in stages.items()
        )
        total = statistics.median(r.seconds for r in runs)
        outside = statistics.median(r.outside for r in runs)
        rss = max(r.max_rss_kib for r in runs) / 1024
        shm = max(r.tmpfs_peak_kib for r in runs) / 1024
        # Wall time no stage accounts for: interpreter start, removing the previous output (-f),
        # making and removing the workspace, pruning the -i cache.
        other = statistics.median(r.seconds - sum(s for _, s in r.stages.values()) for r in runs)
        print(f"  {SCENARIOS[scenario][0]}: {total:.1f} s = {parts}, not in a stage {other:.1f}; "
              f"outside subprocesses (as logged) {outside:.1f} s")  # fmt: skip
        print(f"    peak RSS of one process {rss:.0f} MiB, peak tmpfs workspace {shm:.0f} MiB")
    commit_id = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                               text=True).stdout.strip()  # fmt: skip
    print(f"Commit: {commit_id}")


if __name__ == "__main__":
    main()
