"""The matrix file: TOML axes of mkosi.default settings, expanded into named cells.

    [matrix]                       # axes: every combination is a cell
    Release = ["bookworm", "trixie"]
    Format = ["directory", "tar"]
    [[exclude]]                    # drops the cells matching every key given
    Release = "trixie"
    Format = "directory"
    [[include]]                    # adds keys to matching cells, or adds a cell if none matches
    Format = "tar"
    Hostname = "tarball"
    [defaults]                     # settings of every cell
    Distribution = "debian"
    [release]                      # where and how the results are published
    Directory = "release"
    SourceDateEpoch = 1700000000   # one build time for every cell and the signature (reproducible)

A setting that can name another cell (BaseImage=) takes `cell:NAME`: that cell is built first, and
the value becomes the path of its image in the release being assembled.

Include and exclude behave as in GitHub Actions' matrices: excludes apply to the product, then each
include either extends every cell whose axis values it matches without changing any of them, or
becomes a cell of its own. Values are written as in TOML (strings, booleans, integers, lists) and
parsed by the same table as mkosi.default.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import itertools
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mkosi.checksums import gpg_home_problem
from mkosi.cli_args import suggest
from mkosi.config import HOLDS_PROJECT, Compression, holds_project
from mkosi.errors import ConfigError
from mkosi.registry import Registry, parse_registry
from mkosi.settings import BY_KEY, parse_epoch

Value = str | bool | int | list[str]

KNOWN_KEYS = {key for (_, key) in BY_KEY}
# Settings the matrix decides for every cell itself: given in the matrix file, they would be ignored.
MATRIX_OWNED = {
    "Output": "the matrix names each cell's output after the cell, in [release] Directory",
    "Force": "every cell builds into a directory of its own, there is nothing to replace",
}
# Never shown: the manifest says they are set, not what they are.
SECRET_KEYS = {key for (_, key), setting in BY_KEY.items() if setting.secret}
# Far more than any release builds, and still quick to list and plan: axes that multiply out to more
# are a mistake (a list pasted into the wrong axis), refused before anything is expanded.
MAX_CELLS = 10_000
# Settings whose value may be `cell:NAME`, another cell of the matrix.
REFERENCE_KEYS = {key for (_, key), setting in BY_KEY.items() if setting.cell_reference}
CELL_REFERENCE = "cell:"
RELEASE_KEYS = {"Directory", "Sign", "Key", "Compress", "SourceDateEpoch", "RemoteCache", "RemoteCacheInsecure"}
TOP_LEVEL = {"matrix", "include", "exclude", "defaults", "release"}


@dataclass(frozen=True)
class ReleaseSettings:
    directory: Path
    sign: bool = False
    key: str | None = None
    compress: Compression = Compression.none
    source_date_epoch: int | None = None
    # The stage cache the cells share with other machines (a CI fleet's shards).
    remote_cache: Registry | None = None
    remote_cache_insecure: bool = False


@dataclass(frozen=True)
class Cell:
    name: str
    # Key → value of the cell's own settings (axes and includes), in the order they were given.
    settings: dict[str, Value]
    # The cells this one's settings name (`cell:NAME`), built before it.
    needs: tuple[str, ...] = ()


@dataclass(frozen=True)
class Matrix:
    path: Path
    axes: dict[str, list[Value]]
    cells: list[Cell]
    defaults: dict[str, Value] = field(default_factory=dict)
    release: ReleaseSettings = ReleaseSettings(Path("release"))
    # The SHA-256 of the file's text: what a release was built from, checked by mkosi matrix verify.
    digest: str = ""


def ini_value(value: Value) -> str:
    """The value as it would be written in mkosi.default."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return " ".join(str(v) for v in value)
    return str(value)


def _check_value(where: str, key: str, value: object) -> Value:
    if isinstance(value, bool | int | str):
        return value
    if isinstance(value, list) and all(isinstance(v, str | int) for v in value):
        return [str(v) for v in value]
    raise ConfigError(
        f"unsupported value {value!r} (use a string, boolean, integer or list)", origin=where, setting=key
    )


def _settings_table(where: str, table: object) -> dict[str, Value]:
    if not isinstance(table, dict):
        raise ConfigError("must be a table of settings", origin=where)
    result = {}
    for key, value in table.items():
        _check_key(where, key)
        result[key] = _check_value(where, key, value)
    return result


def _check_key(where: str, key: str) -> None:
    if key not in KNOWN_KEYS:
        raise ConfigError(f"unknown key{suggest(key, KNOWN_KEYS)}", origin=where, setting=key)
    if key in MATRIX_OWNED:
        raise ConfigError(f"cannot be set in a matrix: {MATRIX_OWNED[key]}", origin=where, setting=key)


def shown_value(key: str, value: Value) -> str:
    """The value as the manifest records it: secrets only as set."""
    return "(set)" if key in SECRET_KEYS else ini_value(value)


_UNSAFE = re.compile(r"[^a-z0-9_.+]+")


def _name_part(key: str, value: Value) -> str | None:
    if isinstance(value, bool):
        # A switch reads better as its name when on, and as nothing when off.
        return key.lower() if value else None
    text = ini_value(value).lower()
    # Cell names become file names: no separators, and no leading dot (".", "..", hidden files).
    return _UNSAFE.sub("_", text).strip("_.") or key.lower()


def cell_name(settings: Mapping[str, Value], order: list[str]) -> str:
    keys = [k for k in order if k in settings] + sorted(k for k in settings if k not in order)
    parts = [p for k in keys if (p := _name_part(k, settings[k])) is not None]
    return "-".join(parts) or "default"


def _matches(cell: Mapping[str, Value], pattern: Mapping[str, Value], keys: set[str] | None = None) -> bool:
    return all(cell.get(k) == v for k, v in pattern.items() if keys is None or k in keys)


def expand(
    axes: dict[str, list[Value]],
    include: list[dict[str, Value]],
    exclude: list[dict[str, Value]],
    where: str = "mkosi.matrix",
) -> list[Cell]:
    """The cells of a matrix, in a stable order: the product in axis order, then the new includes."""
    names = list(axes)
    product = math.prod(len(values) for values in axes.values())
    if product > MAX_CELLS:
        sizes = " x ".join(f"{len(v)} {k}" for k, v in axes.items())
        problem = f"[matrix] multiplies out to {product:,} cells ({sizes}), more than {MAX_CELLS:,}"
        raise ConfigError(problem, origin=where)
    combos = [dict(zip(names, values, strict=True)) for values in itertools.product(*axes.values())]
    if not axes:
        combos = []
    combos = [c for c in combos if not any(_matches(c, pattern) for pattern in exclude)]
    if axes and not combos and not include:
        raise ConfigError("[[exclude]] removes every cell of [matrix]: nothing is left to build", origin=where)
    originals = [dict(c) for c in combos]
    axis_keys = set(names)
    for entry in include:
        extended = False
        for combo, original in zip(combos, originals, strict=True):
            # An include extends a cell when it agrees with the cell's axis values and changes none
            # of them (keys beyond the axes may be added, or changed by a later include).
            if _matches(original, entry, axis_keys):
                combo.update({k: v for k, v in entry.items() if k not in axis_keys})
                extended = True
        if not extended:
            combos.append(dict(entry))
            originals.append(dict(entry))
    if not combos:
        problem = "no cells: [matrix] has no axes and no [[include]] adds a cell (one image: one [[include]])"
        raise ConfigError(problem, origin=where)

    cells: list[Cell] = []
    seen: dict[str, Cell] = {}
    for combo in combos:
        name = cell_name(combo, names)
        if name in seen:
            raise ConfigError(
                f"two cells would be named {name!r}: {seen[name].settings} and {combo}; "
                "give them a distinguishing key or exclude one",
                origin=where,
            )
        seen[name] = Cell(name, combo)
        cells.append(seen[name])
    return cells


def referenced_cell(key: str, value: Value) -> str | None:
    """The cell a setting's value names, if it names one."""
    if key in REFERENCE_KEYS and isinstance(value, str) and value.startswith(CELL_REFERENCE):
        return value.removeprefix(CELL_REFERENCE)
    return None


def with_dependencies(cells: list[Cell], defaults: Mapping[str, Value], where: str) -> list[Cell]:
    """The cells with the cells they name; unknown names and a cell naming itself (through
    [defaults]) refused."""
    names = {cell.name for cell in cells}
    result = []
    for cell in cells:
        settings = {**defaults, **cell.settings}
        needs = tuple(dict.fromkeys(n for k, v in settings.items() if (n := referenced_cell(k, v)) is not None))
        for name in needs:
            if name == cell.name:
                raise ConfigError(f"cell {cell.name} names itself as {CELL_REFERENCE}{name}", origin=where)
            if name not in names:
                hint = suggest(name, names)
                raise ConfigError(
                    f"cell {cell.name} names {CELL_REFERENCE}{name}, no cell of this matrix{hint}", origin=where
                )
        result.append(dataclasses.replace(cell, needs=needs))
    # No circles: a cell's name holds the names it refers to (so two cells cannot name each other).
    return result


def _release(where: str, table: object, base: Path) -> ReleaseSettings:
    if not isinstance(table, dict):
        raise ConfigError("must be a table", origin=where)
    for key in table:
        if key not in RELEASE_KEYS:
            raise ConfigError(f"unknown key{suggest(key, RELEASE_KEYS)}", origin=where, setting=key)
    directory = table.get("Directory", "release")
    sign = table.get("Sign", False)
    key = table.get("Key")
    compress = table.get("Compress", "none")
    if not isinstance(directory, str) or not directory:
        raise ConfigError("must be a path", origin=where, setting="Directory")
    # Publishing replaces the release directory as a whole (and its ".logs" and work directories
    # go next to it): over the project, that would replace the project.
    release_directory = Path(os.path.normpath(base / directory))
    if holds_project(release_directory, base):
        raise ConfigError(f"{HOLDS_PROJECT}: {release_directory}", origin=where, setting="Directory")
    if not isinstance(sign, bool):
        raise ConfigError("must be true or false", origin=where, setting="Sign")
    if sign and (problem := gpg_home_problem()):
        raise ConfigError(problem, origin=where, setting="Sign")
    if key is not None and not isinstance(key, str):
        raise ConfigError("must be a gpg key id or user id", origin=where, setting="Key")
    try:
        compression = Compression(str(compress).lower())
    except ValueError:
        raise ConfigError("must be none, xz or zstd", origin=where, setting="Compress") from None
    epoch = table.get("SourceDateEpoch")
    try:
        # TOML's booleans are ints to Python, and "yes" is no time.
        source_date_epoch = None if epoch is None else parse_epoch("" if isinstance(epoch, bool) else str(epoch))
    except ValueError as e:
        raise ConfigError(str(e), origin=where, setting="SourceDateEpoch") from None
    remote, insecure = table.get("RemoteCache"), table.get("RemoteCacheInsecure", False)
    try:
        registry = None if remote is None else parse_registry(remote if isinstance(remote, str) else repr(remote))
    except ValueError as e:
        raise ConfigError(str(e), origin=where, setting="RemoteCache") from None
    if not isinstance(insecure, bool):
        raise ConfigError("must be true or false", origin=where, setting="RemoteCacheInsecure")
    return ReleaseSettings(release_directory, sign, key, compression, source_date_epoch, registry, insecure)


def _tables(where: str, value: object) -> list[dict[str, Value]]:
    if not isinstance(value, list):
        raise ConfigError("must be an array of tables ([[...]])", origin=where)
    return [_settings_table(f"{where}[{i}]", t) for i, t in enumerate(value)]


def parse_matrix(text: str, path: Path, base: Path) -> Matrix:
    """Parse a matrix file's text; relative paths are relative to `base` (the project directory)."""
    where = str(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"invalid TOML: {e}", origin=where) from None
    for top in data:
        if top not in TOP_LEVEL:
            raise ConfigError(f"unknown table [{top}] (expected one of {', '.join(sorted(TOP_LEVEL))})", origin=where)
    axes: dict[str, list[Value]] = {}
    raw_axes = data.get("matrix", {})
    if not isinstance(raw_axes, dict):
        raise ConfigError("[matrix] must be a table of axes", origin=where)
    for key, values in raw_axes.items():
        axis_where = f"{where}: [matrix]"
        _check_key(axis_where, key)
        if key in SECRET_KEYS:
            # Axis values name the cells, and cells name the artifacts.
            raise ConfigError(
                "a secret cannot be an axis: its values would name the cells", origin=axis_where, setting=key
            )
        if not isinstance(values, list) or not values:
            raise ConfigError("an axis must be a non-empty list of values", origin=axis_where, setting=key)
        axes[key] = [_check_value(axis_where, key, v) for v in values]
    include = _tables(f"{where}: [[include]]", data.get("include", []))
    exclude = _tables(f"{where}: [[exclude]]", data.get("exclude", []))
    defaults = _settings_table(f"{where}: [defaults]", data.get("defaults", {}))
    release = _release(f"{where}: [release]", data.get("release", {}), base)
    cells = with_dependencies(expand(axes, include, exclude, where), defaults, where)
    return Matrix(path, axes, cells, defaults, release, hashlib.sha256(text.encode()).hexdigest())


def load_matrix(path: Path, base: Path) -> Matrix:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read the matrix file: {e.strerror or e}", origin=str(path)) from None
    try:
        text = data.decode()
    except UnicodeDecodeError as e:
        # TOML is UTF-8 by definition.
        line = data.count(b"\n", 0, e.start) + 1
        problem = f"line {line}: byte 0x{data[e.start]:02x} is not UTF-8 (TOML is UTF-8 text)"
        raise ConfigError(problem, origin=str(path)) from None
    return parse_matrix(text, path, base)


def select(cells: list[Cell], patterns: list[str]) -> list[Cell]:
    """The cells whose names match any of the shell-style patterns (all cells when none are given)."""
    if not patterns:
        return cells
    chosen = [c for c in cells if any(fnmatch.fnmatchcase(c.name, p) for p in patterns)]
    if not chosen:
        raise ConfigError(f"no cell matches {' or '.join(patterns)} (see mkosi matrix --list)")
    return chosen
