#!/usr/bin/env python3
"""A release matrix on a fleet: the 6-cell matrix as 1, 2 and 3 shards sharing an OCI registry.

For each shard count, on an empty registry (Debian's docker-registry on 127.0.0.1), the shards
run one after another in checkouts of their own that share nothing but the registry and the
package pool (as queued CI jobs on separate runners would), then `mkosi matrix collect` publishes
the release. Reports per shard count: the bootstraps each release got in total (target: 1), the
bytes pushed to and pulled from the registry, every shard's wall time, and the collect's time as a
share of the shards' total (target: under 5 %).

    .venv/bin/python -m benchmarks.distributed [--package-cache DIR] [--results FILE]

Run from the repository root. Needs root, the Debian mirror, docker-registry and skopeo. Run it
once at a time: it fills both cores.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks import harness
from mkosi.registry import parse_registry
from tests.integration.registry import registry

MATRIX = """
[matrix]
Release = ["bookworm", "trixie"]
Format = ["tar", "cpio", "raw_gpt"]
[defaults]
Distribution = "debian"
Packages = "less"
[release]
Directory = "release"
SourceDateEpoch = 1700000000
RemoteCache = "oci://{host}/mkosi/stages"
RemoteCacheInsecure = true
"""
SHARD_COUNTS = (1, 2, 3)


def checkout(base: Path, name: str, host: str, package_cache: Path | None) -> Path:
    directory = base / name
    directory.mkdir()
    (directory / "mkosi.matrix").write_text(MATRIX.format(host=host))
    if package_cache is not None:
        (directory / "mkosi.default").write_text(f"[Packages]\nCache={package_cache}\n")
    return directory


def bootstraps_per_release(manifest: dict[str, Any]) -> dict[str, int]:
    """How often each release's bootstrap ran across the fleet (not reused, not pulled)."""
    counts: dict[str, int] = {}
    for cell in manifest["cells"]:
        release = cell["settings"].get("Release", "?")
        for stage in cell["stages"]:
            if stage["name"] == "bootstrap":
                counts[release] = counts.get(release, 0) + (0 if stage["cached"] else 1)
    return counts


def pulled_bytes(manifest: dict[str, Any], host: str) -> int:
    """The sizes of the registry entries the shards pulled (each counted once per shard)."""
    pulled = {
        (cell["shard"], stage["key"]) for cell in manifest["cells"] for stage in cell["stages"] if stage.get("pulled")
    }
    total = 0
    for _, key in pulled:
        inspected = subprocess.run(
            ["skopeo", "inspect", "--raw", "--tls-verify=false", parse_registry(f"oci://{host}/mkosi/stages").reference(key)],
            capture_output=True, text=True,
        )  # fmt: skip
        if inspected.returncode == 0:
            total += sum(layer["size"] for layer in json.loads(inspected.stdout)["layers"])
    return total


def fleet(base: Path, shards: int, package_cache: Path | None, results: harness.Results) -> None:
    work = base / f"{shards}-shards"
    work.mkdir()
    with registry(work / "registry") as server:
        collector = checkout(work, "collector", server.host, package_cache)
        walls = []
        for index in range(1, shards + 1):
            runner = checkout(work, f"runner-{index}", server.host, package_cache)
            argv = [sys.executable, "-m", "matrix", "build", "--shard", f"{index}/{shards}", "-o", "fragment",
                    "--log-format=json"]  # fmt: skip
            seconds = harness.time_command(argv, what=f"shard {index}/{shards}", cwd=runner, log=work / "shards.log")
            results.add(f"{shards} shards: shard {index}", seconds)
            walls.append(seconds)
            shutil.move(runner / "fragment", collector / f"fragment-{index}")
        fragments = [f"fragment-{i}" for i in range(1, shards + 1)]
        collect = [sys.executable, "-m", "matrix", "collect", *fragments, "--log-format=json"]
        collect_seconds = harness.time_command(collect, what="collect", cwd=collector, log=work / "collect.log")
        results.add(f"{shards} shards: collect", collect_seconds)
        manifest = json.loads((collector / "release/manifest.json").read_text())
        facts: dict[str, Any] = {
            "bootstraps per release": bootstraps_per_release(manifest),
            "bytes pushed": sum(blob.stat().st_size for blob in server.blobs()),
            "bytes pulled": pulled_bytes(manifest, server.host),
            "collect share of shard time": round(collect_seconds / sum(walls), 4),
        }
    results.facts[f"{shards} shards"] = facts
    shown = ", ".join(f"{w:.1f}" for w in walls)
    print(f"{shards} shard(s): walls {shown} s, collect {collect_seconds:.1f} s "
          f"({facts['collect share of shard time']:.1%} of the shards' time), bootstraps "
          f"{facts['bootstraps per release']}, pushed {facts['bytes pushed'] >> 20} MiB, "
          f"pulled {facts['bytes pulled'] >> 20} MiB")  # fmt: skip


def main() -> None:
    parser = harness.argument_parser(__doc__, "distributed", whole_doc=True)
    parser.add_argument("--package-cache", type=Path, help="a warm package pool every shard uses")
    args = parser.parse_args()
    harness.require_root()
    if shutil.which("docker-registry") is None or shutil.which("skopeo") is None:
        raise SystemExit("benchmarks.distributed needs docker-registry and skopeo (./setup.sh installs them)")
    results = harness.Results("distributed", {k: str(v) for k, v in vars(args).items()})
    with harness.scratch("mkosi-bench-distributed.") as base:
        for shards in SHARD_COUNTS:
            fleet(base, shards, args.package_cache, results)
    results.facts["cores"] = os.cpu_count()
    results.write(args.results)


if __name__ == "__main__":
    main()
