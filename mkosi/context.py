"""The mutable state of one build, next to its frozen Config."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mkosi.config import Config


@dataclass(frozen=True)
class StageRecord:
    name: str
    key: str
    reused: bool
    seconds: float


@dataclass
class Context:
    config: Config
    # A private temporary directory; removed when the build ends, whatever happens.
    workspace: Path
    log: Any
    # Finished outputs waiting under temporary names; published (renamed into place) only when the
    # whole build succeeded, removed otherwise.
    staged: dict[Path, Path] = field(default_factory=dict)
    stages: list[StageRecord] = field(default_factory=list)

    @property
    def root(self) -> Path:
        """The image's tree."""
        return self.workspace / "root"

    def stage_output(self, final: Path) -> Path:
        """A temporary path next to `final` to write it to; published by rename."""
        temporary = final.with_name(f".mkosi-tmp.{final.name}")
        self.staged[final] = temporary
        return temporary
