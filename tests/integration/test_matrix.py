"""A real release matrix: two raw formats by verity on/off of bookworm, a trixie tarball, a sysext on
it and an OCI image of the same tree, and a cell that fails; signed, with one epoch. `mkosi matrix
verify` rebuilds it, and finds a changed byte and a package version that no mirror has."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.support import CACHE, ModuleDir

MATRIX = """
[matrix]
Distribution = ["debian"]
Release = ["bookworm"]
Format = ["raw_gpt", "raw_squashfs"]
Verity = [false, true]

# Cells of their own (an include only extends cells whose axis values it matches): a second release,
# and one that fails, since the test's output directory is not on btrfs.
[[include]]
Distribution = "debian"
Release = "trixie"
Format = "tar"

[[include]]
Distribution = "debian"
Release = "trixie"
Format = "oci"

[[include]]
Distribution = "debian"
Release = "bookworm"
Format = "subvolume"

# Built from the trixie tarball as published in the release, after it: what tree adds to it.
[[include]]
Distribution = "debian"
Release = "trixie"
Format = "sysext"
BaseImage = "cell:debian-trixie-tar"
Packages = ["tree"]
Hostname = ""  # the base's stays: an extension refuses one of its own

[defaults]
Hostname = "matrix-test"

[release]
Directory = "out/release"
Sign = true
Compress = "zstd"
SourceDateEpoch = 1700000000
"""
GOOD = [
    "debian-bookworm-raw_gpt",
    "debian-bookworm-raw_gpt-verity",
    "debian-bookworm-raw_squashfs",
    "debian-bookworm-raw_squashfs-verity",
    "debian-trixie-tar",
    "debian-trixie-oci",
    "debian-trixie-sysext-cell_debian_trixie_tar-hostname-tree",
]
OCI, SYSEXT = GOOD[-2:]
VERITY = [name for name in GOOD if name.endswith("-verity")] + [SYSEXT]
BAD = "debian-bookworm-subvolume"


@pytest.fixture(scope="module")
def gnupghome(module_dir: ModuleDir) -> Iterator[Path]:
    home = module_dir("gnupg")
    home.chmod(0o700)
    env = {**os.environ, "GNUPGHOME": str(home)}
    subprocess.run(
        [
            "gpg",
            "--batch",
            "--passphrase",
            "",
            "--quick-gen-key",
            "mkosi test <test@example.org>",
            "ed25519",
            "sign",
            "never",
        ],
        env=env,
        check=True,
        capture_output=True,
    )
    try:
        yield home
    finally:
        subprocess.run(["gpgconf", "--kill", "gpg-agent"], env=env, check=False)


@pytest.fixture(scope="module")
def release(module_dir: ModuleDir, gnupghome: Path) -> tuple[Path, subprocess.CompletedProcess[str]]:
    project = module_dir("matrix-project")
    (project / "mkosi.default").write_text(f"[Packages]\nCache={CACHE / 'packages'}\n")
    (project / "mkosi.matrix").write_text(MATRIX)
    result = subprocess.run(
        [sys.executable, "-m", "matrix", "-C", str(project), "--jobs", "2"],
        capture_output=True,
        text=True,
        env={**os.environ, "GNUPGHOME": str(gnupghome)},
    )
    return project / "out/release", result


def test_exit_status_reports_the_failed_cell(release: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    _, result = release
    assert result.returncode == 1, result.stderr[-3000:]
    assert BAD in result.stderr


def test_checksums_and_signature_verify(
    release: tuple[Path, subprocess.CompletedProcess[str]], gnupghome: Path
) -> None:
    directory, _ = release
    check = subprocess.run(["sha256sum", "--strict", "-c", "SHA256SUMS"], cwd=directory, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    keyring = gnupghome / "exported.gpg"
    subprocess.run(
        ["gpg", "--export", "--output", str(keyring)], check=True, env={**os.environ, "GNUPGHOME": str(gnupghome)}
    )
    verify = subprocess.run(
        ["gpgv", "--keyring", str(keyring), "SHA256SUMS.gpg", "SHA256SUMS"],
        cwd=directory,
        capture_output=True,
        text=True,
    )
    assert verify.returncode == 0, verify.stderr
    lines = (directory / "SHA256SUMS").read_bytes().splitlines()
    ordered = subprocess.run(["sort", "--check", "SHA256SUMS"], cwd=directory, env={"LC_ALL": "C"})
    assert ordered.returncode == 0
    assert all(line.split(b" ", 1)[1].startswith(b"*") for line in lines)


def test_release_holds_exactly_the_successful_artifacts(
    release: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    directory, _ = release
    names = {p.name for p in directory.iterdir()}
    images = {name for name in names if name.endswith(".zst")}
    assert images == {"debian-trixie-tar.tar.zst"} | {f"{name}.raw.zst" for name in [*GOOD[:4], SYSEXT]}
    roothashes = {name for name in names if name.endswith(".roothash")}
    assert roothashes == {f"{name}.roothash" for name in VERITY}
    for roothash in roothashes:
        assert len(bytes.fromhex((directory / roothash).read_text().strip())) == 32
    # The OCI layout as one archive, uncompressed: its layer is compressed already.
    assert names == images | roothashes | {f"{OCI}.oci.tar", "SHA256SUMS", "SHA256SUMS.gpg", "manifest.json"}
    # Nothing half-written or temporary next to it.
    assert sorted(p.name for p in directory.parent.iterdir()) == ["release", "release.logs"]


def test_the_oci_image_of_the_release_is_what_skopeo_reads(
    release: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    directory, _ = release
    inspected = subprocess.run(
        ["skopeo", "inspect", f"oci-archive:{directory / f'{OCI}.oci.tar'}"], capture_output=True, text=True
    )
    assert inspected.returncode == 0, inspected.stderr
    image = json.loads(inspected.stdout)
    assert (image["Architecture"], image["Os"]) == ("amd64", "linux")
    assert image["Created"].startswith("2023-11-14T22:13:20")  # the release's SourceDateEpoch
    assert len(image["Layers"]) == 1


def test_manifest_matches_the_files(release: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    directory, _ = release
    manifest = json.loads((directory / "manifest.json").read_text())
    cells = {c["name"]: c for c in manifest["cells"]}
    assert set(cells) == {*GOOD, BAD}
    assert cells[BAD]["status"] == "failed" and "btrfs" in cells[BAD]["error"]
    assert cells[BAD]["artifacts"] == []
    sums = {line.split(" *")[1]: line.split(" *")[0] for line in (directory / "SHA256SUMS").read_text().splitlines()}
    listed = {}
    for name in GOOD:
        assert cells[name]["status"] == "success"
        assert cells[name]["settings"]["Format"] in ("raw_gpt", "raw_squashfs", "tar", "oci", "sysext")
        for artifact in cells[name]["artifacts"]:
            path = directory / artifact["name"]
            assert path.stat().st_size == artifact["size"]
            listed[artifact["name"]] = artifact["sha256"]
    assert listed == sums
    assert {"apt", "dpkg"} <= set(manifest["tools"])


def test_bootstrap_ran_once_per_release(release: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    directory, _ = release
    manifest = json.loads((directory / "manifest.json").read_text())
    built: dict[str, int] = {}
    for cell in manifest["cells"]:
        if cell["name"] in (BAD, SYSEXT):
            continue
        bootstrap = next(s for s in cell["stages"] if s["name"] == "bootstrap")
        if not bootstrap["cached"]:
            built[cell["settings"]["Release"]] = built.get(cell["settings"]["Release"], 0) + 1
        if cell["settings"]["Release"] == "bookworm":
            assert len(bootstrap["shared_with"]) >= 1
    assert built == {"bookworm": 1, "trixie": 1}
    # The four bookworm cells share one bootstrap; the trixie cell has its own, and the sysext none.
    sysext = next(c for c in manifest["cells"] if c["name"] == SYSEXT)
    assert [s["name"] for s in sysext["stages"]][:1] == ["base"]
    assert sysext["settings"]["BaseImage"] == "cell:debian-trixie-tar"


def _verify(project: Path, release: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "matrix", "verify", str(release), "-C", str(project), "--log-format=console"],
        capture_output=True,
        text=True,
    )


def _verdicts(output: str) -> dict[str, str]:
    return dict(line.split() for line in output.splitlines() if not line.startswith(" "))


def _copy(release: Path, directory: Path) -> Path:
    """A copy of the release to tamper with."""
    shutil.copytree(release, directory / "release")
    return directory / "release"


def test_the_manifest_records_what_a_rebuild_needs(release: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    directory, _ = release
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["matrix"]["name"] == "mkosi.matrix"
    assert (
        manifest["matrix"]["sha256"]
        == hashlib.sha256((directory.parent.parent / "mkosi.matrix").read_bytes()).hexdigest()
    )
    for cell in manifest["cells"]:
        if cell["name"] in (BAD, SYSEXT):  # the sysext installs on its base's packages, recorded there
            continue
        assert cell["source_date_epoch"] == 1700000000 and cell["seed"]
        assert any(" bookworm main" in s or " trixie main" in s for s in cell["sources"])
        packages = {p["name"]: p for p in cell["packages"]}
        assert {"apt", "dpkg", "libc6"} <= set(packages)
        assert all(len(p["sha256"]) == 64 and p["version"] and p["architecture"] for p in packages.values())


def test_verify_rebuilds_every_artifact_to_the_same_bytes(
    release: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    directory, _ = release
    files = {p.name: p.read_bytes() for p in directory.iterdir()}
    result = _verify(directory.parent.parent, directory)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    sums = [line.split(" *")[1] for line in (directory / "SHA256SUMS").read_text().splitlines()]
    assert _verdicts(result.stdout) == {name: "identical" for name in [*sums, "SHA256SUMS"]}
    # Nothing in the release touched, no scratch space left.
    assert {p.name: p.read_bytes() for p in directory.iterdir()} == files
    assert not list(Path("/var/tmp").glob("mkosi-verify.*"))


def test_verify_names_the_artifact_whose_bytes_changed(
    release: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    directory, _ = release
    copy = _copy(directory, tmp_path)
    with (copy / "debian-trixie-tar.tar.zst").open("r+b") as f:
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0x01]))
    result = _verify(directory.parent.parent, copy)
    assert result.returncode == 1
    verdicts = _verdicts(result.stdout)
    assert verdicts.pop("debian-trixie-tar.tar.zst") == "differs"
    assert set(verdicts.values()) == {"identical"}


def test_verify_names_a_recorded_package_version_that_no_mirror_has(
    release: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    directory, _ = release
    copy = _copy(directory, tmp_path)
    manifest = json.loads((copy / "manifest.json").read_text())
    for cell in manifest["cells"]:
        for package in cell["packages"]:
            if package["name"] == "apt":
                package["version"] = "0.0.1~gone"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    result = _verify(directory.parent.parent, copy)
    assert result.returncode == 1
    assert "no apt=0.0.1~gone in debian bookworm" in result.stderr
    assert "identical" not in result.stdout


def test_verify_refuses_another_matrix_file(
    release: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    directory, _ = release
    (tmp_path / "mkosi.default").write_text((directory.parent.parent / "mkosi.default").read_text())
    (tmp_path / "mkosi.matrix").write_text(MATRIX.replace("matrix-test", "another-hostname"))
    result = _verify(tmp_path, directory)
    assert result.returncode != 0
    assert "is not the matrix file the release was built from" in result.stderr
    assert result.stderr.count("\n") == 1


def test_tar_cell_is_an_image(release: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    directory, _ = release
    listing = subprocess.run(
        ["tar", "--zstd", "-tf", str(directory / "debian-trixie-tar.tar.zst")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert "./usr/lib/os-release" in listing
    assert "./etc/hostname" in listing


def test_sysext_cell_extends_the_tar_cell(
    release: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    directory, _ = release
    image = tmp_path / f"{SYSEXT}.raw"  # systemd matches extension-release.NAME with the file name
    subprocess.run(["zstd", "-dq", str(directory / f"{SYSEXT}.raw.zst"), "-o", str(image)], check=True)
    dissected = subprocess.run(["systemd-dissect", str(image)], capture_output=True, text=True, check=True).stdout
    assert "ID=debian" in dissected and "VERSION_ID=13" in dissected and "✓ extension for system" in dissected
    start = json.loads(subprocess.run(["sfdisk", "-J", str(image)], capture_output=True, check=True).stdout)
    first = start["partitiontable"]["partitions"][0]
    data = tmp_path / "data.img"
    window = [f"skip={first['start']}", f"count={first['size']}"]
    subprocess.run(["dd", f"if={image}", f"of={data}", "bs=512", *window, "status=none"], check=True)
    listing = subprocess.run(["unsquashfs", "-l", str(data)], capture_output=True, text=True, check=True).stdout
    assert "squashfs-root/usr/bin/tree" in listing and "squashfs-root/etc" not in listing


def test_sigint_cancels_every_cell_and_publishes_nothing(tmp_path: Path) -> None:
    (tmp_path / "mkosi.default").write_text(f"[Packages]\nCache={CACHE / 'packages'}\n")
    (tmp_path / "mkosi.matrix").write_text(
        '[matrix]\nDistribution = ["debian"]\nRelease = ["bookworm", "trixie"]\nFormat = ["tar"]\n'
        '[defaults]\nWorkspace = "disk"\n'
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "matrix", "--jobs", "2"], cwd=tmp_path, stderr=subprocess.PIPE, text=True
    )
    # Both bootstraps under way (their trees exist in the cells' workspaces), then Ctrl-C. Generous:
    # on a loaded machine the first cells can take a while to get there.
    deadline = time.monotonic() + 240
    while len(list(tmp_path.glob(".release.mkosi-tmp.*/cells/*/.mkosi-workspace.*/root"))) < 2:
        assert time.monotonic() < deadline, "the bootstraps did not start"
        time.sleep(0.2)
    time.sleep(2)
    stopped_at = time.monotonic()
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert time.monotonic() - stopped_at < 15
    assert process.returncode == 130, stderr
    assert "nothing was published" in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mkosi.default", "mkosi.matrix", "release.logs"]
    assert str(tmp_path) not in Path("/proc/mounts").read_text()
    leftovers = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True).stdout
    assert leftovers == ""
