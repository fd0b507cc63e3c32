"""What runs on each node of a fleet: one actor per node, holding a local Session. It starts the
session there exactly as `orchestrate MATRIX` would (envs synced from the same locks, the pinned
model and inputs, the references, the meter and preflight) into a node-local folder, then
executes the runs the driver hands it, one at a time, each through `Session.execute`: the same
preflight, meter, cooldown and fresh worker as a local run. A run returns its record and the
bytes of its files; the driver keeps the one session folder."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.config import envs as envs_mod
from orchestrator.config.matrix import load_matrix, with_runs
from orchestrator.config.paths import REPO_ROOT
from orchestrator.config.plan import PlannedRun
from orchestrator.console import Display
from orchestrator.energy import meters
from orchestrator.errors import UserError
from orchestrator.results import provenance
from orchestrator.results.merge import identity
from orchestrator.results.records import RunRecord
from orchestrator.run import scratch
from orchestrator.run.session import Session, Started

FILE_FIELDS = ("samples_file", "output_file", "meter_samples_file", "log_file")


@dataclass(frozen=True)
class Job:
    """What the driver sends a node to start its session: where the matrix is and how the
    session was asked for."""

    matrix: str  # relative to the checkout when the matrix lies inside it: each node has its own checkout
    runs: int
    env_overrides: tuple[str, ...] = ()
    nvml_check: bool = False
    force_power: bool = False


@dataclass
class NodeFacts:
    """A node's answer to `setup`: who it is, and what its study is, for the driver to compare."""

    host: dict[str, Any] = field(default_factory=dict)  # provenance.host()
    harness: dict[str, Any] = field(default_factory=dict)
    study: dict[str, Any] = field(default_factory=dict)  # merge.identity of the node's own session
    env_lock_sha256: dict[str, Any] = field(default_factory=dict)
    preflight: dict[str, Any] = field(default_factory=dict)
    problem: str | None = None  # why the node cannot take part, as the node's one line
    gpu: int | None = None  # a GPU slot: the NVML index of its GPU


@dataclass
class RunDone:
    record: RunRecord
    files: dict[str, bytes]  # the record's files, by their path relative to the session folder


def matrix_reference(path: Path) -> str:
    """The matrix as a node finds it: relative to the checkout when it lies in it."""
    resolved = path.resolve()
    return str(resolved.relative_to(REPO_ROOT)) if resolved.is_relative_to(REPO_ROOT) else str(resolved)


def bound_gpu() -> int:
    """The GPU Ray gave this actor, bound for its workers: CUDA_VISIBLE_DEVICES names it, read in
    PCI bus order (CUDA_DEVICE_ORDER), the order NVML indexes boards in, so the index the meter
    reads is the board the worker runs on whatever order CUDA would list them in."""
    import ray

    (given,) = ray.get_gpu_ids()
    try:
        index = int(given)
    except ValueError:
        raise UserError(f"Ray gave this GPU slot GPU {given!r}, not an index: start the node's Ray without "
                        "CUDA_VISIBLE_DEVICES naming GPUs by UUID") from None
    os.environ["CUDA_VISIBLE_DEVICES"] = str(index)
    os.environ["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    return index


class Node:
    """The actor's class (dispatch.py makes it a Ray actor, pinned to its node): the whole node, or
    with `gpu_slot` one GPU of it that Ray assigned (`num_gpus=1`), for cells with isolation = "gpu"."""

    def __init__(self, job: Job, gpu_slot: bool = False):
        self.job = job
        self.gpu_slot = gpu_slot
        self.session: Session | None = None
        self.started: Started | None = None

    def setup(self) -> NodeFacts:
        """The node's local session started; its facts, or the problem that keeps it out."""
        facts = NodeFacts(host=provenance.host(), harness=provenance.harness())
        try:
            facts.gpu = bound_gpu() if self.gpu_slot else None
            envs = envs_mod.discover(envs_mod.parse_overrides(self.job.env_overrides))
            path = REPO_ROOT / self.job.matrix
            m = with_runs(load_matrix(path, set(envs)), self.job.runs)
            meters.check(m, str(path))
            self.session = Session(m, envs, Display(quiet=True), nvml_check=self.job.nvml_check,
                                   force_power=self.job.force_power, gpu=facts.gpu)
            self.started = self.session.start(scratch.folder("fleet-node"))
            spec = self.session.meters.spec
            if facts.gpu is not None and spec is not None and not spec.per_gpu:
                raise UserError(f"isolation = \"gpu\": [power] meter = \"auto\" chose {spec.name} here, which "
                                "cannot tell one GPU's runs from the others'; name a per-board meter (nvml)")
        except UserError as e:
            facts.problem = "; ".join(e.lines)
            return facts
        st = self.started
        facts.study = identity(st.session)
        facts.env_lock_sha256 = {k: (v or {}).get("lock_sha256") for k, v in st.session.provenance["envs"].items()}
        facts.preflight = st.session.preflight
        return facts

    def run(self, cell_id: str, run_index: int, order_index: int) -> RunDone:
        """One run, the local way, into the node's folder; its record and files."""
        assert self.session is not None and self.started is not None, "setup first"
        st, session = self.started, self.session
        cell = session.matrix.cell(cell_id)
        rec = session.execute(st.sdir, cell, PlannedRun(cell_id, run_index, order_index), st.model,
                              st.inputs[cell.resolution], st.refs[cell.resolution])
        files = {}
        for name in FILE_FIELDS:
            relative = getattr(rec, name)
            if relative and (path := st.sdir.root / relative).is_file():
                files[relative] = path.read_bytes()
        return RunDone(rec, files)

    def finish(self) -> dict[str, Any]:
        """Fork servers and meters stopped; what the node's runs leave in session.json."""
        if self.session is None:
            return {}
        self.session.close()
        if self.started is not None:  # every run's files went to the driver as it ended
            shutil.rmtree(self.started.sdir.root.parent, ignore_errors=True)
        return self.session.host_record()
