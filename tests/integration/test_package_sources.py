"""Packages that come damaged or not at all: from a mirror that stalls, resets or serves a damaged
file (a real Debian mirror passed through a faulty one on 127.0.0.1), and from a package pool one of
whose files was damaged on the disk."""

from __future__ import annotations

import hashlib
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from mkosi import package_cache
from mkosi.distributions.debian import DEFAULT_MIRROR, host_mirrors
from mkosi.package_managers import RETRIES
from tests.integration.faulty_mirror import Fault, FaultyMirror, faulty_mirror
from tests.integration.support import CACHE, log_events, mkosi

POOL = "debian~bookworm~x86-64"
# The package whose file the faulty mirror damages: small, and not in minbase.
LESS = "/pool/main/l/less/less_"
TIMEOUT = 5
# A failing build ends well within this, stalls and retries included (each stalled try costs TIMEOUT).
BOUND = 60.0


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _shared_pool_but(tmp_path: Path, prefix: str) -> Path:
    """A package cache of its own whose pool has the shared pool's packages but those whose names
    start with `prefix`: apt downloads only those (and what bookworm has in newer versions than
    the pool's point release), and this test damages no pool other tests use."""
    cache = tmp_path / "cache"
    shared = CACHE / "packages" / POOL
    names = [p.name for p in shared.glob("*.deb") if not p.name.startswith(prefix)] if shared.is_dir() else []
    package_cache.link_in(shared, cache / POOL, names)
    return cache


@pytest.fixture(scope="module")
def upstream() -> str:
    return host_mirrors()[0] or DEFAULT_MIRROR


def _build_from(mirror: FaultyMirror, project: Path, cache: Path, check: bool) -> tuple[int, str, float]:
    """A build of `less` from `mirror`; its exit status, standard error and wall time."""
    started = time.monotonic()
    result = mkosi(
        *("-d", "debian", "-r", "bookworm", "-t", "directory", "-p", "less"),
        *(f"--mirror={mirror.url}", f"--mirror-timeout={TIMEOUT}", f"--cache={cache}", "build"),
        cwd=project,
        check=check,
        timeout=2 * BOUND,
    )
    return result.returncode, result.stderr, time.monotonic() - started


def _what_is_said(fault: Fault, mirror: FaultyMirror) -> tuple[str, int]:
    """What the error says happened, and how many tries it took: apt tries again after a network
    failure (RETRIES times), mkosi once after a file that came whole but damaged."""
    if fault is Fault.stall:
        return f"the mirror sent nothing for {TIMEOUT} s (MirrorTimeout={TIMEOUT})", 1 + RETRIES
    if fault is Fault.reset:
        return "the mirror reset the connection", 1 + RETRIES
    if fault is Fault.cut:
        return "the mirror closed the connection before the end of the file", 1 + RETRIES
    if fault is Fault.truncated:
        return f"the mirror sent {mirror.size // 2} bytes of {mirror.size}", 2
    return "the file has another SHA-256 than the package index names", 2


@pytest.mark.parametrize("fault", list(Fault), ids=[f.value for f in Fault])
def test_a_failing_mirror_fails_the_build_in_bounded_time_naming_the_file(
    tmp_path: Path, upstream: str, fault: Fault
) -> None:
    cache = _shared_pool_but(tmp_path, "less_")
    project = tmp_path / "project"
    project.mkdir()
    with faulty_mirror(upstream, LESS, fault) as mirror:
        returncode, stderr, seconds = _build_from(mirror, project, cache, check=False)
    assert returncode == 1, stderr
    assert seconds < BOUND
    what, tries = _what_is_said(fault, mirror)
    # Bounded retries: the mirror saw as many requests for the file as the error says there were tries.
    assert len(mirror.requests) == tries
    error = [line for line in stderr.splitlines() if line.startswith("mkosi: ")]
    assert len(error) == 1, stderr
    assert error[0].startswith(f"mkosi: could not download {mirror.target_url}: {what}, after {tries} tries (apt: ")
    # The damaged file is retried once, after a warning saying so; a network failure is apt's to retry.
    warnings = [str(e["event"]) for e in log_events(stderr) if e.get("level") == "warning"]
    retried = f"the mirror sent {mirror.target_url} damaged: {what}; downloading it once more"
    assert warnings == ([retried] if tries == 2 else [])
    # Nothing left behind: no output, no workspace; only the log, which has apt's whole story.
    assert sorted(p.name for p in project.iterdir()) == ["image.log"]
    workspaces = [str(e["path"]) for e in log_events(stderr) if e.get("event") == "workspace"]
    assert len(workspaces) == 1 and not Path(workspaces[0]).exists()
    assert "E: Failed to fetch" in (project / "image.log").read_text()
    # Nothing damaged entered the pool either.
    assert not list((cache / POOL).glob("less_*"))


@pytest.mark.parametrize("fault", [Fault.reset, Fault.truncated], ids=["reset", "truncated"])
def test_a_fault_that_happens_once_is_tried_past(tmp_path: Path, upstream: str, fault: Fault) -> None:
    cache = _shared_pool_but(tmp_path, "less_")
    project = tmp_path / "project"
    project.mkdir()
    with faulty_mirror(upstream, LESS, fault, faulty_answers=1) as mirror:
        returncode, stderr, _ = _build_from(mirror, project, cache, check=True)
    assert returncode == 0
    assert len(mirror.requests) == 2
    # apt tries a reset download again by itself; mkosi a damaged one, after saying so.
    warnings = [str(e["event"]) for e in log_events(stderr) if e.get("level") == "warning"]
    assert len(warnings) == (1 if fault is Fault.truncated else 0), warnings
    status = subprocess.run(["dpkg", f"--root={project / 'image'}", "-s", "less"], capture_output=True, text=True)
    assert "Status: install ok installed" in status.stdout, status.stderr
    # What finally came is what the signed index names, and only that entered the pool.
    (pooled,) = (cache / POOL).glob("less_*.deb")
    assert pooled.stat().st_size == mirror.size
    subprocess.run(["rm", "-rf", "--one-file-system", str(project / "image")], check=True)


def test_an_unreachable_mirror_is_named_not_taken_for_missing_packages(tmp_path: Path) -> None:
    # A port bound but not listening refuses every connection, and no other program can take it.
    with socket.socket() as unreachable:
        unreachable.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{unreachable.getsockname()[1]}/debian"
        result = mkosi(
            "-d", "debian", "-r", "bookworm", "-t", "directory", f"--mirror={url}", "build", cwd=tmp_path, check=False
        )
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1].startswith(
        f"mkosi: could not download {url}/dists/bookworm/InRelease: could not connect to the mirror, "
        f"after {1 + RETRIES} tries (apt: Could not connect to 127.0.0.1:"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.log"]


def _flip_a_byte(path: Path) -> None:
    with path.open("r+b") as f:
        f.seek(path.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0x01]))


def test_a_damaged_pool_file_is_reported_once_and_replaced_by_a_good_download(
    tmp_path: Path, directory_image: Path
) -> None:
    # The shared pool has the less that directory_image installed; this test's pool a damaged copy.
    version = subprocess.run(
        ["dpkg-query", f"--admindir={directory_image}/var/lib/dpkg", "-W", "-f=${Version}", "less"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    good = CACHE / "packages" / POOL / f"less_{version}_amd64.deb"
    cache = _shared_pool_but(tmp_path, "less_")
    damaged = cache / POOL / good.name
    shutil.copyfile(good, damaged)  # a copy, never a link: the shared pool stays intact
    _flip_a_byte(damaged)
    bad, inode = _digest(damaged), damaged.stat().st_ino
    project = tmp_path / "project"
    project.mkdir()
    result = mkosi("-d", "debian", "-r", "bookworm", "-t", "directory", "-p", "less", f"--cache={cache}", cwd=project)
    warnings = [str(e["event"]) for e in log_events(result.stderr) if e.get("level") == "warning"]
    assert warnings == [
        f"package pool file {damaged} is damaged: its SHA-256 is {bad}, "
        f"the package index names {_digest(good)}; downloading it again"
    ]
    # Replaced by the download, by a rename (another inode), not rewritten where readers may see half.
    assert _digest(damaged) == _digest(good)
    assert damaged.stat().st_ino != inode
    # And the image has the package the index names, as the shared image has it.
    assert _digest(project / "image/usr/bin/less") == _digest(directory_image / "usr/bin/less")
    subprocess.run(["rm", "-rf", "--one-file-system", str(project / "image")], check=True)
