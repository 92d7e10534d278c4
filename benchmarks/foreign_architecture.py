#!/usr/bin/env python3
"""An arm64 `directory` build on this x86-64 host against the same build for x86-64.

Debian bookworm, the same package set (Debian's base packages and less), the package pool warm for
both architectures (downloads are not what this measures) and no stage cache, alternating, one
build at a time from a settled machine. Prints the medians, the arm64/x86-64 ratio, and where the
difference goes stage by stage: the share of the arm64 build spent beyond the x86-64 one is the
price of emulation (the maintainer scripts, `mkosi.postinst` and everything else that runs inside
the tree through qemu-user), since everything outside the tree (apt's download and solver, the
unpacking, mkosi itself) runs natively on both.

    .venv/bin/python -m benchmarks.foreign_architecture [--runs 3] [--results FILE]

Run from the repository root. Needs root and qemu-user-static.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks import harness
from mkosi.architecture import Architecture

ARGS = ["-d", "debian", "-r", "bookworm", "-t", "directory", "-p", "less"]
POOL = harness.SCRATCH / "mkosi-bench-foreign-pool"


def build(architecture: Architecture, work: Path) -> harness.OurBuild:
    args = [*ARGS, f"--architecture={architecture}", f"--cache={POOL}", "-o", "image", "build"]
    return harness.build_ours(args, cwd=work, log=work / "mkosi.log")


def main() -> None:
    parser = harness.argument_parser(__doc__, "foreign_architecture", runs=3)
    args = parser.parse_args()
    harness.require_root()
    results = harness.Results("foreign_architecture", vars(args))
    POOL.mkdir(exist_ok=True)
    for architecture in Architecture:  # fill both pools first: downloads are not measured
        with harness.scratch() as work:
            build(architecture, work)
    stages: dict[str, dict[str, list[float]]] = {}
    for run in range(args.runs):
        order = list(Architecture) if run % 2 == 0 else list(reversed(Architecture))
        for architecture in order:
            with harness.scratch() as work:
                built = build(architecture, work)
            results.add(str(architecture), built.seconds)
            for stage, time in built.stages.items():
                stages.setdefault(str(architecture), {}).setdefault(stage, []).append(time.seconds)
            print(f"run {run + 1}/{args.runs}: {architecture}: {built.seconds:.1f} s", flush=True)

    native, foreign = str(Architecture.x86_64), str(Architecture.arm64)
    ratio = results.ratio("arm64/x86-64", foreign, native)
    emulation = (results.median(foreign) - results.median(native)) / results.median(foreign)
    results.facts["share of the arm64 build spent in emulation"] = round(emulation, 3)
    results.facts["stage medians"] = {
        arch: {stage: round(sorted(times)[len(times) // 2], 2) for stage, times in by_stage.items()}
        for arch, by_stage in stages.items()
    }
    print(f"\nDebian bookworm directory, {'+'.join(ARGS[6:])} on the base set, pool warm, medians of {args.runs}")
    print(f"Machine: {harness.machine()}")
    for name, median in results.medians().items():
        print(f"  {name:<8} {median:6.1f} s")
    print(f"arm64/x86-64 = {ratio:.2f}; share of the arm64 build spent in emulation: {emulation:.0%}")
    for stage in results.facts["stage medians"][foreign]:
        times = [results.facts["stage medians"][arch].get(stage, 0.0) for arch in (native, foreign)]
        print(f"  {stage:<14} x86-64 {times[0]:6.2f} s   arm64 {times[1]:6.2f} s")
    results.write(args.results)


if __name__ == "__main__":
    main()
