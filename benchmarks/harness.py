"""What every benchmark shares: timed builds from a settled machine, mkosi's log, results.

Every measurement is a `timed()` block (`time_command` and `build_ours` are such blocks), which
calls `idle_disk.settle()` first, so that no build pays for the one before it (see idle_disk.py).
Commands write their output to a log file, not a pipe: the log survives to be read for the
error or parsed, and no pipe fills up while we wait for the process.

`parse_log` is the only code that knows the names and fields of mkosi's JSON log events.
`Results` holds the raw seconds of every run, computes medians and ratios from them and writes
them, with the machine and the commit, to `benchmarks/results/NAME.json` (or `--results FILE`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.idle_disk import settle

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks/results"
SCRATCH = Path("/var/tmp")
EXAMPLE = REPO / "tests/integration/example-project"
GIT = ["git", "-c", "user.name=bench", "-c", "user.email=bench@example.org", "-c", "init.defaultBranch=main"]


def argument_parser(
    doc: str, name: str, *, runs: int | None = None, whole_doc: bool = False
) -> argparse.ArgumentParser:
    """A benchmark's parser: its docstring as help, --runs (when it repeats itself) and --results."""
    parser = argparse.ArgumentParser(
        prog=f"python -m benchmarks.{name}",
        description=doc if whole_doc else doc.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter if whole_doc else argparse.HelpFormatter,
    )
    if runs is not None:
        parser.add_argument("--runs", type=int, default=runs)
    parser.add_argument(
        "--results",
        type=Path,
        metavar="FILE",
        help=f"where to write the results as JSON (default: {RESULTS.relative_to(REPO)}/NAME.json)",
    )
    return parser


def require_root() -> None:
    if os.geteuid() != 0:
        raise SystemExit("benchmarks need root")


@dataclass(frozen=True)
class Machine:
    cores: int | None
    cpu: str
    memory_gib: int
    kernel: str

    def __str__(self) -> str:
        return f"{self.cores} cores ({self.cpu}), {self.memory_gib} GiB, Linux {self.kernel}"


def machine() -> Machine:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.machine(),
    )
    memory = int(Path("/proc/meminfo").read_text().split()[1]) // 1024 // 1024
    return Machine(os.cpu_count(), cpu, memory, platform.release())


def head_commit() -> str | None:
    """`git rev-parse HEAD` of this checkout, or None without git or outside a checkout."""
    try:
        result = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
        )
    except FileNotFoundError:
        return None
    return result.stdout.strip() if result.returncode == 0 else None


@contextmanager
def scratch(prefix: str = "mkosi-bench.", base: Path = SCRATCH) -> Iterator[Path]:
    """A directory of the benchmark's own, removed afterwards without crossing into mounts."""
    path = Path(tempfile.mkdtemp(dir=base, prefix=prefix))
    try:
        yield path
    finally:
        subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=True)


def commit_all(project: Path) -> None:
    """Make PROJECT a git repository with everything in it committed (mkosi's sources are git-aware)."""
    subprocess.run([*GIT, "init", "-q", str(project)], check=True)
    subprocess.run([*GIT, "-C", str(project), "add", "-A"], check=True)
    subprocess.run([*GIT, "-C", str(project), "commit", "-qm", "bench"], check=True)


def change_one_line(project: Path) -> None:
    """The one-line change to the example project's sources before an incremental rebuild."""
    source = project / "greeting.c"
    source.write_text(source.read_text().replace("Hello from", "Hello again from"))


# Running commands


@dataclass(frozen=True)
class Finished:
    seconds: float
    returncode: int
    max_rss_kib: int  # of its largest single process, from wait4


def run(
    command: Sequence[str],
    *,
    log: Path,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    stdout_to_log: bool = False,
    preexec_fn: Callable[[], None] | None = None,
) -> Finished:
    """Run COMMAND to its end, its stderr (and stdout if asked) appended to LOG.

    Not settled first: a measurement runs it inside `timed()`, or through `time_command`.
    """
    start = time.monotonic()
    with log.open("ab") as out:
        process = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdout=out if stdout_to_log else subprocess.DEVNULL,
            stderr=out,
            preexec_fn=preexec_fn,
        )
        try:
            # wait4 instead of wait: the child's rusage, whose maxrss is its largest descendant's.
            _, status, usage = os.wait4(process.pid, 0)
        except BaseException:
            process.terminate()
            process.wait()
            raise
        process.returncode = os.waitstatus_to_exitcode(status)
    return Finished(time.monotonic() - start, process.returncode, usage.ru_maxrss)


def check(finished: Finished, what: str, log: Path, lines: int = 40) -> None:
    """Stop the benchmark if the command failed, with the end of its log (which goes away with its directory)."""
    if finished.returncode != 0:
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-lines:])
        raise SystemExit(f"{what} failed ({finished.returncode}):\n{tail}")


def time_command(
    command: Sequence[str],
    *,
    what: str,
    log: Path,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    stdout_to_log: bool = False,
) -> float:
    """The seconds one settled, successful run of COMMAND (a peer's build, say) took."""
    with timed():
        finished = run(command, log=log, cwd=cwd, env=env, stdout_to_log=stdout_to_log)
    check(finished, what, log)
    return finished.seconds


@dataclass
class Stopwatch:
    seconds: float = 0.0


@contextmanager
def timed() -> Iterator[Stopwatch]:
    """A measurement (of one command, or of several as one), from a settled machine.

    Syncs, drops the caches and waits for an idle disk, then times the block.
    """
    settle()
    watch = Stopwatch()
    start = time.monotonic()
    try:
        yield watch
    finally:
        watch.seconds = time.monotonic() - start


# mkosi's log


@dataclass(frozen=True)
class StageTime:
    fate: str  # "done", or "reused" (from the -i cache)
    seconds: float


@dataclass(frozen=True)
class Built:
    seconds: float  # the whole build, as mkosi measured it
    outside_subprocesses: float  # mkosi's own share of it
    output: Path


@dataclass(frozen=True)
class BuildLog:
    stages: dict[str, StageTime] = field(default_factory=dict)  # in the order they ran
    built: Built | None = None


# The version of mkosi's event schema (README, "Build events") this parser reads.
EVENT_SCHEMA = 1


def parse_log(text: str) -> BuildLog:
    """The stage times and the build's total from mkosi's `--log-format=json` events.

    The one place that reads mkosi's events, by their `type` and named fields (schema 1, see
    mkosi/events.py): `stage-finished` (`stage`, `reused`, `seconds`) and `build-finished`
    (`seconds`, `outside_subprocesses`, `output`). Lines that are not JSON objects (a traceback, a
    subprocess's own output) and other events are passed over; an event of another schema, or of
    these types without its fields, is an error, since it means mkosi's events changed.
    """
    stages: dict[str, StageTime] = {}
    built = None
    for line in text.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if not isinstance(event, dict) or not isinstance(kind := event.get("type"), str):
            continue
        try:
            if event["schema"] != EVENT_SCHEMA:
                raise ValueError(f"schema {event['schema']}, this parser reads {EVENT_SCHEMA}")
            if kind == "build-finished":
                built = Built(float(event["seconds"]), float(event["outside_subprocesses"]), Path(event["output"]))
            elif kind == "stage-finished":
                fate = "reused" if event["reused"] else "done"
                stages[str(event["stage"])] = StageTime(fate, float(event["seconds"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"mkosi's {kind!r} event lacks {e}: {line}") from e
    return BuildLog(stages, built)


@dataclass(frozen=True)
class OurBuild:
    seconds: float  # wall time, as the benchmark measured it
    max_rss_kib: int
    stages: dict[str, StageTime]
    built: Built


def mkosi_command(args: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "mkosi", "--log-format=json", *args]


def run_ours(args: Sequence[str], *, cwd: Path, log: Path) -> OurBuild:
    """`mkosi ARGS` (ours, JSON log appended to LOG) without settling: a step of a `timed()` block."""
    offset = log.stat().st_size if log.exists() else 0
    finished = run(mkosi_command(args), cwd=cwd, log=log)
    check(finished, "our mkosi", log)
    with log.open("rb") as f:
        f.seek(offset)
        parsed = parse_log(f.read().decode(errors="replace"))
    if parsed.built is None:
        raise SystemExit(f"our mkosi logged no 'built' event (log: {log})")
    return OurBuild(finished.seconds, finished.max_rss_kib, parsed.stages, parsed.built)


def build_ours(args: Sequence[str], *, cwd: Path, log: Path) -> OurBuild:
    """One timed build by our mkosi, from a settled machine."""
    with timed():
        return run_ours(args, cwd=cwd, log=log)


# Results


@dataclass
class Results:
    """The raw seconds of every run by series name, the medians and ratios made of them."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    runs: dict[str, list[float]] = field(default_factory=dict)
    ratios: dict[str, float] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)  # what is not seconds: counts, sizes

    def add(self, series: str, seconds: float) -> None:
        self.runs.setdefault(series, []).append(seconds)

    def median(self, series: str) -> float:
        return statistics.median(self.runs[series])

    def medians(self) -> dict[str, float]:
        return {series: statistics.median(values) for series, values in self.runs.items()}

    def ratio(self, name: str, numerator: str, denominator: str) -> float:
        """The ratio of two series' medians, recorded under NAME."""
        self.ratios[name] = self.median(numerator) / self.median(denominator)
        return self.ratios[name]

    def document(self) -> dict[str, Any]:
        return {
            "benchmark": self.name,
            "finished": datetime.now(UTC).isoformat(timespec="seconds"),
            "commit": head_commit(),
            "machine": {**asdict(machine()), "load_average": os.getloadavg()[0]},
            "arguments": self.arguments,
            "runs": self.runs,
            "medians": self.medians(),
            "ratios": self.ratios,
            "facts": self.facts,
        }

    def write(self, path: Path | None = None) -> Path:
        """Write the results as JSON to PATH (default: benchmarks/results/NAME.json); print the commit and where."""
        path = path or RESULTS / f"{self.name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        document = self.document()
        path.write_text(json.dumps(document, indent=2, default=str) + "\n")
        if document["commit"]:
            print(f"Commit: {document['commit'][:12]}")
        print(f"Results: {path}")
        return path
