#!/usr/bin/env python3
"""Cold bootable `raw_gpt` build of Debian bookworm: where the wall time goes, stage by stage.

Prints each stage's median seconds, the whole build's, and the share of wall time spent outside
the subprocesses mkosi calls (its own overhead; target: under 5 %).

    .venv/bin/python benchmarks/bootable.py [--runs 1] [--cache DIR]

Needs root. Without --cache every run downloads its packages, as a first build would.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections import defaultdict


def build(cache: str | None) -> tuple[dict[str, float], float, float]:
    with tempfile.TemporaryDirectory(dir="/var/tmp", prefix="mkosi-bench.") as project:
        command = [sys.executable, "-m", "mkosi", "--log-format=json", "-d", "debian", "-r", "bookworm",
                   "-t", "raw_gpt", "--bootable", *([f"--cache={cache}"] if cache else []), "build"]  # fmt: skip
        result = subprocess.run(command, cwd=project, capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(f"build failed:\n{result.stderr[-3000:]}")
    stages: dict[str, float] = {}
    total = outside = 0.0
    for line in result.stderr.splitlines():
        event = json.loads(line)
        name = event.get("event", "")
        if name.endswith(": done"):
            stages[name.removesuffix(": done")] = event["seconds"]
        elif name == "built":
            total, outside = event["seconds"], event["outside_subprocesses"]
    return stages, total, outside


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--cache", help="package cache directory (default: none, a truly cold build)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("benchmarks need root")

    per_stage: dict[str, list[float]] = defaultdict(list)
    totals, outsides = [], []
    for run in range(args.runs):
        stages, total, outside = build(args.cache)
        for name, seconds in stages.items():
            per_stage[name].append(seconds)
        totals.append(total)
        outsides.append(outside)
        print(f"run {run + 1}/{args.runs}: {total:.1f} s", flush=True)

    total, outside = statistics.median(totals), statistics.median(outsides)
    print(f"\nCold bootable raw_gpt (Debian bookworm, UKI + systemd-boot), medians of {args.runs}:")
    for name, values in per_stage.items():
        print(f"  {name:<12} {statistics.median(values):6.1f} s")
    print(f"  {'total':<12} {total:6.1f} s")
    print(f"Outside subprocesses: {outside:.2f} s = {100 * outside / total:.1f} % of wall time (target < 5 %)")


if __name__ == "__main__":
    main()
