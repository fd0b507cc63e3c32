"""The session loop: pin weights and inputs, compute references, then one fresh worker per run
in the planned order, each run's record appended to runs.jsonl the moment it ends."""

from __future__ import annotations

import json
import secrets
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from orchestrator.config.envs import Env, ensure_synced
from orchestrator.config.matrix import Cell, Matrix
from orchestrator.config.plan import PlannedRun, plan_runs
from orchestrator.config.privileges import give_to_invoking_user, invoking_user
from orchestrator.console import Display
from orchestrator.energy.arithmetic import record_fields, run_energy
from orchestrator.energy.meters import Meters, choose
from orchestrator.energy.meters.base import Meter, MeterRecord
from orchestrator.energy.preflight.gate import PreflightGate
from orchestrator.errors import UserError
from orchestrator.report.write import write_report
from orchestrator.results import provenance
from orchestrator.results.stats import within_run
from orchestrator.results.store import SCHEMA_VERSION, SessionDir, utc_now
from orchestrator.run.cooldown import Cooldown, adaptive, idle_power
from orchestrator.run.equivalence import Reference, compare, reference_output
from orchestrator.run.pins import PinnedModel, pin_inputs, pin_model, setup_message
from orchestrator.run.worker_client import RunOutcome, run_worker
from workers.contract.inputs import PinnedInputs

WINDOW_UPDATES = 20  # a timed window spans at least this many meter updates (docs/methodology.md, "Energy")
SHORT_WINDOW_UPDATES = 10  # fewer than this and the run is flagged


@dataclass
class SessionResult:
    dir: SessionDir
    n_ok: int = 0
    n_failed: int = 0
    n_unsupported: int = 0
    interrupted: bool = False
    summary: dict[str, Any] = field(default_factory=dict)


class Session:
    def __init__(self, matrix: Matrix, envs: dict[str, Env], display: Display, nvml_check: bool = False,
                 force_power: bool = False):
        self.matrix = matrix
        self.preflight = PreflightGate(matrix.preflight, force_power, display.status)
        self.nvml_check = nvml_check
        self.envs = envs
        self.display = display
        self.unsupported: dict[str, str] = {}  # cell id -> reason, once a worker said so
        self.unsupported_facts: dict[str, dict[str, Any]] = {}  # cell id -> what its worker established first
        self.worker_versions: dict[str, dict[str, Any]] = {}
        self.meters: Meters = Meters(None, "not chosen yet")
        self.idle_w: dict[Meter, float | None] = {}

    # -- preparation -------------------------------------------------------------------------
    def _needed_envs(self) -> list[Env]:
        names = {c.env for c in self.matrix.enabled_cells if c.id not in self.unsupported}
        names.add(self.matrix.equivalence.env)
        return [self.envs[n] for n in sorted(names)]

    def _unlocked_envs(self) -> None:
        """Cells whose env has no lock yet, and can get one only where its sources are reachable
        (Apple's converter from GitHub), are unsupported here, with that reason, not a failed
        session."""
        for cell in self.matrix.enabled_cells:
            env = self.envs.get(cell.env)
            if env is None or env.lock is None or env.lock.is_file():
                continue
            if env.settings().get("lock-note"):
                self.unsupported[cell.id] = env.unready_reason
        for reason in sorted(set(self.unsupported.values())):
            self.display.warn(f"{reason}; its cells are recorded unsupported")

    def prepare(self) -> tuple[PinnedModel, dict[int, PinnedInputs]]:
        m = self.matrix
        inputs = pin_inputs(m.inputs, m.resolutions, m.path)  # cheap, so its mistakes surface first
        self._unlocked_envs()
        ensure_synced(self._needed_envs(), log=self.display.log)
        model = pin_model(m.model, m.path, log=self.display.log)
        return model, inputs

    def references(self, sdir: SessionDir, model: PinnedModel, inputs: dict[int, PinnedInputs]) -> dict[int, Reference]:
        m = self.matrix
        env = self.envs[m.equivalence.env]
        out = {}
        for res, inp in inputs.items():
            with self.display.status(f"fp32 reference output at {res}x{res} ({m.equivalence.backend} "
                                     f"{m.equivalence.device} {m.equivalence.precision})"):
                ref = reference_output(m, env, model, inp, res, m.model.cache_dir, sdir.log_path(f"reference-{res}"))
            if ref.ok:
                self.display.log(f"reference {res}x{res}: {'cached' if ref.cached else 'computed'} ({ref.path})")
            else:
                self.display.warn(f"reference {res}x{res} unavailable, equivalence not checked: {ref.failure}")
            out[res] = ref
        return out

    # -- one run -----------------------------------------------------------------------------
    def _meter(self, cell: Cell, rec: dict[str, Any]) -> Meter | None:
        """The cell's meter, its idle power measured first where cooldown is adaptive. A meter
        that cannot be set up loses the run's energy, with the reason, never the run."""
        try:
            meter = self.meters.for_cell(cell)
            if meter is not None and self.matrix.timing.cooldown == "adaptive":
                self._idle_w(meter)
            return meter
        except Exception as e:
            rec["energy_unavailable_reason"] = f"meter {self.meters.name} unavailable for {cell.id}: {e}"
            return None

    def _idle_w(self, meter: Meter) -> float | None:
        """The host's idle power for this meter, measured once, before any worker runs."""
        if meter not in self.idle_w:
            with self.display.status(f"measuring the host's idle power ({self.matrix.power.idle_s:g} s)"):
                self.idle_w[meter] = idle_power(meter, self.matrix.power.idle_s)
            idle = self.idle_w[meter]
            self.display.log(f"idle power ({meter.name}): " + (f"{idle:.1f} W" if idle is not None else "no samples"))
        return self.idle_w[meter]

    def _cooldown(self, meter: Meter | None) -> Cooldown:
        t = self.matrix.timing
        idle_w = self._idle_w(meter) if t.cooldown == "adaptive" and meter is not None else None
        if idle_w is None:  # fixed, or adaptive without a meter to judge by
            if t.cooldown_s > 0:
                with self.display.status(f"cooldown {t.cooldown_s:g} s (worker loaded and idle)"):
                    time.sleep(t.cooldown_s)
            return Cooldown(t.cooldown_s, None)
        with self.display.status(f"adaptive cooldown: to within {t.cooldown_margin:.0%} of {idle_w:.1f} W idle "
                                 f"({t.cooldown_min_s:g}-{t.cooldown_max_s:g} s)"):
            return adaptive(meter, idle_w, t.cooldown_min_s, t.cooldown_max_s, t.cooldown_margin)

    def _between(self, meter: Meter | None, windows: dict[str, Any]):
        """Cooldown, then (with a meter) the baseline window: the worker loaded, warm and idle."""
        baseline_s = self.matrix.power.baseline_s

        def between(_ready: dict[str, Any]) -> None:
            windows["cooldown"] = self._cooldown(meter)
            if meter is not None and baseline_s > 0:
                with self.display.status(f"baseline {baseline_s:g} s"):
                    b0 = time.monotonic_ns()
                    time.sleep(baseline_s)
                    windows["baseline"] = (b0, time.monotonic_ns())
        return between

    def min_window_s(self, meter: Meter | None) -> float:
        if self.matrix.timing.min_window_s is not None:
            return self.matrix.timing.min_window_s
        return WINDOW_UPDATES * meter.update_interval_s() if meter is not None else 0.0

    def execute(self, sdir: SessionDir, cell: Cell, planned: PlannedRun, model: PinnedModel,
                inputs: PinnedInputs, reference: Reference) -> dict[str, Any]:
        m = self.matrix
        rec = base_record(sdir.id, cell, planned)
        reason = self.unsupported.get(cell.id)
        if reason:
            rec.update(status="unsupported", failure_reason=reason,
                       conversion=self.unsupported_facts.get(cell.id, {}).get("conversion"))
            return rec
        rec["warmup_iterations"] = m.timing.warmup
        rec["meter"] = self.meters.name
        rec["energy_unavailable_reason"] = None if self.meters.name else self.meters.reason
        rec.update(self.preflight.before_run(cell, gpu_meter=self.meters.name == "nvml"))
        label = f"{cell.id}/run-{planned.run_index:03d}"
        log = sdir.log_path(f"{cell.id}.run-{planned.run_index:03d}")
        meter = None
        if withheld := self.preflight.withhold_energy(rec):
            rec["energy_unavailable_reason"] = withheld
        else:
            meter = self._meter(cell, rec)
        rec["min_window_s"] = self.min_window_s(meter)
        setup = setup_message(m, cell, model, inputs, min_window_s=rec["min_window_s"])
        setup["nvml_check"] = self.nvml_check
        windows: dict[str, Any] = {}
        record: MeterRecord | None = None
        if meter is not None:
            try:
                meter.start()
            except Exception as e:  # a broken meter loses this run's energy, never the run
                rec["energy_unavailable_reason"] = f"meter {meter.name} did not start: {e}"
                meter = None
        try:
            outcome = run_worker(self.envs[cell.env], setup, label=label, log_path=log,
                                 timeout_s=m.timing.run_timeout_s, between=self._between(meter, windows))
        finally:
            if meter is not None:
                try:
                    record = meter.stop()
                except Exception as e:
                    rec["energy_unavailable_reason"] = f"meter {meter.name} failed during the run: {e}"
        rec["log_file"] = sdir.rel(log)
        fill_from_outcome(rec, outcome)
        user = invoking_user()
        if user is not None and outcome.hello and outcome.hello.get("uid") != user.uid:
            rec.update(status="failed", failure_reason=f"worker ran as uid {outcome.hello.get('uid')}, not as "
                                                       f"{user.name} (uid {user.uid}) who invoked sudo")
            return rec
        if cooldown := windows.get("cooldown"):
            rec.update(cooldown_s=cooldown.seconds, cooldown_settled=cooldown.settled,
                       cooldown_settled_by=cooldown.settled_by, cooldown_mode=m.timing.cooldown)
        if outcome.status == "unsupported":
            self.unsupported[cell.id] = outcome.reason or "unsupported on this host"
            self.unsupported_facts[cell.id] = outcome.unsupported_facts
        if outcome.status == "ok":
            self.worker_versions.setdefault(cell.env, outcome.ready.get("versions", {}))
            self._measurements(rec, sdir, cell, planned, outcome, reference)
            if record is not None:
                self._energy(rec, sdir, cell, planned, meter, record, windows.get("baseline"), outcome)
        return rec

    def _energy(self, rec: dict[str, Any], sdir: SessionDir, cell: Cell, planned: PlannedRun, meter: Meter,
                record: MeterRecord, baseline: tuple[int, int] | None, outcome: RunOutcome) -> None:
        window = (outcome.result["window_start_ns"], outcome.result["window_end_ns"])
        e = run_energy(record.intervals, baseline, window, rec["iterations"])
        update_s = record.stats.get("counter_update_interval_s") or meter.update_interval_s()
        samples = sdir.sample_path(cell.id, planned.run_index, ".meter.json")
        samples.write_text(json.dumps({
            "meter": meter.name, "baseline_ns": baseline, "window_ns": window, "stats": record.stats,
            "intervals": [[iv.start_ns, iv.end_ns, iv.joules] for iv in record.intervals],
            "readings": [[r.t_ns, r.values] for r in record.readings],
        }))
        rec.update(
            energy_unavailable_reason=None if e.energy_per_step_j else (
                "the meter recorded no samples" if not record.intervals else
                "no baseline window (power.baseline_s = 0)" if baseline is None else
                "no meter samples in the baseline or timed window"),
            **record_fields(e, outcome.result.get("nvml_check")),
            baseline_window_s=(baseline[1] - baseline[0]) / 1e9 if baseline else None,
            meter_update_interval_s=update_s,
            short_window=rec["window_s"] < SHORT_WINDOW_UPDATES * update_s,
            throttled=meter.throttled(record, baseline[0] if baseline else window[0], window[1]),
            meter_stats=record.stats, meter_samples_file=sdir.rel(samples),
        )

    def _measurements(self, rec: dict[str, Any], sdir: SessionDir, cell: Cell, planned: PlannedRun,
                      outcome: RunOutcome, reference: Reference) -> None:
        res = outcome.result
        starts = np.asarray(res["iteration_start_ns"], dtype=np.int64)
        ends = np.asarray(res["iteration_end_ns"], dtype=np.int64)
        lat_ms = (ends - starts) / 1e6
        w = within_run(lat_ms)
        output = np.asarray(res["output"])
        samples = sdir.sample_path(cell.id, planned.run_index, ".json")
        samples.write_text(json.dumps({
            "cell_id": cell.id, "run_index": planned.run_index,
            "window_start_ns": res["window_start_ns"], "window_end_ns": res["window_end_ns"],
            "iteration_start_ns": starts.tolist(), "iteration_end_ns": ends.tolist(),
            "latency_ms": lat_ms.tolist(),
        }))
        out_path = sdir.sample_path(cell.id, planned.run_index, ".output.npy")
        np.save(out_path, output)
        rec.update(
            iterations=w.n,
            window_s=(res["window_end_ns"] - res["window_start_ns"]) / 1e9,
            latency_ms_median=w.median, latency_ms_iqr=w.iqr, latency_ms_min=w.min, latency_ms_mean=w.mean,
            output_sha256=res["output_sha256"], output_shape=list(output.shape),
            samples_file=sdir.rel(samples), output_file=sdir.rel(out_path),
        )
        if reference.ok:
            rec.update(asdict(compare(output, reference.output, self.matrix.equivalence)))
            rec["reference_file"] = str(reference.path)
        else:
            rec["equivalence_unavailable_reason"] = reference.failure

    # -- the loop ----------------------------------------------------------------------------
    def run(self, results_root: Path, resume: SessionDir | None = None) -> SessionResult:
        m = self.matrix
        model, inputs = self.prepare()
        self.meters = choose(m.power)
        self.display.log(f"power: {self.meters.name or 'none'} ({self.meters.reason})")
        preflight = self.preflight.session_start(records_power=self.meters.name is not None)
        for problem in preflight["power"]["problems"]:
            self.display.warn(f"preflight: {problem}" + ("; recording energy anyway (--force-power), runs flagged"
                                                        if self.meters.name else ""))
        if resume is None:
            sdir = SessionDir.create(results_root)
            seed = m.timing.order_seed if m.timing.order_seed is not None else secrets.randbits(32)
            session = self._session_record(sdir, model, inputs, seed)
            session["preflight"] = preflight
            done: set[tuple[str, int]] = set()
        else:
            sdir = resume
            session = sdir.read_session()
            seed = session["order_seed"]
            done = {(r["cell_id"], r["run_index"]) for r in sdir.read_runs().records}
            # A resume may run on another machine: its host, harness and preflight go beside the
            # original ones instead of over them.
            session.setdefault("resumes", []).append({"at": utc_now(), "host": provenance.host(),
                                                      "harness": provenance.harness(), "preflight": preflight})
        sdir.write_session(session)
        self.display.log(f"session {sdir.root}")
        plan = plan_runs([c.id for c in m.enabled_cells], m.timing.runs, m.timing.order, seed)
        todo = [p for p in plan if (p.cell_id, p.run_index) not in done]
        if m.timing.cooldown == "adaptive" and (first := next((c for c in m.enabled_cells if c.id not in self.unsupported), None)):
            self._meter(first, {})  # the host's idle power, before the reference or any worker runs
        refs = self.references(sdir, model, inputs)
        result = SessionResult(sdir)
        session["status"] = "running"
        try:
            with self.display.progress(total=len(plan), completed=len(plan) - len(todo)) as progress:
                for planned in todo:
                    cell = m.cell(planned.cell_id)
                    progress.start_run(planned, cell, len(plan))
                    rec = self.execute(sdir, cell, planned, model, inputs[cell.resolution], refs[cell.resolution])
                    sdir.append_run(rec)
                    progress.end_run(rec, m.timing.runs)
            session["status"] = "complete"
        except KeyboardInterrupt:
            session["status"] = "interrupted"
            result.interrupted = True
            self.display.warn(f"interrupted; finished runs are in {sdir.root / 'runs.jsonl'}; "
                              f"continue with: orchestrate {m.path} --resume {sdir.root}")
        finally:
            session["finished_at"] = utc_now()
            session["worker_versions"] = {**session.get("worker_versions", {}), **self.worker_versions}
            session["power"]["meter_versions"] = {str(k): v for k, v in self.meters.versions().items()}
            idle_w = {meter.version(): w for meter, w in self.idle_w.items()}
            self.meters.close()
            references = {str(r): {"path": str(ref.path), "cached": ref.cached, "failure": ref.failure,
                                   "versions": ref.versions} for r, ref in refs.items()}
            if resume is None:
                session["power"]["idle_w"], session["references"] = idle_w, references
            else:
                session["resumes"][-1].update(idle_w=idle_w, references=references)
            sdir.write_session(session)
            result.summary = write_report(sdir).summary
            give_to_invoking_user(sdir.root, m.model.cache_dir)
        counts = Counter(r["status"] for r in sdir.read_runs().records)
        result.n_ok, result.n_failed, result.n_unsupported = counts["ok"], counts["failed"], counts["unsupported"]
        return result

    def _session_record(self, sdir: SessionDir, model: PinnedModel, inputs: dict[int, PinnedInputs],
                        seed: int) -> dict[str, Any]:
        m = self.matrix
        return {
            "schema_version": SCHEMA_VERSION,
            "session_id": sdir.id,
            "started_at": utc_now(),
            "status": "starting",
            "matrix": {"path": str(m.path.resolve()), "sha256": m.sha256, "content": m.raw},
            "cells": [asdict(c) for c in m.cells],
            "equivalence": asdict(m.equivalence),
            "timing": asdict(m.timing),
            "order": m.timing.order,
            "order_seed": seed,
            "model": {**asdict(model), "path": str(model.path), "synthetic": model.source == "synthetic"},
            "inputs": {str(r): {"shape_latent": list(i.latent.shape), "shape_text_embedding": list(i.text_embedding.shape),
                                "timestep": i.timestep, "sha256": i.digests(), "seed": m.inputs.seed}
                       for r, i in inputs.items()},
            "power": {**asdict(m.power), "meter_used": self.meters.name, "meter_reason": self.meters.reason,
                      "meters_skipped": self.meters.skipped,
                      "energy_unavailable_reason": None if self.meters.name else self.meters.reason},
            "provenance": provenance.collect(self._needed_envs()),
        }


def base_record(session_id: str, cell: Cell, planned: PlannedRun) -> dict[str, Any]:
    """Every run record has every field; the ones a run did not produce are null."""
    return {
        "schema_version": SCHEMA_VERSION, "session_id": session_id, "cell_id": cell.id,
        "run_index": planned.run_index, "order_index": planned.order_index, "started_at": utc_now(),
        "status": None, "failure_reason": None,
        "backend": cell.backend, "env": cell.env, "device": cell.device or cell.compute_unit,
        "precision": cell.precision, "resolution": cell.resolution,
        "wall_s": None, "cooldown_s": None, "cooldown_mode": None, "cooldown_settled": None, "cooldown_settled_by": None, "worker_pid": None, "worker_uid": None, "worker_exit_code": None,
        "python": None, "versions": {}, "realized": {},
        "load_s": None, "warmup_s": None, "warmup_iterations": None,
        "iterations": None, "window_s": None,
        "latency_ms_median": None, "latency_ms_iqr": None, "latency_ms_min": None, "latency_ms_mean": None,
        "output_sha256": None, "output_shape": None,
        "mse": None, "mse_relative": None, "cosine": None, "max_abs_diff": None, "finite": None,
        "numerically_divergent": None, "reference_file": None, "equivalence_unavailable_reason": None,
        "meter": None, "min_window_s": None,
        "baseline_w": None, "active_w": None, "energy_per_step_j": None, "gross_energy_per_step_j": None,
        "estimated_energy_per_50_step_image_j": None, "energy_by_channel": {}, "baseline_window_s": None,
        "meter_update_interval_s": None, "meter_intervals_in_window": None, "meter_intervals_in_baseline": None, "short_window": None,
        "energy_unavailable_reason": None, "throttled": None, "meter_stats": {}, "meter_samples_file": None,
        "nvml_check": None, "conversion": None,
        "host_load_avg": None, "load_wait": None, "load_unsettled": None, "power_state": {}, "power_problems": [],
        "forced_power": None, "thermal_before_run": None, "gpu_throttle_before_run": None,
        "samples_file": None, "output_file": None, "log_file": None,
    }


def fill_from_outcome(rec: dict[str, Any], o: RunOutcome) -> None:
    realized = dict(o.ready.get("realized", {}))
    rec.update(
        status=o.status, failure_reason=o.reason, wall_s=o.wall_s,
        worker_pid=o.hello.get("pid"), worker_uid=o.hello.get("uid"), worker_exit_code=o.exit_code,
        python=o.hello.get("python"), versions=o.ready.get("versions") or o.unsupported_versions,
        realized=realized, load_s=o.ready.get("load_s"), warmup_s=o.ready.get("warmup_s"),
        # a converting backend's facts (cache hit, step timings, sizes, spec checks), ok or not
        conversion=realized.pop("conversion", None) or o.unsupported_facts.get("conversion"),
    )


def check_resume(sdir: SessionDir, matrix: Matrix) -> None:
    s = sdir.read_session()
    if s["matrix"]["sha256"] != matrix.sha256:
        raise UserError(f"--resume {sdir.root}: the session ran matrix sha256 {s['matrix']['sha256'][:12]}…, "
                        f"{matrix.path} is now {matrix.sha256[:12]}…; start a new session instead")
