"""Faults of the results folder and the caches, through the real CLI and a fake worker that
speaks the real protocol: a disk that fills mid-session (RLIMIT_FSIZE makes every write past a
size fail, as a full disk does), an output folder that cannot be written, a torn last line of
runs.jsonl, a missing or damaged session.json on --resume, and damaged cache entries. Finished
runs are never lost, and the error is one line that says how to continue."""

import json
import os
import resource
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import BIN, REPO, cli

from orchestrator.config.envs import Env
from orchestrator.config.matrix import load_matrix
from orchestrator.results.store import SessionDir
from orchestrator.run.equivalence import reference_output
from orchestrator.run.pins import PinnedModel
from workers.contract.checkpoint import is_whole, write_synthetic
from workers.contract.fileguard import FileGuard
from workers.contract.inputs import pinned_inputs
from workers.contract.presets import PRESETS

pytestmark = pytest.mark.slow

FAKE = REPO / "tests" / "fakes" / "fake_worker.py"
RES = 8  # the fake worker's output is (2, 4, 1, 1): an 8x8 image at batch 2


def _matrix(tmp_path: Path, runs: int = 3) -> Path:
    d = pinned_inputs(RES, batch=2).digests()
    path = tmp_path / "m.toml"
    path.write_text(f"""
[model]
source = "synthetic"
preset = "tiny"
[inputs.sha256]
"{RES}" = {{ latent = "{d['latent']}", text_embedding = "{d['text_embedding']}" }}
[timing]
warmup = 0
iterations = 2
runs = {runs}
cooldown_s = 0
run_timeout_s = 60
[power]
meter = "none"
baseline_s = 0
[preflight]
load_settle_max_s = 0
""" + "".join(f"""
[[cells]]
id = "{c}"
backend = "diffusers"
device = "cpu"
precision = "fp32"
resolution = {RES}
""" for c in ("a", "b")))
    return path


def _fake(tmp_path: Path) -> tuple[list[str], dict[str, str]]:
    """`--env diffusers=` a fake worker in ok mode, and a cache of its own."""
    wrapper = tmp_path / "python"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE}" "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
    env = {"FAKE_MODE": "ok", "CDB_CACHE_DIR": str(tmp_path / "cache")}
    return [f"--env=diffusers={wrapper}"], env


@pytest.fixture
def fake(tmp_path):
    return _fake(tmp_path)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One whole session of the fake worker, run once; tests damage copies of its folder."""
    tmp = tmp_path_factory.mktemp("finished")
    env_args, env = _fake(tmp)
    matrix, out = _matrix(tmp), tmp / "results"
    p = _orchestrate([str(matrix), "--out", str(out), *env_args], env)
    assert p.returncode == 0, p.stderr
    return matrix, max(out.iterdir()), env_args, env


def _copy(finished, tmp_path: Path) -> tuple[Path, Path, list[str], dict[str, str]]:
    matrix, d, env_args, env = finished
    shutil.copytree(d, tmp_path / d.name)
    return matrix, tmp_path / d.name, env_args, env


def _orchestrate(args: list[str], env: dict[str, str], fsize: int | None = None) -> subprocess.CompletedProcess:
    def limit() -> None:
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    return subprocess.run([str(BIN / "orchestrate"), *args], capture_output=True, text=True, timeout=300,
                          cwd=REPO, env={**os.environ, **env}, preexec_fn=limit)


def _runs(d: Path) -> list[tuple[str, int]]:
    return sorted((r["cell_id"], r["run_index"]) for r in map(json.loads, (d / "runs.jsonl").read_text().splitlines()))


def _error_line(p: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in p.stderr, p.stderr
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, p.stderr
    return errors[0]


def test_a_disk_that_fills_mid_session_stops_it_with_the_resume_command(tmp_path, fake):
    env_args, env = fake
    matrix, out = _matrix(tmp_path), tmp_path / "results"
    # the weights already cached: the limit below applies to the session folder's files
    write_synthetic(PRESETS["tiny"], 0, tmp_path / "cache" / "synthetic" / "tiny-seed0.safetensors")
    # Writes past 6000 bytes fail (EFBIG) from here on: runs.jsonl takes two records, not a third.
    p = _orchestrate([str(matrix), "--out", str(out), *env_args], env, fsize=6000)
    line = _error_line(p)
    d = max(out.iterdir())
    assert p.returncode == 1, p.stderr  # runs finished before the disk filled
    assert f"cannot write {d / 'runs.jsonl'}: File too large; the session stopped." in line
    kept = _runs(d)
    assert 1 <= len(kept) < 6 and f"{len(kept)} finished run(s) are safe in {d / 'runs.jsonl'}" in line
    assert not list(d.glob(".*.tmp"))  # no half-written session.json beside the real one
    resume = shlex.split(line.split("continue with: ", 1)[1])
    assert resume[:3] == ["orchestrate", str(matrix), "--resume"]
    again = _orchestrate(resume[1:], env)
    assert again.returncode == 0, again.stderr
    assert _runs(d) == [("a", 0), ("a", 1), ("a", 2), ("b", 0), ("b", 1), ("b", 2)]  # none lost, none twice
    assert json.loads((d / "session.json").read_text())["status"] == "complete"


def test_an_output_folder_that_cannot_be_written_stops_before_anything_runs(tmp_path, fake):
    env_args, env = fake
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    p = _orchestrate([str(_matrix(tmp_path)), "--out", str(blocker / "results"), *env_args], env)
    assert p.returncode == 2
    assert _error_line(p) == (f"error: {blocker / 'results'}: results cannot be written there (Not a directory); "
                              "nothing ran; choose another folder with --out")
    assert not (tmp_path / "cache").exists()  # no model written, no env synced: it stopped first


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a read-only tmpfs needs root")
def test_a_read_only_output_folder_stops_before_anything_runs(tmp_path, fake):
    env_args, env = fake
    ro = tmp_path / "ro"
    ro.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,ro", "tmpfs", str(ro)]).returncode:
        pytest.skip("mount -t tmpfs is not permitted here")
    try:
        p = _orchestrate([str(_matrix(tmp_path)), "--out", str(ro / "results"), *env_args], env)
        assert p.returncode == 2
        assert "results cannot be written there (Read-only file system); nothing ran" in _error_line(p)
        c = cli("check", str(_matrix(tmp_path)), "--out", str(ro / "results"), *env_args, env=env)
        assert c.returncode == 2 and f"{ro} is on a read-only file system" in _error_line(c)
    finally:
        subprocess.run(["umount", str(ro)])


def test_resume_sets_a_torn_last_line_aside_and_runs_that_run_again(tmp_path, finished):
    matrix, d, env_args, env = _copy(finished, tmp_path)
    runs = d / "runs.jsonl"
    lines = runs.read_text().splitlines()
    torn = lines[-1][: len(lines[-1]) // 2]
    runs.write_text("".join(f"{ln}\n" for ln in lines[:-1]) + torn)  # the process died mid-write
    lost = json.loads(lines[-1])
    p = _orchestrate([str(matrix), "--resume", str(d), *env_args], env)
    assert p.returncode == 0, p.stderr
    said = " ".join(p.stderr.split())
    assert f"{runs}: its last line ({len(torn)} bytes) was cut short; set aside in {d / 'runs.jsonl.torn'}" in said
    assert (d / "runs.jsonl.torn").read_text() == torn + "\n"
    assert _runs(d) == [("a", 0), ("a", 1), ("a", 2), ("b", 0), ("b", 1), ("b", 2)]
    assert json.loads(runs.read_text().splitlines()[-1])["cell_id"] == lost["cell_id"]  # that run, again


@pytest.mark.parametrize("damage, says", [
    (lambda s: s.unlink(), "session.json: cannot be read (No such file or directory)"),
    (lambda s: s.write_text(s.read_text()[:100]), "session.json: not valid JSON"),
    (lambda s: s.write_text(json.dumps({**json.loads(s.read_text()), "order_seed": None})),
     "session.json has no order_seed, so the run order cannot be rebuilt"),
    (lambda s: s.write_text(json.dumps({**json.loads(s.read_text()), "cells": "x"})),
     "session.json: field cells: expected a list"),
])
def test_resume_names_a_missing_or_damaged_session_file(tmp_path, finished, damage, says):
    matrix, d, env_args, env = _copy(finished, tmp_path)
    damage(d / "session.json")
    p = _orchestrate([str(matrix), "--resume", str(d), *env_args], env)
    assert p.returncode == 2 and says in _error_line(p)


def test_a_damaged_reference_cache_entry_is_computed_again(tmp_path, fake, monkeypatch):
    env_args, env = fake
    monkeypatch.setenv("FAKE_MODE", "ok")
    python = Path(env_args[0].split("=", 2)[2])
    m = load_matrix(_matrix(tmp_path, runs=1), {"diffusers"})
    model = PinnedModel(tmp_path / "w.safetensors", "m" * 64, "synthetic", "tiny", 0,
                        FileGuard(size=1, mtime_ns=1, ctime_ns=1, inode=1, device=1))  # the fake worker never stats it
    inputs = pinned_inputs(RES, batch=2)
    cache = tmp_path / "cache"

    def reference():
        return reference_output(m, Env("diffusers", None, python), model, inputs, RES, cache, tmp_path / "ref.log")

    first = reference()
    assert first.ok and not first.cached
    npy = first.path
    for damage in (lambda: npy.write_bytes(npy.read_bytes()[:90]),  # cut short
                   lambda: npy.unlink(),  # the .json without its .npy
                   lambda: npy.with_suffix(".json").write_text("{"),  # its metadata torn
                   lambda: np.save(npy, np.full((2, 4, 1, 1), np.nan, np.float32)),  # not finite
                   lambda: np.save(npy, np.ones((2, 4, 2, 2), np.float32))):  # another shape
        damage()
        again = reference()
        assert again.ok and not again.cached
        assert np.array_equal(np.load(npy), first.output)
        assert json.loads(npy.with_suffix(".json").read_text())["versions"] == first.versions
    assert reference().cached
    assert [f.name for f in npy.parent.iterdir() if f.name.startswith(".")] == []  # no temporaries left


def test_synthetic_weights_cut_short_are_written_again(tmp_path):
    path = write_synthetic(PRESETS["tiny"], 0, tmp_path / "tiny.safetensors")
    assert is_whole(path)
    whole = path.read_bytes()
    for cut in (len(whole) - 1, len(whole) // 2, 9, 0):
        path.write_bytes(whole[:cut])
        assert not is_whole(path)
    path.write_bytes(whole + b"\0")
    assert not is_whole(path)


def test_a_failed_atomic_write_leaves_the_old_file_and_no_temporary(tmp_path):
    sdir = SessionDir(tmp_path)
    (tmp_path / "session.json").write_text('{"old": true}')
    def big() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (64, 64))
    code = ("from pathlib import Path; from orchestrator.results.store import write_json\n"
            f"write_json(Path({str(tmp_path / 'session.json')!r}), {{'x': 'y' * 1000}})")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, preexec_fn=big)
    assert "File too large" in p.stderr
    assert (tmp_path / "session.json").read_text() == '{"old": true}'
    assert [f.name for f in tmp_path.iterdir()] == ["session.json"]
    assert sdir.set_aside_torn() is None  # no runs.jsonl: nothing to set aside
