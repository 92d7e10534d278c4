"""A small INI reader that remembers the line every value came from.

configparser forgets line numbers and quietly accepts input mkosi wants to reject (duplicate
sections, keys before any section), so errors could not point at the offending line. This
reader only knows the syntax; which sections and keys exist is config.py's business.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from mkosi.errors import ConfigError


@dataclass(frozen=True)
class Section:
    """A `[Name]` header, kept so an unknown section is reported even when it is empty."""

    name: str
    line: int


@dataclass(frozen=True)
class Assignment:
    section: str
    key: str
    # Stripped; continuation lines are joined to it with "\n".
    value: str
    line: int


Entry = Section | Assignment

COMMENT_PREFIXES = ("#", ";")


def _excerpt(line: str) -> str:
    # The whole line could be anything (a binary file read by mistake): keep messages one short line.
    return repr(line if len(line) <= 40 else line[:37] + "...")


def parse_ini(text: str, origin: str) -> list[Entry]:
    """Parse INI text into headers and assignments, in file order.

    origin names the file in error messages ("PATH:LINE: problem").
    """
    entries: list[Entry] = []
    section: str | None = None
    # Index in entries of the assignment a continuation line extends, if any.
    last: int | None = None

    # Split on "\n" only: str.splitlines() also splits on form feeds and other separators, which
    # would make our line numbers disagree with every editor's.
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.rstrip()
        stripped = line.strip()
        where = f"{origin}:{number}"

        # Blank and comment lines do not end a multi-line value, so a list can be commented inline.
        if not stripped or stripped.startswith(COMMENT_PREFIXES):
            continue

        if line[0].isspace():
            if last is None:
                raise ConfigError("continuation line without a preceding Key=Value line", origin=where)
            previous = entries[last]
            assert isinstance(previous, Assignment)
            entries[last] = replace(previous, value=f"{previous.value}\n{stripped}")
            continue

        last = None
        if stripped.startswith("["):
            name = stripped[1:-1].strip()
            if not stripped.endswith("]") or not name or "[" in name or "]" in name:
                raise ConfigError(f"malformed section header {_excerpt(line)}", origin=where)
            section = name
            entries.append(Section(name, number))
            continue

        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep:
            problem = f"expected [Section], Key=Value or a comment, got {_excerpt(line)}"
            raise ConfigError(problem, origin=where)
        if not key:
            raise ConfigError(f"missing key before '=' in {_excerpt(line)}", origin=where)
        if section is None:
            raise ConfigError(f"{_excerpt(line)} appears before any [Section] header", origin=where)
        entries.append(Assignment(section, key, value.strip(), number))
        last = len(entries) - 1

    return entries


def read_ini(path: Path, origin: str) -> list[Entry]:
    """Read and parse an INI file; unreadable or undecodable files are a ConfigError too."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read file: {e.strerror or e}", origin=origin) from None
    try:
        # utf-8-sig: editors on some systems still write a byte order mark.
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ConfigError("file is not valid UTF-8", origin=f"{origin}:{line}") from None
    return parse_ini(text, origin)
