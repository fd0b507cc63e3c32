"""Numerical equivalence of each run's output with an fp32 reference output.

The reference (by default diffusers fp32 on CPU) is computed once per model, input and
reference spec, in its own env through the same worker protocol, and cached on disk; every run
is compared with it and flagged, never dropped."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from orchestrator.config.envs import Env
from orchestrator.config.matrix import Cell, Equivalence, Matrix
from orchestrator.results.store import write_atomic, write_json
from orchestrator.run.forkserver import ForkServer
from orchestrator.run.pins import PinnedModel, setup_message
from orchestrator.run.worker_client import run_worker
from workers.contract.inputs import PinnedInputs


@dataclass(frozen=True)
class Comparison:
    mse: float | None
    mse_relative: float | None  # mse / mean square of the reference
    cosine: float | None
    max_abs_diff: float | None
    finite: bool
    numerically_divergent: bool


def compare(output: np.ndarray, reference: np.ndarray, spec: Equivalence) -> Comparison:
    """Divergent when the output is not finite, its MSE exceeds `mse_max` or its cosine
    similarity falls below `cosine_min`. Computed in float64."""
    out = np.asarray(output, dtype=np.float64).ravel()
    ref = np.asarray(reference, dtype=np.float64).ravel()
    if out.shape != ref.shape:
        raise ValueError(f"output has {out.size} values, reference {ref.size}")
    if not np.all(np.isfinite(out)):
        return Comparison(None, None, None, None, finite=False, numerically_divergent=True)
    diff = out - ref
    mse = float(np.mean(diff * diff))
    norms = float(np.linalg.norm(out) * np.linalg.norm(ref))
    cosine = float(np.dot(out, ref) / norms) if norms > 0 else 0.0
    ref_ms = float(np.mean(ref * ref))
    return Comparison(
        mse=mse, mse_relative=mse / ref_ms if ref_ms > 0 else None, cosine=cosine,
        max_abs_diff=float(np.max(np.abs(diff))), finite=True,
        numerically_divergent=bool(mse > spec.mse_max or cosine < spec.cosine_min),
    )


def reference_key(spec: Equivalence, env: Env, model: PinnedModel, inputs: PinnedInputs) -> str:
    """Model, input, reference spec and the reference env's lock (or, for `--env NAME=python`,
    that interpreter): a toolchain upgrade, or another interpreter standing in for the env, makes
    a new reference instead of silently comparing against the old one."""
    ident = {"model": model.sha256, "inputs": inputs.digests(), "timestep": inputs.timestep,
             "env": str(env.python) if env.external_python is not None else env.lock_sha256() or str(env.python),
             "reference": {k: v for k, v in asdict(spec).items() if k in ("backend", "device", "precision")}}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:24]


@dataclass(frozen=True)
class Reference:
    output: np.ndarray | None
    path: Path
    cached: bool
    failure: str | None
    versions: dict
    worker_start: str | None = None  # how the worker that computed it started; None when cached

    @property
    def ok(self) -> bool:
        return self.output is not None


def reference_output(matrix: Matrix, env: Env, model: PinnedModel, inputs: PinnedInputs, resolution: int,
                     cache: Path, log_path: Path,
                     forkserver: Callable[[Cell], ForkServer | None] = lambda cell: None) -> Reference:
    """Load the cached reference, or compute it with one worker run (no warmup, one iteration),
    forked from the server `forkserver` gives for the reference cell, asked only when computing."""
    spec = matrix.equivalence
    key = reference_key(spec, env, model, inputs)
    path = cache / "references" / f"{key}.npy"
    meta_path = path.with_suffix(".json")
    if (cached := _cached(path, meta_path, inputs.latent.shape)) is not None:
        return Reference(cached[0], path, True, None, cached[1])
    cell = spec.reference_cell(resolution)
    setup = setup_message(matrix, cell, model, inputs, warmup=0, iterations=1)
    outcome = run_worker(env, setup, label=f"{cell.id}", log_path=log_path, timeout_s=matrix.timing.run_timeout_s,
                         forkserver=forkserver(cell))
    if outcome.status != "ok" or outcome.ready is None or outcome.result is None:
        return Reference(None, path, False, f"reference run {outcome.status}: {outcome.reason}", {},
                         outcome.worker_start)
    output = outcome.result.output
    versions = outcome.ready.versions
    path.parent.mkdir(parents=True, exist_ok=True)
    npy = io.BytesIO()
    np.save(npy, output)
    write_atomic(path, npy.getvalue())  # the .npy first: a reference counts as cached once its .json is there
    write_json(meta_path, {"model_sha256": model.sha256, "inputs": inputs.digests(), "resolution": resolution,
                           "spec": asdict(spec), "versions": versions, "realized": outcome.ready.realized,
                           "worker_start": outcome.worker_start})
    return Reference(output, path, False, None, versions, outcome.worker_start)


def _cached(path: Path, meta_path: Path, shape: tuple[int, ...]) -> tuple[np.ndarray, dict] | None:
    """The cached output and its toolchain versions, or None when missing or damaged (cut short,
    unreadable, the wrong shape, not finite): a damaged entry is computed again, never trusted."""
    try:
        output = np.load(path, allow_pickle=False)
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError, EOFError):  # JSONDecodeError is a ValueError
        return None
    versions = meta.get("versions") if isinstance(meta, dict) else None
    if not isinstance(versions, dict) or not isinstance(output, np.ndarray) or output.shape != shape:
        return None
    if output.dtype.kind != "f" or not np.all(np.isfinite(output)):
        return None
    return output, versions
