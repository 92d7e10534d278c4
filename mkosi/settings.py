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
from pathlib import Path, PurePosixPath
from typing import Any, Protocol, TypeVar

from mkosi import naming
from mkosi.architecture import Architecture
from mkosi.distributions import Distribution, detect_host
from mkosi.errors import ConfigError
from mkosi.registry import parse_registry


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
    sysext = "sysext"
    confext = "confext"
    portable = "portable"
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
    def is_extension(self) -> bool:
        """An extension image: what the build adds to its base (BaseImage=), as a DDI systemd-sysext
        (sysext: /usr and /opt) or systemd-confext (confext: /etc) overlays on the base."""
        return self in (OutputFormat.sysext, OutputFormat.confext)

    @property
    def is_ddi(self) -> bool:
        """A Discoverable Disk Image that is not booted as a whole: an extension or a portable service,
        a read-only file system with verity."""
        return self.is_extension or self is OutputFormat.portable

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
        return naming.RAW_SUFFIX if self.is_disk or self.is_ddi else files.get(self, "")


class Verity(enum.StrEnum):
    """Whether the root gets a dm-verity hash tree, and whether its root hash is signed too."""

    no = "no"
    yes = "yes"
    signed = "signed"

    def __bool__(self) -> bool:
        # `if config.verity:` asks whether there is a hash tree at all.
        return self is not Verity.no


class DDIFileSystem(enum.StrEnum):
    """The read-only file system of a sysext, confext or portable image; systemd-dissect mounts both."""

    squashfs = "squashfs"
    erofs = "erofs"


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
    # What every tool reads: OCI layers for umoci 0.4 (which reads no zstd), initrds of any kernel.
    gz = "gz"

    @property
    def suffix(self) -> str:
        return naming.COMPRESSION_SUFFIXES[self.value]

    @property
    def oci_layer_media_type(self) -> str | None:
        """The OCI image-spec's media type of a tar layer compressed so; None: the spec has none (xz)."""
        return {
            Compression.none: "application/vnd.oci.image.layer.v1.tar",
            Compression.zstd: "application/vnd.oci.image.layer.v1.tar+zstd",
            Compression.gz: "application/vnd.oci.image.layer.v1.tar+gzip",
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


class CleanPackageMetadata(enum.StrEnum):
    yes = "yes"
    no = "no"
    auto = "auto"  # only when the image has no package manager that could use it


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
    # A raw_only setting that applies to the DDI formats too (sysext, confext, portable): their one
    # file system is read-only and protected by verity.
    ddi_too: bool = False
    # In a matrix, the value may name another cell as `cell:NAME`: that cell is built first, and
    # the value becomes the path of its published image.
    cell_reference: bool = False
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
    # The (section, key) names earlier mkosi versions gave this setting, read as this one. Every key
    # of [Packages] is also read in [Content], its name since v11, without being listed here.
    spellings: tuple[tuple[str, str], ...] = ()
    # What an empty assignment gives; None: it resets the setting to its default.
    empty: Any = None
    # How a discovered path (mkosi.extra/) becomes an item of a list setting.
    item: Callable[[Path], Any] = Path

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


IMAGE_TOP = PurePosixPath("/")


@dataclass(frozen=True)
class TreeSource:
    """A host directory copied into the image at `target` (ExtraTrees=src:dst, since mkosi v10)."""

    source: Path
    target: PurePosixPath = IMAGE_TOP

    def __str__(self) -> str:
        return str(self.source) if self.target == PurePosixPath("/") else f"{self.source}:{self.target}"


def parse_trees(value: str) -> tuple[TreeSource, ...]:
    """Directories, each SOURCE or SOURCE:TARGET (TARGET absolute in the image)."""
    trees = []
    for word in value.split():
        source, sep, target = word.partition(":")
        if sep and not target.startswith("/"):
            raise ValueError(f"invalid tree {word!r}: the target after ':' must be an absolute path in the image")
        if ".." in PurePosixPath(target).parts:
            raise ValueError(f"invalid tree {word!r}: the target must not contain '..'")
        trees.append(TreeSource(parse_path(source), PurePosixPath(target or "/")))
    return tuple(trees)


_ENVIRONMENT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def parse_environment(value: str) -> tuple[str, ...]:
    """NAME=VALUE words for the scripts' environment."""
    words = value.split()
    for word in words:
        name, sep, _ = word.partition("=")
        if not sep or not _ENVIRONMENT_NAME.fullmatch(name):
            raise ValueError(f"invalid environment assignment {word!r} (use NAME=VALUE)")
    return tuple(words)


_GLOB = re.compile(r"[*?\[]")


def parse_remove_files(value: str) -> tuple[str, ...]:
    """Absolute paths in the image; the last component may be a glob (/usr/share/locale/*)."""
    paths = []
    for word in re.split(r"[\s,]+", value):
        if not word:
            continue
        parts = PurePosixPath("/" + word.lstrip("/")).parts[1:]
        if not parts or ".." in parts:
            raise ValueError(f"invalid path {word!r}: name something below / without '..'")
        if any(_GLOB.search(part) for part in parts[:-1]):
            raise ValueError(f"invalid path {word!r}: only its last component may be a glob")
        paths.append("/" + "/".join(parts))
    return tuple(paths)


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


_parse_compression_name = enum_parser(Compression, {"gzip": Compression.gz})


def parse_compression(value: str) -> Compression:
    """none/xz/zstd/gz (or gzip), or a boolean: yes picks zstd, the best default today; no means none."""
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


def parse_source_file_transfer(value: str) -> bool:
    """mkosi v5-v14's SourceFileTransfer=, as far as this mkosi copies sources the same way."""
    word = value.strip().lower()
    if word in ("copy-all", "copy-git-cached"):
        return word == "copy-git-cached"
    if word in ("copy-git-others", "copy-git-more", "mount"):
        raise ValueError(f"{word} is not supported (use copy-all, copy-git-cached, or UseGitFiles= and GitFiles=)")
    raise ValueError(f"invalid value {value.strip()!r} (choose from copy-all, copy-git-cached)")


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
    directory: Path = r["output_dir"] or r.directory
    stem = naming.versioned_stem(r["image_id"], r["image_version"]) or "image"
    return directory / naming.image_file_name(stem, r["format"], r["compress"])


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


def _default_verity(r: Resolved) -> Verity:
    # systemd verifies an extension or portable image it is given with its root hash.
    return Verity.yes if r["format"].is_ddi else Verity.no


def _default_use_git_files(r: Resolved) -> bool:
    sources: Path = r["build_sources"]
    try:
        return (sources / ".git").exists()
    except (OSError, ValueError):
        return False


SECTIONS = ("Distribution", "Output", "Packages", "Partitions", "Validation", "Host")

# The v5-v14 names of the raw formats (gpt_*), and 2017's raw_ext4.
_FORMAT_ALIASES = {
    "raw_ext4": OutputFormat.raw_gpt,
    "gpt_ext4": OutputFormat.raw_gpt,
    "gpt_btrfs": OutputFormat.raw_btrfs,
    "gpt_squashfs": OutputFormat.raw_squashfs,
}
# What mkosi v3-v14 could build and this one cannot, and why: refused by name rather than as typos.
_FORMATS_NOT_BUILT = {
    name: "xfs root file systems are not supported yet (use raw_gpt for ext4 or raw_btrfs)"
    for name in ("gpt_xfs", "raw_xfs")
} | {"plain_squashfs": "a bare squashfs file is not supported yet (raw_squashfs puts it in a GPT image)"}
_DISTRIBUTION_ALIASES = {"archlinux": Distribution.arch}
_DISTRIBUTIONS_NOT_INSTALLED = {
    name: f"{name} images are not supported: mkosi has no installer for it (debian, ubuntu, fedora, opensuse, arch)"
    for name in ("centos", "centos_epel", "mageia", "openmandriva", "rocky", "rocky_epel", "alma", "alma_epel",
                 "clear", "photon", "gentoo")
}  # fmt: skip


def _refusing(parse: Callable[[str], E], refused: Mapping[str, str]) -> Callable[[str], E]:
    """`parse`, but values an earlier mkosi knew and this one cannot build are refused with why."""

    def checked(value: str) -> E:
        word = value.strip().lower()
        if word in refused:
            raise ValueError(f"{word}: {refused[word]}")
        return parse(value)

    return checked


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
        parse=_refusing(enum_parser(Distribution, _DISTRIBUTION_ALIASES), _DISTRIBUTIONS_NOT_INSTALLED),
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
        parse=_refusing(enum_parser(OutputFormat, _FORMAT_ALIASES), _FORMATS_NOT_BUILT),
        default=OutputFormat.raw_gpt,
        choices=_values(OutputFormat),
        metavar="FORMAT",
        help="output format (default: raw_gpt, a GPT disk image; raw_ext4 and gpt_ext4 mean raw_gpt, gpt_btrfs "
        "raw_btrfs, gpt_squashfs raw_squashfs)",
    ),
    Setting(
        "ddi_file_system",
        "--ddi-file-system",
        "Output",
        "DDIFileSystem",
        parse=enum_parser(DDIFileSystem),
        choices=_values(DDIFileSystem),
        default=DDIFileSystem.squashfs,
        metavar="FS",
        help="file system of sysext, confext and portable images (raw formats name theirs: raw_squashfs, raw_erofs)",
    ),
    Setting(
        "base_image",
        "--base-image",
        "Output",
        "BaseImage",
        parse=parse_path,
        # Checked before the build starts (mkosi.outputs.extension.check): in a matrix it may be
        # another cell's image, which only exists once that cell is built.
        path=PathKind.unchecked,
        metavar="PATH",
        help="the image an extension extends and its tree starts from instead of a bootstrap: a directory, a tar "
        "archive (compressed or not) or a raw disk with an ext4 or squashfs root (needed by sysext and confext; "
        "a portable service may start from one; in a matrix also cell:NAME)",
        cell_reference=True,
        # v13's name: the same thing, an image that holds only the changes from its base.
        spellings=(("Partitions", "BaseImage"),),
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
        help="output image path (default: image.raw, image.tar ... for the format, or image for a tree, plus "
        ".xz/.zst; ID_VERSION.raw ... with --image-id and --image-version)",
        written=True,
    ),
    Setting(
        "output_dir",
        "--output-dir",
        "Output",
        "OutputDirectory",
        short="-O",
        parse=parse_path,
        path=PathKind.dir,
        discover="mkosi.output/",
        metavar="PATH",
        help="directory the default output goes to (default: mkosi.output/ if it exists, else the project directory)",
        created=True,
        written=True,
    ),
    Setting(
        "image_id",
        "--image-id",
        "Output",
        "ImageId",
        parse=parse_string,
        metavar="ID",
        help="IMAGE_ID= written to the image's os-release, and the default output's name",
    ),
    Setting(
        "image_version",
        "--image-version",
        "Output",
        "ImageVersion",
        parse=parse_string,
        metavar="VERSION",
        help="IMAGE_VERSION= written to the image's os-release, appended to the default output's name after _",
    ),
    Setting(
        "ab_layout",
        "--ab",
        "Output",
        "ABLayout",
        parse=parse_boolean,
        kind=Kind.boolean,
        default=False,
        help=f"an A/B disk that systemd-sysupdate updates: the root (and its verity) twice, the second "
        f"slot empty ({_RAW})",
        raw_only=True,
        requires=(
            ("bootable", "each slot's unified kernel image boots it"),
            ("image_id", "the slots and kernels are named ID_VERSION"),
            ("image_version", "the slots and kernels are named ID_VERSION"),
        ),
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
        ddi_too=True,
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
        default_factory=_default_verity,
        choices=_values(Verity),
        metavar="yes|no|signed",
        help="add a dm-verity partition for the root file system, signed: and its root hash signed "
        f"({_RAW}; always for sysext, confext and portable)",
        raw_only=True,
        ddi_too=True,
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
        spellings=(("Output", "CompressOutput"),),
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
        "remote_cache",
        "--remote-cache",
        "Packages",
        "RemoteCache",
        parse=parse_registry,
        metavar="oci://HOST[:PORT]/REPOSITORY",
        help="an OCI registry that shares stage-cache entries between machines (with -i and in matrices)",
    ),
    Setting(
        "remote_cache_insecure",
        "--remote-cache-insecure",
        "Packages",
        "RemoteCacheInsecure",
        parse=parse_boolean,
        kind=Kind.boolean,
        default=False,
        help="talk to the remote cache over plain HTTP or without verifying its TLS certificate",
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
        parse=parse_trees,
        path=PathKind.dir,
        kind=Kind.list,
        default=(),
        discover="mkosi.extra/",
        metavar="PATH[:TARGET]",
        help="directory copied over the image, at TARGET if given (repeatable; mkosi.extra/ is added if it exists)",
        spellings=(("Content", "ExtraTree"),),
        item=TreeSource,
    ),
    Setting(
        "skeleton_trees",
        "--skeleton-tree",
        "Packages",
        "SkeletonTrees",
        parse=parse_trees,
        path=PathKind.dir,
        kind=Kind.list,
        default=(),
        discover="mkosi.skeleton/",
        metavar="PATH[:TARGET]",
        help="directory copied into the image before any package is installed (repeatable; mkosi.skeleton/ is "
        "added if it exists)",
        spellings=(("Content", "SkeletonTree"),),
        item=TreeSource,
    ),
    Setting(
        "remove_files",
        "--remove-files",
        "Packages",
        "RemoveFiles",
        parse=parse_remove_files,
        kind=Kind.list,
        default=(),
        metavar="PATHS",
        help="paths removed from the image after mkosi.postinst, the last component may be a glob (repeatable)",
    ),
    Setting(
        "clean_package_metadata",
        "--clean-package-metadata",
        "Packages",
        "CleanPackageMetadata",
        parse=enum_parser(CleanPackageMetadata),
        default=CleanPackageMetadata.auto,
        choices=_values(CleanPackageMetadata),
        metavar="WHEN",
        help="remove the package managers' databases and caches from the image (auto: only when the image has "
        "no package manager)",
    ),
    Setting(
        "environment",
        "--environment",
        "Packages",
        "Environment",
        parse=parse_environment,
        kind=Kind.list,
        default=(),
        metavar="NAME=VALUE",
        help="variables set for mkosi.prepare, mkosi.build, mkosi.postinst and mkosi.finalize (repeatable)",
        spellings=(("Packages", "BuildEnvironment"), ("Content", "BuildEnvironment")),
    ),
    Setting(
        "prepare_script",
        "--prepare-script",
        "Packages",
        "PrepareScript",
        parse=parse_path,
        path=PathKind.executable,
        discover="mkosi.prepare",
        metavar="PATH",
        help="script run inside the image after the packages are installed, with 'final' (and 'build' in the "
        "build image) (default: mkosi.prepare)",
    ),
    Setting(
        "finalize_script",
        "--finalize-script",
        "Packages",
        "FinalizeScript",
        parse=parse_path,
        path=PathKind.executable,
        discover="mkosi.finalize",
        metavar="PATH",
        help="script run on the host with $BUILDROOT and 'final' before the image is packed (default: mkosi.finalize)",
    ),
    Setting(
        "autologin",
        "--autologin",
        "Packages",
        "Autologin",
        parse=parse_boolean,
        kind=Kind.boolean,
        default=False,
        help="log root in on the console and serial gettys without a password prompt",
        spellings=(("Validation", "Autologin"),),
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
        "use_git_files",
        "--source-file-transfer",
        "Packages",
        "SourceFileTransfer",
        parse=parse_source_file_transfer,
        metavar="HOW",
        help="v5-v14 spelling: copy-all is --use-git-files=no, copy-git-cached --use-git-files=yes",
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
        spellings=(("Content", "Settings"),),
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
        spellings=(("Validation", "Checksum"),),
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
        help='root password of the image; on the command line only "-": read from standard input '
        "(or a mkosi.rootpw file); empty: none",
        secret=True,
        # Every mkosi of the mkosi.default era read Password= (empty) as "no root password".
        empty="",
        spellings=(("Content", "Password"),),
    ),
    Setting(
        "password_is_hashed",
        "--password-is-hashed",
        "Validation",
        "PasswordIsHashed",
        parse=parse_boolean,
        kind=Kind.boolean,
        default=False,
        help="Password= is already a crypt(3) hash, written to /etc/shadow as it is",
        spellings=(("Content", "PasswordIsHashed"),),
    ),
    Setting(
        "bmap",
        "--bmap",
        "Validation",
        "BMap",
        parse=parse_boolean,
        kind=Kind.boolean,
        default=False,
        help=f"write <image>.bmap next to the image with bmaptool, for fast copies to devices ({_RAW}, uncompressed)",
        raw_only=True,
        spellings=(("Validation", "Bmap"),),
    ),
    # [Host]
    Setting(
        "extra_search_paths",
        "--extra-search-paths",
        "Host",
        "ExtraSearchPaths",
        parse=parse_paths,
        path=PathKind.dir,
        kind=Kind.list,
        default=(),
        metavar="PATHS",
        help="directories searched for host tools before $PATH (repeatable)",
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

# Every name a file may give a setting: its own, those of earlier mkosi versions, and [Content] for
# [Packages] (v11 renamed the section). A name in SPELLINGS but not in BY_KEY is an old one.
SPELLINGS: dict[tuple[str, str], Setting] = dict(BY_KEY)
for _setting in SETTINGS:
    for _spelling in _setting.spellings:
        SPELLINGS.setdefault(_spelling, _setting)
for (_section, _key), _setting in BY_KEY.items():
    if _section == "Packages":
        SPELLINGS.setdefault(("Content", _key), _setting)


@dataclass(frozen=True)
class Retired:
    """A key of mkosi v3-v14 that has no setting here. A value asking for what this mkosi does anyway
    is read and has no further effect; any other is refused with `reason`, never silently dropped."""

    sections: tuple[str, ...]
    key: str
    reason: str
    accepted: frozenset[str] = frozenset()  # lower-case words; booleans as "yes"/"no"

    def accepts(self, value: str) -> bool:
        words = [w.lower() for w in re.split(r"[\s,]+", value) if w]
        normal = ["yes" if w in _TRUE else "no" if w in _FALSE else w for w in words]
        return bool(normal) and all(w in self.accepted for w in normal)


_NO, _YES = frozenset({"no"}), frozenset({"yes"})
_CONTENT = ("Packages", "Content")


def _off(sections: tuple[str, ...], key: str, feature: str) -> Retired:
    return Retired(sections, key, f"{feature} is not supported; only {key}=no is accepted", _NO)


RETIRED: tuple[Retired, ...] = (
    Retired(
        ("Output",), "BootProtocols", "BIOS boot is not supported: images boot with UEFI only", frozenset({"uefi"})
    ),
    Retired(
        ("Output",),
        "WithUnifiedKernelImages",
        "bootable images always boot a unified kernel image (no type 1 entries)",
        _YES,
    ),
    Retired(("Host",), "QemuHeadless", "mkosi qemu always runs headless, on the serial console", _YES),
    Retired(("Host",), "NspawnKeepUnit", "systemd-nspawn always runs with --keep-unit here", _YES),
    Retired(("Output",), "HostonlyInitrd", "the initrd is always a generic one (dracut --no-hostonly)", _NO),
    Retired(
        _CONTENT,
        "BasePackages",
        "BasePackages=no is not supported: every image gets its distribution's base system (systemd)",
        frozenset({"yes", "conditional"}),
    ),
    Retired(("Output",), "QCow2", "qcow2 output is not supported yet: convert with qemu-img convert -O qcow2", _NO),
    Retired(
        ("Distribution",),
        "UseHostRepositories",
        "the host's repository configuration is not used: give Mirror= and Repositories=",
        _NO,
    ),
    _off(("Output",), "UsrOnly", "a /usr-only image"),
    _off(("Output",), "SplitArtifacts", "splitting the image into partition files"),
    _off(("Output",), "OutputSplitRoot", "splitting the image into partition files"),
    _off(("Output",), "OutputSplitVerity", "splitting the image into partition files"),
    _off(("Output",), "OutputSplitKernel", "splitting the image into partition files"),
    _off(("Output",), "Minimize", "shrinking the root file system after the build"),
    _off(("Output",), "CacheInitrd", "caching the initrd across builds"),
    _off(("Output",), "NoChown", "handing outputs to the invoking user"),
    _off(("Output",), "TarStripSELinuxContext", "stripping SELinux labels from tar outputs"),
    _off(("Output",), "SignExpectedPCR", "signing expected TPM PCR values"),
    _off(("Host",), "Ssh", "ssh access to booted images"),
    _off(("Host",), "Ephemeral", "ephemeral boots"),
    _off(("Host",), "NetworkVeth", "host networking for booted images"),
    _off(_CONTENT, "SkipFinalPhase", "building only the build image"),
    _off(_CONTENT, "SourceResolveSymlinks", "resolving symbolic links in the sources"),
    _off(_CONTENT, "SourceResolveSymlinksFinal", "resolving symbolic links in the sources"),
    *(
        Retired(sections, key, f"{what} is not supported")
        for sections, key, what in (
            (("Output",), "ManifestFormat", "a per-image manifest (mkosi matrix writes release manifests)"),
            (("Output",), "GPTFirstLBA", "choosing the first usable LBA of the GPT"),
            (("Output",), "MachineID", "a fixed machine ID (every image gets its own on first boot)"),
            (("Output",), "Mksquashfs", "another mksquashfs (put it first on ExtraSearchPaths=)"),
            (("Output",), "WorkspaceDirectory", "choosing the workspace's directory (Workspace=tmpfs or disk)"),
            (("Output",), "CompressFs", "compressing the file system (squashfs is always compressed)"),
            (("Distribution",), "LocalMirror", "a build-time-only mirror (give Mirror=)"),
            (_CONTENT, "IncludeDirectory", "keeping the build image's /usr/include on the host"),
            (_CONTENT, "InstallDirectory", "keeping $DESTDIR on the host"),
            (_CONTENT, "RemovePackages", "removing packages after installation (use RemoveFiles=)"),
            (_CONTENT, "SourceFileTransferFinal", "copying the sources into the final image"),
            (("Host",), "SshKey", "ssh access to booted images"),
            (("Host",), "SshAgent", "ssh access to booted images"),
            (("Host",), "SshPort", "ssh access to booted images"),
            (("Host",), "SshTimeout", "ssh access to booted images"),
            (("Host",), "QemuSmp", "choosing mkosi qemu's CPUs (pass -smp after the verb: mkosi qemu -smp 4)"),
            (("Host",), "QemuMem", "choosing mkosi qemu's memory (pass -m after the verb: mkosi qemu -m 2G)"),
            (("Host",), "QemuKvm", "choosing qemu's accelerator (KVM is used when it works)"),
            (("Host",), "QemuArgs", "qemu arguments in the configuration (pass them after the verb: mkosi qemu ...)"),
            (("Host",), "QemuBoot", "booting qemu other than through UEFI"),
            (("Host",), "Netdev", "host networking for booted images"),
        )
    ),
)

RETIRED_BY_KEY: dict[tuple[str, str], Retired] = {(section, r.key): r for r in RETIRED for section in r.sections}
