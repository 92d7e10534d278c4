from __future__ import annotations

import json
import os
import platform
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

import hypothesis
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mkosi import settings
from mkosi.architecture import Architecture
from mkosi.boot import Kernel, uki_name
from mkosi.cli import main
from mkosi.config import (
    CleanPackageMetadata,
    Compression,
    Config,
    Encrypt,
    GitFiles,
    KeyDerivation,
    LogFormat,
    OutputFormat,
    TreeSource,
    Verb,
    Verity,
    WorkspaceMode,
    format_help,
    format_summary,
    help_requested,
    parse_args,
)
from mkosi.disk.layout import slots
from mkosi.disk.partitions import MiB, Partition, Role, partition_label
from mkosi.distributions import Distribution
from mkosi.errors import ConfigError
from mkosi.registry import Registry
from mkosi.settings import BY_KEY, SETTINGS, SPELLINGS, DDIFileSystem
from mkosi.tree import root_password
from tests.unit.conftest import StandardInput

# The example from the 2016/2017 mkosi README (the configuration the announcement showed),
# verbatim: old mkosi.default files like this one must keep working unchanged.
EXAMPLE_2017 = """\
[Distribution]
Distribution=fedora
Release=24

[Output]
Format=raw_btrfs
Bootable=yes

[Packages]
Packages=openssh-clients httpd
BuildPackages=make gcc libcurl-devel
"""


def write(path: Path, text: str = "", mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


def load(*argv: str) -> Config:
    return parse_args(list(argv))[1]


def error(*argv: str) -> str:
    with pytest.raises(ConfigError) as e:
        parse_args(list(argv))
    assert e.value.exit_status == 2
    message = str(e.value)
    assert "\n" not in message
    return message


# ---- every setting, via mkosi.default and via its flag ----

P = Callable[[Path], Any]

# Configuration some settings need to be valid: a raw disk image format (the default format is
# directory), or any format that can be compressed.
RAW = "[Output]\nFormat=raw_gpt\n"
COMPRESSIBLE = "[Output]\nFormat=tar\n"
DDI = "[Output]\nFormat=portable\n"
AB = "[Distribution]\nRelease=trixie\n[Output]\nFormat=raw_squashfs\nBootable=yes\nImageId=os\nImageVersion=1\n"

# (section, key): (INI value, equivalent command line, expected value or a function of the project
# directory computing it, other configuration the setting needs to be valid)
CASES: dict[tuple[str, str], tuple[str, list[str], Any, str]] = {
    ("Distribution", "Distribution"): ("fedora", ["-d", "fedora"], Distribution.fedora, ""),
    ("Distribution", "Release"): ("trixie", ["--release=trixie"], "trixie", ""),
    ("Distribution", "Mirror"): (
        "http://m.example/debian",
        ["-m", "http://m.example/debian"],
        "http://m.example/debian",
        "",
    ),
    ("Distribution", "Repositories"): ("main contrib", ["--repositories=main,contrib"], ("main", "contrib"), ""),
    ("Distribution", "MirrorTimeout"): ("5", ["--mirror-timeout=5"], 5, ""),
    ("Distribution", "RepositoryKeyCheck"): ("no", ["--repository-key-check=no"], False, ""),
    ("Distribution", "RepositoryKey"): ("sb.crt", ["--repository-key=sb.crt"], lambda p: (p / "sb.crt",), ""),
    ("Distribution", "Architecture"): ("arm64", ["--architecture", "aarch64"], "arm64", ""),
    ("Output", "Format"): ("tar", ["-t", "tar"], OutputFormat.tar, ""),
    ("Output", "BaseImage"): ("tree", ["--base-image=tree"], lambda p: p / "tree", "[Output]\nFormat=sysext\n"),
    ("Output", "Output"): ("out/x.raw", ["-o", "out/x.raw"], lambda p: p / "out/x.raw", ""),
    ("Output", "Force"): ("2", ["-f", "--force"], 2, ""),
    ("Output", "Bootable"): ("yes", ["--bootable"], True, RAW),
    ("Output", "SecureBoot"): (
        "yes",
        ["--secure-boot"],
        True,
        RAW + "Bootable=yes\nSecureBootKey=sb.key\nSecureBootCertificate=sb.crt\n",
    ),
    ("Output", "SecureBootKey"): ("sb.key", ["--secure-boot-key=sb.key"], lambda p: p / "sb.key", ""),
    ("Output", "SecureBootCertificate"): (
        "sb.crt",
        ["--secure-boot-certificate", "sb.crt"],
        lambda p: p / "sb.crt",
        "",
    ),
    ("Output", "SecureBootCommonName"): (
        "Example OS 2026",
        ["--secure-boot-common-name=Example OS 2026"],
        "Example OS 2026",
        "",
    ),
    ("Output", "SecureBootValidDays"): ("365", ["--secure-boot-valid-days", "365"], 365, ""),
    ("Output", "ReadOnly"): ("yes", ["--read-only"], True, RAW),
    ("Output", "Encrypt"): ("data", ["--encrypt=data"], Encrypt.data, RAW),
    ("Output", "Verity"): ("yes", ["--verity"], Verity.yes, RAW),
    ("Output", "VerityKey"): ("sb.key", ["--verity-key=sb.key"], lambda p: p / "sb.key", ""),
    ("Output", "VerityCertificate"): ("sb.crt", ["--verity-certificate", "sb.crt"], lambda p: p / "sb.crt", ""),
    ("Output", "KeyDerivation"): ("pbkdf2", ["--key-derivation=pbkdf2"], KeyDerivation.pbkdf2, ""),
    ("Output", "KeyDerivationTime"): ("10", ["--key-derivation-time=10"], 10, ""),
    ("Output", "Initrds"): ("keys.cpio", ["--initrd=keys.cpio"], lambda p: (p / "keys.cpio",), RAW + "Bootable=yes\n"),
    ("Output", "Compress"): ("xz", ["--compress=xz"], Compression.xz, COMPRESSIBLE),
    ("Output", "XZ"): ("yes", ["--xz"], Compression.xz, COMPRESSIBLE),
    ("Output", "Incremental"): ("yes", ["-i"], True, ""),
    ("Output", "Hostname"): ("box", ["--hostname=box"], "box", ""),
    ("Output", "KernelCommandLine"): ("quiet rw", ["--kernel-command-line=quiet rw"], ("quiet", "rw"), ""),
    ("Output", "SourceDateEpoch"): ("1700000000", ["--source-date-epoch=1700000000"], 1700000000, ""),
    ("Output", "Reproducible"): ("yes", ["--reproducible"], True, "[Output]\nSourceDateEpoch=1700000000\n"),
    ("Output", "Seed"): (
        "0b6a3c2e-7a0f-4f7e-8c53-3c1e2b0e9d11",
        ["--seed=0b6a3c2e-7a0f-4f7e-8c53-3c1e2b0e9d11"],
        uuid.UUID("0b6a3c2e-7a0f-4f7e-8c53-3c1e2b0e9d11"),
        "",
    ),
    ("Output", "Workspace"): ("disk", ["--workspace=disk"], WorkspaceMode.disk, ""),
    ("Packages", "Packages"): ("git, vim", ["-p", "git,vim"], ("git", "vim"), ""),
    ("Packages", "WithDocs"): ("yes", ["--with-docs"], True, ""),
    ("Packages", "WithTests"): ("no", ["--without-tests"], False, ""),
    ("Packages", "Cache"): ("cache", ["--cache=cache"], lambda p: p / "cache", ""),
    ("Packages", "ExtraTrees"): (
        "tree tree:/opt/x",
        ["--extra-tree=tree", "--extra-tree=tree:/opt/x"],
        lambda p: (TreeSource(p / "tree"), TreeSource(p / "tree", PurePosixPath("/opt/x"))),
        "",
    ),
    ("Packages", "SkeletonTrees"): ("tree", ["--skeleton-tree=tree"], lambda p: (TreeSource(p / "tree"),), ""),
    ("Packages", "RemoveFiles"): (
        "/usr/share/locale/* var/log",
        ["--remove-files=/usr/share/locale/*,var/log"],
        ("/usr/share/locale/*", "/var/log"),
        "",
    ),
    ("Packages", "CleanPackageMetadata"): (
        "yes",
        ["--clean-package-metadata=yes"],
        CleanPackageMetadata.yes,
        "",
    ),
    ("Packages", "Environment"): ("A=1 B=x=y", ["--environment=A=1", "--environment=B=x=y"], ("A=1", "B=x=y"), ""),
    ("Packages", "PrepareScript"): ("build.sh", ["--prepare-script=build.sh"], lambda p: p / "build.sh", ""),
    ("Packages", "FinalizeScript"): ("post.sh", ["--finalize-script=post.sh"], lambda p: p / "post.sh", ""),
    ("Packages", "Autologin"): ("yes", ["--autologin"], True, ""),
    ("Packages", "SourceFileTransfer"): ("copy-git-cached", ["--source-file-transfer=copy-git-cached"], True, ""),
    ("Output", "OutputDirectory"): ("out", ["-O", "out"], lambda p: p / "out", ""),
    ("Output", "ImageId"): ("my-os", ["--image-id=my-os"], "my-os", ""),
    ("Output", "DDIFileSystem"): ("erofs", ["--ddi-file-system=erofs"], DDIFileSystem.erofs, DDI),
    ("Output", "ImageVersion"): ("1.2", ["--image-version=1.2"], "1.2", ""),
    ("Output", "ABLayout"): ("yes", ["--ab"], True, AB),
    ("Validation", "PasswordIsHashed"): ("yes", ["--password-is-hashed"], True, ""),
    ("Validation", "BMap"): ("yes", ["--bmap"], True, RAW),
    ("Host", "ExtraSearchPaths"): ("src", ["--extra-search-paths=src"], lambda p: (p / "src",), ""),
    ("Packages", "BuildScript"): ("build.sh", ["--build-script=build.sh"], lambda p: p / "build.sh", ""),
    ("Packages", "BuildSources"): ("src", ["--build-sources=src"], lambda p: p / "src", ""),
    ("Packages", "BuildDirectory"): ("bld", ["--build-dir=bld"], lambda p: p / "bld", ""),
    ("Packages", "BuildPackages"): ("gcc make", ["--build-package=gcc,make"], ("gcc", "make"), ""),
    ("Packages", "PostInstallationScript"): ("post.sh", ["--postinst-script=post.sh"], lambda p: p / "post.sh", ""),
    ("Packages", "DeterministicScripts"): ("yes", ["--deterministic-scripts"], True, ""),
    ("Packages", "PackageLock"): ("lock.json", ["--package-lock=lock.json"], lambda p: p / "lock.json", ""),
    ("Packages", "UseGitFiles"): ("yes", ["--use-git-files"], True, ""),
    ("Packages", "GitFiles"): ("others", ["--git-files=others"], GitFiles.others, ""),
    ("Packages", "WithNetwork"): ("yes", ["--with-network"], True, ""),
    ("Packages", "NSpawnSettings"): ("x.nspawn", ["--settings=x.nspawn"], lambda p: p / "x.nspawn", ""),
    ("Partitions", "RootSize"): ("2G", ["--root-size=2G"], 2 * 1024**3, RAW),
    ("Partitions", "ESPSize"): ("256M", ["--esp-size=256M"], 256 * 1024**2, RAW),
    ("Partitions", "SwapSize"): ("1024K", ["--swap-size=1024K"], 1024**2, RAW),
    ("Partitions", "HomeSize"): ("512", ["--home-size=512"], 512, RAW),
    ("Partitions", "SrvSize"): ("1T", ["--srv-size=1T"], 1024**4, RAW),
    ("Validation", "CheckSum"): ("yes", ["--checksum"], True, ""),
    ("Packages", "RemoteCache"): (
        "oci://127.0.0.1:5000/mkosi/cache",
        ["--remote-cache", "oci://127.0.0.1:5000/mkosi/cache"],
        Registry("127.0.0.1:5000", "mkosi/cache"),
        "",
    ),
    ("Packages", "RemoteCacheInsecure"): ("yes", ["--remote-cache-insecure"], True, ""),
    ("Validation", "Sign"): ("yes", ["--sign"], True, ""),
    ("Validation", "Key"): ("0xABCDEF", ["--key=0xABCDEF"], "0xABCDEF", ""),
    ("Validation", "Password"): ("hunter2", ["--password=-"], "hunter2", ""),
}


def support_files(project: Path) -> None:
    """The files the CASES point at."""
    write(project / "sb.key", "key", 0o600)
    write(project / "sb.crt", "crt")
    write(project / "mkosi.passphrase", "secret", 0o600)
    write(project / "build.sh", "#!/bin/sh\n", 0o755)
    write(project / "post.sh", "#!/bin/sh\n", 0o755)
    write(project / "x.nspawn", "[Exec]\n")
    write(project / "keys.cpio", "cpio")
    lock = [{"name": "less", "version": "590-2", "architecture": "amd64", "sha256": "0" * 64}]
    write(project / "lock.json", json.dumps(lock))
    for name in ("tree", "cache", "src"):
        (project / name).mkdir()


def test_cases_cover_every_key() -> None:
    assert set(CASES) == set(BY_KEY)


def _expected(value: Any, project: Path) -> Any:
    return value(project) if callable(value) else value


@pytest.mark.parametrize("section_key", list(CASES), ids="{0[0]}.{0[1]}".format)
def test_setting_via_ini(project: Path, section_key: tuple[str, str]) -> None:
    section, key = section_key
    value, _, expected, extra = CASES[section_key]
    support_files(project)
    default = getattr(load(), BY_KEY[section_key].dest)
    write(project / "mkosi.default", f"{extra}[{section}]\n{key}={value}\n")
    config = load()
    assert getattr(config, BY_KEY[section_key].dest) == _expected(expected, project)
    assert default != _expected(expected, project), "the case must differ from the default to prove anything"


@pytest.mark.parametrize("section_key", list(CASES), ids="{0[0]}.{0[1]}".format)
def test_setting_via_flag(project: Path, section_key: tuple[str, str], stdin: StandardInput) -> None:
    value, argv, expected, extra = CASES[section_key]
    stdin(f"{value}\n")  # where a secret flag's value comes from
    support_files(project)
    if extra:
        write(project / "mkosi.default", extra)
    config = load(*argv)
    assert getattr(config, BY_KEY[section_key].dest) == _expected(expected, project)


# Each earlier name of a setting ([Content] Packages=, [Validation] Autologin=, Checksum=, ...) read as it.
OLD_SPELLINGS = sorted(set(SPELLINGS) - set(BY_KEY))


@pytest.mark.parametrize("spelling", OLD_SPELLINGS, ids="{0[0]}.{0[1]}".format)
def test_old_spellings_give_the_same_config(project: Path, spelling: tuple[str, str]) -> None:
    setting = SPELLINGS[spelling]
    primary = (setting.section, setting.key)
    value, _, expected, extra = CASES[primary]
    if spelling == ("Output", "CompressOutput"):
        value = "xz"
    support_files(project)
    write(project / "mkosi.default", f"{extra}[{spelling[0]}]\n{spelling[1]}={value}\n")
    old = load()
    write(project / "mkosi.default", f"{extra}[{primary[0]}]\n{primary[1]}={value}\n")
    assert old == load()
    assert getattr(old, setting.dest) == _expected(expected, project)
    assert old.warnings == ()


def test_command_line_only_settings(project: Path) -> None:
    sub = project / "sub"
    write(sub / "other.conf", "[Output]\nFormat=tar\n")
    config = load("-C", "sub", "--default", "other.conf", "-vv", "--verbose", "--log-format=json")
    assert config.directory == sub
    assert config.default_path == sub / "other.conf"
    assert config.format is OutputFormat.tar
    assert config.verbose == 3
    assert config.log_format is LogFormat.json
    assert load("--directory=sub").directory == sub


def test_short_flags(project: Path) -> None:
    config = load(
        "-d",
        "ubuntu",
        "-r",
        "jammy",
        "-m",
        "http://m",
        "-t",
        "raw_squashfs",
        "-o",
        "o.raw",
        "-f",
        "-b",
        "-i",
        "-p",
        "a",
        "-v",
    )
    assert (config.distribution, config.release, config.mirror) == (Distribution.ubuntu, "jammy", "http://m")
    assert (config.format, config.output, config.force) == (OutputFormat.raw_squashfs, project / "o.raw", 1)
    assert (config.bootable, config.incremental, config.packages, config.verbose) == (True, True, ("a",), 1)


def test_short_flag_clusters_and_attached_values(project: Path) -> None:
    config = load("-fvv", "-dfedora", "-oout.raw", "-fi")
    assert (config.force, config.verbose, config.distribution) == (2, 2, Distribution.fedora)
    assert config.output == project / "out.raw"
    assert config.incremental is True
    # As with getopt, the rest of the cluster is the optional value of a boolean flag.
    assert error("-ib") == "-i: invalid boolean 'b' (use yes/no, true/false, 1/0, on/off)"
    assert load("-vbno", "summary").bootable is False


# ---- files ----


def test_2017_example(project: Path) -> None:
    write(project / "mkosi.default", EXAMPLE_2017)
    write(project / "mkosi.build", "#!/bin/sh\nmake\n", 0o755)
    verb, config, args = parse_args([])
    assert (verb, args) == (Verb.build, [])
    assert config.distribution is Distribution.fedora
    assert config.release == "24"
    assert config.format is OutputFormat.raw_btrfs
    assert config.bootable is True
    assert config.packages == ("openssh-clients", "httpd")
    assert config.build_packages == ("make", "gcc", "libcurl-devel")
    assert config.build_script == project / "mkosi.build"
    assert config.output == project / "image.raw"
    assert config.default_path == project / "mkosi.default"


def test_commented_multi_line_file(project: Path) -> None:
    write(
        project / "mkosi.default",
        """\
# Built by CI; see the README.
[Distribution]
Distribution=debian
Release=trixie

[Output]
Format=raw_squashfs
KernelCommandLine=quiet
    console=ttyS0

[Packages]
; one package a line, comments allowed in between
Packages=
        openssh-server
        # the editor
        vim

[Partitions]
RootSize = 1G
""",
    )
    config = load()
    assert (config.distribution, config.release) == (Distribution.debian, "trixie")
    assert config.kernel_command_line == ("quiet", "console=ttyS0")
    assert config.packages == ("openssh-server", "vim")
    assert config.root_size == 1024**3
    assert config.read_only  # implied by squashfs


def test_dropins_are_read_in_sorted_order_and_lists_accumulate(project: Path) -> None:
    write(project / "mkosi.default", "[Distribution]\nRelease=bookworm\n[Packages]\nPackages=a\n")
    write(project / "mkosi.default.d/20-late.conf", "[Distribution]\nRelease=sid\n[Packages]\nPackages=c\n")
    write(project / "mkosi.default.d/10-early.conf", "[Distribution]\nRelease=trixie\n[Packages]\nPackages=b")
    # Read whatever its name, as mkosi v3-v14 did.
    write(project / "mkosi.default.d/30-any-name", "[Packages]\nPackages=c2\n")
    (project / "mkosi.default.d/40-dir.conf").mkdir()
    config = load("-p", "d", "--package=e,f")
    assert config.release == "sid"
    assert config.packages == ("a", "b", "c", "c2", "d", "e", "f")


def test_dropins_without_mkosi_default(project: Path) -> None:
    write(project / "mkosi.default.d/a.conf", "[Output]\nFormat=tar\n")
    config = load()
    assert config.format is OutputFormat.tar
    assert config.default_path is None


def test_command_line_wins_for_scalars(project: Path) -> None:
    write(project / "mkosi.default", "[Output]\nFormat=raw_btrfs\nForce=1\nHostname=file\nBootable=yes\n")
    config = load("-t", "raw_gpt", "-ff", "--hostname", "cli", "--bootable=no")
    assert (config.format, config.force, config.hostname, config.bootable) == (
        OutputFormat.raw_gpt,
        2,
        "cli",
        False,
    )
    assert load().force == 1


def test_empty_value_resets_a_scalar(project: Path) -> None:
    write(project / "mkosi.default", "[Output]\nHostname=file\nFormat=tar\n")
    write(project / "mkosi.default.d/a.conf", "[Output]\nFormat=\n")
    config = load("--hostname=")
    assert config.hostname is None
    assert config.format is OutputFormat.raw_gpt


def test_last_of_compress_and_xz_wins(project: Path) -> None:
    assert load("-t", "tar", "--xz", "--compress").compress is Compression.zstd
    assert load("-t", "tar", "--compress", "--xz").compress is Compression.xz
    assert load("-t", "tar", "--compress=no").compress is Compression.none
    write(project / "mkosi.default", "[Output]\nFormat=tar\nCompress=yes\nXZ=yes\n")
    assert load().compress is Compression.xz


def test_relative_paths_resolve_against_the_project_directory(project: Path) -> None:
    sub = project / "sub"
    write(sub / "mkosi.default", "[Output]\nOutput=../elsewhere/img.raw\n[Packages]\nBuildSources=src\n")
    (sub / "src").mkdir()
    config = load("-C", "sub")
    assert config.output == project / "elsewhere/img.raw"
    assert config.build_sources == sub / "src"
    assert load("-C", "sub", "-o", "o.raw").output == sub / "o.raw"
    assert load("-C", str(sub), "--cache", "/abs/cache").cache_path == Path("/abs/cache")


def test_default_file_replaces_mkosi_default(project: Path) -> None:
    write(project / "mkosi.default", "[Output]\nFormat=tar\n")
    write(project / "ci.conf", "[Output]\nHostname=ci\n")
    write(project / "mkosi.default.d/a.conf", "[Output]\nIncremental=yes\n")
    config = load("--default", "ci.conf")
    # The default format, not mkosi.default's tar; the drop-ins are still read.
    assert (config.format, config.hostname, config.incremental) == (OutputFormat.raw_gpt, "ci", True)


# ---- discovery ----


def test_discovered_files(project: Path) -> None:
    write(project / "mkosi.build", "#!/bin/sh\n", 0o755)
    write(project / "mkosi.postinst", "#!/bin/sh\n", 0o755)
    write(project / "mkosi.nspawn", "[Exec]\n")
    write(project / "mkosi.passphrase", "secret", 0o600)
    write(project / "mkosi.secure-boot.key", "k", 0o600)
    write(project / "mkosi.secure-boot.crt", "c")
    (project / "mkosi.extra").mkdir()
    (project / "mkosi.cache").mkdir()
    config = load("-t", "raw_gpt", "--bootable", "--secure-boot", "--encrypt=all")
    assert config.build_script == project / "mkosi.build"
    assert config.postinst_script == project / "mkosi.postinst"
    assert config.nspawn_settings == project / "mkosi.nspawn"
    assert config.passphrase == project / "mkosi.passphrase"
    assert config.secure_boot_key == project / "mkosi.secure-boot.key"
    assert config.secure_boot_certificate == project / "mkosi.secure-boot.crt"
    assert config.extra_trees == (TreeSource(project / "mkosi.extra"),)
    assert config.cache_path == project / "mkosi.cache"


def test_nothing_discovered_in_an_empty_directory(project: Path) -> None:
    config = load()
    for dest in (
        "build_script",
        "postinst_script",
        "nspawn_settings",
        "passphrase",
        "secure_boot_key",
        "secure_boot_certificate",
        "cache_path",
        "default_path",
    ):
        assert getattr(config, dest) is None, dest
    assert config.extra_trees == ()


def test_explicit_settings_override_discovery(project: Path) -> None:
    write(project / "mkosi.build", "#!/bin/sh\n", 0o755)
    write(project / "other.sh", "#!/bin/sh\n", 0o755)
    (project / "mkosi.extra").mkdir()
    (project / "tree").mkdir()
    (project / "mkosi.cache").mkdir()
    write(project / "mkosi.default", "[Packages]\nBuildScript=other.sh\nExtraTrees=tree\n")
    config = load("--cache=/var/cache/x")
    assert config.build_script == project / "other.sh"
    assert config.extra_trees == (TreeSource(project / "tree"), TreeSource(project / "mkosi.extra"))
    assert config.cache_path == Path("/var/cache/x")


@pytest.mark.parametrize("name", ["mkosi.extra", "mkosi.cache", "mkosi.builddir"])
def test_a_file_where_a_directory_is_discovered_is_refused(project: Path, name: str) -> None:
    # Ignoring it would build an image without what the user put there.
    write(project / name)
    assert error() == f"{name}: not a directory: {name} must be a directory"


def test_compression_adds_its_suffix_to_an_explicit_output_name(project: Path) -> None:
    # qemu, systemd-dissect and systemd-nspawn trust the name: img.raw must not hold xz data.
    assert load("-t", "raw_gpt", "-o", "img.raw", "--xz").output == project / "img.raw.xz"
    assert load("-t", "raw_gpt", "-o", "img.raw.xz", "--xz").output == project / "img.raw.xz"
    assert load("-t", "tar", "-o", "t.tar", "--compress=zstd").output == project / "t.tar.zst"
    assert load("-t", "tar", "-o", "t.tar").output == project / "t.tar"


# ---- defaults ----


def test_defaults(project: Path) -> None:
    config = load()
    assert config.directory == project
    assert (config.distribution, config.release) == (Distribution.debian, "bookworm")
    assert config.architecture == "x86-64"
    # A GPT disk image called image.raw, as every mkosi.default-era mkosi made without configuration.
    assert config.format is OutputFormat.raw_gpt
    assert config.output == project / "image.raw"
    assert config.compress is Compression.none
    assert config.workspace is WorkspaceMode.auto
    assert config.with_tests and not config.with_docs
    assert not (config.bootable or config.read_only or config.verity or config.encrypt)
    assert config.build_sources == project
    assert config.use_git_files is False
    assert config.git_files is GitFiles.cached
    assert (config.force, config.verbose, config.log_format) == (0, 0, LogFormat.auto)
    assert config.mirror_timeout == 60


@pytest.mark.parametrize(
    ("host", "argv", "release"),
    [
        ((Distribution.debian, "trixie"), [], "trixie"),
        ((Distribution.debian, None), [], "bookworm"),
        ((Distribution.debian, "potato-ng"), [], "bookworm"),  # unknown to us: fall back, do not refuse
        ((Distribution.debian, "trixie"), ["-d", "debian"], "bookworm"),  # not from the host
        ((Distribution.debian, "trixie"), ["-d", "ubuntu"], "resolute"),
        ((Distribution.fedora, "44"), [], "44"),
        ((Distribution.fedora, "branched"), [], "45"),  # not a Fedora release: the default instead
        ((Distribution.fedora, "44"), ["-d", "arch"], "rolling"),
    ],
)
def test_release_default(
    project: Path,
    monkeypatch: pytest.MonkeyPatch,
    host: tuple[Distribution, str | None],
    argv: list[str],
    release: str,
) -> None:
    monkeypatch.setattr(settings, "detect_host", lambda: host)
    assert load(*argv).release == release


def test_architecture_default(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    assert load().architecture == "arm64"
    monkeypatch.setattr(platform, "machine", lambda: "riscv64")
    assert error() == "Architecture (default): unsupported architecture 'riscv64' (choose from x86-64, arm64)"
    assert load("--architecture=x86-64").architecture == "x86-64"


@pytest.mark.parametrize(
    ("argv", "name"),
    [
        ([], "image.raw"),
        (["-t", "raw_gpt"], "image.raw"),
        (["-t", "raw_btrfs", "--compress"], "image.raw.zst"),
        (["-t", "raw_squashfs", "--xz"], "image.raw.xz"),
        (["-t", "tar"], "image.tar"),
        (["-t", "tar", "--compress=xz"], "image.tar.xz"),
        (["-t", "tar", "--compress=zstd"], "image.tar.zst"),
        (["-t", "directory"], "image"),
        (["-t", "subvolume"], "image"),
    ],
)
def test_output_default(project: Path, argv: list[str], name: str) -> None:
    assert load(*argv).output == project / name


def test_read_only_implied_by_squashfs_and_verity(project: Path) -> None:
    assert load("-t", "raw_squashfs").read_only
    assert load("-t", "raw_gpt", "--verity").read_only
    assert not load("-t", "raw_squashfs", "--read-only=no").read_only
    assert not load("-t", "raw_gpt").read_only
    assert not load().read_only


def test_sign_implies_checksum(project: Path) -> None:
    assert load("--sign").checksum
    assert load("--sign", "--checksum=no").checksum


def test_use_git_files_default_follows_build_sources(project: Path) -> None:
    (project / ".git").mkdir()
    (project / "plain").mkdir()
    assert load().use_git_files is True
    assert load("--build-sources=plain").use_git_files is False
    assert load("--use-git-files=no").use_git_files is False


# ---- verbs and arguments ----


@pytest.mark.parametrize(
    ("argv", "verb", "args"),
    [
        ([], Verb.build, []),
        (["build"], Verb.build, []),
        (["summary"], Verb.summary, []),
        (["clean"], Verb.clean, []),
        (["-f", "clean"], Verb.clean, []),
        (["shell", "--foo", "-x", "bar"], Verb.shell, ["--foo", "-x", "bar"]),
        (["-t", "raw_gpt", "--bootable", "qemu", "x"], Verb.qemu, ["x"]),
        (["-t", "raw_gpt", "-b", "summary"], Verb.summary, []),
        (["--", "boot", "-x"], Verb.boot, ["-x"]),
    ],
)
def test_verbs(project: Path, argv: list[str], verb: Verb, args: list[str]) -> None:
    assert parse_args(argv)[0::2] == (verb, args)


def test_build_takes_no_arguments(project: Path) -> None:
    with pytest.raises(ConfigError, match="build takes no arguments"):
        parse_args(["build", "x"])


@pytest.mark.parametrize("argv", [["help"], ["-h"], ["--help"], ["-vh"], ["-d", "x", "--help", "--bogus"]])
def test_help(
    project: Path, argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    write(project / "mkosi.default", "broken")  # help must work when the configuration does not,
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")  # nor a default taken from the environment
    assert help_requested(argv)
    main(argv)
    assert "--source-date-epoch" in capsys.readouterr().out
    assert not help_requested(["summary"]) and not help_requested(["--bogus"])


def test_bare_boolean_before_verb_does_not_swallow_it(project: Path) -> None:
    verb, config, _ = parse_args(["--with-docs", "summary"])
    assert verb is Verb.summary and config.with_docs


def test_format_help_lists_every_flag_and_key() -> None:
    text = format_help()
    assert text.startswith("usage: mkosi [options...] [VERB] [ARGS...]")
    for s in SETTINGS:
        for flag in (s.long, s.short, s.negation):
            assert flag is None or flag in text, flag
        assert s.key is None or f"{s.key}=" in text, s.key
    for verb in Verb:
        assert verb.value in text


# ---- summary ----


def test_summary(project: Path) -> None:
    extra = "[Partitions]\nRootSize=2G\n[Validation]\nPassword=hunter2\n"
    write(project / "mkosi.default", EXAMPLE_2017 + extra)
    text = format_summary(load())
    assert "Distribution:\n  Distribution:       fedora\n  Release:            24\n" in text
    lines = [line.split(":", 1) for line in text.splitlines() if line.startswith("  ")]
    values = {key.strip(): value.strip() for key, value in lines}
    assert values["Format"] == "raw_btrfs"
    assert values["Bootable"] == "yes"
    assert values["Packages"] == "openssh-clients httpd"
    assert values["RootSize"] == "2G"
    assert values["Output"] == str(project / "image.raw")
    assert values["Password"] == "(set)"
    assert values["Hostname"] == "(none)"
    assert "hunter2" not in text
    assert "XZ" not in values  # a spelling of Compress=, not a setting of its own
    for section in ("Distribution", "Output", "Packages", "Partitions", "Validation", "Project"):
        assert f"\n{section}:\n" in f"\n{text}"
    assert format_summary(load("--password=")).count("(none)") > 0


def test_summary_without_password(project: Path) -> None:
    assert ["Password:", "(none)"] in [line.split() for line in format_summary(load()).splitlines()]


# ---- errors ----


def test_malformed_line(project: Path) -> None:
    write(project / "mkosi.default", "[Output]\nFormat=tar\nbogus line\n")
    assert error() == "mkosi.default:3: expected [Section], Key=Value or a comment, got 'bogus line'"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[Ouptut]\n", "mkosi.default:1: unknown section [Ouptut], did you mean [Output]?"),
        ("[Nonsense]\nA=b\n", "mkosi.default:1: unknown section [Nonsense]"),
        ("[Output]\nFromat=tar\n", "mkosi.default:2: [Output] Fromat: unknown key, did you mean Format?"),
        ("[Output]\nbootable=yes\n", "mkosi.default:2: [Output] bootable: unknown key, did you mean Bootable?"),
        ("[Packages]\nHostname=x\n", "mkosi.default:2: [Packages] Hostname: unknown key, it belongs in [Output]"),
        ("[Output]\nZzzzzz=1\n", "mkosi.default:2: [Output] Zzzzzz: unknown key"),
    ],
)
def test_unknown_sections_and_keys(project: Path, text: str, message: str) -> None:
    write(project / "mkosi.default", text)
    assert error() == message


def test_bad_values_name_file_line_section_and_key(project: Path) -> None:
    write(project / "mkosi.default", "[Output]\n\nFormat=raw_zfs\n")
    assert error() == (
        "mkosi.default:3: [Output] Format: invalid value 'raw_zfs' "
        "(choose from raw_gpt, raw_btrfs, raw_squashfs, raw_erofs, directory, subvolume, tar, cpio, "
        "uki, esp, sysext, confext, portable, oci)"
    )
    write(project / "mkosi.default", "[Output]\nBootable=maybe\n")
    assert error() == (
        "mkosi.default:2: [Output] Bootable: invalid boolean 'maybe' (use yes/no, true/false, 1/0, on/off)"
    )


def test_bad_value_in_dropin(project: Path) -> None:
    write(project / "mkosi.default.d/10-size.conf", "[Partitions]\nRootSize=1000\n")
    assert error() == (
        "mkosi.default.d/10-size.conf:2: [Partitions] RootSize: invalid size '1000': must be a multiple of 512 bytes"
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--root-size=1000"], "--root-size: invalid size '1000': must be a multiple of 512 bytes"),
        (["--esp-size", "0"], "--esp-size: invalid size '0': must be positive"),
        (["--swap-size=1.5G"], "--swap-size: invalid size '1.5G' (use bytes or a number with K, M, G or T suffix)"),
        (["-d", "nixos"], "-d: invalid value 'nixos' (choose from debian, ubuntu, fedora, arch, opensuse)"),
        (["-r", "ham"], "-r: debian has no release 'ham' (known: bookworm, forky, sid, testing, trixie, unstable)"),
        (
            ["--hostname=a_b"],
            "--hostname: invalid hostname 'a_b' (letters, digits and inner hyphens, dot-separated, at most 64)",
        ),
        (["--encrypt=some"], "--encrypt: invalid value 'some' (choose from all, data)"),
        (["--workspace=ram"], "--workspace: invalid value 'ram' (choose from auto, tmpfs, disk)"),
        (["--bootable=maybe"], "--bootable: invalid boolean 'maybe' (use yes/no, true/false, 1/0, on/off)"),
        (["--mirror-timeout=0"], "--mirror-timeout: invalid time '0' (seconds, from 1 to 3600)"),
        (["--mirror-timeout=1m"], "--mirror-timeout: invalid time '1m' (seconds, from 1 to 3600)"),
    ],
)
def test_bad_values_on_the_command_line(project: Path, argv: list[str], message: str) -> None:
    assert error(*argv) == message


def test_unknown_release_in_file(project: Path) -> None:
    write(project / "mkosi.default", "[Distribution]\nDistribution=ubuntu\nRelease=ham\n")
    assert error() == (
        "mkosi.default:3: [Distribution] Release: ubuntu has no release 'ham' (known: jammy, noble, questing, resolute)"
    )


def test_scripts(project: Path) -> None:
    write(project / "mkosi.default", "[Packages]\nBuildScript=build.sh\n")
    assert error() == "mkosi.default:2: [Packages] BuildScript: no such file: build.sh"
    write(project / "build.sh", "#!/bin/sh\n", 0o644)
    assert error() == "mkosi.default:2: [Packages] BuildScript: not executable: build.sh (chmod +x it)"
    (project / "mkosi.default").unlink()
    write(project / "mkosi.build", "#!/bin/sh\n", 0o644)
    assert error() == "mkosi.build: not executable: mkosi.build (chmod +x it)"
    (project / "mkosi.build").chmod(0o755)
    (project / "mkosi.postinst").mkdir()
    assert error() == "mkosi.postinst: not a regular file: mkosi.postinst"
    message = "--postinst-script: no such file: /nonexistent/post"
    assert error("--postinst-script=/nonexistent/post") == message


def test_extra_tree_errors_name_the_line_that_added_them(project: Path) -> None:
    (project / "tree").mkdir()
    write(project / "mkosi.default", "[Packages]\nExtraTrees=tree\nExtraTrees=tree nope\n")
    assert error() == "mkosi.default:3: [Packages] ExtraTrees: no such directory: nope"
    (project / "mkosi.default").unlink()
    assert error("--extra-tree=tree", "--extra-tree", "missing") == "--extra-tree: no such directory: missing"


def test_extra_tree_that_is_a_file(project: Path) -> None:
    write(project / "afile")
    assert error("--extra-tree=afile") == "--extra-tree: not a directory: afile"


def test_cache_path(project: Path) -> None:
    write(project / "cachefile")
    assert error("--cache=cachefile") == "--cache: not a directory: cachefile"
    assert load("--cache=not-yet").cache_path == project / "not-yet"  # the build creates it


def test_build_directory(project: Path) -> None:
    assert load().build_dir is None
    (project / "mkosi.builddir").mkdir()
    assert load().build_dir == project / "mkosi.builddir"
    write(project / "afile")
    assert error("--build-dir=afile") == "--build-dir: not a directory: afile"
    write(project / "mkosi.default", "[Packages]\nBuildDirectory=afile\n")
    assert error() == "mkosi.default:2: [Packages] BuildDirectory: not a directory: afile"


def test_nspawn_settings_missing(project: Path) -> None:
    assert error("--settings=x.nspawn") == "--settings: no such file: x.nspawn"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["-t", "directory", "--verity"],
            "--verity: only supported with raw formats (raw_gpt, raw_btrfs, raw_squashfs, raw_erofs), not directory",
        ),
        (
            ["-t", "tar", "-b"],
            "-b: only supported with formats that boot (raw_gpt, raw_btrfs, raw_squashfs, raw_erofs, uki, esp), "
            "not tar",
        ),
        (
            ["-t", "subvolume", "--encrypt=all"],
            "--encrypt: only supported with raw formats (raw_gpt, raw_btrfs, raw_squashfs, raw_erofs), not subvolume",
        ),
        (
            ["-t", "tar", "--read-only"],
            "--read-only: only supported with raw formats (raw_gpt, raw_btrfs, raw_squashfs, raw_erofs), not tar",
        ),
        (
            ["-t", "tar", "--home-size=1G"],
            "--home-size: only supported with raw formats (raw_gpt, raw_btrfs, raw_squashfs, raw_erofs), not tar",
        ),
        (["-t", "directory", "--compress"], "--compress: cannot compress a directory output"),
        (["-t", "subvolume", "--xz"], "--xz: cannot compress a subvolume output"),
        (
            ["-t", "cpio", "--root-size=1G"],
            "--root-size: only supported with raw formats (raw_gpt, raw_btrfs, raw_squashfs, raw_erofs), not cpio",
        ),
        (
            ["-t", "raw_gpt", "--encrypt=all"],
            "--encrypt: needs a mkosi.passphrase file in the project directory",
        ),
        (["--secure-boot"], "--secure-boot: needs Bootable=yes"),
        (
            ["-t", "raw_gpt", "--secure-boot", "-b"],
            "--secure-boot: needs SecureBootKey= or a mkosi.secure-boot.key file",
        ),
        (
            ["-t", "raw_gpt", "--secure-boot", "-b", "--secure-boot-key=k"],
            "--secure-boot: needs SecureBootCertificate= or a mkosi.secure-boot.crt file",
        ),
        (
            ["-t", "raw_gpt", "--secure-boot", "-b", "--secure-boot-key=k", "--secure-boot-certificate=c"],
            "--secure-boot-key: no such file: k",
        ),
    ],
)
def test_conflicts(project: Path, argv: list[str], message: str) -> None:
    assert error(*argv) == message


def test_conflict_named_by_file_line(project: Path) -> None:
    write(project / "mkosi.default", "[Output]\nFormat=tar\nBootable=yes\n")
    assert error() == (
        "mkosi.default:3: [Output] Bootable: "
        "only supported with formats that boot (raw_gpt, raw_btrfs, raw_squashfs, raw_erofs, uki, esp), not tar"
    )
    assert load("--bootable=no").bootable is False


def test_passphrase_must_be_private(project: Path) -> None:
    write(project / "mkosi.passphrase", "secret", 0o644)
    assert error("-t", "raw_gpt", "--encrypt=all") == (
        "mkosi.passphrase: accessible by group or others (mode 0644): mkosi.passphrase (chmod 600 it)"
    )
    (project / "mkosi.passphrase").chmod(0o600)
    config = load("-t", "raw_gpt", "--encrypt=data", "--verity")  # a verity root with encrypted /home, /srv
    assert (config.encrypt, config.verity) == (Encrypt.data, Verity.yes)


def test_secure_boot_key_must_be_private(project: Path) -> None:
    write(project / "mkosi.secure-boot.key", "k", 0o640)
    write(project / "mkosi.secure-boot.crt", "c", 0o644)
    assert error("-t", "raw_gpt", "-b", "--secure-boot") == (
        "mkosi.secure-boot.key: accessible by group or others (mode 0640): mkosi.secure-boot.key (chmod 600 it)"
    )
    (project / "mkosi.secure-boot.key").chmod(0o400)
    assert load("-t", "raw_gpt", "-b", "--secure-boot").secure_boot


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--bootabel"], "--bootabel: unknown option, did you mean --bootable?"),
        (["--force=3"], "--force: ignored explicit argument '3'"),
        (["--without-tests=yes"], "--without-tests: ignored explicit argument 'yes'"),
        (["-d"], "--distribution: expected one argument"),
        (
            ["biuld"],
            "unknown verb 'biuld' (choose from build, summary, clean, help, shell, boot, qemu, genkey), "
            "did you mean build?",
        ),
        (["summary", "extra"], "summary takes no arguments, got 'extra'"),
        (["-C", "nowhere"], "-C: no such directory: {project}/nowhere"),
        (["--default=nope.conf"], "--default: no such file: nope.conf"),
        (["--default=."], "--default: not a regular file: ."),
    ],
)
def test_command_line_errors(project: Path, argv: list[str], message: str) -> None:
    assert error(*argv) == message.format(project=project)


def test_unknown_short_option(project: Path) -> None:
    assert error("-Z").startswith("-Z: unknown option")


def test_undecodable_file(project: Path) -> None:
    (project / "mkosi.default").write_bytes(b"[Output]\nHostname=\xff\n")
    assert error() == "mkosi.default:2: file is not valid UTF-8"


def test_nothing_is_written_while_parsing(project: Path) -> None:
    support_files(project)
    write(project / "mkosi.default", EXAMPLE_2017)
    (project / "mkosi.extra").mkdir()
    before = sorted((str(p), p.stat().st_mtime_ns) for p in project.rglob("*"))
    parse_args(["-f", "--cache=cache", "-o", "out/deeper/image.raw", "summary"])
    assert sorted((str(p), p.stat().st_mtime_ns) for p in project.rglob("*")) == before


# ---- fuzzing: bad input of any shape is a ConfigError, never a crash ----

# FUZZ_EXAMPLES=5000 for a longer hunt than the default run can afford.
FUZZ = hypothesis.settings(
    deadline=None,
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "150")),
    suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture],
)


def _load_in(directory: Path, argv: list[str]) -> None:
    try:
        parse_args(["-C", str(directory), *argv])
    except ConfigError as e:
        message = str(e)
        assert "\n" not in message
        assert message.isprintable()
        message.encode()


@FUZZ
@given(st.binary(max_size=300))
def test_fuzz_config_file_bytes(project: Path, data: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "mkosi.default").write_bytes(data)
        _load_in(Path(d), [])


_assignment = st.sampled_from(sorted(BY_KEY)).flatmap(
    lambda sk: st.text(max_size=30).map(lambda value: f"[{sk[0]}]\n{sk[1]}={value}")
)


@FUZZ
@given(st.lists(st.one_of(_assignment, st.text(max_size=30)), max_size=8), st.booleans())
def test_fuzz_config_file_settings(project: Path, lines: list[str], dropin: bool) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / ("mkosi.default.d/x.conf" if dropin else "mkosi.default")
        path.parent.mkdir(exist_ok=True)
        path.write_text("\n".join(lines), errors="surrogateescape")
        _load_in(Path(d), [])


_FLAGS = sorted(
    flag
    for s in SETTINGS
    for flag in (s.long, s.short, s.negation)
    if flag and s.dest not in ("directory", "default_path")
)
_token = st.one_of(
    st.sampled_from(_FLAGS + [v.value for v in Verb]),
    st.text(max_size=15),
    st.sampled_from(_FLAGS).flatmap(lambda flag: st.text(max_size=15).map(lambda value: f"{flag}={value}")),
)


@FUZZ
@given(st.lists(_token, max_size=8))
def test_fuzz_command_line(project: Path, argv: list[str]) -> None:
    with tempfile.TemporaryDirectory() as d:
        _load_in(Path(d), argv)


def _a_value_turning_on(s: settings.Setting, project: Path) -> str:
    """A mkosi.default value that turns the setting on, whatever its parser."""
    if s.kind in (settings.Kind.boolean,):
        return "yes"
    if s.parse is settings.parse_size:
        return "64M"
    if s.path is not None:
        (project / "some.file").write_text("")
        return "some.file"
    return s.choices[0]


@pytest.mark.parametrize("s", [s for s in SETTINGS if s.raw_only and s.key], ids=lambda s: s.key)
def test_every_raw_only_row_is_refused_for_a_tree(project: Path, s: settings.Setting) -> None:
    (project / "mkosi.default").write_text(
        f"[Output]\nFormat=directory\n[{s.section}]\n{s.key}={_a_value_turning_on(s, project)}\n"
    )
    assert error().startswith(f"mkosi.default:4: [{s.section}] {s.key}: only supported with raw formats")


@pytest.mark.parametrize("s", [s for s in SETTINGS if s.implies], ids=lambda s: s.dest)
def test_every_implied_setting_is_turned_on(project: Path, s: settings.Setting) -> None:
    config = load(f"{s.long}=yes")
    assert all(getattr(config, implied) is True for implied in s.implies)


def test_source_date_epoch_comes_from_the_environment_the_setting_winning(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    assert load().source_date_epoch is None
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    assert load().source_date_epoch == 1700000000
    assert load("--source-date-epoch=1600000000").source_date_epoch == 1600000000
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    assert error().startswith("SOURCE_DATE_EPOCH (environment): invalid epoch 'yesterday' (seconds since 1970")
    assert error("--source-date-epoch=1700000000000").startswith("--source-date-epoch: invalid epoch '1700000000000'")


def test_the_root_password_comes_from_mkosi_rootpw_never_shown(project: Path, stdin: StandardInput) -> None:
    rootpw = project / "mkosi.rootpw"
    rootpw.write_text("s3cret\n")
    rootpw.chmod(0o644)
    assert error() == "mkosi.rootpw: accessible by group or others (mode 0644): mkosi.rootpw (chmod 600 it)"
    rootpw.chmod(0o600)
    assert root_password(load()) == "s3cret"
    stdin("other\n")
    assert root_password(load("--password=-")) == "other"
    assert "s3cret" not in format_summary(load())


def test_a_secret_on_the_command_line_is_refused_in_one_line(project: Path, stdin: StandardInput) -> None:
    with pytest.raises(ConfigError) as refused:
        load("--password=hunter2")
    assert str(refused.value) == (
        "--password: a secret on the command line is visible to every user in the process list: "
        "give --password=- and type it on standard input, or put it in a file of mode 0600"
    )
    assert "hunter2" not in str(refused.value)
    stdin("hunter2\n")
    assert root_password(load("--password=-")) == "hunter2"
    assert root_password(load("--password=")) == ""  # empty: no root password, and nothing leaks


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("Output", "Output", "/"),
        ("Output", "Output", "."),
        ("Output", "Output", "../.."),
        ("Packages", "BuildDirectory", "/"),
        ("Packages", "BuildDirectory", ".."),
        ("Packages", "Cache", "/"),
    ],
)
def test_nothing_mkosi_writes_or_empties_may_hold_the_project(
    project: Path, section: str, key: str, value: str
) -> None:
    # -ff would empty such a build directory, a build would put its outputs over the project.
    shown = os.path.normpath(project / value)
    write(project / "mkosi.default", f"[{section}]\n{key}={value}\n")
    problem = f"must not be the project directory or a directory above it (/ included): {shown}"
    assert error() == f"mkosi.default:2: [{section}] {key}: {problem}"


def test_an_output_or_build_directory_that_holds_the_project_is_refused_on_the_command_line_too(
    project: Path,
) -> None:
    (project / "sub").mkdir()
    (project / "link").symlink_to("sub")
    assert error("-C", "sub", "-o", "/").startswith("-o: must not be the project directory")
    assert error("-C", "sub", "--build-dir", "../link").startswith("--build-dir: must not be the project directory")
    # Below the project, beside it, or anywhere else, is where outputs go.
    assert load("-C", "sub", "-o", "out/image").output == project / "sub/out/image"
    assert load("-C", "sub", "-o", "../elsewhere").output == project / "elsewhere"


def test_signing_refuses_a_gpg_home_others_can_read(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = project / "gnupg"
    home.mkdir(mode=0o700)
    monkeypatch.setenv("GNUPGHOME", str(home))
    assert load("--sign").sign
    home.chmod(0o750)
    assert error("--sign") == f"--sign: the gpg home {home} is accessible by group or others (mode 0750) (chmod 700 it)"
    write(project / "mkosi.default", "[Validation]\nSign=yes\n")
    assert error().startswith("mkosi.default:2: [Validation] Sign: the gpg home")
    monkeypatch.delenv("GNUPGHOME")
    monkeypatch.setenv("HOME", str(project))
    (project / ".gnupg").mkdir(mode=0o755)
    assert error().endswith(
        f"the gpg home {project / '.gnupg'} is accessible by group or others (mode 0755) (chmod 700 it)"
    )


def test_verity_takes_a_boolean_or_signed(project: Path) -> None:
    assert load("-t", "raw_squashfs").verity is Verity.no
    assert load("-t", "raw_squashfs", "--verity").verity is Verity.yes
    assert load("-t", "raw_squashfs", "--verity=off").verity is Verity.no
    assert error("-t", "raw_squashfs", "--verity=maybe") == "--verity: invalid value 'maybe' (use yes, no or signed)"


def test_signed_verity_uses_the_secure_boot_key_unless_told_otherwise(project: Path) -> None:
    assert error("-t", "raw_squashfs", "--verity=signed") == (
        "--verity: signed needs VerityKey= and VerityCertificate= (or mkosi.secure-boot.key and .crt: mkosi genkey)"
    )
    write(project / "mkosi.secure-boot.key", "key", 0o600)
    write(project / "mkosi.secure-boot.crt", "crt")
    config = load("-t", "raw_squashfs", "--verity=signed")
    assert (config.verity_key, config.verity_certificate) == (
        project / "mkosi.secure-boot.key",
        project / "mkosi.secure-boot.crt",
    )
    write(project / "other.key", "key", 0o644)
    assert error("-t", "raw_squashfs", "--verity=signed", "--verity-key=other.key") == (
        "--verity-key: accessible by group or others (mode 0644): other.key (chmod 600 it)"
    )
    # Unsigned, the keys are not used, so not checked.
    assert load("-t", "raw_squashfs", "--verity", "--verity-key=other.key").verity is Verity.yes


def test_uki_and_esp_are_always_bootable(project: Path) -> None:
    assert load("-t", "uki").bootable and load("-t", "esp").bootable
    assert load("-t", "uki").output.name == "image.efi"
    assert load("-t", "esp", "--xz").output.name == "image.raw.xz"
    assert error("-t", "esp", "--bootable=no") == (
        "--bootable: cannot be no with Format=esp: its whole content is what boots"
    )
    assert error("-t", "uki", "--root-size=1G").startswith("--root-size: only supported with raw formats")


def test_genkey_settings_are_checked(project: Path) -> None:
    assert load().secure_boot_common_name == f"mkosi of {project.name}"
    assert error("--secure-boot-common-name=a/b").startswith("--secure-boot-common-name: invalid common name 'a/b'")
    assert error("--secure-boot-valid-days=0") == (
        "--secure-boot-valid-days: invalid number of days '0' (from 1 to 36500)"
    )


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("https://ghcr.io/x", "invalid remote cache 'https://ghcr.io/x' (use oci://HOST[:PORT]/REPOSITORY)"),
        ("oci://ghcr.io/", "invalid repository '' in 'oci://ghcr.io/' (lowercase letters, digits, . _ - and /)"),
        ("oci://ghcr.io/Org/Cache", "invalid repository 'Org/Cache' in 'oci://ghcr.io/Org/Cache'"),
        ("oci://bad host/x", "invalid registry host 'bad host' in 'oci://bad host/x'"),
    ],
)
def test_remote_cache_is_an_oci_reference(project: Path, value: str, problem: str) -> None:
    assert error(f"--remote-cache={value}").startswith(f"--remote-cache: {problem}")


@pytest.mark.parametrize(
    ("argv", "problem"),
    [
        (["-t", "sysext"], "-t: sysext needs BaseImage= (--base-image): an extension holds what the build adds"),
        (["-t", "confext"], "-t: confext needs BaseImage="),
        (
            ["-t", "tar", "--base-image=base"],
            "--base-image: only sysext, confext and portable images start from a base",
        ),
        (["-t", "portable", "--verity=no"], "--verity: portable images always carry verity"),
        (["-t", "sysext", "--base-image=base", "--hostname=h"], "--hostname: not for sysext images"),
    ],
)
def test_extension_and_portable_rules_are_one_line_each(project: Path, argv: list[str], problem: str) -> None:
    message = error(*argv)
    assert problem in message and "\n" not in message
    assert list(project.iterdir()) == []


def test_extension_and_portable_images_are_ddis_with_verity(project: Path) -> None:
    config = load("-t", "sysext", "--base-image=base")
    assert config.verity and config.read_only
    assert config.base_image == project / "base"
    assert config.output == project / "image.raw"
    assert load("-t", "portable", "-o", "svc_1.raw", "--verity=yes").verity


def test_genkey_runs_where_the_keys_it_writes_are_still_missing(project: Path) -> None:
    write(project / "mkosi.default", "[Output]\nFormat=raw_squashfs\nBootable=yes\nSecureBoot=yes\nVerity=signed\n")
    assert error().startswith("mkosi.default:4: [Output] SecureBoot: needs SecureBootKey=")
    verb, config, _ = parse_args(["genkey"])
    assert verb is Verb.genkey and config.secure_boot and config.signed_verity


def test_a_ddi_file_system_is_refused_for_other_formats(project: Path) -> None:
    write(project / "mkosi.default", "[Output]\nFormat=raw_gpt\nDDIFileSystem=erofs\n")
    with pytest.raises(ConfigError) as refused:
        load()
    assert str(refused.value) == (
        "mkosi.default:3: [Output] DDIFileSystem: only for sysext, confext and portable images, not raw_gpt"
    )


# ---- images that update themselves (ABLayout=) ----


def test_the_default_output_is_named_after_the_image_id_and_version(project: Path) -> None:
    assert load("--image-id=os", "--image-version=1.2").output == project / "os_1.2.raw"
    assert load("--image-version=1.2", "-t", "tar").output == project / "image_1.2.tar"
    assert load("--image-id=os").output == project / "os.raw"
    assert load("--image-id=os", "-o", "other.raw").output == project / "other.raw"


def test_a_root_partition_name_longer_than_gpt_allows_is_refused_for_disks_only(project: Path) -> None:
    long = ("--image-id=" + "x" * 30, "--image-version=1.2.3.4")
    assert error("-t", "raw_gpt", *long).startswith("--image-version: the root partition's name 'xxx")
    assert load("-t", "tar", *long).output == project / f"{'x' * 30}_1.2.3.4.tar"


AB_ARGS = ("-d", "debian", "-r", "trixie", "-t", "raw_squashfs", "--bootable", "--image-id=os", "--image-version=1")


def test_ab_layout_loads_for_a_release_with_sysupdate(project: Path) -> None:
    config = load(*AB_ARGS, "--ab")
    assert config.ab_layout and config.output == project / "os_1.raw"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ("-r", "bookworm"),
            "--ab: needs a release whose systemd-sysupdate updates the slots: debian bookworm ships "
            "no systemd-sysupdate (releases that do: trixie and later, in systemd-container)",
        ),
        (("-t", "directory", "--bootable=no"), "--ab: only supported with raw formats"),
        (("--bootable=no",), "--ab: needs Bootable=yes: each slot's unified kernel image boots it"),
        (("--image-version=",), "--ab: needs ImageVersion= (--image-version): the slots and kernels are named"),
    ],
)
def test_ab_layout_refuses_what_cannot_update_itself(project: Path, argv: tuple[str, ...], expected: str) -> None:
    assert error(*AB_ARGS, *argv, "--ab").startswith(expected)


def _partition(role: Role, size: int) -> Partition:
    return Partition(role, partition_label(role, Architecture.x86_64), uuid.uuid4(), uuid.uuid4(), size, Path(role))


def test_the_second_slot_is_empty_sized_like_the_first_and_the_slot_named_by_id_and_version(project: Path) -> None:
    config = load(*AB_ARGS, "--ab", "--verity", "--swap-size=64M")
    esp, root, hashes, swap = (_partition(r, s) for r, s in
                               ((Role.esp, 256 * MiB), (Role.root, 300 * MiB), (Role.root_verity, 3 * MiB),
                                (Role.swap, 64 * MiB)))  # fmt: skip
    disk = slots(config, [esp, root, hashes, swap])
    assert [(p.role, p.label, p.size) for p in disk] == [
        (Role.esp, "esp", 256 * MiB),
        (Role.root, "os_1", 300 * MiB),
        (Role.root_verity, "os_1", 3 * MiB),
        (Role.root, "_empty", 300 * MiB),
        (Role.root_verity, "_empty", 3 * MiB),
        (Role.swap, "swap", 64 * MiB),
    ]
    assert disk[3].image is None and disk[4].image is None
    assert len({p.uuid for p in disk}) == len(disk)
    assert [p.type for p in disk[1:5]] == [root.type, hashes.type, root.type, hashes.type]
    # Without ABLayout= the slot is only named; without ImageVersion= nothing changes.
    plain = load(*AB_ARGS, "--verity")
    assert [p.label for p in slots(plain, [esp, root, hashes])] == ["esp", "os_1", "os_1"]
    unversioned = load(*AB_ARGS, "--verity", "--image-version=")
    assert slots(unversioned, [esp, root, hashes]) == [esp, root, hashes]


def test_the_uki_is_named_by_id_and_version_for_sysupdate_and_by_kernel_otherwise(project: Path) -> None:
    kernel = Kernel("6.12.48+deb13-amd64", Path("vmlinuz"), Path("initrd"))
    assert uki_name(load(*AB_ARGS), kernel) == "os_1.efi"
    assert uki_name(load(*AB_ARGS, "--image-version="), kernel) == "os-6.12.48+deb13-amd64.efi"
