"""`mkosi matrix verify RELEASE`: rebuild a published release from its manifest and compare.

Every cell that succeeded is built again from the same matrix file (its digest must be the one the
manifest records), with the same epoch and seed, and with exactly the packages the manifest records
(PackageLock=: the same versions, each file checked against its SHA-256). The rebuild happens in
scratch space and publishes a release of its own there; each artifact of the published release is
then compared, byte for byte, with its rebuilt twin. Nothing in the published release is touched.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from matrix import release as rel
from matrix.progress import LogProgress
from matrix.runner import Run, Setting, plan
from matrix.scheduler import Status
from matrix.spec import Matrix
from mkosi import naming
from mkosi.errors import ConfigError
from mkosi.package_lock import records_from_json
from mkosi.run import run
from mkosi.workspace import remove_tree

# Where rebuilds happen when no --scratch is given: on disk, as big as the release needs.
SCRATCH = Path("/var/tmp")
# How much of what differs is shown per artifact.
DIFFERENCE_LINES = 12


@dataclass(frozen=True)
class Verdict:
    artifact: str
    identical: bool
    differences: str = ""


def read_manifest(release: Path) -> dict[str, Any]:
    path = release / rel.MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"no {rel.MANIFEST}: not a release mkosi matrix published", origin=str(release)) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"cannot read the manifest: {e}", origin=str(path)) from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("cells"), list) or "matrix" not in manifest:
        raise ConfigError("not a release manifest (no matrix digest or cells)", origin=str(path))
    return manifest


def _built_from_a_base(cell: dict[str, Any]) -> bool:
    return not any(stage.get("name") == "bootstrap" for stage in cell.get("stages", []))


def rebuild_settings(manifest: dict[str, Any], locks: Path) -> dict[str, list[Setting]]:
    """For each cell the release published: its recorded epoch and seed, and a lock file of its
    recorded packages written under `locks`."""
    origin = rel.MANIFEST
    overrides: dict[str, list[Setting]] = {}
    for cell in manifest["cells"]:
        if cell.get("status") != Status.success.value:
            continue
        name = cell["name"]
        settings = [(origin, "Seed", cell["seed"])]
        # A cell built from another cell's image (BaseImage=) bootstraps nothing: its base is
        # rebuilt and compared as that cell; what it installs on top is not recorded yet.
        if not _built_from_a_base(cell):
            packages = records_from_json(cell.get("packages") or None, f"{origin}: cell {name}: packages")
            text = json.dumps([p.as_json() for p in packages], indent=1) + "\n"
            # Named by content: cells that installed the same packages still share their bootstrap.
            lock = locks / f"{hashlib.sha256(text.encode()).hexdigest()[:16]}.json"
            lock.write_text(text)
            settings.append((origin, "PackageLock", str(lock)))
        if cell.get("source_date_epoch") is not None:
            settings.append((origin, "SourceDateEpoch", str(cell["source_date_epoch"])))
        overrides[name] = settings
    if not overrides:
        raise ConfigError("the release has no cell that succeeded: nothing to rebuild", origin=origin)
    return overrides


def check_matrix(matrix: Matrix, manifest: dict[str, Any]) -> None:
    recorded = manifest["matrix"].get("sha256")
    if recorded != matrix.digest:
        raise ConfigError(
            f"is not the matrix file the release was built from (SHA-256 {matrix.digest}, the release's {recorded})",
            origin=str(matrix.path),
        )


async def differences(published: Path, rebuilt: Path, log: Any) -> str:
    """The first lines of what differs: diffoscope's report when it is installed, else the two
    archives' listings side by side (tarballs) or the first differing bytes (anything else)."""
    if shutil.which("diffoscope"):
        found = await run(["diffoscope", "--no-progress", "--text", "-", published, rebuilt], capture_stdout=True,
                          check=False, log=log)  # fmt: skip
        return _first_lines(found.stdout)
    if ".tar" in published.name:
        listings = []
        for archive in (published, rebuilt):
            listed = await run(["tar", "-tvf", archive, "--full-time"], capture_stdout=True, check=False, log=log)
            listings.append(listed.stdout.splitlines())
        changed = [f"- {a}\n+ {b}" for a, b in zip(*listings, strict=False) if a != b]
        if changed or len(listings[0]) != len(listings[1]):
            return _first_lines("\n".join(changed) or f"{len(listings[0])} entries, rebuilt {len(listings[1])}")
    compared = await run(["cmp", published, rebuilt], capture_stdout=True, check=False, log=log)
    return _first_lines(compared.stdout)


def _first_lines(text: str) -> str:
    lines = text.strip().splitlines()
    return "\n".join(lines[:DIFFERENCE_LINES] + (["..."] if len(lines) > DIFFERENCE_LINES else []))


async def compare(published: Path, rebuilt: Path, names: Sequence[str], log: Any) -> list[Verdict]:
    verdicts = []
    for name in names:
        ours, theirs = published / name, rebuilt / name
        if not theirs.is_file():
            verdicts.append(Verdict(name, False, "the rebuild did not make it"))
            continue
        same = await run(["cmp", "-s", ours, theirs], check=False, log=log)
        verdicts.append(
            Verdict(name, True) if same.returncode == 0 else Verdict(name, False, await differences(ours, theirs, log))
        )
    return verdicts


def artifact_names(manifest: dict[str, Any]) -> list[str]:
    """Every artifact of the cells that succeeded, and SHA256SUMS, which names them all."""
    names = [a["name"] for cell in manifest["cells"] if cell.get("status") == "success" for a in cell["artifacts"]]
    return [*sorted(names), naming.SUMS]


def table(verdicts: Sequence[Verdict]) -> str:
    width = max(len(v.artifact) for v in verdicts)
    lines = []
    for v in verdicts:
        lines.append(f"{v.artifact:<{width}}  {'identical' if v.identical else 'differs'}")
        lines += [f"    {line}" for line in v.differences.splitlines()]
    return "\n".join(lines)


@dataclass
class Rebuild:
    """One verification, planned before any work (every refusal is one line): the published release,
    the scratch space it is rebuilt in, and the run that rebuilds it."""

    release: Path
    manifest: dict[str, Any]
    scratch: Path
    run: Run

    @classmethod
    def plan(cls, release: Path, matrix: Matrix, directory: Path, scratch_parent: Path, jobs: int) -> Rebuild:
        manifest = read_manifest(release)
        check_matrix(matrix, manifest)
        scratch = Path(tempfile.mkdtemp(prefix="mkosi-verify.", dir=scratch_parent))
        try:
            (scratch / "locks").mkdir()
            overrides = rebuild_settings(manifest, scratch / "locks")
            cells = [c for c in matrix.cells if c.name in overrides]
            if missing := sorted(overrides.keys() - {c.name for c in cells}):
                raise ConfigError(f"the matrix file has no cell {', '.join(missing)}", origin=str(matrix.path))
            # The same release, published in scratch space and never signed: the signature is the
            # release's own, made with a key the verifier need not have.
            settings = dataclasses.replace(matrix.release, directory=scratch / "release", sign=False)
            rebuilt = dataclasses.replace(matrix, release=settings)
            planned = plan(rebuilt, directory, cells, scratch / "work/cells", overrides)
        except BaseException:
            shutil.rmtree(scratch)  # nothing but the lock files yet
            raise
        (scratch / "work").mkdir()
        return cls(release, manifest, scratch, Run(rebuilt, planned, scratch / "work", max_jobs=jobs))

    async def verify(self, log: Any) -> tuple[list[Verdict], list[str]]:
        """The verdict of every artifact and the cells that could not be rebuilt (with why); the
        scratch space is gone afterwards."""
        try:
            outcomes = await self.run.execute(LogProgress())
            failed = [f"{o.name}: {o.error}" for o in outcomes if o.status is not Status.success]
            names = artifact_names(self.manifest)
            if failed:
                # A partial rebuild's SHA256SUMS lists fewer artifacts: that says nothing new.
                names.remove(naming.SUMS)
            return await compare(self.release, self.scratch / "release", names, log), failed
        finally:
            with anyio.CancelScope(shield=True):
                await remove_tree(self.scratch)
