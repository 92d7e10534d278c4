"""`-t raw_erofs`: a GPT disk whose read-only root is erofs, with verity, checked with sfdisk,
blkid, fsck.erofs and veritysetup. Not booted here: a bootable erofs disk would be one more
bootable build and boot on top of the squashfs ones; the NOTES record an erofs root booting.
"""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

from mkosi.disk.partitions import derive_uuid
from tests.integration.support import mkosi
from tests.integration.test_disk import ROOT_TYPE, _blkid, _by_type, _extract
from tests.integration.test_protected import VERITY_TYPE

SEED = "e0f9a7b2-6d5c-4c11-9f3e-2a8b7c6d5e4f"


def test_an_erofs_root_with_verity(tmp_path: Path) -> None:
    (tmp_path / "mkosi.extra/etc").mkdir(parents=True)
    (tmp_path / "mkosi.extra/etc/erofs-marker").write_text("on erofs\n")
    options = ("-d", "debian", "-r", "bookworm", "-t", "raw_erofs", "--verity", f"--seed={SEED}")
    mkosi(*options, "--source-date-epoch=1700000000", "build", cwd=tmp_path)
    image = tmp_path / "image.raw"
    parts = _by_type(image)
    assert set(parts) == {ROOT_TYPE, VERITY_TYPE}
    assert "GUID:60" in str(parts[ROOT_TYPE].get("attrs", ""))  # read-only
    found = _blkid(image, parts[ROOT_TYPE])
    assert found["TYPE"] == "erofs"
    assert uuid.UUID(found["UUID"]) == derive_uuid(uuid.UUID(SEED), "root-filesystem")

    data = _extract(image, parts[ROOT_TYPE], tmp_path / "root.erofs")
    hashes = _extract(image, parts[VERITY_TYPE], tmp_path / "root.verity")
    checked = subprocess.run(["fsck.erofs", str(data)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    # The marker is in the filesystem: fsck.erofs --extract gives the tree back.
    subprocess.run(["fsck.erofs", f"--extract={tmp_path / 'tree'}", str(data)], check=True, capture_output=True)
    assert (tmp_path / "tree/etc/erofs-marker").read_text() == "on erofs\n"

    root_hash = (tmp_path / "image.roothash").read_text().strip()
    verify = ["veritysetup", "verify", str(data), str(hashes), root_hash]
    assert subprocess.run(verify, capture_output=True).returncode == 0
    with data.open("r+b") as f:
        f.seek(1024)  # the erofs superblock
        byte = f.read(1)
        f.seek(1024)
        f.write(bytes([byte[0] ^ 0xFF]))
    assert subprocess.run(verify, capture_output=True).returncode != 0
