"""Complete CI pipelines for a release on a fleet: a plan job, one build job per shard, a collect job
that needs them all. GitHub Actions and GitLab CI, written with PyYAML so that every user value
(matrix file, setup command, image, tags) is quoted by the emitter, never pasted into YAML text.

The shell commands in the jobs are joined with shlex for the same reason. The signing key comes from
the engine's secret store into a temporary GNUPGHOME of the collect job; the build jobs share their
stages through the registry in MKOSI_REMOTE_CACHE (`--remote-cache`), with the credentials mkosi
reads from MKOSI_REMOTE_CACHE_USERNAME and _PASSWORD.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from matrix.shards import Shard
from mkosi.remote_cache import PASSWORD_VARIABLE, USERNAME_VARIABLE

# The variables a build job is given for the shared stage cache (mkosi.remote_cache reads the last two).
REMOTE_CACHE = "MKOSI_REMOTE_CACHE"
REMOTE_CACHE_USERNAME = USERNAME_VARIABLE
REMOTE_CACHE_PASSWORD = PASSWORD_VARIABLE
# The engine's secret holding the ASCII-armoured signing key (GitLab: a variable, file type or not).
SIGNING_KEY = "MKOSI_SIGNING_KEY"
GITHUB_REGISTRY = "oci://ghcr.io/${{ github.repository }}/mkosi-cache"
# GitLab's image path of the project, lower-cased as registries require.
GITLAB_REGISTRY = "oci://$CI_REGISTRY_IMAGE/mkosi-cache"
SHARD_INDEX = "MKOSI_SHARD_INDEX"


@dataclass(frozen=True)
class Pipeline:
    """What the user chose; every field ends up quoted in the YAML or shlex-joined in a command."""

    shards: int
    matrix: str  # the matrix file, relative to the checkout
    setup: str  # a shell command run first in every job; empty: none (the runner is set up already)
    mkosi: str  # how a job calls the project, e.g. `.venv/bin/mkosi`
    registry: str | None = None  # None: the engine's own registry
    registry_insecure: bool = False  # plain HTTP, or TLS unverified (a registry of one's own)
    image: str | None = None  # GitLab: the job image
    tags: tuple[str, ...] = ()  # GitLab: runner tags
    runs_on: str = "ubuntu-latest"  # GitHub: the runner label
    sudo: bool = True  # GitHub: hosted runners log in as a user with passwordless sudo; builds need root

    def mkosi_command(self, verb: str, *args: str, expanded: str = "") -> str:
        """`mkosi matrix VERB --matrix FILE ARGS...`, every word quoted, then `expanded`: words of ours
        that the job's shell must expand (variables, globs)."""
        words = shlex.join([*shlex.split(self.mkosi), "matrix", verb, "--matrix", self.matrix, *args])
        return f"{words} {expanded}" if expanded else words

    def remote_cache(self, lowercase: bool = False) -> str:
        """The build command's words for the shared stage cache; the job's shell expands the variable
        (lower-cased by bash when asked: registries take lower-case paths, GitHub's names may not be)."""
        variable = f"${{{REMOTE_CACHE},,}}" if lowercase else f"${REMOTE_CACHE}"
        return f'--remote-cache "{variable}"' + (" --remote-cache-insecure" if self.registry_insecure else "")


def gitlab_parallel(shards: Sequence[Shard]) -> dict[str, Any]:
    """The build job's `parallel: matrix:` for the shards that have cells (`plan --format gitlab`)."""
    total = shards[0].total if shards else 1
    return {
        "variables": {"MKOSI_SHARDS": str(total)},
        "parallel": {"matrix": [{SHARD_INDEX: [str(s.index) for s in shards if s.cells]}]},
    }


def dump(document: dict[str, Any]) -> str:
    """Deterministic YAML: keys in the order written, plain block style, no anchors."""

    class _NoAliases(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:
            return True

    def text(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
        # A script of several lines reads as one in a literal block.
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|" if "\n" in data else None)

    _NoAliases.add_representer(str, text)

    return yaml.dump(document, Dumper=_NoAliases, sort_keys=False, default_flow_style=False, width=1000)


def _gpg_import(source: str) -> list[str]:
    """Shell lines that import the signing key from `source` (a file path or the key itself)."""
    return [
        'export GNUPGHOME="$(mktemp -d)"',
        f'if [ -f "{source}" ]; then gpg --batch --import "{source}"; '
        f'else printf %s "{source}" | gpg --batch --import; fi',
    ]


def gitlab(pipeline: Pipeline, shards: Sequence[Shard]) -> str:
    """`.gitlab-ci.yml`: `parallel: matrix:` build jobs (their split is a pure function of the matrix file
    and the shard count, so it is fixed when the pipeline is written), artifacts passed by `needs:`."""
    setup = [pipeline.setup] if pipeline.setup else []
    job: dict[str, Any] = {}
    if pipeline.image:
        job["image"] = pipeline.image
    if pipeline.tags:
        job["tags"] = list(pipeline.tags)
    fragment = f"fragments/shard-${SHARD_INDEX}"
    parallel = gitlab_parallel(shards)
    document: dict[str, Any] = {
        "stages": ["plan", "build", "release"],
        "variables": {
            REMOTE_CACHE: pipeline.registry or GITLAB_REGISTRY,
            REMOTE_CACHE_USERNAME: "$CI_REGISTRY_USER",
        },
        "plan": {
            **job,
            "stage": "plan",
            # The build job's split is fixed in this file: fail early, and say so, when the matrix
            # file no longer splits that way.
            "variables": {"MKOSI_PLAN": dump(parallel).rstrip()},
            "script": [
                *setup,
                pipeline.mkosi_command("plan", "--shards", str(pipeline.shards), "--format", "text"),
                pipeline.mkosi_command(
                    "plan", "--shards", str(pipeline.shards), "--format", "gitlab", expanded="> plan.yml"
                ),
                "if ! printf '%s\\n' \"$MKOSI_PLAN\" | cmp -s - plan.yml; then echo 'the matrix file splits into other "
                "shards now: regenerate this file with mkosi matrix ci --gitlab' >&2; exit 1; fi",
            ],
        },
        "build": {
            **job,
            "stage": "build",
            "needs": ["plan"],
            **parallel,
            # The job token, not a copy of it in the pipeline file.
            "variables": {**parallel["variables"], REMOTE_CACHE_PASSWORD: "$CI_JOB_TOKEN"},
            "script": [
                *setup,
                pipeline.mkosi_command(
                    "build",
                    expanded=f'--shard "${SHARD_INDEX}/$MKOSI_SHARDS" -o "{fragment}" {pipeline.remote_cache()}',
                ),
            ],
            "artifacts": {"paths": [fragment], "expire_in": "1 week"},
        },
        "collect": {
            **job,
            "stage": "release",
            "needs": [{"job": "build", "artifacts": True}],
            "script": [
                *setup,
                *_gpg_import(f"${SIGNING_KEY}"),
                pipeline.mkosi_command("collect", "-o", "release", expanded="fragments/shard-*"),
                'gpgconf --kill gpg-agent; rm -rf "$GNUPGHOME"',
            ],
            "artifacts": {"paths": ["release"]},
        },
    }
    return dump(document)


def github(pipeline: Pipeline) -> str:
    """`.github/workflows/release.yml`: the plan job's output is the build job's matrix."""
    sudo = "sudo --preserve-env " if pipeline.sudo else ""
    checkout = {"uses": "actions/checkout@v4"}
    setup = [{"name": "Set up", "run": sudo + pipeline.setup}] if pipeline.setup else []
    plan_command = pipeline.mkosi_command("plan", "--shards", str(pipeline.shards), "--format", "github")
    document: dict[str, Any] = {
        "name": "release",
        "on": {"workflow_dispatch": {}, "push": {"tags": ["v*"]}},
        "permissions": {"contents": "read", "packages": "write"},
        "jobs": {
            "plan": {
                "runs-on": pipeline.runs_on,
                "outputs": {"matrix": "${{ steps.plan.outputs.matrix }}"},
                "steps": [
                    checkout,
                    *setup,
                    {"id": "plan", "name": "Plan", "run": f'{sudo}{plan_command} >> "$GITHUB_OUTPUT"'},
                ],
            },
            "build": {
                "needs": "plan",
                "runs-on": pipeline.runs_on,
                "strategy": {"fail-fast": False, "matrix": "${{ fromJSON(needs.plan.outputs.matrix) }}"},
                "steps": [
                    checkout,
                    *setup,
                    {
                        "name": "Build the shard",
                        "env": {
                            "SHARD": "${{ matrix.shard }}",
                            REMOTE_CACHE: pipeline.registry or GITHUB_REGISTRY,
                            REMOTE_CACHE_USERNAME: "${{ github.actor }}",
                            REMOTE_CACHE_PASSWORD: "${{ secrets.GITHUB_TOKEN }}",
                        },
                        "run": sudo
                        + pipeline.mkosi_command(
                            "build",
                            "-o",
                            "fragment",
                            expanded=f'--shard "$SHARD" {pipeline.remote_cache(lowercase=True)}',
                        ),
                    },
                    {
                        "uses": "actions/upload-artifact@v4",
                        "with": {"name": "fragment-${{ strategy.job-index }}", "path": "fragment"},
                    },
                ],
            },
            "collect": {
                "needs": ["plan", "build"],
                "runs-on": pipeline.runs_on,
                "steps": [
                    checkout,
                    *setup,
                    {"uses": "actions/download-artifact@v4", "with": {"pattern": "fragment-*", "path": "fragments"}},
                    {
                        "name": "Collect and sign",
                        "env": {SIGNING_KEY: f"${{{{ secrets.{SIGNING_KEY} }}}}"},
                        "run": "\n".join(
                            [
                                *_gpg_import(f"${SIGNING_KEY}"),
                                sudo + pipeline.mkosi_command("collect", "-o", "release", expanded="fragments/*"),
                                'gpgconf --kill gpg-agent; rm -rf "$GNUPGHOME"',
                            ]
                        ),
                    },
                    {"uses": "actions/upload-artifact@v4", "with": {"name": "release", "path": "release"}},
                ],
            },
        },
    }
    return dump(document)
