"""One stream of typed build events: the JSON lines tools parse, and the human lines people read."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest
import structlog

from mkosi import log
from mkosi.config import parse_args
from mkosi.context import Context
from mkosi.events import SCHEMA, Event, StageStarted
from mkosi.pipeline import Stage, run_stages, stage_keys
from mkosi.run import run


async def _nothing(context: Context) -> None:
    await run(["true"], log=context.log)


STAGES = [Stage("first", _nothing, inputs=lambda c: {}), Stage("second", _nothing, inputs=lambda c: {"h": c.hostname})]


def _build(tmp_path: Path, heard: list[Event]) -> Context:
    config = parse_args(["-C", str(tmp_path), "--hostname=h"])[1]
    (tmp_path / "ws").mkdir()
    with log.build_log("demo", tmp_path / "demo.log") as logger:
        context = Context(config, tmp_path / "ws", logger, monitor=heard.append)
        anyio.run(run_stages, context, STAGES)
    return context


def test_json_lines_carry_typed_versioned_events(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log.setup(json=True, verbose=1)
    heard: list[Event] = []
    context = _build(tmp_path, heard)
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    typed = [line for line in lines if "type" in line]
    assert all(line["schema"] == SCHEMA and line["build"] == "demo" for line in typed)
    assert [line["type"] for line in typed] == [
        "stage-started", "subprocess-finished", "stage-finished",
        "stage-started", "subprocess-finished", "stage-finished",
    ]  # fmt: skip
    keys = [key for _, key in stage_keys(context.config, STAGES)]
    finished = [line for line in typed if line["type"] == "stage-finished"]
    assert [(line["stage"], line["key"], line["reused"]) for line in finished] == [
        ("first", keys[0], False),
        ("second", keys[1], False),
    ]
    assert all(isinstance(line["seconds"], float) for line in finished)
    ran = next(line for line in typed if line["type"] == "subprocess-finished")
    assert (ran["program"], ran["returncode"]) == ("true", 0)
    # The other monitor heard the same events, as objects.
    assert [e.stage for e in heard if isinstance(e, StageStarted)] == ["first", "second"]


def test_human_lines_leave_the_machine_fields_out(tmp_path: Path) -> None:
    log.setup(json=False, verbose=0)
    _build(tmp_path, [])
    text = (tmp_path / "demo.log").read_text()
    keys = [key for _, key in stage_keys(parse_args(["-C", str(tmp_path), "--hostname=h"])[1], STAGES)]
    assert f"[demo] first: start (key={keys[0][:12]})" in text
    assert f"[demo] second: done (key={keys[1][:12]} seconds=" in text
    assert "type=" not in text and "schema=" not in text and keys[0] not in text
    structlog.reset_defaults()
