#!/usr/bin/env python3
"""The example matrix: `mkosi matrix` against the same cells built one by one by `mkosi`.

Both sides start cold: no package pool and no stage cache (pass --package-cache DIR to give both
the same warm package pool instead). The serial side does what a release script around mkosi
would do to publish the same thing: one `mkosi` run per cell, `directory` outputs packed into
tarballs, and a SHA256SUMS. Prints both wall times, their ratio and the number of bootstraps each
side ran (from the matrix's manifest and from the serial builds' own logs).

    .venv/bin/python benchmarks/matrix.py [--matrix mkosi.matrix.example] [--jobs N]

With --scaling it measures instead how the wall time of `mkosi matrix` grows with the number of
formats of one distribution: a matrix of SCALING_FORMATS against one of twice as many (target: at
most 25 % more time).

Needs root and the Debian mirror. Run it once at a time: it fills both cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from matrix.runner import plan  # noqa: E402
from matrix.spec import Cell, Matrix, ini_value, load_matrix  # noqa: E402
from mkosi.config import OutputFormat  # noqa: E402
from mkosi.settings import BY_KEY  # noqa: E402

SECTION = {key: section for (section, key) in BY_KEY}


def run(command: list[str], cwd: Path, log: Path) -> float:
    start = time.monotonic()
    with log.open("a") as out:
        result = subprocess.run(command, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    elapsed = time.monotonic() - start
    if result.returncode != 0:
        # The log goes away with the benchmark's directory: show its end now.
        tail = "".join(log.read_text().splitlines(keepends=True)[-30:])
        raise SystemExit(f"{command[:3]} failed ({result.returncode}):\n{tail}")
    return elapsed


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
    log = base / "matrix.log"
    elapsed = run([sys.executable, "-m", "matrix", "--jobs", str(jobs), "--log-format=json"], directory, log)
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
    start = time.monotonic()
    for p in planned:
        directory = project(base, f"serial-{p.name}", None)
        (directory / "mkosi.default").write_text(cell_default(matrix, p.cell, package_cache))
        output = directory / p.config.output.name
        # The cell's own format: the matrix builds directory cells as the tarballs it publishes.
        is_tar = {**matrix.defaults, **p.cell.settings}.get("Format") == OutputFormat.tar.value
        compress = [f"--compress={matrix.release.compress.value}"] if is_tar else []
        run([sys.executable, "-m", "mkosi", *compress, "-o", str(output), "build"], directory, log)
        if "bootstrap: done" in output.with_name(output.name + ".log").read_text():
            bootstraps += 1
        if output.is_dir():
            packed = release / f"{p.name}.tar.zst"
            run(
                [
                    "tar",
                    "--zstd",
                    "-C",
                    str(output),
                    "--numeric-owner",
                    "--xattrs",
                    "--acls",
                    "--sort=name",
                    "-cf",
                    str(packed),
                    ".",
                ],
                directory,
                log,
            )
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
    return time.monotonic() - start, bootstraps


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


def scaling(base: Path, jobs: int, package_cache: Path | None) -> None:
    times: dict[int, float] = {}
    for formats in (SCALING_FORMATS, DOUBLED_FORMATS):
        work = base / f"scaling-{len(formats)}"
        work.mkdir()
        times[len(formats)], bootstraps = matrix_side(scaling_matrix(base, formats), work, jobs, package_cache)
        print(f"{len(formats)} formats ({', '.join(formats)}): {times[len(formats)]:6.1f} s, {bootstraps} bootstrap(s)")
    small, large = times[len(SCALING_FORMATS)], times[len(DOUBLED_FORMATS)]
    print(f"twice the formats: {large / small:.2f}x the wall time (target: at most 1.25x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--matrix", type=Path, default=REPO / "mkosi.matrix.example")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--package-cache", type=Path, help="a warm package pool both sides use")
    parser.add_argument("--scaling", action="store_true", help="measure twice the formats instead")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root")
    base = Path(tempfile.mkdtemp(prefix="mkosi-bench-matrix.", dir="/var/tmp"))
    if args.scaling:
        try:
            scaling(base, args.jobs, args.package_cache)
        finally:
            shutil.rmtree(base, ignore_errors=True)
        return
    try:
        cells = len(load_matrix(args.matrix, base).cells)
        matrix_time, matrix_bootstraps = matrix_side(args.matrix, base, args.jobs, args.package_cache)
        serial_time, serial_bootstraps = serial_side(args.matrix, base, args.package_cache)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(f"cells:              {cells} ({args.matrix.name}, --jobs {args.jobs}, {os.cpu_count()} cores)")
    print(f"mkosi matrix:       {matrix_time:7.1f} s, {matrix_bootstraps} bootstraps")
    print(f"mkosi one by one:   {serial_time:7.1f} s, {serial_bootstraps} bootstraps")
    print(f"ratio matrix/serial: {matrix_time / serial_time:.2f}x (target: at most 0.40x)")


if __name__ == "__main__":
    main()
