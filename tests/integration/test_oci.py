"""`-t oci`: an OCI image layout that skopeo and umoci (Debian's) read, that a registry
(Debian's docker-registry, on 127.0.0.1) takes, and that rebuilds to the same digests.

umoci 0.4.7 (bookworm) knows only uncompressed and gzip layers, so the layout umoci unpacks is
built with Compress=none; the zstd one is read by skopeo.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.registry import registry
from tests.integration.support import ModuleDir, mkosi

EPOCH = "1700000000"
DEBIAN = ("-d", "debian", "-r", "bookworm", f"--source-date-epoch={EPOCH}", "-t", "oci")
MARKER = "an OCI layer\n"


def _project(directory: Path) -> Path:
    (directory / "mkosi.extra/etc").mkdir(parents=True)
    (directory / "mkosi.extra/etc/oci-marker").write_text(MARKER)
    return directory


@pytest.fixture(scope="module")
def layout(module_dir: ModuleDir) -> Path:
    """An uncompressed-layer layout, with SHA256SUMS."""
    project = _project(module_dir("oci"))
    mkosi(*DEBIAN, "--checksum", "build", cwd=project)
    return project / "image"


def _skopeo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["skopeo", *args], capture_output=True, text=True, timeout=120)


def _index(layout: Path) -> dict[str, object]:
    index: dict[str, object] = json.loads((layout / "index.json").read_text())
    return index


def _manifest_digest(layout: Path) -> str:
    manifests = _index(layout)["manifests"]
    assert isinstance(manifests, list) and len(manifests) == 1
    digest: str = manifests[0]["digest"]
    return digest


def test_umoci_unpacks_the_tree_and_skopeo_reads_the_config(layout: Path, tmp_path: Path) -> None:
    assert json.loads((layout / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    manifests = _index(layout)["manifests"]
    assert isinstance(manifests, list)
    tag = manifests[0]["annotations"]["org.opencontainers.image.ref.name"]
    subprocess.run(["umoci", "unpack", "--image", f"{layout}:{tag}", str(tmp_path / "bundle")], check=True,
                   capture_output=True)  # fmt: skip
    assert (tmp_path / "bundle/rootfs/etc/oci-marker").read_text() == MARKER
    assert (tmp_path / "bundle/rootfs/usr/bin/apt").is_file()
    inspected = json.loads(_skopeo("inspect", f"oci:{layout}:{tag}").stdout)
    assert (inspected["Architecture"], inspected["Os"], inspected["Created"]) == (
        "amd64",
        "linux",
        "2023-11-14T22:13:20Z",
    )
    raw = json.loads(_skopeo("inspect", "--raw", f"oci:{layout}:{tag}").stdout)
    assert raw["layers"][0]["mediaType"] == "application/vnd.oci.image.layer.v1.tar"
    assert raw["annotations"]["org.opencontainers.image.title"] == "Debian GNU/Linux"
    assert raw["annotations"]["org.opencontainers.image.version"] == "12"
    assert raw["annotations"]["org.opencontainers.image.created"] == "2023-11-14T22:13:20Z"
    # SHA256SUMS covers every file of the layout, under the output's name.
    subprocess.run(["sha256sum", "--strict", "-c", "SHA256SUMS"], cwd=layout.parent, check=True, capture_output=True)


def test_a_rebuild_gives_the_same_manifest_and_zstd_another_layer(layout: Path, tmp_path: Path) -> None:
    again = _project(tmp_path / "again")
    mkosi(*DEBIAN, "build", cwd=again)
    assert _manifest_digest(again / "image") == _manifest_digest(layout)
    zstd = _project(tmp_path / "zstd")
    mkosi(*DEBIAN, "--compress=zstd", "build", cwd=zstd)
    raw = json.loads(_skopeo("inspect", "--raw", f"oci:{zstd / 'image'}").stdout)
    assert raw["layers"][0]["mediaType"] == "application/vnd.oci.image.layer.v1.tar+zstd"
    # The same tree: the same uncompressed layer (diff_id), in another blob.
    configs = [json.loads(_skopeo("inspect", "--config", f"oci:{p}").stdout) for p in (layout, zstd / "image")]
    assert configs[0]["rootfs"] == configs[1]["rootfs"]
    assert _manifest_digest(zstd / "image") != _manifest_digest(layout)
    # skopeo checks every blob's digest while it copies.
    copied = _skopeo("copy", f"oci:{zstd / 'image'}", f"dir:{tmp_path / 'copy'}")
    assert copied.returncode == 0, copied.stderr


def test_a_gzip_layer_is_what_umoci_unpacks_too(layout: Path, tmp_path: Path) -> None:
    # umoci 0.4.7 (bookworm) reads no zstd layer: Compress=gz is the compressed layout it unpacks.
    gz = _project(tmp_path / "gz")
    mkosi(*DEBIAN, "--compress=gz", "build", cwd=gz)
    raw = json.loads(_skopeo("inspect", "--raw", f"oci:{gz / 'image'}").stdout)
    assert raw["layers"][0]["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    configs = [json.loads(_skopeo("inspect", "--config", f"oci:{p}").stdout) for p in (layout, gz / "image")]
    assert configs[0]["rootfs"] == configs[1]["rootfs"]  # the same tree under another compression
    tag = _index(gz / "image")["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"]  # type: ignore[index]
    subprocess.run(["umoci", "unpack", "--image", f"{gz / 'image'}:{tag}", str(tmp_path / "bundle")], check=True,
                   capture_output=True)  # fmt: skip
    assert (tmp_path / "bundle/rootfs/etc/oci-marker").read_text() == MARKER


def test_xz_is_refused_before_any_work(tmp_path: Path) -> None:
    result = mkosi(*DEBIAN, "--xz", "build", cwd=tmp_path, check=False)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "mkosi: --xz: xz cannot compress an OCI layer: "
        "the OCI image-spec has no media type for it (use zstd, gz or none)"
    )
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def registry_host(tmp_path: Path) -> Iterator[str]:
    with registry(tmp_path / "registry") as server:
        yield server.host


def test_skopeo_pushes_it_to_a_registry_and_a_tampered_layer_is_refused(
    layout: Path, registry_host: str, tmp_path: Path
) -> None:
    target = f"docker://{registry_host}/mkosi/debian:12"
    # --preserve-digests: the registry gets our manifest's bytes, not skopeo's re-encoding of them.
    pushed = _skopeo("copy", "--preserve-digests", "--dest-tls-verify=false", f"oci:{layout}:latest", target)
    assert pushed.returncode == 0, pushed.stderr
    inspected = json.loads(_skopeo("inspect", "--tls-verify=false", target).stdout)
    assert (inspected["Architecture"], inspected["Os"], inspected["Created"]) == (
        "amd64",
        "linux",
        "2023-11-14T22:13:20Z",
    )
    assert inspected["Digest"] == _manifest_digest(layout)

    tampered = tmp_path / "tampered"
    shutil.copytree(layout, tampered)
    raw = json.loads(_skopeo("inspect", "--raw", f"oci:{tampered}").stdout)
    blob = tampered / "blobs/sha256" / raw["layers"][0]["digest"].removeprefix("sha256:")
    with blob.open("r+b") as f:
        f.seek(blob.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    # Into a directory: the registry already holds a blob of that digest, so a push would not read it.
    refused = _skopeo("copy", f"oci:{tampered}", f"dir:{tmp_path / 'copy'}")
    assert refused.returncode != 0 and "digest" in refused.stderr.lower(), refused.stderr
    unpacked = subprocess.run(["umoci", "unpack", "--image", f"{tampered}:latest", str(tmp_path / "bundle")],
                              capture_output=True, text=True)  # fmt: skip
    assert unpacked.returncode != 0, unpacked.stderr


MATRIX = """
[matrix]
Distribution = ["debian"]
Release = ["bookworm"]
Format = ["oci"]

[release]
Directory = "out/release"
Compress = "{compress}"
SourceDateEpoch = 1700000000
"""


def _matrix(project: Path, compress: str) -> subprocess.CompletedProcess[str]:
    project.mkdir()
    (project / "mkosi.matrix").write_text(MATRIX.format(compress=compress))
    return subprocess.run([sys.executable, "-m", "matrix", "--jobs", "2"], cwd=project, capture_output=True,
                          text=True, timeout=600)  # fmt: skip


def test_a_release_publishes_an_oci_archive_skopeo_reads(tmp_path: Path) -> None:
    built = _matrix(tmp_path / "zstd", "zstd")
    assert built.returncode == 0, built.stderr[-3000:]
    release = tmp_path / "zstd/out/release"
    archive = release / "debian-bookworm-oci.oci.tar"
    subprocess.run(["sha256sum", "--strict", "-c", "SHA256SUMS"], cwd=release, check=True, capture_output=True)
    raw = json.loads(_skopeo("inspect", "--raw", f"oci-archive:{archive}").stdout)
    assert raw["layers"][0]["mediaType"] == "application/vnd.oci.image.layer.v1.tar+zstd"
    inspected = json.loads(_skopeo("inspect", f"oci-archive:{archive}").stdout)
    assert (inspected["Architecture"], inspected["Created"]) == ("amd64", "2023-11-14T22:13:20Z")

    refused = _matrix(tmp_path / "xz", "xz")
    assert refused.returncode != 0
    assert "cell debian-bookworm-oci: Format=oci cannot take the release's Compress=xz" in refused.stderr
    assert not (tmp_path / "xz/out/release").exists()
