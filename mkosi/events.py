"""One stream of typed build events, rendered several ways.

A build reports what happens as events (build started, stage started and finished, subprocess
finished, artifact published, build finished). Each goes to the build's log, and so to its log file,
the console's step lines and `--log-format=json`, and to any other monitor a caller adds (the
matrix's live progress). In JSON every event carries `type` and `schema`: tools that read mkosi's
output (benchmarks, CI) match on those and on the named fields, never on the human message.

Schema 1, the fields of each type besides `type`, `schema`, `event` (the human message),
`timestamp`, `level` and `build`:
- build-started: output
- stage-started: stage, key
- stage-finished: stage, key, reused, seconds
- subprocess-finished: program, returncode, seconds (debug level: in the log file, on the console with -v)
- artifact-published: path
- build-finished: output, seconds, outside_subprocesses
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

SCHEMA = 1


@dataclass(frozen=True)
class Event:
    type: ClassVar[str]
    level: ClassVar[str] = "info"
    # The human message, from the event's fields.
    template: ClassVar[str]

    def message(self) -> str:
        return self.template.format_map(dataclasses.asdict(self))

    def fields(self) -> dict[str, Any]:
        return {"type": self.type, "schema": SCHEMA, **dataclasses.asdict(self)}


@dataclass(frozen=True)
class BuildStarted(Event):
    type = "build-started"
    output: str
    template = "build"


@dataclass(frozen=True)
class StageStarted(Event):
    type = "stage-started"
    stage: str
    key: str
    template = "{stage}: start"


@dataclass(frozen=True)
class StageFinished(Event):
    type = "stage-finished"
    stage: str
    key: str
    reused: bool
    seconds: float

    def message(self) -> str:
        return f"{self.stage}: {'reused' if self.reused else 'done'}"


@dataclass(frozen=True)
class SubprocessFinished(Event):
    type = "subprocess-finished"
    level = "debug"
    program: str
    returncode: int
    seconds: float
    template = "{program} exited with {returncode}"


@dataclass(frozen=True)
class ArtifactPublished(Event):
    type = "artifact-published"
    path: str
    template = "published"


@dataclass(frozen=True)
class BuildFinished(Event):
    type = "build-finished"
    output: str
    seconds: float
    outside_subprocesses: float
    template = "built"


class Monitor(Protocol):
    """Hears of every event of a build."""

    def __call__(self, event: Event) -> None: ...


def log_event(log: Any, event: Event) -> None:
    """The event as a line of `log` (a structlog logger), machine fields included."""
    getattr(log, event.level)(event.message(), **event.fields())


# The fields that only machines read: the human renderings leave them out (the message says it).
MACHINE_FIELDS = frozenset({"type", "schema", "stage", "reused", "program", "returncode"})
