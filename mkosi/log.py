"""Logging: structlog on top of the standard library's handlers.

Every build logs through a logger bound to its name. The console gets step lines (human-readable on
a terminal, JSON lines otherwise); subprocess output is logged at debug level, so it reaches the
console only with -v, but always reaches the build's own log file.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import structlog
from structlog.typing import EventDict, WrappedLogger

from mkosi.events import MACHINE_FIELDS

_FOREIGN_PRE_CHAIN: list[Any] = [
    structlog.stdlib.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]
_HIDDEN_KEYS = {"timestamp", "level", "logger", "build", "stream", "cmd", "_record", "_from_structlog"} | MACHINE_FIELDS


def _short(key: str, value: object) -> object:
    # A stage key's first 12 hex digits tell entries apart for a reader; JSON keeps all 64.
    return value[:12] if key == "key" and isinstance(value, str) else value


def _human(logger: WrappedLogger, method: str, event: EventDict) -> str:
    """One short line per event: "[build] event key=value …", subprocess output indented."""
    build = event.get("build")
    prefix = f"[{build}] " if build else ""
    if "stream" in event:
        return f"{prefix}  | {event['event']}"
    extra = " ".join(f"{k}={_short(k, v)}" for k, v in event.items() if k not in _HIDDEN_KEYS and k != "event")
    level = event.get("level", "info")
    marker = "" if level in ("info", "debug") else f"{level.upper()}: "
    return f"{prefix}{marker}{event['event']}" + (f" ({extra})" if extra else "")


def _timestamped(logger: WrappedLogger, method: str, event: EventDict) -> str:
    return f"{event.get('timestamp', '')} {_human(logger, method, event)}"


def _formatter(renderer: Any) -> logging.Formatter:
    return structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        foreign_pre_chain=_FOREIGN_PRE_CHAIN,
    )


def setup(*, json: bool | None = None, verbose: int = 0) -> None:
    """Configure console logging once per process. json=None picks JSON unless stderr is a tty."""
    if json is None:
        json = not sys.stderr.isatty()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            *_FOREIGN_PRE_CHAIN,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(_formatter(structlog.processors.JSONRenderer() if json else _human))
    console.setLevel(logging.DEBUG if verbose else logging.INFO)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(console)
    root.setLevel(logging.DEBUG)


@contextlib.contextmanager
def build_log(name: str, path: Path | None) -> Iterator[Any]:
    """A logger for one build, bound to its name, that also writes everything to `path`."""
    logger_name = f"mkosi.build.{name}"
    handler: logging.Handler | None = None
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path, mode="w", encoding="utf-8")
        handler.setFormatter(_formatter(_timestamped))
        handler.setLevel(logging.DEBUG)
        logging.getLogger(logger_name).addHandler(handler)
    try:
        yield structlog.get_logger(logger_name).bind(build=name)
    finally:
        if handler is not None:
            logging.getLogger(logger_name).removeHandler(handler)
            handler.close()
