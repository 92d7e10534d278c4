"""The settings table: every configuration option of mkosi, declared exactly once.

Each Setting names its Config field, command line flags, mkosi.default section and key, value
parser, default and help. config.py generates the argparse options, the INI key lookup, the
default resolution and the summary from this table alone, so adding an option is one entry here
plus one Config field.

The enums the table parses into live here rather than in config.py, which re-exports them:
config.py needs the table to load configuration, so the table cannot import config.py.
"""

from __future__ import annotations

import enum
import os
import platform
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import KW_ONLY, dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from mkosi import naming
from mkosi.architecture import Architecture
from mkosi.distributions import Distribution, detect_host
from mkosi.errors import ConfigError


class OutputFormat(enum.StrEnum):
    raw_gpt = "raw_gpt"
    raw_btrfs = "raw_btrfs"
    raw_squashfs = "raw_squashfs"
    raw_erofs = "raw_erofs"
    directory = "directory"
    subvolume = "subvolume"
    tar = "tar"
    cpio = "cpio"
    uki = "uki"
    esp = "esp"
    oci = "oci"

    @property
    def is_raw(self) -> bool:
        """A GPT disk image with a root file system, as opposed to a tree or an archive."""
        return self in (OutputFormat.raw_gpt, OutputFormat.raw_btrfs, OutputFormat.raw_squashfs, OutputFormat.raw_erofs)

    @property
    def has_read_only_root(self) -> bool:
        """A disk whose root file system cannot be written to at all (squashfs, erofs)."""
        return self in (OutputFormat.raw_squashfs, OutputFormat.raw_erofs)

    @property
    def is_disk(self) -> bool:
        """A GPT disk image: one with a root, or the ESP alone."""
        return self.is_raw or self is OutputFormat.esp

    @property
    def boots(self) -> bool:
        """Whether images of this format can carry a kernel to boot."""
        return self.is_disk or self is OutputFormat.uki

    @property
    def is_boot_only(self) -> bool:
        """The boot files alone (a UKI, an ESP): always bootable, the root comes from elsewhere."""
        return self in (OutputFormat.uki, OutputFormat.esp)

    @property
    def is_tree(self) -> bool:
        """A directory tree on the host (nothing to compress or checksum), not a file."""
        return self in (OutputFormat.directory, OutputFormat.subvolume)

    @property
    def is_directory(self) -> bool:
        """Published as a directory: a tree, or an OCI image layout (whose layer is what Compress= compresses)."""
        return self.is_tree or self is OutputFormat.oci

    @property
    def suffix(self) -> str:
        """The file name suffix of an output in this format, before any compression suffix."""
        files = {
            OutputFormat.tar: naming.TAR_SUFFIX,
            OutputFormat.cpio: naming.CPIO_SUFFIX,
            OutputFormat.uki: naming.EFI_SUFFIX,
        }
        return naming.RAW_SUFFIX if self.is_disk else files.get(self, "")


class Verity(enum.StrEnum):
    """Whether the root gets a dm-verity hash tree, and whether its root hash is signed too."""

    no = "no"
    yes = "yes"
    signed = "signed"

    def __bool__(self) -> bool:
        # `if config.verity:` asks whether there is a hash tree at all.
        return self is not Verity.no


class Encrypt(enum.StrEnum):
    all = "all"
    data = "data"


class KeyDerivation(enum.StrEnum):
    argon2id = "argon2id"
    pbkdf2 = "pbkdf2"


class Compression(enum.StrEnum):
    none = "none"
    xz = "xz"
    zstd = "zstd"

    @property
    def suffix(self) -> str:
        return naming.COMPRESSION_SUFFIXES[self.value]

    @property
    def oci_layer_media_type(self) -> str | None:
        """The OCI image-spec's media type of a tar layer compressed so; None: the spec has none (xz)."""
        return {
            Compression.none: "application/vnd.oci.image.layer.v1.tar",
            Compression.zstd: "application/vnd.oci.image.layer.v1.tar+zstd",
        }.get(self)


class GitFiles(enum.StrEnum):
    cached = "cached"
    others = "others"


class LogFormat(enum.StrEnum):
    auto = "auto"
    console = "console"
    json = "json"


class WorkspaceMode(enum.StrEnum):
    auto = "auto"
    tmpfs = "tmpfs"
    disk = "disk"


class PathKind(enum.Enum):
    """What a path setting must name; checked before anything runs."""

    unchecked = "unchecked"  # an output: the build creates it
    file = "file"
    dir = "dir"
    executable = "executable"
    # A regular file only its owner can read: secrets readable by other users would leak through
    # the image builder's files.
    private = "private"


class Kind(enum.Enum):
    scalar = "scalar"  # later assignments replace earlier ones
    boolean = "boolean"  # a scalar whose flag may be given bare (--bootable) or with a value
    list = "list"  # assignments accumulate across files and the command line
    counter = "counter"  # each bare flag adds one (-ff)


class Resolved(Protocol):
    """What a default factory sees: the other settings, resolved on demand."""

    @property
    def directory(self) -> Path: ...

    def __getitem__(self, dest: str) -> Any: ...

    def is_set(self, dest: str) -> bool:
        """Whether the setting was given explicitly (in a file or on the command line)."""
        ...


@dataclass(frozen=True)
class Setting:
    dest: str  # the Config field
    long: str | None  # the long flag; None for settings that are only read or discovered
    section: str | None = None  # mkosi.default section; None for command-line-only settings
    key: str | None = None
    _: KW_ONLY
    short: str | None = None
    # Raises ValueError with a message naming the bad value; list settings return a tuple of items.
    parse: Callable[[str], Any] = str
    default: Any = None
    default_factory: Callable[[Resolved], Any] | None = None
    help: str = ""
    metavar: str | None = None
    kind: Kind = Kind.scalar
    choices: tuple[str, ...] = ()  # shown in help; parse does the checking
    # Values are paths relative to the project directory, and what they must be.
    path: PathKind | None = None
    # The path may be missing (the build creates it); only something else in its way is an error.
    created: bool = False
    # mkosi writes there, and -f, clean or -ff replace, remove or empty it: never /, the project
    # directory or a directory above it.
    written: bool = False
    # The setting is only used (so its path only checked) when this other setting is on.
    only_with: str | None = None
    # Only raw disk formats have partitions or a root to protect.
    raw_only: bool = False
    # Only formats that carry a kernel (raw disks, uki, esp) have one to boot.
    boot_only: bool = False
    # Settings this one needs set (a boolean on, a path given or discovered), each with why.
    requires: tuple[tuple[str, str], ...] = ()
    # Boolean settings this one turns on.
    implies: tuple[str, ...] = ()
    # Never shown: the summary says whether it is set, not what it is.
    secret: bool = False
    # A file in the project directory used when the setting is not given; a trailing "/" means it
    # must be a directory. List settings get it appended instead.
    discover: str | None = None
    const: str | None = None  # the value of the flag given bare; implies an optional value
    negation: str | None = None  # a flag that sets the boolean to no (--without-tests)

    @property
    def name(self) -> str:
        """How summaries and default-value errors call the setting: its INI key or its CamelCased dest."""
        return self.key or "".join(word.capitalize() for word in self.dest.split("_"))


# ---- value parsers: str -> value, ValueError with a readable message on bad input ----

_TRUE = frozenset({"yes", "true", "1", "on"})
_FALSE = frozenset({"no", "false", "0", "off"})


def parse_boolean(value: str) -> bool:
    word = value.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError(f"invalid boolean {value!r} (use yes/no, true/false, 1/0, on/off)")


def parse_string(value: str) -> str:
    return value.strip()


def parse_path(value: str) -> Path:
    value = value.strip()
    if "\0" in value:
        raise ValueError("paths cannot contain NUL characters")
    # os.path.expanduser leaves "~unknownuser" alone where Path.expanduser raises.
    return Path(os.path.expanduser(value))


def parse_paths(value: str) -> tuple[Path, ...]:
    return tuple(parse_path(word) for word in value.split())


def parse_words(value: str) -> tuple[str, ...]:
    return tuple(value.split())


def parse_items(value: str) -> tuple[str, ...]:
    """Comma- or whitespace-separated items: -p a,b and Packages=a b (or one per line) both work."""
    return tuple(item for item in re.split(r"[\s,]+", value) if item)


_SIZE = re.compile(r"([0-9]{1,30})([KMGT]?)", re.IGNORECASE)
_SUFFIXES = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_size(value: str) -> int:
    """Bytes, or a number with a K/M/G/T suffix (powers of 1024); a positive multiple of 512."""
    match = _SIZE.fullmatch(value.strip())
    if not match:
        raise ValueError(f"invalid size {value!r} (use bytes or a number with K, M, G or T suffix)")
    size = int(match[1]) * _SUFFIXES[match[2].upper()]
    if size <= 0:
        raise ValueError(f"invalid size {value!r}: must be positive")
    if size % 512:
        raise ValueError(f"invalid size {value!r}: must be a multiple of 512 bytes")
    return size


_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def parse_hostname(value: str) -> str:
    value = value.strip()
    # The rules systemd applies: at most 64 characters, dot-separated labels of letters, digits
    # and inner hyphens.
    if len(value) > 64 or not all(_LABEL.fullmatch(label) for label in value.split(".")):
        raise ValueError(f"invalid hostname {value!r} (letters, digits and inner hyphens, dot-separated, at most 64)")
    return value


E = TypeVar("E", bound=enum.StrEnum)


def enum_parser(cls: type[E], aliases: Mapping[str, E] | None = None) -> Callable[[str], E]:
    def parse(value: str) -> E:
        word = value.strip().lower()
        if aliases and word in aliases:
            return aliases[word]
        try:
            return cls(word)
        except ValueError:
            choices = ", ".join(member.value for member in cls)
            raise ValueError(f"invalid value {value.strip()!r} (choose from {choices})") from None

    return parse


_parse_compression_name = enum_parser(Compression)


def parse_compression(value: str) -> Compression:
    """none/xz/zstd, or a boolean: yes picks zstd, the best default today; no means none."""
    word = value.strip().lower()
    if word in _TRUE:
        return Compression.zstd
    if word in _FALSE:
        return Compression.none
    return _parse_compression_name(value)


def parse_xz(value: str) -> Compression:
    """The 2017 XZ= switch, kept as a spelling of Compress=xz."""
    return Compression.xz if parse_boolean(value) else Compression.none


def parse_verity(value: str) -> Verity:
    """A boolean (a hash tree or none), or "signed": a hash tree whose root hash is signed too."""
    word = value.strip().lower()
    if word == Verity.signed:
        return Verity.signed
    try:
        return Verity.yes if parse_boolean(word) else Verity.no
    except ValueError:
        raise ValueError(f"invalid value {value.strip()!r} (use yes, no or signed)") from None


def parse_counter(value: str) -> int:
    """A count (Force=2) or a boolean (Force=yes is one -f)."""
    word = value.strip().lower()
    if word in _TRUE or word in _FALSE:
        return int(word in _TRUE)
    if not word.isascii() or not word.isdigit() or len(word) > 3:
        raise ValueError(f"invalid value {value.strip()!r} (use yes/no or a small count)")
    return int(word)


def parse_milliseconds(value: str) -> int:
    word = value.strip()
    if not word.isascii() or not word.isdigit() or not 0 < int(word) <= 3_600_000:
        raise ValueError(f"invalid time {word!r} (milliseconds, from 1 to 3600000)")
    return int(word)


def parse_seconds(value: str) -> int:
    word = value.strip()
    if not word.isascii() or not word.isdigit() or not 0 < int(word) <= 3600:
        raise ValueError(f"invalid time {word!r} (seconds, from 1 to 3600)")
    return int(word)


_COMMON_NAME = re.compile(r"[^/\\=+,\x00-\x1f\x7f]{1,64}")


def parse_common_name(value: str) -> str:
    """An X.509 common name: at most 64 characters, none that openssl's -subj would split on."""
    name = value.strip()
    if not _COMMON_NAME.fullmatch(name):
        raise ValueError(f"invalid common name {name!r} (1 to 64 characters, no / \\ = + , or control characters)")
    return name


def parse_days(value: str) -> int:
    word = value.strip()
    if not word.isascii() or not word.isdigit() or not 0 < int(word) <= 36500:
        raise ValueError(f"invalid number of days {word!r} (from 1 to 36500)")
    return int(word)


def parse_epoch(value: str) -> int:
    """Seconds since 1970-01-01 UTC, as SOURCE_DATE_EPOCH is written."""
    word = value.strip()
    # Up to the year 9999: anything later is a typo (milliseconds, an extra digit).
    if not word.isascii() or not word.isdigit() or int(word) > 253_402_300_799:
        raise ValueError(f"invalid epoch {word!r} (seconds since 1970-01-01 UTC, as `date +%s` prints)")
    return int(word)


def _default_source_date_epoch(r: Resolved) -> int | None:
    """The reproducible-builds convention: SOURCE_DATE_EPOCH in the environment, the setting winning."""
    value = os.environ.get("SOURCE_DATE_EPOCH")
    if value is None or not value.strip():
        return None
    try:
        return parse_epoch(value)
    except ValueError as e:
        raise ConfigError(str(e), setting="SOURCE_DATE_EPOCH (environment)") from None


def format_size(size: int) -> str:
    """The shortest exact spelling parse_size accepts: 1073741824 is 1G."""
    for suffix in ("T", "G", "M", "K"):
        if size % _SUFFIXES[suffix] == 0:
            return f"{size // _SUFFIXES[suffix]}{suffix}"
    return str(size)


def _values(cls: type[enum.StrEnum]) -> tuple[str, ...]:
    return tuple(member.value for member in cls)


# ---- defaults computed from other settings ----


def _default_distribution(r: Resolved) -> Distribution:
    return detect_host()[0]


def _default_release(r: Resolved) -> str:
    distribution: Distribution = r["distribution"]
    # The host's release only makes sense for the host's own distribution, and only when we picked
    # that distribution from the host too: "Distribution=debian" on a Debian host means the default.
    if not r.is_set("distribution"):
        host, release = detect_host()
        if host is distribution and release:
            try:
                distribution.installer().check_release(release)
                return release
            except ValueError:
                pass  # a release we know nothing about yet: fall back rather than refuse to start
    return distribution.installer().default_release


def _default_architecture(r: Resolved) -> Architecture:
    host = Architecture.from_uname()
    if host is None:
        choices = ", ".join(Architecture)
        raise ConfigError(
            f"unsupported architecture {platform.machine()!r} (choose from {choices})", setting="Architecture (default)"
        )
    return host


def _default_output(r: Resolved) -> Path:
    return r.directory / naming.image_file_name("image", r["format"], r["compress"])


# Namespace for seeds derived from output names (a random UUID, fixed once and for all).
_SEED_NAMESPACE = uuid.UUID("8c3e1b1e-5f6a-4d1c-9a57-2f0f6f0c7e21")


def _default_seed(r: Resolved) -> uuid.UUID:
    # Stable across rebuilds of one image, different between images, so that two images attached to
    # one machine never share partition or filesystem UUIDs.
    return uuid.uuid5(_SEED_NAMESPACE, Path(r["output"]).name)


def parse_uuid(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value.strip())
    except ValueError:
        raise ValueError(f"invalid UUID {value.strip()!r}") from None


def _default_read_only(r: Resolved) -> bool:
    # squashfs and erofs cannot be written to, and verity data is only valid for a root that never changes.
    return bool(r["format"].has_read_only_root or r["verity"])


def _default_use_git_files(r: Resolved) -> bool:
    sources: Path = r["build_sources"]
    try:
        return (sources / ".git").exists()
    except (OSError, ValueError):
        return False


SECTIONS = ("Distribution", "Output", "Packages", "Partitions", "Validation")

_FORMAT_ALIASES = {"raw_ext4": OutputFormat.raw_gpt}
_DISTRIBUTION_ALIASES = {"archlinux": Distribution.arch}
_RAW = "raw formats only"
_BOOT = "raw formats, uki and esp"

SETTINGS: tuple[Setting, ...] = (
    # [Distribution]
    Setting(
        "distribution",
        "--distribution",
        "Distribution",
        "Distribution",
        short="-d",
        parse=enum_parser(Distribution, _DISTRIBUTION_ALIASES),
        default_factory=_default_distribution,
        choices=_values(Distribution),
        metavar="DISTRIBUTION",
        help="distribution to install (default: the host's)",
    ),
    Setting(
        "release",
        "--release",
        "Distribution",
        "Release",
        short="-r",
        parse=parse_string,
        default_factory=_default_release,
        metavar="RELEASE",
        help="distribution release to install (default: the host's, or the distribution's default)",
    ),
    Setting(
        "mirror",
        "--mirror",
        "Distribution",
        "Mirror",
        short="-m",
        parse=parse_string,
        metavar="URL",
        help="distribution mirror to use",
    ),
    Setting(
        "mirror_timeout",
        "--mirror-timeout",
        "Distribution",
        "MirrorTimeout",
        parse=parse_seconds,
        default=60,
        metavar="SECONDS",
        help="seconds a mirror may take to connect or to send more of a file before the package manager "
        "gives up on that attempt (apt, dnf, zypper; each file is tried a few times; default: 60)",
    ),
    Setting(
        "repositories",
        "--repositories",
        "Distribution",
        "Repositories",
        parse=parse_items,
        kind=Kind.list,
        default=(),
        metavar="REPOS",
        help="repositories to use (comma-separated)",
    ),
    Setting(
        "repository_key_check",
        "--repository-key-check",
        "Distribution",
        "RepositoryKeyCheck",
        parse=parse_boolean,
        kind=Kind.boolean,
        default=True,
        help="check the signatures of repositories and packages (turn off only for local repositories)",
    ),
    Setting(
        "repository_keys",
        "--repository-key",
        "Distribution",
        "RepositoryKey",
        parse=parse_paths,
        path=PathKind.file,
        kind=Kind.list,
        default=(),
        metavar="PATH",
        help="OpenPGP public key (keyring) that signs the repositories, trusted instead of the "
        "distribution's own keys, e.g. for your own mirror (repeatable)",
    ),
    Setting(
        "architecture",
        "--architecture",
        "Distribution",
        "Architecture",
        parse=Architecture.parse,
        default_factory=_default_architecture,
        choices=_values(Architecture),
        metavar="ARCH",
        help="architecture of the image (default: the host's)",
    ),
    # [Output]
    Setting(
        "format",
        "--format",
        "Output",
        "Format",
        short="-t",
        parse=enum_parser(OutputFormat, _FORMAT_ALIASES),
        default=OutputFormat.directory,
        choices=_values(OutputFormat),
        metavar="FORMAT",
        help="output format (default: directory; raw_ext4 means raw_gpt)",
    ),
    Setting(
        "output",
        "--output",
        "Output",
        "Output",
        short="-o",
        parse=parse_path,
        path=PathKind.unchecked,
        default_factory=_default_output,
        metavar="PATH",
        help="output image path (default: image, image.raw or image.tar, plus .xz/.zst)",
        written=True,
    ),
    Setting(
        "force",
        "--force",
        "Output",
        "Force",
        short="-f",
        parse=parse_counter,
        kind=Kind.counter,
        default=0,
        help="remove an existing image first; twice also removes the caches",
    ),
    Setting(
        "bootable",
        "--bootable",
        "Output",
        "Bootable",
        short="-b",
        parse=parse_boolean,
        kind=Kind.boolean,
        default_factory=lambda r: r["format"].is_boot_only,
        help=f"make the image bootable on EFI ({_BOOT}; always for uki and esp)",
        boot_only=True,
    ),
    Setting(
        "secure_boot",
        "--secure-boot",
        "Output",
        "SecureBoot",
        parse=parse_boolean,
        kind=Kind.boolean,
        default=False,
        help="sign the kernel and initrd for UEFI SecureBoot (needs --bootable)",
        requires=(("bootable", ""), ("secure_boot_key", ""), ("secure_boot_certificate", "")),
    ),
    Setting(
        "secure_boot_key",
        "--secure-boot-key",
        "Output",
        "SecureBootKey",
        parse=parse_path,
        path=PathKind.private,
        discover="mkosi.secure-boot.key",
        metavar="PATH",
        help="UEFI SecureBoot private key in PEM format (default: mkosi.secure-boot.key)",
        only_with="secure_boot",
    ),
    Setting(
        "secure_boot_certificate",
        "--secure-boot-certificate",
        "Output",
        "SecureBootCertificate",
        parse=parse_path,
        path=PathKind.file,
        discover="mkosi.secure-boot.crt",
        metavar="PATH",
        help="UEFI SecureBoot certificate in X509 format (default: mkosi.secure-boot.crt)",
        only_with="secure_boot",
    ),
    Setting(
        "secure_boot_common_name",
        "--secure-boot-common-name",
        "Output",
        "SecureBootCommonName",
        parse=parse_common_name,
        default_factory=lambda r: f"mkosi of {r.directory.name or 'a project'}",
        metavar="NAME",
        help="the certificate's common name (CN) that mkosi genkey writes (default: mkosi of PROJECT)",
    ),
    Setting(
        "secure_boot_valid_days",
        "--secure-boot-valid-days",
        "Output",
        "SecureBootValidDays",
        parse=parse_days,
        default=3650,
        metavar="DAYS",
        help="how long the certificate that mkosi genkey writes is valid (default: 3650 days)",
    ),
    Setting(
        "read_only",
        "--read-only",
        "Output",
        "ReadOnly",
        parse=parse_boolean,
        kind=Kind.boolean,
        default_factory=_default_read_only,
        help=f"make the root file system read-only ({_RAW}; implied by raw_squashfs, raw_erofs and --verity)",
        raw_only=True,
    ),
    Setting(
        "encrypt",
        "--encrypt",
        "Output",
        "Encrypt",
        parse=enum_parser(Encrypt),
        choices=_values(Encrypt),
        metavar="WHAT",
        help=f"encrypt everything but the ESP (all) or also the root (data) ({_RAW}; needs mkosi.passphrase)",
        raw_only=True,
        requires=(("passphrase", ""),),
    ),
    Setting(
        "verity",
        "--verity",
        "Output",
        "Verity",
        parse=parse_verity,
        kind=Kind.boolean,
        default=Verity.no,
        choices=_values(Verity),
        metavar="yes|no|signed",
        help=f"add a dm-verity partition for the root file system, signed: and its root hash signed ({_RAW})",
        raw_only=True,
        requires=(("read_only", "a hash tree only protects a root that never changes"),),
    ),
    Setting(
        "verity_key",
        "--verity-key",
        "Output",
        "VerityKey",
        parse=parse_path,
        path=PathKind.private,
        # The Secure Boot key signs the boot chain; the same key vouching for the root is what a
        # machine that trusts one trusts the other with.
        default_factory=lambda r: r["secure_boot_key"],
        metavar="PATH",
        help="private key (PEM) that signs the verity root hash (default: the Secure Boot key)",
        only_with="signed_verity",
    ),
    Setting(
        "verity_certificate",
        "--verity-certificate",
        "Output",
        "VerityCertificate",
        parse=parse_path,
        path=PathKind.file,
        default_factory=lambda r: r["secure_boot_certificate"],
        metavar="PATH",
        help="X.509 certificate (PEM) of the verity key (default: the Secure Boot certificate)",
        only_with="signed_verity",
    ),
    Setting(
        "key_derivation",
        "--key-derivation",
        "Output",
        "KeyDerivation",
        parse=enum_parser(KeyDerivation),
        default=KeyDerivation.argon2id,
        choices=_values(KeyDerivation),
        metavar="KDF",
        help="how LUKS turns the passphrase into a key (argon2id: memory-hard, needs RAM to unlock; pbkdf2)",
    ),
    Setting(
        "key_derivation_time",
        "--key-derivation-time",
        "Output",
        "KeyDerivationTime",
        parse=parse_milliseconds,
        metavar="MS",
        help="milliseconds one LUKS unlock should take on the build host (default: cryptsetup's, 2000)",
    ),
    Setting(
        "initrds",
        "--initrd",
        "Output",
        "Initrds",
        parse=parse_paths,
        path=PathKind.file,
        kind=Kind.list,
        default=(),
        metavar="PATH",
        help="extra initrd (cpio archive) appended to the unified kernel image's (repeatable; bootable images)",
        boot_only=True,
        requires=(("bootable", ""),),
    ),
    Setting(
        "compress",
        "--compress",
        "Output",
        "Compress",
        parse=parse_compression,
        const="zstd",
        default=Compression.none,
        choices=_values(Compression),
        metavar="ALGORITHM",
        help="compress the output (bare flag: zstd; not for directory or subvolume)",
    ),
    Setting(
        "compress",
        "--xz",
        "Output",
        "XZ",
        parse=parse_xz,
        kind=Kind.boolean,
        help="compress the output with xz (same as --compress=xz)",
    ),
    Setting(
        "incremental",
        "--incremental",
        "Output",
        "Incremental",
        short="-i",
        parse=parse_boolean,
        kind=Kind.boolean,
        default=False,
        help="reuse and keep intermediary cache images",
    ),
    Setting(
        "hostname",
        "--hostname",
        "Output",
        "Hostname",
        parse=parse_hostname,
        metavar="NAME",
        help="hostname of the image",
    ),
    Setting(
        "kernel_command_line",
        "--kernel-command-line",
        "Output",
        "KernelCommandLine",
        parse=parse_words,
        kind=Kind.list,
        default=(),
        metavar="WORDS",
        help="kernel command line words (bootable images)",
    ),
    Setting(
        "source_date_epoch",
        "--source-date-epoch",
        "Output",
        "SourceDateEpoch",
        parse=parse_epoch,
        default_factory=_default_source_date_epoch,
        metavar="SECONDS",
        help="the build's time for reproducible images: later mtimes are clamped to it and every tool gets it as "
        "SOURCE_DATE_EPOCH (default: $SOURCE_DATE_EPOCH)",
    ),
    Setting(
        "reproducible",
        "--reproducible",
        "Output",
        "Reproducible",
        parse=parse_boolean,
        kind=Kind.boolean,
        default=False,
        help="refuse to build what a rebuild would not give again byte for byte (needs SourceDateEpoch=; "
        "no raw_btrfs, no Encrypt=, scripts only with DeterministicScripts=)",
    ),
    Setting(
        "seed",
        "--seed",
        "Output",
        "Seed",
        parse=parse_uuid,
        default_factory=_default_seed,
        metavar="UUID",
        help="seed of partition and filesystem UUIDs (default: from the output name)",
    ),
    Setting(
        "workspace",
        "--workspace",
        "Output",
        "Workspace",
        parse=enum_parser(WorkspaceMode),
        default=WorkspaceMode.auto,
        choices=_values(WorkspaceMode),
        metavar="MODE",
        help="where the build's working tree lives (auto: tmpfs when memory allows)",
    ),
    # [Packages]
    Setting(
        "packages",
        "--package",
        "Packages",
        "Packages",
        short="-p",
        parse=parse_items,
        kind=Kind.list,
        default=(),
        metavar="PACKAGE",
        help="packages to install (repeatable, comma-separated)",
    ),
    Setting(
        "package_lock",
        "--package-lock",
        "Packages",
        "PackageLock",
        parse=parse_path,
        path=PathKind.file,
        metavar="PATH",
        help="install exactly these package versions, each file checked against its SHA-256: a JSON list of "
        "{name, version, architecture, sha256}, as a release's manifest.json records them (Debian, Ubuntu)",
    ),
    Setting(
        "with_docs",
        "--with-docs",
        "Packages",
        "WithDocs",
        parse=parse_boolean,
        kind=Kind.boolean,
        default=False,
        help="install documentation",
    ),
    Setting(
        "with_tests",
        "--with-tests",
        "Packages",
        "WithTests",
        parse=parse_boolean,
        kind=Kind.boolean,
        default=True,
        negation="--without-tests",
        help="run tests in the build script (default: yes)",
    ),
    Setting(
        "cache_path",
        "--cache",
        "Packages",
        "Cache",
        parse=parse_path,
        path=PathKind.dir,
        discover="mkosi.cache/",
        metavar="PATH",
        help="package cache directory (default: mkosi.cache/ if it exists)",
        created=True,
        written=True,
    ),
    Setting(
        "extra_trees",
        "--extra-tree",
        "Packages",
        "ExtraTrees",
        parse=parse_paths,
        path=PathKind.dir,
        kind=Kind.list,
        default=(),
        discover="mkosi.extra/",
        metavar="PATH",
        help="directory copied over the image (repeatable; mkosi.extra/ is added if it exists)",
    ),
    Setting(
        "build_script",
        "--build-script",
        "Packages",
        "BuildScript",
        parse=parse_path,
        path=PathKind.executable,
        discover="mkosi.build",
        metavar="PATH",
        help="script building the sources inside a development image (default: mkosi.build)",
    ),
    Setting(
        "build_sources",
        "--build-sources",
        "Packages",
        "BuildSources",
        parse=parse_path,
        path=PathKind.dir,
        default_factory=lambda r: r.directory,
        metavar="PATH",
        help="source tree to build (default: the project directory)",
    ),
    Setting(
        "build_dir",
        "--build-dir",
        "Packages",
        "BuildDirectory",
        parse=parse_path,
        path=PathKind.dir,
        discover="mkosi.builddir/",
        metavar="PATH",
        help="directory kept between builds as the build script's $BUILDDIR, for incremental compiles "
        "(default: mkosi.builddir/ if it exists)",
        created=True,
        written=True,
    ),
    Setting(
        "build_packages",
        "--build-package",
        "Packages",
        "BuildPackages",
        parse=parse_items,
        kind=Kind.list,
        default=(),
        metavar="PACKAGE",
        help="packages only needed by the build script (repeatable, comma-separated)",
    ),
    Setting(
        "postinst_script",
        "--postinst-script",
        "Packages",
        "PostInstallationScript",
        parse=parse_path,
        path=PathKind.executable,
        discover="mkosi.postinst",
        metavar="PATH",
        help="script run inside the image after installation (default: mkosi.postinst)",
    ),
    Setting(
        "deterministic_scripts",
        "--deterministic-scripts",
        "Packages",
        "DeterministicScripts",
        parse=parse_boolean,
        kind=Kind.boolean,
        default=False,
        help="mkosi.build and mkosi.postinst write the same files for the same sources (Reproducible= accepts them)",
    ),
    Setting(
        "use_git_files",
        "--use-git-files",
        "Packages",
        "UseGitFiles",
        parse=parse_boolean,
        kind=Kind.boolean,
        default_factory=_default_use_git_files,
        help="copy only the files git knows about (default: yes if the sources are a git checkout)",
    ),
    Setting(
        "git_files",
        "--git-files",
        "Packages",
        "GitFiles",
        parse=enum_parser(GitFiles),
        default=GitFiles.cached,
        choices=_values(GitFiles),
        metavar="WHICH",
        help="with --use-git-files: only tracked files (cached, default) or also untracked ones (others)",
    ),
    Setting(
        "with_network",
        "--with-network",
        "Packages",
        "WithNetwork",
        parse=parse_boolean,
        kind=Kind.boolean,
        default=False,
        help="give the build and postinst scripts network access",
    ),
    Setting(
        "nspawn_settings",
        "--settings",
        "Packages",
        "NSpawnSettings",
        parse=parse_path,
        path=PathKind.file,
        discover="mkosi.nspawn",
        metavar="PATH",
        help=".nspawn settings file placed next to the image (default: mkosi.nspawn)",
    ),
    # [Partitions]
    Setting(
        "root_size",
        "--root-size",
        "Partitions",
        "RootSize",
        parse=parse_size,
        metavar="BYTES",
        help=f"size of the root partition ({_RAW})",
        raw_only=True,
    ),
    Setting(
        "esp_size",
        "--esp-size",
        "Partitions",
        "ESPSize",
        parse=parse_size,
        metavar="BYTES",
        help="size of the EFI system partition (raw formats and esp)",
        boot_only=True,
    ),
    Setting(
        "swap_size",
        "--swap-size",
        "Partitions",
        "SwapSize",
        parse=parse_size,
        metavar="BYTES",
        help=f"size of a swap partition ({_RAW})",
        raw_only=True,
    ),
    Setting(
        "home_size",
        "--home-size",
        "Partitions",
        "HomeSize",
        parse=parse_size,
        metavar="BYTES",
        help=f"size of a /home partition ({_RAW})",
        raw_only=True,
    ),
    Setting(
        "srv_size",
        "--srv-size",
        "Partitions",
        "SrvSize",
        parse=parse_size,
        metavar="BYTES",
        help=f"size of a /srv partition ({_RAW})",
        raw_only=True,
    ),
    # [Validation]
    Setting(
        "checksum",
        "--checksum",
        "Validation",
        "CheckSum",
        parse=parse_boolean,
        kind=Kind.boolean,
        default=False,
        help="write a SHA256SUMS file",
    ),
    Setting(
        "sign",
        "--sign",
        "Validation",
        "Sign",
        parse=parse_boolean,
        kind=Kind.boolean,
        default=False,
        help="write and sign a SHA256SUMS file with gpg (implies --checksum)",
        implies=("checksum",),
    ),
    Setting("key", "--key", "Validation", "Key", parse=parse_string, metavar="KEY", help="gpg key to sign with"),
    Setting(
        "password",
        "--password",
        "Validation",
        "Password",
        parse=str,
        metavar="PASSWORD",
        help="root password of the image (visible in the process list: prefer a mkosi.rootpw file)",
        secret=True,
    ),
    # Command line only, or discovered only.
    Setting(
        "directory",
        "--directory",
        short="-C",
        parse=parse_path,
        metavar="PATH",
        help="project directory holding mkosi.default and friends (default: the current directory)",
    ),
    Setting(
        "default_path",
        "--default",
        parse=parse_path,
        path=PathKind.file,
        discover="mkosi.default",
        metavar="PATH",
        help="configuration file to read (default: mkosi.default)",
    ),
    Setting(
        "password_file",
        None,
        parse=parse_path,
        path=PathKind.private,
        discover="mkosi.rootpw",
        help="file holding the root password when Password= is not given (mkosi.rootpw, as since mkosi v5)",
    ),
    Setting(
        "passphrase",
        None,
        parse=parse_path,
        path=PathKind.private,
        discover="mkosi.passphrase",
        help="file holding the disk encryption passphrase (mkosi.passphrase)",
        only_with="encrypt",
    ),
    Setting(
        "verbose",
        "--verbose",
        short="-v",
        kind=Kind.counter,
        parse=parse_counter,
        default=0,
        help="log more (repeatable)",
    ),
    Setting(
        "log_format",
        "--log-format",
        parse=enum_parser(LogFormat),
        default=LogFormat.auto,
        choices=_values(LogFormat),
        metavar="FORMAT",
        help="log as text for a console or as JSON lines (default: auto)",
    ),
)

# The setting that owns each Config field: XZ= also writes compress, but Compress= is the one
# whose default, summary line and help describe the field.
PRIMARY: dict[str, Setting] = {}
for _setting in SETTINGS:
    PRIMARY.setdefault(_setting.dest, _setting)

BY_KEY: dict[tuple[str, str], Setting] = {(s.section, s.key): s for s in SETTINGS if s.section and s.key}
