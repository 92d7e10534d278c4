"""The generated pipelines' structure: every shard a job, collect needs them all, no secret on a
command line, odd user values quoted, the same bytes every time."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from matrix import ci
from matrix.shards import Shard

SHARDS = [Shard(1, 3, ("a b", "it's"), 1.0), Shard(2, 3, ("$(touch x)",), 1.0), Shard(3, 3, (), 0.0)]
ODD = "matrices/it's a $(matrix).toml"


def _pipeline(**kwargs: Any) -> ci.Pipeline:
    return ci.Pipeline(**{"shards": 3, "matrix": ODD, "setup": "./setup.sh", "mkosi": ".venv/bin/mkosi", **kwargs})


def _scripts(document: dict[str, Any]) -> list[str]:
    jobs = document.get("jobs", document)
    lines: list[str] = []
    for job in jobs.values():
        if isinstance(job, dict):
            lines += job.get("script", [])
            lines += [step["run"] for step in job.get("steps", []) if "run" in step]
    return lines


def test_gitlab_has_a_build_job_per_shard_with_cells_and_collect_needs_them() -> None:
    document = yaml.safe_load(ci.gitlab(_pipeline(), SHARDS))
    assert document["build"]["parallel"]["matrix"] == [{"MKOSI_SHARD_INDEX": ["1", "2"]}]
    assert document["build"]["variables"]["MKOSI_SHARDS"] == "3"
    assert document["collect"]["needs"] == [{"job": "build", "artifacts": True}]
    assert document["build"]["needs"] == ["plan"]
    assert document["build"]["artifacts"]["paths"] == ["fragments/shard-$MKOSI_SHARD_INDEX"]
    assert document["collect"]["artifacts"]["paths"] == ["release"]
    assert [document[j]["stage"] for j in ("plan", "build", "collect")] == document["stages"]
    # The plan job compares the split written here with the matrix file's.
    assert yaml.safe_load(document["plan"]["variables"]["MKOSI_PLAN"])["parallel"] == document["build"]["parallel"]


def test_gitlab_registry_is_the_projects_unless_overridden() -> None:
    document = yaml.safe_load(ci.gitlab(_pipeline(), SHARDS))
    assert document["variables"]["MKOSI_REMOTE_CACHE"] == "oci://$CI_REGISTRY_IMAGE/mkosi-cache"
    assert document["build"]["variables"]["MKOSI_REMOTE_CACHE_PASSWORD"] == "$CI_JOB_TOKEN"
    other = yaml.safe_load(ci.gitlab(_pipeline(registry="oci://r.example:5000/x", tags=("big",), image="d:12"), SHARDS))
    assert other["variables"]["MKOSI_REMOTE_CACHE"] == "oci://r.example:5000/x"
    assert all(other[j]["tags"] == ["big"] and other[j]["image"] == "d:12" for j in ("plan", "build", "collect"))
    # The shard jobs share their stages through it.
    assert document["build"]["script"][-1].endswith(' --remote-cache "$MKOSI_REMOTE_CACHE"')
    insecure = yaml.safe_load(ci.gitlab(_pipeline(registry_insecure=True), SHARDS))
    assert insecure["build"]["script"][-1].endswith(' --remote-cache "$MKOSI_REMOTE_CACHE" --remote-cache-insecure')


def test_github_builds_the_plans_matrix_and_collect_needs_every_build() -> None:
    document = yaml.safe_load(ci.github(_pipeline()))
    jobs = document["jobs"]
    assert jobs["build"]["strategy"]["matrix"] == "${{ fromJSON(needs.plan.outputs.matrix) }}"
    assert jobs["build"]["needs"] == "plan" and jobs["collect"]["needs"] == ["plan", "build"]
    assert "--format github" in jobs["plan"]["steps"][-1]["run"]
    build_env = jobs["build"]["steps"][2]["env"]
    assert build_env["MKOSI_REMOTE_CACHE"] == "oci://ghcr.io/${{ github.repository }}/mkosi-cache"
    assert build_env["MKOSI_REMOTE_CACHE_PASSWORD"] == "${{ secrets.GITHUB_TOKEN }}"
    # Lower-cased by bash: a repository called Owner/Name gives a path registries refuse.
    assert jobs["build"]["steps"][2]["run"].endswith(' --remote-cache "${MKOSI_REMOTE_CACHE,,}"')
    uploads = [s for s in jobs["build"]["steps"] if s.get("uses", "").startswith("actions/upload-artifact")]
    downloads = [s for s in jobs["collect"]["steps"] if s.get("uses", "").startswith("actions/download-artifact")]
    assert uploads[0]["with"]["name"].startswith("fragment-") and downloads[0]["with"]["pattern"] == "fragment-*"


def test_no_secret_reaches_a_command_line() -> None:
    """Secrets only in env/variables; scripts name them as shell variables, never as ${{ }} or values."""
    for text in (ci.github(_pipeline()), ci.gitlab(_pipeline(), SHARDS)):
        for line in _scripts(yaml.safe_load(text)):
            assert "secrets." not in line and "${{" not in line and "CI_JOB_TOKEN" not in line, line
    steps = yaml.safe_load(ci.github(_pipeline()))["jobs"]["collect"]["steps"]
    sign = next(s for s in steps if "env" in s and "MKOSI_SIGNING_KEY" in s["env"])
    assert sign["env"]["MKOSI_SIGNING_KEY"] == "${{ secrets.MKOSI_SIGNING_KEY }}"
    assert '"$MKOSI_SIGNING_KEY"' in sign["run"] and "GNUPGHOME" in sign["run"]


def test_odd_matrix_names_and_commands_stay_one_word() -> None:
    for text in (ci.github(_pipeline()), ci.gitlab(_pipeline(), SHARDS)):
        for line in _scripts(yaml.safe_load(text)):
            if " matrix " in line and "--matrix" in line:
                words = shlex.split(line.replace("sudo --preserve-env ", "").split(">>")[0])
                assert words[words.index("--matrix") + 1] == ODD, line
    setup = yaml.safe_load(ci.gitlab(_pipeline(setup="echo 'x: y' # z"), SHARDS))["plan"]["script"][0]
    assert setup == "echo 'x: y' # z"


def test_the_pipelines_are_deterministic_and_skip_setup_when_asked() -> None:
    assert ci.gitlab(_pipeline(), SHARDS) == ci.gitlab(_pipeline(), SHARDS)
    assert ci.github(_pipeline()) == ci.github(_pipeline())
    bare = yaml.safe_load(ci.gitlab(_pipeline(setup="", mkosi="python3 -m mkosi"), SHARDS))
    assert bare["plan"]["script"][0].startswith("python3 -m mkosi matrix plan")


def test_the_cli_writes_the_pipelines_and_the_gitlab_plan(tmp_path: Path) -> None:
    (tmp_path / "mkosi.matrix").write_text('[matrix]\nHostname = ["a", "b"]\n[defaults]\nDistribution = "debian"\n')
    run = [sys.executable, "-m", "matrix"]
    gitlab = subprocess.run([*run, "ci", "--gitlab"], cwd=tmp_path, capture_output=True, text=True, check=True)
    plan = subprocess.run([*run, "plan", "--shards", "2", "--format", "gitlab"], cwd=tmp_path, capture_output=True,
                          text=True, check=True)  # fmt: skip
    build = yaml.safe_load(gitlab.stdout)["build"]
    assert yaml.safe_load(plan.stdout) == {"variables": {"MKOSI_SHARDS": "2"}, "parallel": build["parallel"]}
    missing = subprocess.run([*run, "ci"], cwd=tmp_path, capture_output=True, text=True)
    assert missing.returncode != 0 and "--github" in missing.stderr and not missing.stdout
