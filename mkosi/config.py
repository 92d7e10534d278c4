"""Configuration: the command line and mkosi.default files merged into one frozen Config.

Order of precedence, lowest first: defaults (some computed from other settings), mkosi.* files
discovered in the project directory, mkosi.default (or --default), mkosi.default.d/*.conf in
sorted order, the command line. Scalars take the last value given; lists accumulate. Everything
is checked before anything is built, and every problem is a one-line ConfigError naming the file
and line, the flag, or the discovered file it came from. Nothing is written while parsing.
"""

from __future__ import annotations

import functools
import getpass
import os
import re
import stat
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, NoReturn

from mkosi import ini, naming
from mkosi.architecture import Architecture
from mkosi.checksums import gpg_home_problem
from mkosi.cli_args import PROJECT_GROUP, Assignment, Verb, Where, format_help, parse_command_line, suggest
from mkosi.distributions import Distribution
from mkosi.errors import ConfigError
from mkosi.package_lock import load_lock
from mkosi.registry import Registry
from mkosi.reproducibility import obstacles
from mkosi.settings import (
    BY_KEY,
    PRIMARY,
    RETIRED_BY_KEY,
    SECTIONS,
    SETTINGS,
    SPELLINGS,
    CleanPackageMetadata,
    Compression,
    DDIFileSystem,
    Encrypt,
    GitFiles,
    KeyDerivation,
    Kind,
    LogFormat,
    OutputFormat,
    PathKind,
    Setting,
    TreeSource,
    Verity,
    WorkspaceMode,
    format_size,
    parse_size,
)

# The enums are defined next to the settings table that parses them, and Verb and format_help next
# to the command line parser (mkosi.cli_args); all are re-exported here so that everything about
# configuration is imported from mkosi.config.
__all__ = [
    "Architecture",
    "CleanPackageMetadata",
    "Compression",
    "Config",
    "Distribution",
    "Encrypt",
    "GitFiles",
    "KeyDerivation",
    "LogFormat",
    "OutputFormat",
    "TreeSource",
    "Verb",
    "Verity",
    "WorkspaceMode",
    "config_from_settings",
    "format_help",
    "format_summary",
    "help_requested",
    "holds_project",
    "parse_args",
]


@dataclass(frozen=True)
class Config:
    directory: Path
    default_path: Path | None
    distribution: Distribution
    release: str
    mirror: str | None
    mirror_timeout: int
    repositories: tuple[str, ...]
    repository_key_check: bool
    repository_keys: tuple[Path, ...]
    architecture: Architecture
    format: OutputFormat
    ddi_file_system: DDIFileSystem
    base_image: Path | None
    output: Path
    output_dir: Path | None
    image_id: str | None
    image_version: str | None
    ab_layout: bool
    force: int
    bootable: bool
    secure_boot: bool
    secure_boot_key: Path | None
    secure_boot_certificate: Path | None
    secure_boot_common_name: str
    secure_boot_valid_days: int
    read_only: bool
    encrypt: Encrypt | None
    verity: Verity
    verity_key: Path | None
    verity_certificate: Path | None
    key_derivation: KeyDerivation
    key_derivation_time: int | None
    initrds: tuple[Path, ...]
    compress: Compression
    incremental: bool
    hostname: str | None
    kernel_command_line: tuple[str, ...]
    source_date_epoch: int | None
    reproducible: bool
    seed: uuid.UUID
    workspace: WorkspaceMode
    packages: tuple[str, ...]
    package_lock: Path | None
    with_docs: bool
    with_tests: bool
    remote_cache: Registry | None
    remote_cache_insecure: bool
    cache_path: Path | None
    extra_trees: tuple[TreeSource, ...]
    skeleton_trees: tuple[TreeSource, ...]
    remove_files: tuple[str, ...]
    clean_package_metadata: CleanPackageMetadata
    environment: tuple[str, ...]
    prepare_script: Path | None
    finalize_script: Path | None
    autologin: bool
    build_script: Path | None
    build_sources: Path
    build_dir: Path | None
    build_packages: tuple[str, ...]
    postinst_script: Path | None
    deterministic_scripts: bool
    use_git_files: bool
    git_files: GitFiles
    with_network: bool
    nspawn_settings: Path | None
    root_size: int | None
    esp_size: int | None
    swap_size: int | None
    home_size: int | None
    srv_size: int | None
    checksum: bool
    sign: bool
    key: str | None
    password: str | None
    password_is_hashed: bool
    bmap: bool
    extra_search_paths: tuple[Path, ...]
    password_file: Path | None
    passphrase: Path | None
    verbose: int
    log_format: LogFormat
    # Not a setting: what `mkosi summary` warns of (an earlier spelling that lost to a later one).
    warnings: tuple[str, ...] = field(default=(), compare=False)

    @property
    def signed_verity(self) -> bool:
        return self.verity is Verity.signed


# ---- files ----


def _display(path: Path, directory: Path) -> str:
    try:
        return str(path.relative_to(directory))
    except ValueError:
        return str(path)


# configparser, which mkosi v10-v14 read files with, ends a value at " #" (and mkosi.default files
# of that era comment their package lists so).
_INLINE_COMMENT = re.compile(r"\s+#.*$", re.MULTILINE)


def _value(setting: Setting, value: str) -> str:
    # A secret may contain " #"; so could a path, but no mkosi of that era kept one there either.
    return value if setting.secret else _INLINE_COMMENT.sub("", value)


def _file_assignments(path: Path, directory: Path, warnings: list[str]) -> list[Assignment]:
    origin = _display(path, directory)
    sections = {section for section, _ in SPELLINGS} | {section for section, _ in RETIRED_BY_KEY}
    result = []
    for entry in ini.read_ini(path, origin):
        where = f"{origin}:{entry.line}"
        if isinstance(entry, ini.Section):
            if entry.name not in sections:
                hint = suggest(entry.name, sections, "[{}]")
                raise ConfigError(f"unknown section [{entry.name}]{hint}", origin=where)
            continue
        name = f"[{entry.section}] {entry.key}"
        if (retired := RETIRED_BY_KEY.get((entry.section, entry.key))) is not None:
            if not retired.accepts(_INLINE_COMMENT.sub("", entry.value)):
                raise ConfigError(retired.reason, origin=where, setting=name)
            continue
        setting = SPELLINGS.get((entry.section, entry.key))
        if setting is None:
            keys = [key for (section, key) in SPELLINGS if section == entry.section]
            elsewhere = [section for (section, key) in BY_KEY if key == entry.key]
            hint = f", it belongs in [{elsewhere[0]}]" if elsewhere else suggest(entry.key, keys)
            raise ConfigError(f"unknown key{hint}", origin=where, setting=name)
        result.append(Assignment(setting, _value(setting, entry.value), Where(where, name)))
    return _later_spelling_wins(result, warnings)


def _later_spelling_wins(assignments: list[Assignment], warnings: list[str]) -> list[Assignment]:
    """One file giving one setting under two names ([Packages] and [Content] Packages=): only the
    assignments of the name used last count, as the later section wins, and a warning says so."""
    last: dict[str, Assignment] = {}
    for a in assignments:
        last[a.setting.dest] = a
    kept = []
    for a in assignments:
        winner = last[a.setting.dest]
        if a.where.setting == winner.where.setting:
            kept.append(a)
            continue
        warning = (
            f"{a.where.origin}: {a.where.setting} ignored: {winner.where.origin} sets it as {winner.where.setting}"
        )
        warnings.append(warning)
    return kept


def _stat(path: Path) -> os.stat_result | None:
    # Paths come from users and fuzzers: too long, undecodable or looping ones are just "missing".
    try:
        return path.stat()
    except (OSError, ValueError):
        return None


def _is_dir(path: Path) -> bool:
    st = _stat(path)
    return st is not None and stat.S_ISDIR(st.st_mode)


def _is_file(path: Path) -> bool:
    st = _stat(path)
    return st is not None and stat.S_ISREG(st.st_mode)


def _absolute(directory: Path, value: Any) -> Any:
    if isinstance(value, tuple):
        return tuple(_absolute(directory, v) for v in value)
    if isinstance(value, TreeSource):
        return replace(value, source=_absolute(directory, value.source))
    return Path(os.path.normpath(directory / value))


def _discover(directory: Path, name: str) -> Path | None:
    path = directory / name.rstrip("/")
    if _stat(path) is None:
        return None
    if name.endswith("/") and not _is_dir(path):
        # Silently ignoring it would build an image without what the user put there.
        raise ConfigError(f"not a directory: {name.rstrip('/')} must be a directory", origin=name.rstrip("/"))
    return path


def discovered_path(config: Config, dest: str) -> Path:
    """Where the setting `dest` finds its file in the project directory when it is not set, whether
    that file exists or not (mkosi.builddir, mkosi.secure-boot.key)."""
    name = PRIMARY[dest].discover
    assert name is not None, f"{dest} discovers no file"
    return config.directory / name.rstrip("/")


def _cwd() -> Path:
    try:
        return Path.cwd()
    except OSError as e:  # the directory was deleted under us
        raise ConfigError(f"cannot use the current directory: {e.strerror or e}") from None


def _locate(cli: list[Assignment]) -> tuple[Path, Path | None]:
    """The project directory and configuration file, needed before any file can be read."""
    directory: Path = _cwd()
    default: Path | None = None
    where: dict[str, Where] = {}
    for a in cli:
        if a.setting.dest in ("directory", "default_path") and a.raw is not None:
            try:
                path = a.setting.parse(a.raw) if a.raw.strip() else None
            except ValueError as e:
                raise a.where.error(str(e)) from None
            where[a.setting.dest] = a.where
            if a.setting.dest == "directory":
                directory = _absolute(_cwd(), path) if path else _cwd()
            else:
                default = path
    if not _is_dir(directory):
        raise where["directory"].error(f"no such directory: {directory}")
    if default is not None:
        default = _absolute(directory, default)
        # A regular file only: --default /dev/zero must not read forever.
        if problem := _problem(default, PathKind.file, directory):
            raise where["default_path"].error(problem)
        return directory, default
    candidate = directory / "mkosi.default"
    return directory, candidate if _is_file(candidate) else None


def _config_files(directory: Path, default: Path | None) -> list[Path]:
    dropins = directory / "mkosi.default.d"
    files = [default] if default else []
    if _is_dir(dropins):
        try:
            # Every file, whatever its name, as mkosi v3-v14 read them (not only *.conf).
            files += sorted(p for p in dropins.iterdir() if _is_file(p))
        except OSError as e:
            origin = _display(dropins, directory)
            raise ConfigError(f"cannot list directory: {e.strerror or e}", origin=origin) from None
    return files


# ---- merging and defaults ----


class _Resolver:
    """Applies assignments, then resolves defaults on demand in whatever order they depend on each other."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self.values: dict[str, Any] = {}
        self.where: dict[str, Where] = {}
        self.item_where: dict[str, list[Where]] = {}
        self._explicit: set[str] = set()
        self._counted: set[str] = set()
        self._resolving: set[str] = set()

    @property
    def directory(self) -> Path:
        return self._directory

    def is_set(self, dest: str) -> bool:
        return dest in self._explicit

    def assign(self, dest: str, value: Any, where: Where) -> None:
        self.values[dest], self.where[dest] = value, where
        self._explicit.add(dest)

    def apply(self, a: Assignment) -> None:
        if a.setting.secret and a.where.origin is None and a.raw:
            a = replace(a, raw=_secret_from_standard_input(a))
        s, dest = a.setting, a.setting.dest
        if a.raw is None:  # a bare counter flag: the command line's count replaces a file's
            if dest not in self._counted:
                self._counted.add(dest)
                self.values[dest] = 0
            self.assign(dest, self.values[dest] + 1, a.where)
            return
        if not a.raw.strip():
            # An empty value resets a scalar to its default (so a drop-in can undo mkosi.default),
            # unless the setting gives it a meaning of its own; for a list it adds nothing.
            if s.empty is not None:
                self.assign(dest, s.empty, a.where)
            elif s.kind is not Kind.list:
                self.values.pop(dest, None)
                self.where.pop(dest, None)
                self._explicit.discard(dest)
            return
        try:
            value = s.parse(a.raw)
        except ValueError as e:
            raise a.where.error(str(e)) from None
        if s.path:
            value = _absolute(self._directory, value)
        if s.kind is Kind.list:
            self.item_where.setdefault(dest, []).extend([a.where] * len(value))
            value = self.values.get(dest, ()) + value
        self.assign(dest, value, a.where)

    def __getitem__(self, dest: str) -> Any:
        if dest in self.values:
            return self.values[dest]
        if dest in self._resolving:
            raise RuntimeError(f"settings table: the default of {dest} depends on itself")
        s = PRIMARY[dest]
        self._resolving.add(dest)
        try:
            found = _discover(self._directory, s.discover) if s.discover else None
            if found is not None and s.kind is not Kind.list:
                value, where = found, Where(s.discover.rstrip("/") if s.discover else None)
            else:
                where = Where(setting=f"{s.name} (default)")
                value = s.default_factory(self) if s.default_factory else s.default
        finally:
            self._resolving.discard(dest)
        self.values[dest], self.where[dest] = value, where
        return value


def _secret_from_standard_input(a: Assignment) -> str:
    """A secret flag's value: only "-", read from standard input. Given on the command line itself,
    it would be readable by every user of the machine in /proc/PID/cmdline for as long as mkosi runs."""
    if a.raw != "-":
        raise a.where.error(
            "a secret on the command line is visible to every user in the process list: "
            f"give {a.where.setting}=- and type it on standard input, or put it in a file of mode 0600"
        )
    return _read_secret(str(a.where.setting))


@functools.cache  # asked once, however often the configuration is loaded
def _read_secret(flag: str) -> str:
    if sys.stdin.isatty():
        return getpass.getpass(f"{flag}: ")
    return sys.stdin.readline().removesuffix("\n")


def _resolve(directory: Path, default: Path | None, assignments: list[Assignment]) -> _Resolver:
    r = _Resolver(directory)
    for a in assignments:
        r.apply(a)
    r.values["directory"], r.values["default_path"] = directory, default
    for dest in PRIMARY:
        r[dest]
    for s in SETTINGS:
        if s.kind is Kind.list and s.discover:
            found = _discover(directory, s.discover)
            if found is not None and s.item(found) not in r.values[s.dest]:
                r.values[s.dest] += (s.item(found),)
                r.item_where.setdefault(s.dest, []).append(Where(s.discover.rstrip("/")))
    for s in SETTINGS:
        if r.values[s.dest]:
            for implied in s.implies:
                r.values[implied] = True
    # Tools that open an image trust its name: an explicit img.raw compressed with xz is img.raw.xz.
    output, suffix = r.values["output"], r.values["compress"].suffix
    if r.is_set("output") and suffix and not r.values["format"].is_directory and not output.name.endswith(suffix):
        r.values["output"] = output.with_name(output.name + suffix)
    return r


# ---- validation ----


def _problem(path: Path, want: PathKind, directory: Path) -> str | None:
    """Why path is not what a setting needs, or None."""
    st = _stat(path)
    shown = _display(path, directory)
    if want is PathKind.unchecked:
        return None
    if st is None:
        return f"no such {'directory' if want is PathKind.dir else 'file'}: {shown}"
    if want is PathKind.dir:
        return None if stat.S_ISDIR(st.st_mode) else f"not a directory: {shown}"
    if not stat.S_ISREG(st.st_mode):
        return f"not a regular file: {shown}"
    if want is PathKind.executable and not os.access(path, os.X_OK):
        return f"not executable: {shown} (chmod +x it)"
    if want is PathKind.private and st.st_mode & 0o077:
        return f"accessible by group or others (mode {stat.S_IMODE(st.st_mode):04o}): {shown} (chmod 600 it)"
    return None


def _is_on(value: Any) -> bool:
    return value not in (None, False, ()) and value is not Verity.no


def _needs(target: Setting, why: str) -> str:
    if target.path is None:
        wanted = f"{target.name}=yes" if target.kind is Kind.boolean else f"{target.name}= ({target.long})"
    elif target.key:
        wanted = f"{target.key}= or a {target.discover} file"
    else:
        wanted = f"a {target.discover} file in the project directory"
    return f"needs {wanted}" + (f": {why}" if why else "")


# The files `mkosi genkey` writes: a configuration that needs them is checked without them for it.
GENERATED_KEYS = frozenset({"secure_boot_key", "secure_boot_certificate"})


def _validate(c: Config, r: _Resolver, keys_to_come: bool = False) -> None:
    """The rules of the settings table's rows, then the few that relate particular values.
    `keys_to_come`: for `mkosi genkey`, which writes the key and certificate others require."""

    def fail(dest: str, problem: str) -> NoReturn:
        raise r.where.get(dest, Where(setting=PRIMARY[dest].name)).error(problem)

    try:
        c.distribution.installer().check_release(c.release)
    except ValueError as e:
        fail("release", str(e))
    if problem := c.distribution.installer().archived_problem(c.release, c.mirror):
        fail("release", problem)
    raw = ", ".join(f.value for f in OutputFormat if f.is_raw)
    booting = ", ".join(f.value for f in OutputFormat if f.boots)
    for s in PRIMARY.values():
        # A value defaulted from others (ReadOnly= from Verity=) is the others' problem.
        applies = c.format.is_raw or (s.ddi_too and c.format.is_ddi)
        if s.raw_only and not applies and r.is_set(s.dest) and _is_on(getattr(c, s.dest)):
            fail(s.dest, f"only supported with raw formats ({raw}), not {c.format}")
        if s.boot_only and not c.format.boots and r.is_set(s.dest) and _is_on(getattr(c, s.dest)):
            fail(s.dest, f"only supported with formats that boot ({booting}), not {c.format}")
    if c.format.is_boot_only and not c.bootable:
        fail("bootable", f"cannot be no with Format={c.format}: its whole content is what boots")
    _validate_ddi(c, r, fail)
    if c.compress is not Compression.none and c.format.is_tree:
        fail("compress", f"cannot compress a {c.format} output")
    if c.bmap and c.compress is not Compression.none:
        fail("bmap", "needs an uncompressed image: bmaptool maps the blocks of the image file itself")
    if c.format is OutputFormat.oci and c.compress.oci_layer_media_type is None:
        fail(
            "compress",
            f"{c.compress} cannot compress an OCI layer: the OCI image-spec has no media type for it "
            "(use zstd, gz or none)",
        )
    for s in PRIMARY.values():
        if _is_on(getattr(c, s.dest)):
            for dest, why in s.requires:
                if not _is_on(getattr(c, dest)) and not (keys_to_come and dest in GENERATED_KEYS):
                    fail(s.dest, _needs(PRIMARY[dest], why))
    missing_key = c.verity_key is None or c.verity_certificate is None
    if c.signed_verity and missing_key and not keys_to_come:
        fail(
            "verity",
            "signed needs VerityKey= and VerityCertificate= (or mkosi.secure-boot.key and .crt: mkosi genkey)",
        )
    _validate_ab_layout(c, fail)
    # With both, a disk's root partitions are named ImageId_ImageVersion (see disk.layout.slot_label).
    label = naming.versioned_stem(c.image_id, c.image_version) if c.image_id and c.image_version else ""
    if c.format.is_raw and label and len(label) > PARTITION_LABEL_MAX:
        fail(
            "image_version",
            f"the root partition's name {label!r} is longer than GPT's {PARTITION_LABEL_MAX} characters",
        )
    if c.verity and c.encrypt is Encrypt.all:
        fail("verity", "cannot be combined with Encrypt=all: the hash tree would protect an encrypted root")
    if c.package_lock is not None:
        if not c.distribution.installer().locks_packages:
            fail("package_lock", f"{c.distribution} builds do not record or lock their packages yet")
        load_lock(c.package_lock)
    if c.sign and (problem := gpg_home_problem()):
        fail("sign", problem)
    if c.reproducible and (reasons := obstacles(c)):
        fail("reproducible", "a rebuild would not give the same bytes: " + "; ".join(reasons))
    for s in PRIMARY.values():
        if s.path is not None and (s.only_with is None or _is_on(getattr(c, s.only_with))):
            _check_paths(c, r, s)
        if s.written and (path := getattr(c, s.dest)) is not None and holds_project(path, c.directory):
            fail(s.dest, f"{HOLDS_PROJECT}: {path}")


# A GPT partition name holds at most 36 UTF-16 code units.
PARTITION_LABEL_MAX = 36


def _validate_ab_layout(c: Config, fail: Any) -> None:
    """What an image that updates itself needs beyond its settings' own rules."""
    if not c.ab_layout:
        return
    if problem := c.distribution.installer().sysupdate_problem(c.release):
        fail("ab_layout", f"needs a release whose systemd-sysupdate updates the slots: {problem}")


def _validate_ddi(c: Config, r: _Resolver, fail: Any) -> None:
    """The rules of the extension and portable formats (see mkosi.outputs.extension)."""
    if c.format.is_extension and c.base_image is None:
        problem = "an extension holds what the build adds to its base"
        fail("format", f"{c.format} needs BaseImage= (--base-image): {problem}")
    if c.base_image is not None and not (c.format.is_extension or c.format is OutputFormat.portable):
        fail("base_image", f"only sysext, confext and portable images start from a base, not {c.format}")
    if c.base_image is not None and c.package_lock is not None:
        fail("package_lock", "a build from BaseImage= installs Packages= with the base's apt, which locks nothing yet")
    if r.is_set("ddi_file_system") and not c.format.is_ddi:
        fail("ddi_file_system", f"only for sysext, confext and portable images, not {c.format}")
    if c.format.is_ddi and not c.verity:
        fail("verity", f"{c.format} images always carry verity: systemd checks them against their root hash")
    if c.format.is_extension:
        # The base is configured already: its host name and passwords are the base's.
        for dest in ("hostname", "password", "password_file"):
            if getattr(c, dest) is not None:
                fail(dest, f"not for {c.format} images: the base's {PRIMARY[dest].name.lower()} stays in force")


HOLDS_PROJECT = "must not be the project directory or a directory above it (/ included)"


def holds_project(path: Path, directory: Path) -> bool:
    """Whether `path` is the project `directory` or one of the directories it lies in, links
    resolved: no place mkosi writes to, and -f, clean or -ff replace, remove or empty, may be."""
    real, project = Path(os.path.realpath(path)), Path(os.path.realpath(directory))
    return project.is_relative_to(real)


def _check_paths(c: Config, r: _Resolver, s: Setting) -> None:
    value = getattr(c, s.dest)
    if s.kind is Kind.list:
        checked = list(zip(value, r.item_where.get(s.dest, []), strict=True))
    else:
        checked = [] if value is None else [(value, r.where.get(s.dest, Where(setting=s.name)))]
    for item, where in checked:
        path = item.source if isinstance(item, TreeSource) else item
        if s.created and _stat(path) is None:
            continue
        assert s.path is not None
        if problem := _problem(path, s.path, c.directory):
            raise where.error(problem)


# ---- entry points ----


def _config(r: _Resolver, warnings: Sequence[str] = ()) -> Config:
    values = {f.name: r.values[f.name] for f in fields(Config) if f.name != "warnings"}
    return Config(**values, warnings=tuple(warnings))


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _load(directory: Path, default: Path | None, extra: list[Assignment], keys_to_come: bool = False) -> Config:
    """The one load pipeline: the project's files, then `extra`, resolved and checked."""
    files = _config_files(directory, default)
    warnings: list[str] = []
    assignments = [a for path in files for a in _file_assignments(path, directory, warnings)] + extra
    resolver = _resolve(directory, default, assignments)
    config = _config(resolver, warnings)
    _validate(config, resolver, keys_to_come)
    return config


def _one_printable_line(e: ConfigError) -> ConfigError:
    # Messages quote user input (paths, keys, undecodable argv): keep them one printable line.
    origin, setting = e.origin and _printable(e.origin), e.setting and _printable(e.setting)
    return ConfigError(_printable(e.problem), origin=origin, setting=setting)


def help_requested(argv: Sequence[str]) -> bool:
    """-h, --help or the help verb: answered from the settings table alone, so that help works even
    when the configuration, or a default computed from the environment, is broken."""
    try:
        return parse_command_line(argv)[0] is Verb.help
    except ConfigError:
        return False


def parse_args(argv: Sequence[str]) -> tuple[Verb, Config, list[str]]:
    """Parse `mkosi [options] [VERB] [ARGS...]` and the configuration files it points at (for every
    verb but help: see help_requested)."""
    try:
        verb, cli, args = parse_command_line(argv)
        if verb is Verb.help:
            raise ConfigError("help needs no configuration: ask help_requested() first")
        directory, default = _locate(cli)
        located = [a for a in cli if a.setting.dest not in ("directory", "default_path")]
        return verb, _load(directory, default, located, keys_to_come=verb is Verb.genkey), args
    except ConfigError as e:
        raise _one_printable_line(e) from None


def config_from_settings(directory: Path, settings: Sequence[tuple[str, str, str]]) -> Config:
    """The project in `directory` (mkosi.default and its drop-ins) with `settings` applied on top.

    Each setting is (origin, key, value): a mkosi.default key name without its section, a value as
    it would be written in mkosi.default, and where it came from for error messages. This is how
    tools built on mkosi (the release matrix) describe images through the same table and parsers.
    """
    by_name = {key: setting for (_, key), setting in BY_KEY.items()}
    try:
        directory = _absolute(_cwd(), directory)
        if not _is_dir(directory):
            raise ConfigError(f"no such directory: {directory}")
        candidate = directory / "mkosi.default"
        extra = []
        for origin, key, value in settings:
            found = by_name.get(key)
            if found is None:
                raise ConfigError(f"unknown key{suggest(key, by_name)}", origin=origin, setting=key)
            extra.append(Assignment(found, value, Where(origin, key)))
        return _load(directory, candidate if _is_file(candidate) else None, extra)
    except ConfigError as e:
        raise _one_printable_line(e) from None


def _format_value(s: Setting, value: Any) -> str:
    if s.secret:
        return "(set)" if value is not None else "(none)"
    if value is None or value == ():
        return "(none)"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, tuple):
        return " ".join(str(v) for v in value)
    if isinstance(value, int) and s.parse is parse_size:
        return format_size(value)
    return str(value)


def format_summary(config: Config) -> str:
    """What `mkosi summary` prints: "Key: value" lines grouped by section, after any warnings."""
    lines: list[str] = [f"Warning: {warning}" for warning in config.warnings]
    lines += [""] if lines else []
    for group in (*SECTIONS, PROJECT_GROUP):
        members = [s for s in PRIMARY.values() if (s.section or PROJECT_GROUP) == group]
        width = max(len(s.name) for s in members) + 1
        lines.append(f"{group}:")
        lines += [f"  {s.name + ':':<{width}} {_format_value(s, getattr(config, s.dest))}" for s in members]
        lines.append("")
    return "\n".join(lines)
