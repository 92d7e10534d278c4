"""dm-verity and LUKS2 on small files with the real veritysetup and cryptsetup; the settings they
need; SHA256SUMS of staged outputs."""

from __future__ import annotations

import hashlib
import subprocess
import uuid
from pathlib import Path

import pytest
import structlog

from mkosi.config import Config, parse_args
from mkosi.context import Context
from mkosi.disk import luks, verity
from mkosi.disk.layout import plan
from mkosi.disk.partitions import MiB, Role
from mkosi.errors import ConfigError
from mkosi.outputs import sidecars

pytestmark = pytest.mark.anyio
SEED = uuid.UUID("5a1d2b7c-0c43-4c9e-8d51-0d3d8f8e2a10")
PASSPHRASE = b"not a real secret 42"


def _config(project: Path, *args: str) -> Config:
    return parse_args(["-C", str(project), "-d", "debian", *args])[1]


async def test_hash_tree_is_reproducible_and_names_the_partitions(tmp_path: Path) -> None:
    data = tmp_path / "data.img"
    data.write_bytes(b"mkosi" * 300_000)  # not a multiple of 1 MiB: padded
    assert verity.pad(data) == 2 * MiB
    log = structlog.get_logger("test")
    first = await verity.format_hash_tree(data, tmp_path / "hash1.img", SEED, log)
    second = await verity.format_hash_tree(data, tmp_path / "hash2.img", SEED, log)
    assert first == second and len(first) == 64
    assert (tmp_path / "hash1.img").stat().st_size % MiB == 0
    verify = ["veritysetup", "verify", str(data), str(tmp_path / "hash1.img"), first]
    assert subprocess.run(verify, capture_output=True).returncode == 0
    other = await verity.format_hash_tree(data, tmp_path / "hash3.img", uuid.uuid4(), log)
    assert other != first  # the salt comes from the seed
    data_uuid, hash_uuid = verity.partition_uuids(first)
    assert data_uuid.hex == first[:32] and hash_uuid.hex == first[32:]


async def test_luks2_offline_round_trip(tmp_path: Path) -> None:
    (tmp_path / "mkosi.passphrase").write_bytes(PASSPHRASE + b"\n")
    (tmp_path / "mkosi.passphrase").chmod(0o600)
    config = _config(tmp_path, "-t", "raw_gpt", "--encrypt=all", "--key-derivation=pbkdf2", "--key-derivation-time=1")
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "file").write_text("inside\n")
    image = tmp_path / "fs.img"
    with image.open("wb") as f:
        f.truncate(48 * MiB - luks.SLACK)
    subprocess.run(["mkfs.ext4", "-q", "-d", str(tree), str(image)], check=True)
    with image.open("r+b") as f:
        f.truncate(48 * MiB)
    await luks.encrypt(image, config, uuid.UUID(int=1), "root-x86-64", structlog.get_logger("test"))
    dump = subprocess.run(["cryptsetup", "luksDump", str(image)], capture_output=True, text=True, check=True).stdout
    assert "Version:       \t2" in dump and "pbkdf2" in dump and "00000000-0000-0000-0000-000000000001" in dump
    test = ["cryptsetup", "open", "--test-passphrase", "--key-file=-", str(image)]
    # The final line break of mkosi.passphrase is not part of the passphrase.
    assert subprocess.run(test, input=PASSPHRASE, capture_output=True).returncode == 0
    assert subprocess.run(test, input=PASSPHRASE + b"\n", capture_output=True).returncode != 0
    assert PASSPHRASE not in image.read_bytes()


def test_encrypted_roles(tmp_path: Path) -> None:
    (tmp_path / "mkosi.passphrase").write_text("x")
    (tmp_path / "mkosi.passphrase").chmod(0o600)
    assert luks.encrypted_roles(_config(tmp_path, "-t", "raw_gpt")) == frozenset()
    assert luks.encrypted_roles(_config(tmp_path, "-t", "raw_gpt", "--encrypt=data")) == {Role.home, Role.srv}
    assert luks.encrypted_roles(_config(tmp_path, "-t", "raw_gpt", "--encrypt=all")) == {Role.root, Role.home, Role.srv}


def test_verity_adds_a_hash_partition_after_the_root(tmp_path: Path) -> None:
    roles = [p.role for p in plan(_config(tmp_path, "-t", "raw_squashfs", "--bootable", "--verity"))]
    assert roles == [Role.esp, Role.root, Role.root_verity]


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["-t", "raw_gpt", "--verity", "--read-only=no"], "needs ReadOnly=yes: a hash tree only protects a root"),
        (["-t", "raw_gpt", "--verity", "--encrypt=all"], "cannot be combined with Encrypt=all"),
        (["-t", "raw_gpt", "--initrd=keys.cpio"], "needs Bootable=yes"),
        (["-t", "raw_gpt", "--bootable", "--initrd=missing.cpio"], "no such file"),
        (["-t", "raw_gpt", "--key-derivation-time=0"], "invalid time"),
    ],
)
def test_protection_settings_are_checked(tmp_path: Path, args: list[str], problem: str) -> None:
    (tmp_path / "mkosi.passphrase").write_text("x")
    (tmp_path / "mkosi.passphrase").chmod(0o600)
    (tmp_path / "keys.cpio").write_text("")
    with pytest.raises(ConfigError, match=problem):
        _config(tmp_path, *args)


async def test_checksums_cover_staged_outputs_under_their_final_names(tmp_path: Path) -> None:
    (tmp_path / "mkosi.nspawn").write_text("[Exec]\nBoot=yes\n")
    config = _config(tmp_path, "-t", "tar", "--checksum", "-o", "image.tar")
    context = Context(config=config, workspace=tmp_path, log=structlog.get_logger("test"))
    context.stage_output(config.output).write_bytes(b"tarball")
    context.stage_output(tmp_path / "image.roothash").write_text("ab" * 32 + "\n")
    await sidecars.write(context)
    sums = context.staged[tmp_path / "SHA256SUMS"].read_text()
    assert sorted(line.split(" *")[1] for line in sums.splitlines()) == [
        "image.nspawn",
        "image.roothash",
        "image.tar",
    ]
    assert hashlib.sha256(b"tarball").hexdigest() + " *image.tar\n" in sums
    assert tmp_path / "SHA256SUMS.gpg" not in context.staged
    assert context.staged[tmp_path / "image.nspawn"].read_text() == "[Exec]\nBoot=yes\n"
