#!/usr/bin/env python3
"""Cold bootable `raw_gpt` build of Debian bookworm: where the wall time goes, stage by stage.

Prints each stage's median seconds, the whole build's, and the share of wall time spent outside
the subprocesses mkosi calls (its own overhead; target: under 5 %).

    .venv/bin/python -m benchmarks.bootable [--runs 1] [--cache DIR] [--results FILE]

Run from the repository root. Needs root. Without --cache every run downloads its packages, as a
first build would.
"""

from __future__ import annotations

from benchmarks import harness

STAGE = "stage "


def main() -> None:
    parser = harness.argument_parser(__doc__, "bootable", runs=1)
    parser.add_argument("--cache", help="package cache directory (default: none, a truly cold build)")
    args = parser.parse_args()
    harness.require_root()

    results = harness.Results("bootable", vars(args))
    for run in range(args.runs):
        with harness.scratch() as scratch:
            project = scratch / "project"
            project.mkdir()
            build = harness.build_ours(
                ["-d", "debian", "-r", "bookworm", "-t", "raw_gpt", "--bootable",
                 *([f"--cache={args.cache}"] if args.cache else []), "build"],
                cwd=project,
                log=scratch / "mkosi.log",
            )  # fmt: skip
        for name, stage in build.stages.items():
            results.add(STAGE + name, stage.seconds)
        results.add("total", build.built.seconds)
        results.add("outside subprocesses", build.built.outside_subprocesses)
        print(f"run {run + 1}/{args.runs}: {build.built.seconds:.1f} s", flush=True)

    total = results.median("total")
    outside = results.median("outside subprocesses")
    share = results.ratio("outside subprocesses/total", "outside subprocesses", "total")
    print(f"\nCold bootable raw_gpt (Debian bookworm, UKI + systemd-boot), medians of {args.runs}:")
    for series, seconds in results.medians().items():
        if series.startswith(STAGE):
            print(f"  {series.removeprefix(STAGE):<12} {seconds:6.1f} s")
    print(f"  {'total':<12} {total:6.1f} s")
    print(f"Outside subprocesses: {outside:.2f} s = {100 * share:.1f} % of wall time (target < 5 %)")
    results.write(args.results)


if __name__ == "__main__":
    main()
