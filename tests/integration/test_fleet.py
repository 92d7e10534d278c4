"""A release built as shards in separate processes and directories, collected into one release that
is byte for byte the one a single host publishes; a tampered fragment is refused."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.support import CACHE

MATRIX = """
[matrix]
Format = ["tar", "directory", "raw_squashfs"]
[defaults]
Distribution = "debian"
Release = "bookworm"
Packages = "less"
[release]
Directory = "release"
Sign = true
SourceDateEpoch = 1700000000
"""


def _mkosi_matrix(cwd: Path, *args: str, home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "matrix", *args, "--log-format=json"],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "GNUPGHOME": str(home)},
    )


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A single-host release, and the same matrix as two shards in two other checkouts, collected."""
    base = tmp_path_factory.mktemp("fleet")
    home = base / "gnupg"
    home.mkdir(mode=0o700)
    key = ["--quick-gen-key", "fleet <fleet@mkosi.invalid>", "ed25519", "sign", "never"]
    env = {**os.environ, "GNUPGHOME": str(home)}
    subprocess.run(["gpg", "--batch", "--passphrase", "", *key], env=env, check=True, capture_output=True)
    for checkout in ("single", "runner-1", "runner-2", "collector"):
        (base / checkout).mkdir()
        (base / checkout / "mkosi.default").write_text(f"[Packages]\nCache={CACHE / 'packages'}\n")
        (base / checkout / "mkosi.matrix").write_text(MATRIX)
    single = _mkosi_matrix(base / "single", home=home)
    assert single.returncode == 0, single.stderr[-3000:]
    plan = subprocess.run([sys.executable, "-m", "matrix", "plan", "--shards", "2", "--format", "json"],
                          cwd=base / "collector", capture_output=True, text=True, check=True)  # fmt: skip
    shards = json.loads(plan.stdout)["include"]
    assert [s["shard"] for s in shards] == ["1/2", "2/2"]
    # The shards side by side, each in its own checkout, as two CI jobs would.
    running = []
    for i, s in zip((1, 2), shards, strict=True):
        # The log to a file: a pipe read only at the end could fill up and stop the shard.
        with (base / f"runner-{i}.stderr").open("w") as log:
            argv = [sys.executable, "-m", "matrix", "build", "--shard", s["shard"], "-o", "fragment"]
            running.append(subprocess.Popen(argv, cwd=base / f"runner-{i}", stderr=log))
    for i, process in zip((1, 2), running, strict=True):
        assert process.wait(timeout=900) == 0, (base / f"runner-{i}.stderr").read_text()[-3000:]
    for i in (1, 2):
        shutil.move(base / f"runner-{i}/fragment", base / f"collector/fragment-{i}")
    collected = _mkosi_matrix(base / "collector", "collect", "fragment-1", "fragment-2", home=home)
    assert collected.returncode == 0, collected.stderr[-3000:]
    return base


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
    assert {c["name"]: c["shard"] for c in manifest["cells"]}.keys() == {"tar", "directory", "raw_squashfs"}
    assert sorted(s["shard"] for s in manifest["shards"]) == ["1/2", "2/2"]


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
    result = _mkosi_matrix(collector, "collect", "fragment-1", str(tampered), "-o", str(out), home=fleet / "gnupg")
    assert result.returncode != 0
    assert (
        result.stderr.strip() == f"mkosi matrix: {victim}: is not what its fragment records (size or SHA-256 differs)"
    )
    result = _mkosi_matrix(collector, "collect", "fragment-1", "-o", str(out), home=fleet / "gnupg")
    assert result.returncode != 0 and "cells not built or failed" in result.stderr
    assert not out.exists() and not list(tmp_path.glob(".release.*"))
