"""The weights are hashed once per session; each run's worker checks the file by os.stat against
the guard taken with the digest, so a file changed between the pin and a run is still refused."""

from __future__ import annotations

import dataclasses
import os
import shutil

import pytest
from conftest import REPO

import orchestrator.run.pins as pins
from orchestrator.config.envs import discover
from orchestrator.config.matrix import load_matrix
from orchestrator.errors import UserError
from orchestrator.run.worker_client import run_worker
from workers.serve import SetupError, verified_spec

ENVS = {"diffusers", "mlx"}


@pytest.fixture
def pinned(tmp_path):
    """The quick example's tiny synthetic weights pinned in a fresh cache, and a setup builder."""
    m = load_matrix(REPO / "examples" / "quick.toml", ENVS)
    m = dataclasses.replace(m, model=dataclasses.replace(m.model, cache_dir=tmp_path))
    model = pins.pin_model(m.model, m.path, log=lambda _: None)
    cell = m.enabled_cells[0]
    inputs = pins.pin_inputs(m.inputs, [cell.resolution], m.path)[cell.resolution]
    return model, lambda pinned_model=model: pins.setup_message(m, cell, pinned_model, inputs)


def test_an_unchanged_file_passes_on_its_guard(pinned):
    model, setup = pinned
    assert verified_spec(setup()).model_path == str(model.path)


def test_the_worker_trusts_the_guard_and_never_hashes_the_file(pinned):
    """A digest that does not match the file passes the worker: it compares the guard, not the
    bytes (the orchestrator hashed them once, when it pinned the model)."""
    model, setup = pinned
    verified_spec(setup(dataclasses.replace(model, sha256="0" * 64)))


def test_a_touched_file_is_refused_naming_its_mtime(pinned):
    model, setup = pinned
    st = os.stat(model.path)
    os.utime(model.path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    with pytest.raises(SetupError, match=r"changed since its sha256 was verified \(mtime_ns \d+ -> \d+, ctime_ns"):
        verified_spec(setup())


def test_a_replaced_file_is_refused_naming_its_inode(pinned, tmp_path):
    """Same bytes, same times, another inode: a copy renamed over the pinned file."""
    model, setup = pinned
    copy = tmp_path / "copy"
    shutil.copy2(model.path, copy)
    os.replace(copy, model.path)
    with pytest.raises(SetupError, match=r"changed since its sha256 was verified \(.*inode \d+ -> \d+"):
        verified_spec(setup())


def test_a_rewritten_file_of_the_same_size_and_mtime_is_refused(pinned, tmp_path):
    """Bytes changed in place and the mtime put back: the status change time still moves, once
    the file system's clock (coarse: a tick) has moved past the pinned ctime."""
    model, setup = pinned
    st = os.stat(model.path)
    probe = tmp_path / "probe"
    probe.touch()
    while os.stat(probe).st_ctime_ns <= st.st_ctime_ns:
        os.utime(probe)
    with open(model.path, "r+b") as f:
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 1]))
    os.utime(model.path, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(SetupError, match=r"\(ctime_ns \d+ -> \d+\)"):
        verified_spec(setup())


def test_a_removed_file_is_refused(pinned):
    model, setup = pinned
    model.path.unlink()
    with pytest.raises(SetupError, match="No such file or directory since its sha256 was verified"):
        verified_spec(setup())


def test_a_file_written_while_it_is_hashed_is_refused_at_the_pin(pinned, monkeypatch):
    model, _ = pinned
    m = load_matrix(REPO / "examples" / "quick.toml", ENVS)
    spec = dataclasses.replace(m.model, cache_dir=model.path.parent.parent)
    def hash_while_touching(path):
        os.utime(path, ns=(0, 0))
        return "x"

    monkeypatch.setattr(pins, "sha256_file", hash_while_touching)
    with pytest.raises(UserError, match="changed while its sha256 was computed"):
        pins.pin_model(spec, m.path, log=lambda _: None)


def test_a_real_worker_fails_a_run_whose_weights_changed_after_the_pin(pinned, diffusers_python, tmp_path):
    """Through the protocol: the session pinned the file, then it was touched before the run; the
    worker in envs/diffusers refuses it and the run fails with the reason, never benchmarked."""
    model, setup = pinned
    env = discover()["diffusers"]
    ok = run_worker(env, setup(), label="t", log_path=tmp_path / "ok.log", timeout_s=300)
    assert ok.status == "ok", ok.reason
    os.utime(model.path)
    touched = run_worker(env, setup(), label="t", log_path=tmp_path / "touched.log", timeout_s=300)
    assert touched.status == "failed" and touched.result is None
    assert f"model {model.path}: changed since its sha256 was verified (mtime_ns" in touched.reason
