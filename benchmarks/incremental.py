#!/usr/bin/env python3
"""Two-phase build of the example C project: cold `-i` build vs `-i` rebuild after a one-line change.

Each run starts from an empty project cache (packages are downloaded too, as in a first build), builds
with -i, changes one line of a source file and rebuilds with -i. Prints the medians and the ratio
(target: rebuild at most 0.15x the cold build), and which stages the rebuild ran.

    .venv/bin/python benchmarks/incremental.py [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parent.parent / "tests/integration/example-project"
GIT = ["git", "-c", "user.name=bench", "-c", "user.email=bench@example.org", "-c", "init.defaultBranch=main"]


def build(project: Path) -> tuple[float, dict[str, str]]:
    result = subprocess.run(
        [sys.executable, "-m", "mkosi", "--log-format=json", "-i", "-f", "build"],
        cwd=project,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise SystemExit(f"build failed:\n{result.stderr[-3000:]}")
    fates: dict[str, str] = {}
    seconds = 0.0
    for line in result.stderr.splitlines():
        event = json.loads(line)
        name = event.get("event", "")
        if name.endswith((": done", ": reused")):
            stage, fate = name.rsplit(": ", 1)
            fates[stage] = fate
        elif name == "built":
            seconds = event["seconds"]
    return seconds, fates


def one_run() -> tuple[float, float, dict[str, str]]:
    with tempfile.TemporaryDirectory(dir="/var/tmp", prefix="mkosi-bench.") as scratch:
        project = Path(scratch) / "project"
        shutil.copytree(EXAMPLE, project)
        subprocess.run([*GIT, "init", "-q", str(project)], check=True)
        subprocess.run([*GIT, "-C", str(project), "add", "-A"], check=True)
        subprocess.run([*GIT, "-C", str(project), "commit", "-qm", "bench"], check=True)
        (project / "mkosi.cache").mkdir()
        cold, _ = build(project)
        source = project / "greeting.c"
        source.write_text(source.read_text().replace("Hello from", "Hello again from"))
        rebuild, fates = build(project)
        return cold, rebuild, fates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("benchmarks need root")
    colds, rebuilds = [], []
    fates: dict[str, str] = {}
    for run in range(args.runs):
        cold, rebuild, fates = one_run()
        colds.append(cold)
        rebuilds.append(rebuild)
        print(f"run {run + 1}/{args.runs}: cold {cold:.1f} s, one-line rebuild {rebuild:.1f} s", flush=True)
    cold, rebuild = statistics.median(colds), statistics.median(rebuilds)
    print(f"\nExample C project (Debian bookworm, BuildPackages=gcc make libc6-dev), medians of {args.runs}:")
    print(f"  cold -i build            {cold:6.1f} s")
    print(f"  -i rebuild, one line     {rebuild:6.1f} s   ratio {rebuild / cold:.2f} (target <= 0.15)")
    print("  rebuild stages: " + ", ".join(f"{name} {fate}" for name, fate in fates.items()))


if __name__ == "__main__":
    main()
