"""In which steps dpkg installs a bootstrap's packages, and what apt records about them afterwards.

The base system (the Essential: yes and Priority: required packages and everything they depend on)
goes in one `dpkg --install --force-depends`, its files unpacked by hand beforehand. dpkg then
configures it in dependency order, its dependency circles included. Debian Policy requires
essential packages to work unconfigured, which debootstrap and mmdebstrap rely on in the same way.

Everything else keeps Policy's promise for Pre-Depends: a package is unpacked only once its
pre-dependencies are configured. As debootstrap does, the packages others pre-depend on go first,
with what they depend on, in as few runs as their own pre-dependencies allow; then everything left
goes in one run. That last run unpacks all before it configures any.

A kernel goes in a run of its own after everything else (`last`): its postinst builds the initrd
from a configured system. In the same run as dracut it would build it twice, once from the kernel's
hook and once more from dracut's trigger (5 s each), which finds no kernel when dracut is
configured beforehand.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from mkosi.package_managers.deb import parse_fields

Fields = Mapping[str, str]
DEPENDENCIES = ("Pre-Depends", "Depends")


@dataclass(frozen=True)
class Step:
    packages: tuple[str, ...]
    # Whether dpkg is to ignore unsatisfied dependencies: only the base system's circles need it.
    force_depends: bool


def relations(fields: Fields, *keys: str) -> list[str]:
    """Every package name in the relation fields `keys`, each alternative included."""
    text = ",".join(fields.get(key, "") for key in keys)
    return re.findall(r"(?:^|[,|])\s*([^\s,|:(]+)", text)


class PackageSet:
    """Packages by name, with what each depends on resolved to packages of the set."""

    def __init__(self, packages: Mapping[str, Fields]) -> None:
        self.fields = packages
        self.providers: dict[str, set[str]] = {}
        for name, fields in packages.items():
            for provided in [name, *relations(fields, "Provides")]:
                self.providers.setdefault(provided, set()).add(name)

    def targets(self, name: str, *keys: str) -> set[str]:
        """The packages of the set that `name`'s relations `keys` can be satisfied by."""
        return {p for relation in relations(self.fields[name], *keys) for p in self.providers.get(relation, ())}

    def closure(self, seeds: Iterable[str], within: set[str] | None = None) -> set[str]:
        """`seeds` and what they depend on, directly or not (only packages in `within`, if given)."""
        pending = list(seeds)
        found: set[str] = set()
        while pending:
            name = pending.pop()
            if name not in found:
                found.add(name)
                pending += (t for t in self.targets(name, *DEPENDENCIES) if within is None or t in within)
        return found

    def with_field(self, key: str, value: str) -> set[str]:
        return {name for name, fields in self.fields.items() if fields.get(key) == value}


def base_system(packages: PackageSet) -> set[str]:
    return packages.closure(packages.with_field("Essential", "yes") | packages.with_field("Priority", "required"))


def _valid_step(packages: PackageSet, candidates: set[str], rest: set[str]) -> set[str]:
    """The largest part of `candidates` dpkg can install in one run without forcing anything: no
    member pre-depends on a package not installed yet, and every member's dependencies that are
    not installed yet are members too."""
    step = {name for name in candidates if not packages.targets(name, "Pre-Depends") & rest}
    while left_out := {name for name in step if packages.closure([name], within=rest) - step}:
        step -= left_out
    return step


def _steps_without_base(package_set: PackageSet, rest: set[str]) -> list[Step]:
    """The runs that install `rest` once the base system is in: what others pre-depend on first,
    as few runs as their own pre-dependencies allow, then everything left at once."""
    steps = []
    rest = set(rest)
    while targets := {t for name in rest for t in package_set.targets(name, "Pre-Depends") & rest}:
        step = _valid_step(package_set, package_set.closure(targets, within=rest), rest)
        if not step:
            break  # a circle of pre-dependencies, which Policy forbids
        steps.append(Step(tuple(sorted(step)), force_depends=False))
        rest -= step
    if rest:
        # Forced only where a circle of pre-dependencies is left: as the base system, then.
        circle = any(package_set.targets(name, "Pre-Depends") & rest for name in rest)
        steps.append(Step(tuple(sorted(rest)), force_depends=circle))
    return steps


def install_steps(packages: Mapping[str, Fields], last: Iterable[str] = (), asked: Iterable[str] = ()) -> list[Step]:
    """The dpkg runs that install `packages` (control fields by name), in order. The packages
    `last` names, with what only they need, go after all others; what was `asked` for by name
    is never held back with them."""
    package_set = PackageSet(packages)
    base = base_system(package_set)
    steps = [Step(tuple(sorted(base)), force_depends=True)] if base else []
    rest = set(packages) - base
    seeds = set(last) & rest
    needed_by_seeds = package_set.closure(seeds, within=rest)
    others = (rest - needed_by_seeds) | ((set(asked) & rest) - seeds)
    late = needed_by_seeds - package_set.closure(others, within=rest)
    return steps + _steps_without_base(package_set, rest - late) + _steps_without_base(package_set, late)


def installed_packages(root: Path) -> dict[str, dict[str, str]]:
    """dpkg's database in the tree: the fields of every package, by name."""
    stanzas = (root / "var/lib/dpkg/status").read_text().split("\n\n")
    packages = (parse_fields(stanza) for stanza in stanzas)
    return {fields["Package"]: fields for fields in packages if "Package" in fields}


def mark_dependencies(root: Path, requested: set[str], architecture: str) -> int:
    """Write apt's record of the packages that are there only as dependencies (apt autoremove's
    candidates once nothing needs them), as debootstrap and mmdebstrap leave it: the essential
    packages and what they need, the Priority: required ones and those asked for are not. Returns
    how many are."""
    packages = installed_packages(root)
    package_set = PackageSet(packages)
    manual = package_set.closure(package_set.with_field("Essential", "yes"))
    manual |= package_set.with_field("Priority", "required") | requested
    automatic = sorted(name for name in packages if name not in manual)
    # apt writes the native architecture for Architecture: all packages too.
    (root / "var/lib/apt/extended_states").write_text(
        "".join(f"Package: {name}\nArchitecture: {architecture}\nAuto-Installed: 1\n\n" for name in automatic)
    )
    return len(automatic)
