"""A release built as shards in separate processes and directories that share a stage cache in a
real OCI registry (basic auth), collected into one release that is byte for byte the one a single
host publishes: each release bootstrapped once by the whole fleet; a tampered fragment is refused;
a registry that serves a corrupt blob, or is down, costs a local build and one warning."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.registry import Registry, registry
from tests.integration.support import CACHE, ModuleDir

MATRIX = """
[matrix]
Release = ["bookworm", "trixie"]
Format = ["tar", "cpio", "raw_gpt"]
[defaults]
Distribution = "debian"
Packages = "less"
[release]
Directory = "release"
Sign = true
SourceDateEpoch = 1700000000
"""
REMOTE = """RemoteCache = "oci://{host}/mkosi/stages"
RemoteCacheInsecure = true
"""
USER = ("fleet", "fleet-registry-secret")
SHARDS = (1, 2, 3)


def _mkosi_matrix(
    cwd: Path, *args: str, home: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "matrix", *args, "--log-format=json"],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "GNUPGHOME": str(home), **(env or {})},
    )


# The registry's credentials, as a CI job's secrets reach it: in the environment, never in argv.
CREDENTIALS = {"MKOSI_REMOTE_CACHE_USERNAME": USER[0], "MKOSI_REMOTE_CACHE_PASSWORD": USER[1]}


def _checkout(base: Path, name: str, matrix: str) -> Path:
    checkout = base / name
    checkout.mkdir()
    # The package pool is shared (downloads are not what this is about); stage caches are not.
    (checkout / "mkosi.default").write_text(f"[Packages]\nCache={CACHE / 'packages'}\n")
    (checkout / "mkosi.matrix").write_text(matrix)
    return checkout


@pytest.fixture(scope="module")
def registry_server(module_dir: ModuleDir) -> Iterator[Registry]:
    with registry(module_dir("registry"), user=USER) as server:
        yield server


@pytest.fixture(scope="module")
def fleet(module_dir: ModuleDir, registry_server: Registry) -> Path:
    """A single-host release, and the same matrix as three shards in three other checkouts that
    share nothing but a registry (one after the other, as CI jobs that queue), collected."""
    base = module_dir("fleet")
    home = base / "gnupg"
    home.mkdir(mode=0o700)
    key = ["--quick-gen-key", "fleet <fleet@mkosi.invalid>", "ed25519", "sign", "never"]
    env = {**os.environ, "GNUPGHOME": str(home)}
    subprocess.run(["gpg", "--batch", "--passphrase", "", *key], env=env, check=True, capture_output=True)
    # gpg started an agent for the key: it would outlive the test.
    subprocess.run(["gpgconf", "--kill", "gpg-agent"], env=env, check=True)
    fleet_matrix = MATRIX + REMOTE.format(host=registry_server.host)
    for checkout in ("collector", *(f"runner-{i}" for i in SHARDS)):
        _checkout(base, checkout, fleet_matrix)
    # The single host builds at the same time, on its own, without the registry.
    single_checkout = _checkout(base, "single", MATRIX)
    with (base / "single.stderr").open("w") as log:
        single = subprocess.Popen([sys.executable, "-m", "matrix"], cwd=single_checkout, stderr=log, env=env)
    plan = subprocess.run([sys.executable, "-m", "matrix", "plan", "--shards", "3", "--format", "json"],
                          cwd=base / "collector", capture_output=True, text=True, check=True)  # fmt: skip
    shards = json.loads(plan.stdout)["include"]
    assert [s["shard"] for s in shards] == ["1/3", "2/3", "3/3"]
    for i, s in zip(SHARDS, shards, strict=True):
        # The log to a file: a pipe read only at the end could fill up and stop the shard.
        with (base / f"runner-{i}.stderr").open("w") as log:
            argv = [sys.executable, "-m", "matrix", "build", "--shard", s["shard"], "-o", "fragment"]
            shard = subprocess.run(argv, cwd=base / f"runner-{i}", stderr=log, env={**env, **CREDENTIALS})
        assert shard.returncode == 0, (base / f"runner-{i}.stderr").read_text()[-3000:]
        shutil.move(base / f"runner-{i}/fragment", base / f"collector/fragment-{i}")
    assert single.wait(timeout=900) == 0, (base / "single.stderr").read_text()[-3000:]
    fragments = [f"fragment-{i}" for i in SHARDS]
    collected = _mkosi_matrix(base / "collector", "collect", *fragments, home=home)
    assert collected.returncode == 0, collected.stderr[-3000:]
    return base


def test_each_release_is_bootstrapped_once_by_the_whole_fleet(fleet: Path) -> None:
    manifest = json.loads((fleet / "collector/release/manifest.json").read_text())
    bootstraps: dict[str, list[tuple[str, dict[str, object]]]] = {}
    for cell in manifest["cells"]:
        stage = next(s for s in cell["stages"] if s["name"] == "bootstrap")
        bootstraps.setdefault(str(stage["key"]), []).append((cell["shard"], stage))
    assert len(bootstraps) == 2  # bookworm and trixie
    for uses in bootstraps.values():
        assert len(uses) == 3
        built = [shard for shard, stage in uses if not stage["cached"]]
        assert len(built) == 1, uses
        # Every shard but the builder's got it from the registry.
        pulled = {shard for shard, stage in uses if stage["pulled"]}
        assert pulled == {shard for shard, _ in uses} - set(built), uses


def test_registry_credentials_stay_out_of_logs_and_command_lines(fleet: Path) -> None:
    for log in [*fleet.glob("runner-*.stderr"), *fleet.rglob("*.log")]:
        assert USER[1] not in log.read_text(errors="replace"), log


def test_the_collected_release_is_the_single_hosts_byte_for_byte(fleet: Path) -> None:
    single, collected = fleet / "single/release", fleet / "collector/release"
    names = sorted(p.name for p in single.iterdir())
    assert names == sorted(p.name for p in collected.iterdir())
    for name in names:
        if name in ("manifest.json", "SHA256SUMS.gpg"):
            continue
        assert (single / name).read_bytes() == (collected / name).read_bytes(), name
    checked = subprocess.run(
        ["sha256sum", "--strict", "-c", "SHA256SUMS"], cwd=collected, capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    env = {**os.environ, "GNUPGHOME": str(fleet / "gnupg")}
    keyring = fleet / "keyring.gpg"
    subprocess.run(["gpg", "--export", "--output", str(keyring)], env=env, check=True)
    verified = subprocess.run(["gpgv", "--keyring", str(keyring), "SHA256SUMS.gpg", "SHA256SUMS"], cwd=collected,
                              capture_output=True, text=True)  # fmt: skip
    assert verified.returncode == 0, verified.stderr
    manifest = json.loads((collected / "manifest.json").read_text())
    assert len(manifest["cells"]) == 6
    assert sorted(s["shard"] for s in manifest["shards"]) == ["1/3", "2/3", "3/3"]


def test_a_tampered_or_missing_fragment_publishes_nothing(fleet: Path, tmp_path: Path) -> None:
    collector = fleet / "collector"
    tampered = tmp_path / "tampered"
    shutil.copytree(collector / "fragment-2", tampered)
    victim = next(p for p in tampered.iterdir() if p.name != "fragment.json")
    with victim.open("r+b") as f:
        f.seek(4096)
        byte = f.read(1)
        f.seek(4096)
        f.write(bytes([byte[0] ^ 0x01]))
    out = tmp_path / "release"
    result = _mkosi_matrix(
        collector, "collect", "fragment-1", str(tampered), "fragment-3", "-o", str(out), home=fleet / "gnupg"
    )
    assert result.returncode != 0
    assert (
        result.stderr.strip() == f"mkosi matrix: {victim}: is not what its fragment records (size or SHA-256 differs)"
    )
    result = _mkosi_matrix(collector, "collect", "fragment-1", "fragment-3", "-o", str(out), home=fleet / "gnupg")
    assert result.returncode != 0 and "cells not built or failed" in result.stderr
    assert not out.exists() and not list(tmp_path.glob(".release.*"))


def _one_cell_alone(
    fleet: Path, name: str, checkout: str
) -> tuple[subprocess.CompletedProcess[str], dict[str, object]]:
    """One cell in a checkout of its own (nothing cached), with the fleet's registry."""
    directory = _checkout(fleet, checkout, (fleet / "collector/mkosi.matrix").read_text())
    result = _mkosi_matrix(directory, "build", "--cell", name, "-o", "fragment", home=fleet / "gnupg", env=CREDENTIALS)
    assert result.returncode == 0, result.stderr[-3000:]
    cell = json.loads((directory / "fragment/fragment.json").read_text())["cells"][0]
    return result, next(s for s in cell["stages"] if s["name"] == "bootstrap")


def _a_bookworm_cell(fleet: Path) -> str:
    cells = json.loads((fleet / "collector/release/manifest.json").read_text())["cells"]
    return str(next(c["name"] for c in cells if "bookworm" in c["name"]))


# The last two tests break the module's registry: they stay last.
def test_a_corrupt_blob_in_the_registry_costs_a_local_build(fleet: Path, registry_server: Registry) -> None:
    for blob in registry_server.blobs():
        if blob.stat().st_size > 1 << 20:
            with blob.open("r+b") as f:
                f.seek(blob.stat().st_size // 2)
                byte = f.read(1)
                f.seek(-1, os.SEEK_CUR)
                f.write(bytes([byte[0] ^ 0xFF]))
    result, bootstrap = _one_cell_alone(fleet, _a_bookworm_cell(fleet), "after-corruption")
    assert "could not pull stage" in result.stderr
    assert not bootstrap["cached"] and not bootstrap["pulled"]


def test_a_registry_that_is_down_costs_a_local_build_and_one_warning(fleet: Path, registry_server: Registry) -> None:
    registry_server.stop()
    result, bootstrap = _one_cell_alone(fleet, _a_bookworm_cell(fleet), "registry-down")
    assert result.stderr.count("cannot be reached") == 1, result.stderr[-3000:]
    assert not bootstrap["cached"]
