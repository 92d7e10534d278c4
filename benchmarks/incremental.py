#!/usr/bin/env python3
"""Two-phase build of the example C project: cold `-i` build vs `-i` rebuild after a one-line change.

Each run starts from an empty project cache (packages are downloaded too, as in a first build), builds
with -i, changes one line of a source file and rebuilds with -i. Prints the medians and the ratio
(target: rebuild at most 0.15x the cold build), and which stages the rebuild ran.

    .venv/bin/python -m benchmarks.incremental [--runs 3] [--results FILE]

Run from the repository root. Needs root.
"""

from __future__ import annotations

import shutil

from benchmarks import harness

COLD = "cold -i build"
REBUILD = "-i rebuild, one line"
ARGS = ["-i", "-f", "build"]


def one_run(results: harness.Results) -> dict[str, str]:
    """One cold build and one rebuild into RESULTS; the rebuild's stages and what became of them."""
    with harness.scratch() as scratch:
        project = scratch / "project"
        shutil.copytree(harness.EXAMPLE, project)
        harness.commit_all(project)
        (project / "mkosi.cache").mkdir()
        cold = harness.build_ours(ARGS, cwd=project, log=scratch / "cold.log")
        harness.change_one_line(project)
        rebuild = harness.build_ours(ARGS, cwd=project, log=scratch / "rebuild.log")
    results.add(COLD, cold.built.seconds)
    results.add(REBUILD, rebuild.built.seconds)
    return {name: stage.fate for name, stage in rebuild.stages.items()}


def main() -> None:
    parser = harness.argument_parser(__doc__, "incremental", runs=3)
    args = parser.parse_args()
    harness.require_root()
    results = harness.Results("incremental", vars(args))
    fates: dict[str, str] = {}
    for run in range(args.runs):
        fates = one_run(results)
        cold, rebuild = results.runs[COLD][-1], results.runs[REBUILD][-1]
        print(f"run {run + 1}/{args.runs}: cold {cold:.1f} s, one-line rebuild {rebuild:.1f} s", flush=True)
    ratio = results.ratio("rebuild/cold", REBUILD, COLD)
    print(f"\nExample C project (Debian bookworm, BuildPackages=gcc make libc6-dev), medians of {args.runs}:")
    print(f"  cold -i build            {results.median(COLD):6.1f} s")
    print(f"  -i rebuild, one line     {results.median(REBUILD):6.1f} s   ratio {ratio:.2f} (target <= 0.15)")
    print("  rebuild stages: " + ", ".join(f"{name} {fate}" for name, fate in fates.items()))
    results.write(args.results)


if __name__ == "__main__":
    main()
