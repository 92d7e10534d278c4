"""The command line: argparse options generated from the settings table, and the verb.

Each flag occurrence is recorded as an Assignment, in order, so that config.py applies command line
and file assignments alike. Nothing here reads files or resolves defaults.
"""

from __future__ import annotations

import argparse
import difflib
import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from mkosi.errors import ConfigError
from mkosi.settings import SECTIONS, SETTINGS, Kind, Setting


class Verb(enum.StrEnum):
    build = "build"
    summary = "summary"
    clean = "clean"
    help = "help"
    shell = "shell"
    boot = "boot"
    qemu = "qemu"
    genkey = "genkey"


# Verbs that pass the arguments after them on: the command to run in the image, or qemu's options.
VERBS_WITH_ARGUMENTS = (Verb.shell, Verb.boot, Verb.qemu)


PROJECT_GROUP = "Project"


@dataclass(frozen=True)
class Where:
    """Where a value came from, in the words ConfigError prints."""

    origin: str | None = None  # "mkosi.default:3" or a discovered file's name
    setting: str | None = None  # "[Output] Format" or "--format"

    def error(self, problem: str) -> ConfigError:
        return ConfigError(problem, origin=self.origin, setting=self.setting)


@dataclass(frozen=True)
class Assignment:
    setting: Setting
    raw: str | None  # None for one occurrence of a bare counter flag
    where: Where


def suggest(word: str, candidates: Iterable[str], template: str = "{}") -> str:
    """ ", did you mean X?" for the closest candidate (ignoring case), or nothing."""
    lowered = {c.lower(): c for c in candidates}
    match = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)
    return f", did you mean {template.format(lowered[match[0]])}?" if match else ""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ConfigError(message)


class _Record(argparse.Action):
    """Records each occurrence of a flag in order, so the loader can apply file and command line
    assignments alike (and report a bad value as "--flag: problem")."""

    def __init__(self, *args: Any, setting: Setting, fixed: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.setting = setting
        self.fixed = fixed

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        raw = self.fixed if self.fixed is not None else values if isinstance(values, str) else None
        recorded: list[Assignment] = namespace.__dict__.setdefault("assignments", [])
        recorded.append(Assignment(self.setting, raw, Where(setting=option_string)))


def _help_text(s: Setting) -> str:
    text = s.help
    if s.choices:
        text += f"; one of: {', '.join(s.choices)}"
    if s.section and s.key:
        text += f" [{s.section}] {s.key}="
    return text


def _build_parser() -> tuple[_Parser, dict[str, str | int | None]]:
    """The argparse parser, and the nargs of each flag (None: takes one value)."""
    parser = _Parser(
        prog="mkosi",
        usage="mkosi [options...] [VERB] [ARGS...]",
        description="Build legacy-free OS images.\n\nVerbs: "
        + ", ".join(v.value for v in Verb)
        + " (default: build; ARGS: the command shell/boot run in the image, or options for qemu)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        add_help=False,
        allow_abbrev=False,  # abbreviations would make the verb/argument split below ambiguous
        exit_on_error=False,
    )
    nargs: dict[str, str | int | None] = {"-h": 0, "--help": 0}
    parser.add_argument_group("Commands").add_argument(
        "-h", "--help", action="store_true", default=argparse.SUPPRESS, help="show this help and exit"
    )
    groups = {name: parser.add_argument_group(name) for name in (*SECTIONS, PROJECT_GROUP)}
    for s in SETTINGS:
        flags = [f for f in (s.short, s.long) if f]
        if not flags:
            continue
        group = groups[s.section or PROJECT_GROUP]
        kwargs: dict[str, Any] = {"action": _Record, "setting": s, "default": argparse.SUPPRESS}
        if s.kind is Kind.counter:
            kwargs["nargs"] = 0
        elif s.kind is Kind.boolean or s.const is not None:
            kwargs |= {"nargs": "?", "const": s.const or "yes", "metavar": s.metavar or "BOOL"}
        else:
            kwargs["metavar"] = s.metavar
        group.add_argument(*flags, help=_help_text(s), **kwargs)
        for flag in flags:
            nargs[flag] = kwargs.get("nargs")
        if s.negation:
            group.add_argument(
                s.negation,
                action=_Record,
                setting=s,
                fixed="no",
                nargs=0,
                default=argparse.SUPPRESS,
                help=f"same as {s.long}=no",
            )
            nargs[s.negation] = 0
    return parser, nargs


def _split_argv(argv: Sequence[str], nargs: dict[str, str | int | None]) -> tuple[list[str], list[str], list[str]]:
    """Split argv into (options, [verb, *args], unknown flags).

    argparse cannot do this itself: a flag with an optional value (--bootable) would swallow the
    verb after it. Here such flags only take a value written with "=", so "--bootable build" works.
    """
    options: list[str] = []
    unknown: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        if token == "--":
            return options, list(argv[i + 1 :]), unknown
        if not token.startswith("-") or token == "-":
            return options, list(argv[i:]), unknown
        options.append(token)
        if token.startswith("--"):
            name = token.partition("=")[0]
            if name not in nargs:
                unknown.append(name)
            elif nargs[name] is None and "=" not in token and i + 1 < len(argv):
                i += 1
                options.append(argv[i])
        else:
            # A cluster of short flags (-fv, -dfedora, -bno): as with getopt, the rest of the cluster
            # after a flag taking a value, even an optional one, is that value.
            for j, char in enumerate(token[1:], start=1):
                flag = "-" + char
                if flag not in nargs:
                    unknown.append(flag)
                    break
                if nargs[flag] == "?":
                    break
                if nargs[flag] is None:
                    if j == len(token) - 1 and i + 1 < len(argv):
                        i += 1
                        options.append(argv[i])
                    break
        i += 1
    return options, [], unknown


def parse_command_line(argv: Sequence[str]) -> tuple[Verb, list[Assignment], list[str]]:
    parser, nargs = _build_parser()
    options, positional, unknown = _split_argv(argv, nargs)
    # Help wins over every other problem on the command line: it is what someone confused asks for.
    if any(o in ("-h", "--help") for o in options) or positional[:1] == ["help"]:
        return Verb.help, [], []
    if unknown:
        raise ConfigError("unknown option" + suggest(unknown[0], nargs), setting=unknown[0])
    try:
        namespace = parser.parse_args(options)
    except argparse.ArgumentError as e:
        flag = (e.argument_name or "").split("/")[-1] or None
        raise ConfigError(e.message, setting=flag) from None
    if getattr(namespace, "help", False):
        return Verb.help, [], []
    verb = Verb.build
    if positional:
        try:
            verb = Verb(positional[0])
        except ValueError:
            choices = ", ".join(v.value for v in Verb)
            raise ConfigError(
                f"unknown verb {positional[0]!r} (choose from {choices}){suggest(positional[0], Verb)}"
            ) from None
    args = positional[1:]
    if args and verb not in VERBS_WITH_ARGUMENTS:
        raise ConfigError(f"{verb} takes no arguments, got {' '.join(args)!r}")
    return verb, list(getattr(namespace, "assignments", [])), args


def format_help() -> str:
    return _build_parser()[0].format_help()
