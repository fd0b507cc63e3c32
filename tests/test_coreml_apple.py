"""Apple's converter (`envs/coreml-apple`): its git source pinned by commit and locked with the
overrides its setup.py needs, its commit in the conversion cache key, its palettization called
as its own `main()` does, and verification before a package enters the cache. GitHub is out of
reach here, so a local git repository stands in for Apple's (through git's `insteadOf`, which uv
honours) and a stand-in module for its converter (tests/fakes/apple_standin)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
from conftest import REPO, in_env

from orchestrator.config.envs import Env, sync
from orchestrator.errors import UserError

APPLE_URL = "https://github.com/apple/ml-stable-diffusion"
APPLE_COMMIT = "e12202c1f6405b83918b58a5d097cd61e3e1f702"
# the requirements of Apple's setup.py at that commit that conflict with the harness and each other
APPLE_REQUIRES = ["numpy<1.24", "diffusers[torch]==0.30.2", "transformers==4.44.2", "huggingface-hub==0.24.6"]


def test_the_env_pins_the_reference_commit_with_the_overrides_it_needs():
    project = tomllib.loads((REPO / "envs" / "coreml-apple" / "pyproject.toml").read_text())
    source = project["tool"]["uv"]["sources"]["python_coreml_stable_diffusion"]
    assert source == {"git": APPLE_URL, "rev": APPLE_COMMIT}
    assert set(project["tool"]["uv"]["override-dependencies"]) == {
        "numpy>=1.26,<2.4", "torch==2.5.0", "diffusers==0.39.0", "huggingface-hub>=0.34,<1.0", "transformers>=4.48,<5"}


def test_without_a_lock_its_cells_say_why():
    env = Env("coreml-apple", REPO / "envs" / "coreml-apple")
    if env.lock and env.lock.is_file():
        pytest.skip("envs/coreml-apple has its lock on this checkout")
    assert "has no uv.lock yet" in env.unready_reason and "GitHub" in env.unready_reason


def _fake_uv(tmp_path: Path, stderr: str) -> Path:
    uv = tmp_path / "uv"
    uv.write_text(f"#!/bin/sh\ncat >&2 <<'EOF'\n{stderr}\nEOF\nexit 2\n")
    uv.chmod(0o755)
    return uv


@pytest.mark.parametrize(("stderr", "says", "never"), [
    ("error: Failed to download and build `python-coreml-stable-diffusion @ git+https://github.com/apple/ml-stable-diffusion@e12202c`\n"
     "  Caused by: Git operation failed\n  Caused by: failed to fetch into: /root/.cache/uv/git-v0/db/1",
     "A git source could not be fetched", "suitable Python"),
    ("error: No interpreter found for Python >=3.11 in managed installations or search path",
     "If no suitable Python was found", "git source"),
])
def test_a_failed_sync_hints_at_its_real_cause(tmp_path, monkeypatch, stderr, says, never):
    project = tmp_path / "coreml-apple"
    project.mkdir()
    shutil.copy(REPO / "envs" / "coreml-apple" / "pyproject.toml", project)
    (project / "uv.lock").write_text("version = 1\n")
    monkeypatch.setenv("UV", str(_fake_uv(tmp_path, stderr)))
    with pytest.raises(UserError) as e:
        sync(Env("coreml-apple", project), log=lambda _: None)
    assert says in str(e.value) and never not in str(e.value)


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True,
                          env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                               "GIT_COMMITTER_EMAIL": "t@t"}).stdout.strip()


def _standin_repository(root: Path) -> list[str]:
    """A git repository laid out as Apple's (setup.py, the package, its _version.py at 1.1.0, its
    conflicting requirements) with two commits of the same version; their ids."""
    root.mkdir()
    _git(root, "init", "-q", "-b", "main")
    shutil.copytree(REPO / "tests" / "fakes" / "apple_standin" / "python_coreml_stable_diffusion",
                    root / "python_coreml_stable_diffusion")
    (root / "python_coreml_stable_diffusion" / "_version.py").write_text('__version__ = "1.1.0"\n')
    (root / "setup.py").write_text(
        "from setuptools import setup, find_packages\n"
        "from python_coreml_stable_diffusion._version import __version__\n"
        f"setup(name='python_coreml_stable_diffusion', version=__version__, install_requires={APPLE_REQUIRES!r},\n"
        "      packages=find_packages())\n")
    commits = []
    for message in ("first", "second"):
        (root / "CHANGES").write_text(message)
        _git(root, "add", "-A")
        _git(root, "commit", "-q", "-m", message)
        commits.append(_git(root, "rev-parse", "HEAD"))
    return commits


@pytest.mark.slow
@pytest.mark.coreml
def test_the_git_source_locks_syncs_and_keys_the_cache_on_its_commit(tmp_path, monkeypatch, env_python):
    """envs/coreml-apple's own pyproject.toml, its commit replaced by the stand-in repository's:
    `envs sync` locks it (the lock-note path), syncs it, and the converter's version in that env
    carries the commit it was built from; the other commit of the same version gives another."""
    env_python("coreml-ct8")  # its wheels (torch 2.5.0, coremltools 8.3.0) in uv's cache
    commits = _standin_repository(tmp_path / "apple")
    monkeypatch.setenv("GIT_CONFIG_COUNT", "1")
    monkeypatch.setenv("GIT_CONFIG_KEY_0", f"url.file://{tmp_path / 'apple'}.insteadOf")
    monkeypatch.setenv("GIT_CONFIG_VALUE_0", APPLE_URL)
    versions = []
    for commit in commits:
        project = tmp_path / f"env-{commit[:7]}"
        project.mkdir()
        text = (REPO / "envs" / "coreml-apple" / "pyproject.toml").read_text()
        assert APPLE_COMMIT in text
        (project / "pyproject.toml").write_text(text.replace(APPLE_COMMIT, commit))
        env = Env("coreml-apple", project)
        sync(env, log=lambda _: None)
        assert env.synced
        lock = tomllib.loads(env.lock.read_text())
        pinned = {p["name"]: p["version"] for p in lock["package"]}
        assert commit in next(p["source"]["git"] for p in lock["package"] if p["name"] == "python-coreml-stable-diffusion")
        assert pinned["diffusers"] == "0.39.0" and pinned["torch"] == "2.5.0"
        assert tuple(int(x) for x in pinned["numpy"].split(".")[:2]) >= (1, 26)
        script = tmp_path / "version.py"
        script.write_text("from workers.coreml.convert import converter_version\nprint(converter_version('apple'))\n")
        versions.append(in_env(env.python, script).strip())
    assert versions == [f"1.1.0+{c}" for c in commits]



@pytest.mark.coreml
def test_the_adapter_palettizes_as_apples_main_does_and_never_caches_a_failed_package(tmp_path, env_python):
    """The adapter against the stand-in, in envs/coreml-ct8: w4 calls `_quantize_weights(path,
    "unet", 4)` after `convert_unet`, fp16 does not; two commits of version 1.1.0 give two cache
    keys; a package that fails the spec check raises and leaves the cache without an entry."""
    python = env_python("coreml-ct8")
    runs = []
    for commit in ("a" * 40, "b" * 40):
        work = tmp_path / commit[:1]
        work.mkdir()
        runs.append(json.loads(in_env(python, REPO / "tests" / "fakes" / "apple_adapter.py", str(work), commit)))
    first, second = runs
    assert first["converter_version"] == "1.1.0+" + "a" * 40
    assert [c[0] for c in first["fp16"]["calls"]] == ["convert_unet"]
    assert first["w4"]["calls"] == [["convert_unet", "SPLIT_EINSUM_V2", 32, 4, "UNet2DConditionModel", 500.0],
                                    ["_quantize_weights", "Stable_Diffusion_version_harness_unet.mlpackage", True, "unet", 4]]
    assert first["w4"]["timings"] == ["convert_s", "palettize_s"] and first["w4"]["package"]
    assert first["fp16"]["key"] != second["fp16"]["key"] and first["w4"]["key"] != second["w4"]["key"]
    assert first["prepare"].startswith("SpecMismatch") and "no palettized (LUT) weights" in first["prepare"]
    assert first["cache_entries"] == []
