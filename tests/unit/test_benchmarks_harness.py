"""The benchmarks' shared harness: mkosi's JSON log into stage times, medians and ratios, results.json."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from benchmarks.harness import Built, Results, StageTime, check, parse_log, run
from mkosi import events


def _line(event: events.Event) -> str:
    """The event as mkosi's --log-format=json writes it."""
    return json.dumps({"event": event.message(), "build": "image", "level": "info", **event.fields()})


KEY = "0" * 64
LOG = "\n".join(
    [
        _line(events.StageStarted("bootstrap", KEY)),
        "Traceback (most recent call last): not a JSON line",
        _line(events.StageFinished("bootstrap", KEY, True, 1.2)),
        _line(events.SubprocessFinished("dpkg", 0, 99.0)),
        '["stage-finished"]',
        _line(events.StageFinished("build-script", KEY, False, 3.4)),
        _line(events.StageStarted("output", KEY)),
        _line(events.BuildFinished("/tmp/p/image", 5.5, 0.25)),
    ]
)


def test_parse_log_gives_stage_times_in_order_and_the_total() -> None:
    log = parse_log(LOG)
    # A subprocess is not a stage, and "output" never finished.
    assert list(log.stages) == ["bootstrap", "build-script"]
    assert log.stages["bootstrap"] == StageTime("reused", 1.2)
    assert log.stages["build-script"] == StageTime("done", 3.4)
    assert log.built == Built(5.5, 0.25, Path("/tmp/p/image"))


def test_parse_log_without_built_event() -> None:
    log = parse_log(_line(events.StageFinished("bootstrap", KEY, False, 2.0)))
    assert log.built is None
    assert log.stages == {"bootstrap": StageTime("done", 2.0)}


def test_parse_log_refuses_events_it_cannot_read() -> None:
    finished = json.loads(_line(events.StageFinished("bootstrap", KEY, False, 2.0)))
    del finished["seconds"]
    with pytest.raises(ValueError, match="seconds"):
        parse_log(json.dumps(finished))
    built = json.loads(_line(events.BuildFinished("/x", 1.0, 0.1)))
    del built["outside_subprocesses"]
    with pytest.raises(ValueError, match="outside_subprocesses"):
        parse_log(json.dumps(built))
    with pytest.raises(ValueError, match="schema 2"):
        parse_log(json.dumps({**json.loads(_line(events.BuildFinished("/x", 1.0, 0.1))), "schema": 2}))


def _results() -> Results:
    results = Results("example", {"runs": 3, "results": Path("/somewhere.json")})
    for ours, theirs in ((10.0, 20.0), (30.0, 40.0), (11.0, 25.0)):
        results.add("ours", ours)
        results.add("theirs", theirs)
    return results


def test_medians_and_ratios() -> None:
    results = _results()
    assert results.medians() == {"ours": 11.0, "theirs": 25.0}
    assert results.ratio("ours/theirs", "ours", "theirs") == pytest.approx(0.44)
    assert results.ratios == {"ours/theirs": pytest.approx(0.44)}
    results.add("even", 1.0)
    results.add("even", 4.0)
    assert results.median("even") == 2.5


def test_results_json(tmp_path: Path) -> None:
    results = _results()
    results.ratio("ours/theirs", "ours", "theirs")
    results.facts["bootstraps"] = 3
    path = results.write(tmp_path / "deep" / "out.json")
    assert path == tmp_path / "deep" / "out.json"
    document = json.loads(path.read_text())
    assert document["benchmark"] == "example"
    assert document["runs"] == {"ours": [10.0, 30.0, 11.0], "theirs": [20.0, 40.0, 25.0]}
    assert document["medians"] == {"ours": 11.0, "theirs": 25.0}
    assert document["ratios"]["ours/theirs"] == pytest.approx(0.44)
    assert document["facts"] == {"bootstraps": 3}
    assert document["arguments"] == {"runs": 3, "results": "/somewhere.json"}
    assert document["commit"] is None or re.fullmatch(r"[0-9a-f]{40}", document["commit"])
    assert set(document["machine"]) == {"cores", "cpu", "memory_gib", "kernel", "load_average"}
    assert document["machine"]["memory_gib"] >= 0 and document["machine"]["kernel"]


def test_run_appends_to_the_log_and_check_stops_with_its_end(tmp_path: Path) -> None:
    log = tmp_path / "log"
    log.write_text("earlier\n")
    finished = run(["sh", "-c", "echo out; echo err >&2; exit 3"], log=log, stdout_to_log=True)
    assert finished.returncode == 3
    assert log.read_text().splitlines() == ["earlier", "out", "err"]
    with pytest.raises(SystemExit, match=r"^sh failed \(3\):\nout\nerr\n$"):
        check(finished, "sh", log, lines=2)
    quiet = run(["sh", "-c", "echo dropped"], log=log)
    check(quiet, "sh", log)
    assert quiet.returncode == 0 and log.read_text().splitlines()[-1] == "err"
