#!/usr/bin/env python3
"""The example matrix: `mkosi matrix` against the same cells built one by one by `mkosi`.

Both sides start cold: no package pool and no stage cache (pass --package-cache DIR to give both
the same warm package pool instead). The serial side does what a release script around mkosi
would do to publish the same thing: one `mkosi` run per cell, `directory` outputs packed into
tarballs, and a SHA256SUMS. Prints both wall times, their ratio and the number of bootstraps each
side ran (from the matrix's manifest and from the serial builds' JSON logs).

    .venv/bin/python -m benchmarks.matrix [--matrix mkosi.matrix.example] [--jobs N] [--results FILE]

With --scaling it measures instead how the wall time of `mkosi matrix` grows with the number of
formats of one distribution: a matrix of SCALING_FORMATS against one of twice as many (target: at
most 25 % more time).

Run from the repository root. Needs root and the Debian mirror. Run it once at a time: it fills
both cores.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from benchmarks import harness
from matrix.runner import plan
from matrix.spec import Cell, Matrix, ini_value, load_matrix
from mkosi.config import OutputFormat
from mkosi.settings import BY_KEY

SECTION = {key: section for (section, key) in BY_KEY}
MATRIX = "mkosi matrix"
SERIAL = "mkosi one by one"


def project(base: Path, name: str, package_cache: Path | None) -> Path:
    directory = base / name
    directory.mkdir()
    if package_cache is not None:
        (directory / "mkosi.default").write_text(f"[Packages]\nCache={package_cache}\n")
    return directory


def cell_default(matrix: Matrix, cell: Cell, package_cache: Path | None) -> str:
    """The cell as a mkosi.default a user would write for a single build."""
    settings = {**matrix.defaults, **cell.settings}
    if package_cache is not None:
        settings["Cache"] = str(package_cache)
    sections: dict[str, list[str]] = {}
    for key, value in settings.items():
        sections.setdefault(SECTION[key], []).append(f"{key}={ini_value(value)}")
    return "".join(f"[{s}]\n" + "\n".join(lines) + "\n\n" for s, lines in sections.items())


def matrix_side(matrix_file: Path, base: Path, jobs: int, package_cache: Path | None) -> tuple[float, int]:
    directory = project(base, "matrix", package_cache)
    shutil.copy(matrix_file, directory / "mkosi.matrix")
    elapsed = harness.time_command(
        [sys.executable, "-m", "matrix", "--jobs", str(jobs), "--log-format=json"],
        what="mkosi matrix",
        cwd=directory,
        log=base / "matrix.log",
        stdout_to_log=True,
    )
    manifest = json.loads((directory / "release/manifest.json").read_text())
    bootstraps = sum(
        1
        for cell in manifest["cells"]
        for stage in cell["stages"]
        if stage["name"] == "bootstrap" and not stage["cached"]
    )
    return elapsed, bootstraps


def serial_side(matrix_file: Path, base: Path, package_cache: Path | None) -> tuple[float, int]:
    matrix = load_matrix(matrix_file, base)
    planned = plan(matrix, base, matrix.cells, base / "unused")
    release = base / "serial-release"
    release.mkdir()
    log = base / "serial.log"
    bootstraps = 0
    # One measurement for the whole side, as `mkosi matrix` is one: settled once, before it.
    with harness.timed() as watch:
        for p in planned:
            directory = project(base, f"serial-{p.name}", None)
            (directory / "mkosi.default").write_text(cell_default(matrix, p.cell, package_cache))
            output = directory / p.config.output.name
            # The cell's own format: the matrix builds directory cells as the tarballs it publishes.
            is_tar = {**matrix.defaults, **p.cell.settings}.get("Format") == OutputFormat.tar.value
            compress = [f"--compress={matrix.release.compress.value}"] if is_tar else []
            build = harness.run_ours([*compress, "-o", str(output), "build"], cwd=directory, log=log)
            bootstrap = build.stages.get("bootstrap")
            if bootstrap is not None and bootstrap.fate == "done":
                bootstraps += 1
            if output.is_dir():
                packed = release / f"{p.name}.tar.zst"
                tar = ["tar", "--zstd", "-C", str(output), "--numeric-owner", "--xattrs", "--acls", "--sort=name",
                       "-cf", str(packed), "."]  # fmt: skip
                harness.check(harness.run(tar, cwd=directory, log=log, stdout_to_log=True), "tar", log)
            else:
                shutil.move(output, release / output.name)
        sums = subprocess.run(
            ["sha256sum", "--binary", *sorted(p.name for p in release.iterdir())],
            cwd=release,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        (release / "SHA256SUMS").write_text("".join(sorted(sums.splitlines(keepends=True))))
    return watch.seconds, bootstraps


# One Debian release in two formats, then in twice as many: one tree, one raw image each time.
SCALING_FORMATS = ("directory", "raw_gpt")
DOUBLED_FORMATS = ("directory", "tar", "raw_gpt", "raw_btrfs")


def scaling_matrix(base: Path, formats: tuple[str, ...]) -> Path:
    path = base / f"scaling-{len(formats)}.toml"
    axes = ", ".join(f'"{f}"' for f in formats)
    path.write_text(
        f'[matrix]\nDistribution = ["debian"]\nRelease = ["bookworm"]\nFormat = [{axes}]\n\n'
        '[defaults]\nPackages = ["less"]\n\n[release]\nCompress = "zstd"\n'
    )
    return path


def scaling(base: Path, jobs: int, package_cache: Path | None, results: harness.Results) -> None:
    for formats in (SCALING_FORMATS, DOUBLED_FORMATS):
        work = base / f"scaling-{len(formats)}"
        work.mkdir()
        seconds, bootstraps = matrix_side(scaling_matrix(base, formats), work, jobs, package_cache)
        results.add(f"{len(formats)} formats", seconds)
        results.facts[f"bootstraps with {len(formats)} formats"] = bootstraps
        print(f"{len(formats)} formats ({', '.join(formats)}): {seconds:6.1f} s, {bootstraps} bootstrap(s)")
    ratio = results.ratio("twice the formats", f"{len(DOUBLED_FORMATS)} formats", f"{len(SCALING_FORMATS)} formats")
    print(f"twice the formats: {ratio:.2f}x the wall time (target: at most 1.25x)")


def matrix_versus_serial(matrix_file: Path, base: Path, jobs: int, package_cache: Path | None,
                         results: harness.Results) -> None:  # fmt: skip
    cells = len(load_matrix(matrix_file, base).cells)
    matrix_time, matrix_bootstraps = matrix_side(matrix_file, base, jobs, package_cache)
    serial_time, serial_bootstraps = serial_side(matrix_file, base, package_cache)
    results.add(MATRIX, matrix_time)
    results.add(SERIAL, serial_time)
    results.facts.update(cells=cells, bootstraps={MATRIX: matrix_bootstraps, SERIAL: serial_bootstraps})
    ratio = results.ratio("matrix/serial", MATRIX, SERIAL)
    print(f"cells:              {cells} ({matrix_file.name}, --jobs {jobs}, {os.cpu_count()} cores)")
    print(f"mkosi matrix:       {matrix_time:7.1f} s, {matrix_bootstraps} bootstraps")
    print(f"mkosi one by one:   {serial_time:7.1f} s, {serial_bootstraps} bootstraps")
    print(f"ratio matrix/serial: {ratio:.2f}x (target: at most 0.40x)")


def main() -> None:
    parser = harness.argument_parser(__doc__, "matrix", whole_doc=True)
    parser.add_argument("--matrix", type=Path, default=harness.REPO / "mkosi.matrix.example")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--package-cache", type=Path, help="a warm package pool both sides use")
    parser.add_argument("--scaling", action="store_true", help="measure twice the formats instead")
    args = parser.parse_args()
    harness.require_root()
    results = harness.Results("matrix-scaling" if args.scaling else "matrix", vars(args))
    with harness.scratch("mkosi-bench-matrix.") as base:
        if args.scaling:
            scaling(base, args.jobs, args.package_cache, results)
        else:
            matrix_versus_serial(args.matrix, base, args.jobs, args.package_cache, results)
    results.write(args.results)


if __name__ == "__main__":
    main()
