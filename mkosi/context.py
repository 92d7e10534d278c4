"""The mutable state of one build, next to its frozen Config."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mkosi import naming
from mkosi.config import Config
from mkosi.events import Event, Monitor, log_event

ROOT = "root"


@dataclass(frozen=True)
class StageRecord:
    name: str
    key: str
    reused: bool
    seconds: float
    # Reused from a remote cache: built by another machine.
    pulled: bool = False


@dataclass
class Context:
    config: Config
    # A private temporary directory; removed when the build ends, whatever happens.
    workspace: Path
    log: Any
    # Where the image's tree lives when not in `workspace`: a second private directory next to the
    # output (see build.tree_next_to_output). Like `workspace`, removed when the build ends.
    tree_workspace: Path | None = None
    # Finished outputs waiting under temporary names; published (renamed into place) only when the
    # whole build succeeded, removed otherwise.
    staged: dict[Path, Path] = field(default_factory=dict)
    stages: list[StageRecord] = field(default_factory=list)
    # Who else hears of the build's events besides its log (a matrix's progress display).
    monitor: Monitor | None = None

    def emit(self, event: Event) -> None:
        log_event(self.log, event)
        if self.monitor is not None:
            self.monitor(event)

    @property
    def root(self) -> Path:
        """The image's tree."""
        return (self.tree_workspace or self.workspace) / ROOT

    def items(self) -> dict[str, Path]:
        """The workspace's top-level items (the tree, the build image, file system images, ...) by
        name, with the directory each lives in: what a snapshot of the build's state consists of."""
        items = {child.name: self.workspace for child in self.workspace.iterdir()}
        if self.tree_workspace is not None:
            items.pop(ROOT, None)
            items.update({child.name: self.tree_workspace for child in self.tree_workspace.iterdir()})
        return dict(sorted(items.items()))

    def home_of(self, item: str) -> Path:
        """The directory the item called `item` lives in (or is to be restored to)."""
        return self.tree_workspace if item == ROOT and self.tree_workspace is not None else self.workspace

    def stage_output(self, final: Path) -> Path:
        """A temporary path next to `final` to write it to; published by rename."""
        temporary = naming.staged_path(final)
        self.staged[final] = temporary
        return temporary
