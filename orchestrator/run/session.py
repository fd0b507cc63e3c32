"""The session loop: pin weights and inputs, compute references, then one fresh worker per run
in the planned order, each run's record appended to runs.jsonl the moment it ends."""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from orchestrator.config.envs import Env, ensure_synced
from orchestrator.config.matrix import Cell, Matrix
from orchestrator.config.paths import REPO_ROOT
from orchestrator.config.plan import PlannedRun, plan_runs
from orchestrator.config.privileges import invoking_user
from orchestrator.console import Display
from orchestrator.energy.arithmetic import invalid_reason, record_fields, run_energy
from orchestrator.energy.meters import Meters, choose
from orchestrator.energy.meters.base import Meter, MeterRecord, NoMeter
from orchestrator.energy.preflight.gate import PreflightGate
from orchestrator.errors import UserError
from orchestrator.report.write import write_report
from orchestrator.results import provenance
from orchestrator.results.records import RunRecord, SessionRecord
from orchestrator.results.stats import within_run
from orchestrator.results.store import RUNS, SESSION, SessionDir, finished_runs, utc_now, writable_problem
from orchestrator.results.summary import Summary
from orchestrator.run.cooldown import Cooldown, adaptive, idle_power
from orchestrator.run.equivalence import Reference, compare, reference_output
from orchestrator.run.forkserver import ForkServer, ForkServerError, chosen
from orchestrator.run.pins import PinnedModel, pin_inputs, pin_model, setup_message
from orchestrator.run.worker_client import RunOutcome, WorkerRun
from workers.contract.backends import BACKENDS
from workers.contract.inputs import PinnedInputs
from workers.contract.messages import Ready, Result
from workers.contract.typed import to_dict

T = TypeVar("T")
WINDOW_UPDATES = 80  # a timed window spans at least this many meter updates; with 20, one H200 cell's runs spread over 4.19-4.66 J/step (docs/methodology.md, "Energy")
SHORT_WINDOW_UPDATES = 10  # fewer than this and the run is flagged


def resume_command(matrix: Path, folder: Path, ray: str | None = None) -> str:
    """The command that continues this session, as one line to paste: `uv run` from the checkout,
    or the README's `sudo -E .venv/bin/orchestrate` when the session ran under sudo; a fleet
    session (`ray`: its `--ray` address) continues on the same cluster, with the `fleet` extra."""
    fleet = " --extra fleet" if ray else ""
    if invoking_user() is not None:
        prefix = f"sudo -E {shlex.quote(str(REPO_ROOT / '.venv' / 'bin' / 'orchestrate'))}"
    elif Path.cwd().resolve().is_relative_to(REPO_ROOT):
        prefix = f"uv run{fleet} orchestrate"
    else:
        prefix = f"uv run{fleet} --project {shlex.quote(str(REPO_ROOT))} orchestrate"
    tail = f" --ray {shlex.quote(ray)}" if ray else ""
    return f"{prefix} {shlex.quote(str(matrix))} --resume {shlex.quote(str(folder))}{tail}"


@dataclass
class SessionResult:
    dir: SessionDir
    summary: Summary
    n_ok: int = 0
    n_failed: int = 0
    n_unsupported: int = 0
    interrupted: bool = False


@dataclass
class Started:
    """A session ready for its runs (Session.start): what the loop, local or a fleet's, needs."""

    sdir: SessionDir
    session: SessionRecord
    resumed: bool
    model: PinnedModel
    inputs: dict[int, PinnedInputs]
    plan: list[PlannedRun]
    todo: list[PlannedRun]  # the plan less the runs already recorded (a resume)
    done: list[RunRecord]  # the runs already recorded
    refs: dict[int, Reference]


class Session:
    def __init__(self, matrix: Matrix, envs: dict[str, Env], display: Display, nvml_check: bool = False,
                 force_power: bool = False, gpu: int | None = None, runs_here: bool = True):
        self.matrix = matrix
        self.runs_here = runs_here  # False on a fleet's driver: its runs go to the nodes
        self.gpu = gpu  # a fleet's GPU slot: the NVML index of the one GPU its workers see, which its meter reads
        self.preflight = PreflightGate(matrix.preflight, force_power, display.status)
        self.nvml_check = nvml_check
        self.envs = envs
        self.display = display
        self.unsupported: dict[str, str] = {}  # cell id -> reason, once a worker said so
        self.unsupported_facts: dict[str, dict[str, Any]] = {}  # cell id -> what its worker established first
        self.worker_versions: dict[str, dict[str, Any]] = {}
        self.meters: Meters = Meters(None, "not chosen yet")
        self.idle_w: dict[Meter, float | None] = {}
        self.forkservers: dict[str, ForkServer | None] = {}  # env -> its server; None: its workers are spawned
        self.envs_with_runs: set[str] = set()  # envs whose cells have runs left (set as the session starts)
        self.ray: str | None = None  # a fleet session's --ray address, for the command that resumes it
        self.worker_start: dict[str, dict[str, Any]] = {}  # env -> how its workers started (session.json)

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
            if env.settings().get("lock-note") and (reason := env.unready_reason):
                self.unsupported[cell.id] = reason
        for reason in sorted(set(self.unsupported.values())):
            self.display.warn(f"{reason}; its cells are recorded unsupported")

    def prepare(self) -> dict[int, PinnedInputs]:
        """The inputs pinned and the envs synced: what must hold before a session folder exists
        (the model is pinned after, while the fork servers import)."""
        m = self.matrix
        inputs = pin_inputs(m.inputs, m.resolutions, m.path)  # cheap, so its mistakes surface first
        self._unlocked_envs()
        ensure_synced(self._needed_envs(), log=self.display.log)
        return inputs

    def references(self, sdir: SessionDir, model: PinnedModel, inputs: dict[int, PinnedInputs]) -> dict[int, Reference]:
        m = self.matrix
        env = self.envs[m.equivalence.env]
        out = {}
        for res, inp in inputs.items():
            with self.display.status(f"fp32 reference output at {res}x{res} ({m.equivalence.backend} "
                                     f"{m.equivalence.device} {m.equivalence.precision})"):
                ref = reference_output(m, env, model, inp, res, m.model.cache_dir, sdir.log_path(f"reference-{res}"),
                                       forkserver=lambda cell: self._reference_forkserver(sdir, cell))
            if ref.ok:
                self.display.log(f"reference {res}x{res}: {'cached' if ref.cached else 'computed'} ({ref.path})")
            else:
                self.display.warn(f"reference {res}x{res} unavailable, equivalence not checked: {ref.failure}")
            out[res] = ref
        return out

    # -- one run -----------------------------------------------------------------------------
    def _meter(self, cell: Cell) -> Meter:
        """The cell's meter, its idle power measured first where cooldown is adaptive. A meter
        that cannot be set up loses the run's energy, with the reason, never the run."""
        try:
            meter = self.meters.for_cell(cell)
            if self.matrix.timing.cooldown == "adaptive":
                self._idle_w(meter)
            return meter
        except Exception as e:
            return NoMeter(f"meter {self.meters.name} unavailable for {cell.id}: {e}")

    def _idle_w(self, meter: Meter) -> float | None:
        """The host's idle power for this meter, measured once, before any worker runs: with the
        fork servers' imports finished where the meter would see them, beside them where it
        reads a GPU board alone."""
        if not meter.measures:
            return None
        if meter not in self.idle_w:
            if self.meters.spec is None or self.meters.spec.sees_host:
                self._await_forkservers()  # the imports would be in the window
            with self.display.status(f"measuring the host's idle power ({self.matrix.power.idle_s:g} s)"):
                self.idle_w[meter] = idle_power(meter, self.matrix.power.idle_s)
            idle = self.idle_w[meter]
            self.display.log(f"idle power ({meter.name}): " + (f"{idle:.1f} W" if idle is not None else "no samples"))
        return self.idle_w[meter]

    def _cooldown(self, meter: Meter) -> Cooldown:
        t = self.matrix.timing
        idle_w = self._idle_w(meter) if t.cooldown == "adaptive" else None
        if idle_w is None:  # fixed, or adaptive without a meter to judge by
            if t.cooldown_s > 0:
                with self.display.status(f"cooldown {t.cooldown_s:g} s (worker loaded and idle)"):
                    time.sleep(t.cooldown_s)
            return Cooldown(t.cooldown_s, None)
        with self.display.status(f"adaptive cooldown: to within {t.cooldown_margin:.0%} of {idle_w:.1f} W idle "
                                 f"({t.cooldown_min_s:g}-{t.cooldown_max_s:g} s)"):
            return adaptive(meter, idle_w, t.cooldown_min_s, t.cooldown_max_s, t.cooldown_margin)

    def _baseline(self, meter: Meter) -> tuple[int, int] | None:
        """The baseline window: the worker loaded, warm and idle; none without a meter."""
        baseline_s = self.matrix.power.baseline_s
        if not meter.measures or baseline_s <= 0:
            return None
        with self.display.status(f"baseline {baseline_s:g} s"):
            b0 = time.monotonic_ns()
            time.sleep(baseline_s)
            return b0, time.monotonic_ns()

    def min_window_s(self, meter: Meter) -> float:
        if self.matrix.timing.min_window_s is not None:
            return self.matrix.timing.min_window_s
        return WINDOW_UPDATES * meter.update_interval_s()

    def execute(self, sdir: SessionDir, cell: Cell, planned: PlannedRun, model: PinnedModel,
                inputs: PinnedInputs, reference: Reference) -> RunRecord:
        m = self.matrix
        rec = run_record(sdir.id, cell, planned)
        reason = self.unsupported.get(cell.id)
        if reason:
            rec.status, rec.failure_reason = "unsupported", reason
            rec.conversion = self.unsupported_facts.get(cell.id, {}).get("conversion")
            return rec
        rec.warmup_iterations = m.timing.warmup
        rec.meter = self.meters.name
        forkserver = self._forkserver(sdir, cell)  # its imports over before the wait for a quiet host
        pre = self.preflight.before_run(cell, self.meters)
        rec = replace(rec, **pre)
        withheld = self.preflight.withhold_energy(pre)
        meter = NoMeter(withheld) if withheld else self._meter(cell)
        rec.min_window_s = self.min_window_s(meter)
        setup = setup_message(m, cell, model, inputs, min_window_s=rec.min_window_s, nvml_check=self.nvml_check)
        label = f"{cell.id}/run-{planned.run_index:03d}"
        log = sdir.log_path(f"{cell.id}.run-{planned.run_index:03d}")
        try:
            meter.start()
        except Exception as e:  # a broken meter loses this run's energy, never the run
            meter = NoMeter(f"meter {meter.name} did not start: {e}")
        cooldown: Cooldown | None = None
        baseline: tuple[int, int] | None = None
        meter_record: MeterRecord | None = None
        run = WorkerRun(self.envs[cell.env], setup, label=label, log_path=log, timeout_s=m.timing.run_timeout_s,
                        forkserver=forkserver)
        try:
            if isinstance(run.start(), Ready):
                cooldown = self._cooldown(meter)
                baseline = self._baseline(meter)
                run.measure()
        finally:
            outcome = run.close()
            try:
                meter_record = meter.stop()
            except Exception as e:
                meter = NoMeter(f"meter {meter.name} failed during the run: {e}")
        rec.energy_unavailable_reason = meter.reason if isinstance(meter, NoMeter) else None
        rec.log_file = sdir.rel(log)
        fill_from_outcome(rec, outcome)
        if meter_record is not None:
            rec.meter_exit, rec.meter_stderr = meter_record.exit_status, meter_record.stderr_tail
        if outcome.hello is not None and outcome.hello.uid not in (None, os.getuid()):
            rec.status = "failed"  # under sudo the orchestrator is the invoking user by now: so must its workers be
            rec.failure_reason = f"worker ran as uid {outcome.hello.uid}, not as this session's uid {os.getuid()}"
            return rec
        if cooldown is not None:
            rec.cooldown_s, rec.cooldown_settled = cooldown.seconds, cooldown.settled
            rec.cooldown_settled_by, rec.cooldown_mode = cooldown.settled_by, m.timing.cooldown
        if outcome.status == "unsupported" and outcome.unsupported is not None:
            self.unsupported[cell.id] = outcome.reason or "unsupported on this host"
            self.unsupported_facts[cell.id] = outcome.unsupported.facts
        if outcome.status == "ok" and outcome.ready is not None and outcome.result is not None:
            self.worker_versions.setdefault(cell.env, outcome.ready.versions)
            rec = self._measurements(rec, sdir, cell, planned, outcome.result, reference)
            if meter.measures and meter_record is not None:
                rec = self._energy(rec, sdir, cell, planned, meter, meter_record, baseline, outcome.result)
        return rec

    def _forkserver(self, sdir: SessionDir, cell: Cell) -> ForkServer | None:
        """The fork server of the cell's env, ready; None where the run's worker is spawned (the
        matrix says so, macOS, a server that could not start, or a CUDA cell whose server cannot
        fork a CUDA user: each said once, with the reason). Every launched server is ready
        before the first fork, so no import runs beside a run."""
        env_name = cell.env
        if env_name not in self.forkservers:
            self._launch_forkserver(sdir, env_name)
        self._await_forkservers()
        server = self.forkservers[env_name]
        if server is None or server.ready is None or not server.ready.cuda_fork_unsafe:
            return server
        if not (cell.device or "").startswith("cuda"):
            return server
        record = self.worker_start[env_name]
        if "cuda" not in record:
            record["cuda"] = f"{server.ready.cuda_fork_unsafe}; its CUDA cells' workers are spawned"
            self.display.warn(f"env {env_name}: {record['cuda']}")
        return None

    def _reference_forkserver(self, sdir: SessionDir, reference: Cell) -> ForkServer | None:
        """The reference env's fork server, where its cells will have one anyway: a reference
        computed then costs a fork, not a second import of the toolchain (on a fresh host, the
        first session computes one per resolution)."""
        if reference.env not in self.envs_with_runs:
            return None
        return self._forkserver(sdir, reference)

    def _launch_forkservers(self, sdir: SessionDir, resumed: bool) -> None:
        """The fork servers of every env with runs left, launched as the session starts: their
        imports run while it writes session.json, shows the plan, measures idle power with a meter
        that cannot see the host's CPU (nvml) and loads or computes the references, instead of
        after all that. None for a resumed session's envs whose runs are all recorded, nor on a
        fleet's driver, whose runs go to the nodes."""
        finished = finished_runs(sdir.read_runs().records) if resumed else set()
        self.envs_with_runs = {c.env for c in self.matrix.enabled_cells if c.id not in self.unsupported
                               and any((c.id, i) not in finished for i in range(self.matrix.timing.runs))}
        if not self.runs_here:
            return
        for env_name in sorted(self.envs_with_runs):
            if env_name not in self.forkservers:
                self._launch_forkserver(sdir, env_name)

    def _launch_forkserver(self, sdir: SessionDir, env_name: str) -> None:
        mode, why = chosen(self.matrix.timing.worker_start)
        self.worker_start[env_name] = {"mode": mode, "why": why}
        self.forkservers[env_name] = None
        if mode != "forkserver":
            return
        preload = sorted({mod for c in self.matrix.enabled_cells if c.env == env_name
                          for mod in BACKENDS[c.backend].preload})
        server = ForkServer(self.envs[env_name], preload, sdir.log_path(f"forkserver.{env_name}"))
        try:
            server.launch()
        except ForkServerError as e:
            self._spawned(env_name, e)
        else:
            self.forkservers[env_name] = server

    def _await_forkservers(self) -> None:
        """Every launched server's imports finished; one that failed leaves its env spawning."""
        for env_name, server in self.forkservers.items():
            if server is None or server.ready is not None:
                continue
            with self.display.status(f"env {env_name}: waiting for the fork server's imports"):
                try:
                    ready = server.wait_ready()
                except ForkServerError as e:
                    self._spawned(env_name, e)
                    continue
            self.display.log(f"env {env_name}: fork server ready, imports took {ready.import_s:.1f} s; "
                             f"the session waited {server.waited_s:.1f} s for it")
            self.worker_start[env_name].update(to_dict(ready), waited_s=server.waited_s)

    def _spawned(self, env_name: str, e: ForkServerError) -> None:
        """A server that could not start: its env's workers are spawned, and the reason said."""
        why = f"{e}; its workers are spawned"
        self.display.warn(f"env {env_name}: {why}")
        self.forkservers[env_name] = None
        self.worker_start[env_name] = {"mode": "spawn", "why": why}

    def _energy(self, rec: RunRecord, sdir: SessionDir, cell: Cell, planned: PlannedRun, meter: Meter,
                record: MeterRecord, baseline: tuple[int, int] | None, result: Result) -> RunRecord:
        window = (result.window_start_ns, result.window_end_ns)
        iterations, window_s = rec.iterations, rec.window_s
        assert iterations is not None and window_s is not None  # _measurements filled them
        samples = sdir.sample_path(cell.id, planned.run_index, ".meter.json")
        samples.write_text(json.dumps({
            "meter": meter.name, "baseline_ns": baseline, "window_ns": window, "stats": record.stats,
            "intervals": [[iv.start_ns, iv.end_ns, iv.joules] for iv in record.intervals],
            "readings": [[r.t_ns, r.values] for r in record.readings],
        }))  # NaN and Infinity as Python writes them: the raw values, whatever they are
        rec.meter_stats, rec.meter_samples_file = record.stats, sdir.rel(samples)
        if (bad := invalid_reason(record.intervals)) is not None:
            rec.energy_invalid = f"{meter.name}: {bad}"
            rec.energy_unavailable_reason = f"the meter's values are invalid ({rec.energy_invalid})"
            return rec
        e = run_energy(record.intervals, baseline, window, iterations)
        update_s = record.stats.get("counter_update_interval_s") or meter.update_interval_s()
        nvml_check = to_dict(result.nvml_check) if result.nvml_check is not None else None
        rec = replace(rec, **record_fields(e, nvml_check))
        rec.energy_unavailable_reason = None if e.energy_per_step_j else (
            f"the meter recorded no samples{_meter_ending(record)}" if not record.intervals else
            "no baseline window (power.baseline_s = 0)" if baseline is None else
            "no meter samples in the baseline or timed window")
        rec.baseline_window_s = (baseline[1] - baseline[0]) / 1e9 if baseline else None
        rec.meter_update_interval_s = update_s
        rec.short_window = window_s < SHORT_WINDOW_UPDATES * update_s
        rec.throttled = meter.throttled(record, baseline[0] if baseline else window[0], window[1])
        return rec

    def _measurements(self, rec: RunRecord, sdir: SessionDir, cell: Cell, planned: PlannedRun,
                      res: Result, reference: Reference) -> RunRecord:
        starts = np.asarray(res.iteration_start_ns, dtype=np.int64)
        ends = np.asarray(res.iteration_end_ns, dtype=np.int64)
        lat_ms = (ends - starts) / 1e6
        w = within_run(lat_ms)
        output = np.asarray(res.output)
        samples = sdir.sample_path(cell.id, planned.run_index, ".json")
        samples.write_text(json.dumps({
            "cell_id": cell.id, "run_index": planned.run_index,
            "window_start_ns": res.window_start_ns, "window_end_ns": res.window_end_ns,
            "iteration_start_ns": starts.tolist(), "iteration_end_ns": ends.tolist(),
            "latency_ms": lat_ms.tolist(),
        }))
        out_path = sdir.sample_path(cell.id, planned.run_index, ".output.npy")
        np.save(out_path, output)
        rec.iterations = w.n
        rec.window_s = (res.window_end_ns - res.window_start_ns) / 1e9
        rec.latency_ms_median, rec.latency_ms_iqr, rec.latency_ms_min, rec.latency_ms_mean = w.median, w.iqr, w.min, w.mean
        rec.minor_faults_per_step = res.minor_faults_per_step()
        rec.output_sha256, rec.output_shape = res.output_sha256, list(output.shape)
        rec.samples_file, rec.output_file = sdir.rel(samples), sdir.rel(out_path)
        if reference.output is not None:
            rec = replace(rec, **asdict(compare(output, reference.output, self.matrix.equivalence)))
            rec.reference_file = str(reference.path)
        else:
            rec.equivalence_unavailable_reason = reference.failure
        return rec

    # -- the loop ----------------------------------------------------------------------------
    def start(self, results_root: Path, resume: SessionDir | None = None) -> Started:
        """Everything before the first run, on this host: the folder, envs, pins, meter, preflight,
        session.json, the plan and the references, with the fork servers importing meanwhile. A
        fleet's driver starts the same way, without fork servers."""
        target = results_root if resume is None else resume.root
        if problem := writable_problem(target, create=True):  # before envs sync or models pin
            raise UserError(f"{target}: results cannot be written there ({problem}); nothing ran"
                            + ("; choose another folder with --out" if resume is None else ""))
        inputs = self.prepare()
        if resume is None:
            try:
                sdir = SessionDir.create(results_root)
            except OSError as e:
                raise UserError(f"cannot create a session folder in {results_root}: {e.strerror or e}; "
                                f"nothing ran") from None
        else:
            sdir = resume
        self._launch_forkservers(sdir, resume is not None)
        try:
            model = pin_model(self.matrix.model, self.matrix.path, log=self.display.log)
            return self._started(sdir, resume is not None, model, inputs, self.session_preflight())
        except BaseException:
            self.close()
            if resume is None and not sdir.has_session():  # nothing recorded: no folder left behind
                shutil.rmtree(sdir.root, ignore_errors=True)
            raise

    def _started(self, sdir: SessionDir, resumed: bool, model: PinnedModel, inputs: dict[int, PinnedInputs],
                 preflight: dict[str, Any]) -> Started:
        m = self.matrix
        if not resumed:
            seed = m.timing.order_seed if m.timing.order_seed is not None else secrets.randbits(32)
            session = self._session_record(sdir, model, inputs, seed)
            session.preflight = preflight
            done: list[RunRecord] = []
        else:
            session = sdir.read_session()
            seed = resume_seed(sdir, session)
            if torn := sdir.set_aside_torn():
                self.display.warn(torn)
            done = sdir.read_runs().records
            # A resume may run on another machine: its host, harness and preflight go beside the
            # original ones instead of over them.
            session.resumes.append({"at": utc_now(), "host": provenance.host(), "harness": provenance.harness(),
                                    "preflight": preflight})
        self._write(sdir, lambda: sdir.write_session(session), ran=0)
        self.display.log(f"session {sdir.root}")
        plan = plan_runs([c.id for c in m.enabled_cells], m.timing.runs, m.timing.order, seed)
        finished = finished_runs(done)
        todo = [p for p in plan if (p.cell_id, p.run_index) not in finished]
        self.display.plan(m, plan, seed, done=len(plan) - len(todo))
        if m.timing.cooldown == "adaptive" and (first := next((c for c in m.enabled_cells if c.id not in self.unsupported), None)):
            self._meter(first)  # the host's idle power, before the reference or any worker runs
        refs = self._write(sdir, lambda: self.references(sdir, model, inputs), ran=0)
        return Started(sdir, session, resumed, model, inputs, plan, todo, done, refs)

    def session_preflight(self) -> dict[str, Any]:
        """The meter chosen and the session's preflight, its problems said."""
        self.meters = choose(self.matrix.power)
        self.meters.gpu = self.gpu
        self.display.explain(f"power: {self.meters.name or 'none'}", self.meters.reason)
        preflight = self.preflight.session_start(records_power=self.meters.name is not None)
        for problem in preflight["power"]["problems"]:
            self.display.warn(f"preflight: {problem}" + ("; recording energy anyway (--force-power), runs flagged"
                                                        if self.meters.name else ""))
        return preflight

    def run(self, results_root: Path, resume: SessionDir | None = None) -> SessionResult:
        m = self.matrix
        st = self.start(results_root, resume)
        sdir, plan = st.sdir, st.plan
        interrupted = False
        failure: UserError | None = None
        ran = 0
        st.session.status = "running"
        try:
            with self.display.progress(total=len(plan), completed=len(plan) - len(st.todo)) as progress:
                for planned in st.todo:
                    cell = m.cell(planned.cell_id)
                    progress.start_run(planned, cell, len(plan))
                    try:
                        rec = self.execute(sdir, cell, planned, st.model, st.inputs[cell.resolution],
                                           st.refs[cell.resolution])
                        sdir.append_run(rec)
                    except OSError as e:  # the results folder stopped taking writes (disk full, gone)
                        failure = self.write_failed(sdir, e, ran)
                        break
                    ran += 1
                    progress.end_run(rec, m.timing.runs)
            st.session.status = "complete" if failure is None else "interrupted"
        except KeyboardInterrupt:
            st.session.status = "interrupted"
            interrupted = True
            self.interrupted(sdir)
        finally:
            self.close()
            summary, failure = self.finish(st, ran, failure)
        if failure is not None:
            raise failure
        return self.result(sdir, summary, interrupted)

    def interrupted(self, sdir: SessionDir) -> None:
        self.display.warn(f"interrupted; finished runs are in {sdir.root / 'runs.jsonl'}")
        self.display.log(f"continue with: {resume_command(self.matrix.path, sdir.root, self.ray)}")

    def close(self) -> None:
        """Stop what the session started on this host: fork servers and meters."""
        for server in self.forkservers.values():
            if server is not None:
                server.close()
        self.meters.close()

    def host_record(self) -> dict[str, Any]:
        """What this host's runs leave in session.json: idle power, worker versions and starts."""
        return {"idle_w": {meter.version(): w for meter, w in self.idle_w.items()},
                "worker_versions": self.worker_versions, "worker_start": self.worker_start,
                "meter_versions": {str(k): v for k, v in self.meters.versions().items()}}

    def finish(self, st: Started, ran: int, failure: UserError | None) -> tuple[Summary | None, UserError | None]:
        """session.json's last state and the report; the failure to raise, if any."""
        session, sdir = st.session, st.sdir
        session.finished_at = utc_now()
        here = self.host_record()
        session.worker_versions = {**session.worker_versions, **here["worker_versions"]}
        session.power["meter_versions"] = here["meter_versions"]
        session.worker_start = {**session.worker_start, **here["worker_start"]}
        references = {str(r): {"path": str(ref.path), "cached": ref.cached, "failure": ref.failure,
                               "versions": ref.versions, "worker_start": ref.worker_start} for r, ref in st.refs.items()}
        if not st.resumed:
            session.power["idle_w"], session.references = here["idle_w"], references
        else:
            session.resumes[-1].update(idle_w=here["idle_w"], references=references)
        summary = None
        try:
            sdir.write_session(session)
            summary = write_report(sdir).summary
        except OSError as e:
            failure = failure or self.write_failed(sdir, e, ran)
        except UserError as e:  # a report file that cannot be written, named
            failure = failure or self.write_failed(sdir, e, ran)
        return summary, failure

    @staticmethod
    def result(sdir: SessionDir, summary: Summary | None, interrupted: bool) -> SessionResult:
        assert summary is not None  # finish returned no failure
        counts = Counter(r.status for r in sdir.read_runs().records)
        return SessionResult(sdir, summary, counts["ok"], counts["failed"], counts["unsupported"], interrupted)

    def _write(self, sdir: SessionDir, step: Callable[[], T], ran: int) -> T:
        """`step`, whose writes into the session folder or the cache may fail; a failure is one line."""
        try:
            return step()
        except OSError as e:
            raise self.write_failed(sdir, e, ran) from None

    def write_failed(self, sdir: SessionDir, e: OSError | UserError, ran: int) -> UserError:
        """What failed, that the finished runs are safe, and the command that continues; exit 2
        when nothing ran in this session, 1 otherwise."""
        runs = sdir.root / RUNS
        n = len(sdir.read_runs().records) if runs.is_file() else 0
        overrides = "".join(f" --env {shlex.quote(f'{env.name}={env.external_python}')}"
                            for env in self.envs.values() if env.external_python is not None)
        what = e.lines[0] if isinstance(e, UserError) else f"cannot write {e.filename or sdir.root}: {e.strerror or e}"
        error = UserError(f"{what}; the session stopped. "
                          f"{n} finished run(s) are safe in {runs}; continue with: "
                          f"orchestrate {shlex.quote(str(self.matrix.path))} --resume {shlex.quote(str(sdir.root))}"
                          f"{overrides}")
        error.exit_code = 2 if ran == 0 else 1
        return error

    def _session_record(self, sdir: SessionDir, model: PinnedModel, inputs: dict[int, PinnedInputs],
                        seed: int) -> SessionRecord:
        m = self.matrix
        return SessionRecord(
            session_id=sdir.id,
            started_at=utc_now(),
            matrix={"path": str(m.path.resolve()), "sha256": m.sha256, "content": m.raw},
            cells=[asdict(c) for c in m.cells],
            equivalence=asdict(m.equivalence),
            timing=asdict(m.timing),
            order=m.timing.order,
            order_seed=seed,
            model={**asdict(model), "path": str(model.path), "synthetic": model.source == "synthetic"},
            inputs={str(r): {"shape_latent": list(i.latent.shape), "shape_text_embedding": list(i.text_embedding.shape),
                             "timestep": i.timestep, "sha256": i.digests(), "seed": m.inputs.seed}
                    for r, i in inputs.items()},
            power={**asdict(m.power), "meter_used": self.meters.name, "meter_reason": self.meters.reason,
                   "meters_skipped": self.meters.skipped,
                   "energy_unavailable_reason": None if self.meters.name else self.meters.reason},
            provenance=provenance.collect(self._needed_envs()),
        )


def run_record(session_id: str, cell: Cell, planned: PlannedRun) -> RunRecord:
    """A run's record as it starts: what the cell and the plan say, nothing measured yet."""
    return RunRecord(session_id=session_id, cell_id=cell.id, run_index=planned.run_index,
                     order_index=planned.order_index, started_at=utc_now(), backend=cell.backend, env=cell.env,
                     device=cell.device or cell.compute_unit, precision=cell.precision, resolution=cell.resolution)


def _meter_ending(record: MeterRecord) -> str:
    """Why a meter process gave nothing, in its own words where it has any."""
    if record.exit_status in (None, "stopped"):
        return ""
    last = next((ln.strip() for ln in reversed((record.stderr_tail or "").splitlines()) if ln.strip()), "")
    return f" (the meter {record.exit_status}" + (f": {last[:200]})" if last else ")")


def fill_from_outcome(rec: RunRecord, o: RunOutcome) -> None:
    """What the worker's own messages tell about the run, whatever its status."""
    rec.status, rec.failure_reason, rec.wall_s, rec.worker_exit_code = o.status, o.reason, o.wall_s, o.exit_code
    rec.worker_start = o.worker_start
    if o.hello is not None:
        rec.worker_pid, rec.worker_uid, rec.python = o.hello.pid, o.hello.uid, o.hello.python
    if o.ready is not None:
        realized = dict(o.ready.realized)
        # a converting backend's facts (cache hit, step timings, sizes, spec checks), ok or not
        rec.conversion = realized.pop("conversion", None)
        rec.versions, rec.realized, rec.load_s, rec.warmup_s = o.ready.versions, realized, o.ready.load_s, o.ready.warmup_s
    elif o.unsupported is not None:
        rec.versions, rec.conversion = o.unsupported.versions, o.unsupported.facts.get("conversion")


def resume_seed(sdir: SessionDir, session: SessionRecord) -> int:
    """The recorded run order's seed: without it the remaining runs cannot be told apart."""
    if session.merged_from:
        raise UserError(f"--resume {sdir.root}: a merged session is not resumed (orchestrate merge); resume the "
                        f"session of the host that stopped, then merge again")
    if session.order_seed is None:
        raise UserError(f"--resume {sdir.root}: {sdir.root / SESSION} has no order_seed, so the run order "
                        f"cannot be rebuilt; start a new session instead")
    return session.order_seed


def check_resume(sdir: SessionDir, matrix: Matrix) -> None:
    s = sdir.read_session()
    resume_seed(sdir, s)
    sha = s.matrix.get("sha256", "")
    if sha != matrix.sha256:
        raise UserError(f"--resume {sdir.root}: the session ran matrix sha256 {sha[:12]}…, "
                        f"{matrix.path} is now {matrix.sha256[:12]}…; start a new session instead")
