"""The run record (one line of runs.jsonl) and its schema version, defined once: the session
fills it, the results store validates it when read, the field tables in docs/results-format.md
are generated from it (tests/test_records.py fails when they drift).

A record written by an older schema is upgraded on read by one small function per version
(`UPGRADES`); a newer one is refused with a clear message."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from workers.contract.typed import Invalid, build, field

SCHEMA_VERSION = 3
RUN_STATUSES = ("ok", "failed", "unsupported")


def _v1(data: dict[str, Any]) -> dict[str, Any]:
    """Version 1 records may lack fields added while it was current (cooldown_settled_by,
    meter_intervals_in_baseline, preflight fields...): they read as null, what a run that did not
    produce them records. Nothing else changed."""
    return {**data, "schema_version": 2}


def _v2(data: dict[str, Any]) -> dict[str, Any]:
    """Version 3 added `minor_faults_per_step`: earlier workers did not count faults, so it reads
    as null."""
    return {**data, "schema_version": 3}


UPGRADES: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: _v1, 2: _v2}  # run records

# Cell ids the reference study (matrix.toml) once had, and the ids it has now: results recorded
# under an old id read, report and compare under the new one.
CELL_ID_ALIASES: dict[str, str] = {
    "apple-ct8-ane-fp16": "apple-ane-fp16",
    "ours-ct9-ane-fp16": "ours-ane-fp16",
    "ours-ct9-ane-w4": "ours-ane-w4",
    "apple-ct8-gpu-fp16": "apple-gpu-fp16",
    "ours-ct9-gpu-fp16": "ours-gpu-fp16",
}


def current_cell_id(cell_id: str) -> str:
    """The id a cell has now, for one recorded under an id of the past (`CELL_ID_ALIASES`)."""
    return CELL_ID_ALIASES.get(cell_id, cell_id)


def _upgrade(data: dict[str, Any], where: str,
             upgrades: dict[int, Callable[[dict[str, Any]], dict[str, Any]]]) -> dict[str, Any]:
    """`data` brought to SCHEMA_VERSION; Invalid for a version this harness does not know."""
    version = data.get("schema_version", 1)
    if not isinstance(version, int) or isinstance(version, bool):
        raise Invalid(f"{where}: field schema_version: expected an integer, got {version!r}")
    if version > SCHEMA_VERSION:
        raise Invalid(f"{where}: written by a newer harness (schema_version {version}; this one reads up to "
                      f"{SCHEMA_VERSION}): update the harness to read it")
    while version < SCHEMA_VERSION:
        if version not in upgrades:
            raise Invalid(f"{where}: schema_version {version} is not one this harness can upgrade")
        data = upgrades[version](data)
        version = data["schema_version"]
    return data


@dataclass
class RunRecord:
    """Every record has every field; what a run did not produce is null."""

    session_id: str = field(doc="the session folder's name")
    cell_id: str = field(doc="the cell's id in the matrix")
    run_index: int = field(doc="counts from 0 within the cell")
    status: str | None = field(None, doc="`ok`, `failed` or `unsupported`")
    schema_version: int = field(SCHEMA_VERSION, doc="of this record's layout")
    order_index: int | None = field(None, doc="position in the session's run order")
    started_at: str | None = field(None, unit="ISO 8601 UTC", doc="when the run began")
    failure_reason: str | None = field(None, doc="one line: why it failed or is unsupported (worker error, exit code "
                                                 "or signal, timeout, malformed frame; with the log's last line)")
    backend: str | None = field(None, doc="as the cell asked")
    env: str | None = field(None, doc="the env the worker ran in")
    device: str | None = field(None, doc="as the cell asked (`compute_unit` for Core ML)")
    precision: str | None = field(None, doc="as the cell asked")
    resolution: int | None = field(None, unit="px", doc="image side; the latent is resolution/8")
    wall_s: float | None = field(None, unit="s", doc="whole run, process start to exit")
    cooldown_s: float | None = field(None, unit="s", doc="the cooldown actually spent between warmup and the "
                                                         "baseline window")
    cooldown_mode: str | None = field(None, doc="`fixed` or `adaptive`")
    cooldown_settled: bool | None = field(None, doc="whether an adaptive cooldown settled before its maximum (null "
                                                    "for a fixed wait, or adaptive without a meter)")
    cooldown_settled_by: str | None = field(None, doc="`idle` (back near idle power) or `plateau` (power stopped "
                                                      "falling)")
    worker_pid: int | None = field(None, doc="the fresh process of this run")
    worker_start: str | None = field(None, doc="`spawn` (a new interpreter) or `forkserver` (forked from the env's "
                                               "fork server, toolchain already imported)")
    worker_uid: int | None = field(None, doc="the user it ran as")
    worker_exit_code: int | None = field(None, doc="its exit status (negative: the signal)")
    python: str | None = field(None, doc="the worker's Python version")
    versions: dict[str, Any] = field(factory=dict, doc="the worker's toolchain versions")
    realized: dict[str, Any] = field(factory=dict, doc="what ran: device, device name, dtype, attention, "
                                                       "attention processors, threads; `compile`, `compile_s` and "
                                                       "`compile_cache` (`cold`, `warm`: whether the compiler's "
                                                       "cache under the cache dir held this configuration before "
                                                       "the load; `none`: not compiled, or no cache the harness "
                                                       "places, as with MLX)")
    load_s: float | None = field(None, unit="s", doc="model load, imports included")
    warmup_s: float | None = field(None, unit="s", doc="warmup iterations' time")
    warmup_iterations: int | None = field(None, unit="count", doc="discarded before the timed window")
    iterations: int | None = field(None, unit="count", doc="timed iterations actually run")
    window_s: float | None = field(None, unit="s", doc="timed window: first start to last end")
    latency_ms_median: float | None = field(None, unit="ms", doc="over the run's iterations")
    latency_ms_iqr: float | None = field(None, unit="ms", doc="over the run's iterations")
    latency_ms_min: float | None = field(None, unit="ms", doc="over the run's iterations")
    latency_ms_mean: float | None = field(None, unit="ms", doc="over the run's iterations")
    minor_faults_per_step: float | None = field(None, unit="count", doc="the worker's minor page faults over the timed "
                                                "window (all its threads) / `iterations`: near 0 when the steps' "
                                                "memory stays in the allocator's heap, thousands when it is returned "
                                                "to the kernel and faulted in again each step, which on a CPU cell "
                                                "can be a fifth slower (docs/methodology.md, \"Harness overhead\"); "
                                                "null from a worker that did not count")
    output_sha256: str | None = field(None, doc="of the output tensor (float32)")
    output_shape: list[int] | None = field(None, doc="of the output tensor")
    mse: float | None = field(None, finite=False, doc="vs the reference output")
    mse_relative: float | None = field(None, finite=False, doc="MSE / mean square of the reference")
    cosine: float | None = field(None, finite=False, doc="cosine similarity with the reference")
    max_abs_diff: float | None = field(None, finite=False, doc="largest absolute difference from the reference")
    finite: bool | None = field(None, doc="every output value is finite")
    numerically_divergent: bool | None = field(None, doc="not finite, MSE > `mse_max` or cosine < `cosine_min`")
    reference_file: str | None = field(None, doc="the cached reference output compared with")
    equivalence_unavailable_reason: str | None = field(None, doc="why no reference was compared")
    meter: str | None = field(None, doc="the session's meter")
    min_window_s: float | None = field(None, unit="s", doc="the window the worker was asked to fill")
    baseline_w: float | None = field(None, unit="W", doc="all channels: median interval power in the baseline "
                                                         "window")
    active_w: float | None = field(None, unit="W", doc="all channels: energy counted in the timed window / its "
                                                       "length")
    energy_per_step_j: float | None = field(None, unit="J", doc="(`active_w` - `baseline_w`) x `window_s` / "
                                                                "`iterations`, all channels")
    gross_energy_per_step_j: float | None = field(None, unit="J", doc="`active_w` x `window_s` / `iterations`, "
                                                                      "nothing subtracted")
    estimated_energy_per_50_step_image_j: float | None = field(None, unit="J", doc="50 x `energy_per_step_j`: an "
                                                                                   "estimate, not a measured image")
    energy_by_channel: dict[str, dict[str, Any]] = field(factory=dict, doc="per channel and `total`: `baseline_w`, `active_w`, "
                                              "`energy_per_step_j`, `gross_energy_per_step_j`, "
                                              "`estimated_energy_per_50_step_image_j`, `window_energy_j` (joules "
                                              "counted in the timed window)")
    baseline_window_s: float | None = field(None, unit="s", doc="length of the baseline window")
    meter_update_interval_s: float | None = field(None, unit="s", doc="how often the meter's counter moves")
    meter_intervals_in_window: int | None = field(None, unit="count", doc="meter intervals whose midpoint lies in "
                                                                          "the timed window")
    meter_intervals_in_baseline: int | None = field(None, unit="count", doc="likewise in the baseline window")
    short_window: bool | None = field(None, doc="the timed window spanned fewer than 10 meter updates")
    energy_unavailable_reason: str | None = field(None, doc="why energy is null (no meter and why, no baseline "
                                                            "window, preflight)")
    throttled: bool | None = field(None, doc="powermetrics: thermal pressure not Nominal; NVML: thermal or "
                                             "power-brake clocks; null when the meter cannot tell")
    meter_stats: dict[str, Any] = field(factory=dict, doc="parser counters, or polls and the measured counter step")
    meter_samples_file: str | None = field(None, doc="raw intervals and readings (`samples/<cell>/run-NNN.meter.json`)")
    energy_invalid: str | None = field(None, doc="why the meter's values cannot be energy (not finite, negative, a "
                                                 "sample of no duration, a power no channel draws); the run then "
                                                 "records no energy")
    meter_exit: str | None = field(None, doc="a meter process (powermetrics): `stopped` by the harness at the run's "
                                             "end, or how it ended on its own before that (`exited with code 1 "
                                             "before it was stopped`); null for meters without a process")
    meter_stderr: str | None = field(None, doc="a meter process: the last 2000 bytes of its stderr, as text")
    nvml_check: dict[str, Any] | None = field(None, doc="with `--nvml-check`: the worker's own counter reads "
                                                        "(`joules`), `harness_window_j` and their `ratio`")
    conversion: dict[str, Any] | None = field(None, doc="Core ML cells: the conversion's key, cache hit, steps and "
                                                        "their times, package size, bits per weight, spec")
    host_load_avg: list[float] | None = field(None, doc="1, 5, 15-minute load average before the run's preflight "
                                                        "wait")
    load_wait: dict[str, Any] | None = field(None, doc="the wait for a quiet host: `limit`, load `before` and "
                                                       "`after`, `waited_s`, `settled`")
    load_unsettled: bool | None = field(None, doc="the run started without the load settling")
    power_state: dict[str, Any] = field(factory=dict, doc="what the power probe saw (source, battery, Low Power "
                                                          "Mode)")
    power_problems: list[str] = field(factory=list, doc="why energy would not be trustworthy (empty when fine)")
    forced_power: bool | None = field(None, doc="the run had power problems and `--force-power` recorded its "
                                                "energy anyway")
    thermal_before_run: dict[str, Any] | None = field(None, doc="macOS: `pmset -g therm`'s warnings (`reported`) "
                                                                "and `limited`")
    gpu_throttle_before_run: list[str] | None = field(None, doc="NVML: slowdown reasons active on the cell's GPU "
                                                                "before the run")
    samples_file: str | None = field(None, doc="per-iteration times, relative to the session folder")
    output_file: str | None = field(None, doc="the output tensor (.npy), relative to the session folder")
    log_file: str | None = field(None, doc="the worker's stderr, relative to the session folder")
    host: str | None = field(None, doc="the host it ran on, a key of session.json's `hosts` (a merged or fleet session); "
                                       "null: the session's own host, or its resume's")
    gpu: int | None = field(None, doc="a fleet session's `isolation = \"gpu\"` run: the NVML index (PCI bus order) "
                                      "of the one GPU of its node it saw and was metered on; its `host` ends in "
                                      "`/gpu-N`; null: the run had its node to itself")
    merged_from: dict[str, Any] | None = field(None, doc="a merged session: the `session_id` and `run_index` the run "
                                                         "had in its source session")
    attempt: int | None = field(None, unit="count", doc="a fleet session (`--ray`): which attempt at this run, 1 "
                                                        "the first; a run whose node was lost is tried again on "
                                                        "another node as the next attempt; null: a local session's "
                                                        "one attempt")
    node_lost: bool | None = field(None, doc="a fleet session: the attempt failed because its node died or left the "
                                             "cluster, or no live node was left to run it, not by the worker's own "
                                             "doing; a later attempt of the run supersedes it, and `--resume` runs "
                                             "it again")

    @classmethod
    def read(cls, data: Any, where: str) -> RunRecord:
        """A record from runs.jsonl, upgraded and checked; Invalid naming the field otherwise."""
        if not isinstance(data, dict):
            raise Invalid(f"{where}: expected a JSON object, got {type(data).__name__}")
        record = build(cls, _upgrade(data, where, UPGRADES), where)
        record.cell_id = current_cell_id(record.cell_id)
        if record.status is not None and record.status not in RUN_STATUSES:
            raise Invalid(f"{where}: field status: {record.status!r} is not one of {', '.join(RUN_STATUSES)}")
        return record


def _v1_session(data: dict[str, Any]) -> dict[str, Any]:
    """Early version 1 sessions recorded a resume as `resumed_at` and `preflight_on_resume`
    lists; later ones as `resumes` entries. Both become `resumes` entries, in time order."""
    data = dict(data)
    early = [{"at": at, "preflight": pre} for at, pre in
             zip(data.pop("resumed_at", []) or [], data.pop("preflight_on_resume", []) or [])]
    if early:
        data["resumes"] = sorted(early + list(data.get("resumes") or []), key=lambda r: str(r.get("at")) if isinstance(r, dict) else "")
    return {**data, "schema_version": 2}


def _v2_session(data: dict[str, Any]) -> dict[str, Any]:
    """session.json did not change in version 3 (its run records did; the two share the number)."""
    return {**data, "schema_version": 3}


SESSION_UPGRADES: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: _v1_session, 2: _v2_session}


@dataclass
class SessionRecord:
    """session.json: what the session ran, where, with what, and how it ended."""

    session_id: str = field(doc="the session folder's name (`YYYYMMDDTHHMMSSZ-xxxx`, sorts by time)")
    schema_version: int = field(SCHEMA_VERSION, doc="of this file's layout")
    status: str = field("starting", doc="`starting`, `running`, `complete` or `interrupted`")
    started_at: str | None = field(None, unit="ISO 8601 UTC", doc="when the session began")
    finished_at: str | None = field(None, unit="ISO 8601 UTC", doc="when it last ended")
    matrix: dict[str, Any] = field(factory=dict, doc="the matrix as run: `path`, `sha256`, `content` (parsed TOML)")
    cells: list[dict[str, Any]] = field(factory=list, doc="the cells as resolved (defaults filled in)")
    equivalence: dict[str, Any] = field(factory=dict, doc="the reference cell and thresholds")
    timing: dict[str, Any] = field(factory=dict, doc="the [timing] section as resolved")
    order: str | None = field(None, doc="`interleaved` or `sequential`")
    order_seed: int | None = field(None, doc="the seed the run order was shuffled with")
    model: dict[str, Any] = field(factory=dict, doc="the pinned weights: path, sha256, source, preset, seed")
    inputs: dict[str, Any] = field(factory=dict, doc="per resolution: input shapes, timestep, sha256, seed")
    power: dict[str, Any] = field(factory=dict, doc="[power] as resolved, the meter used and why, meters skipped, "
                                                    "meter versions, the host's idle power (`idle_w`)")
    provenance: dict[str, Any] = field(factory=dict, doc="harness commit and dirty flag, host, OS, CPU, GPUs, each "
                                                         "env's python, lock sha256 and versions, command line")
    preflight: dict[str, Any] = field(factory=dict, doc="the session's preflight: idle load, power state, problems")
    worker_versions: dict[str, Any] = field(factory=dict, doc="per env: the versions its workers reported")
    worker_start: dict[str, Any] = field(factory=dict, doc="per env: `mode` (`spawn` or `forkserver`) and why; a "
                                         "fork server's pid, `import_s`, `waited_s` (how long the session waited for "
                                         "those imports: they run while it starts), `preloaded` and `not_preloaded` "
                                         "modules")
    references: dict[str, Any] = field(factory=dict, doc="per resolution: the reference output used (`path`, `cached`, "
                                       "`failure`, `versions`, and `worker_start`: `spawn` or `forkserver` when this "
                                       "session computed it, null when it was cached)")
    resumes: list[dict[str, Any]] = field(factory=list, doc="one per `--resume`: time, host, harness, preflight, "
                                                            "idle power and references then")
    energy_recomputed: list[dict[str, Any]] = field(factory=list, doc="one per `orchestrate recompute-energy`: "
                                                                      "time, harness, runs")
    hosts: dict[str, dict[str, Any]] = field(factory=dict, doc="a merged or fleet session: per host (the runs' `host`; a "
                                                               "fleet's GPU slot is `NODE/gpu-N`, with `gpu`: its "
                                                               "`index` and `nvidia_smi` line), its "
                                                               "hardware, harness, env lock sha256 and, per source "
                                                               "session, its idle power, preflight, run order seed "
                                                               "and the versions its workers reported")
    merged_from: list[dict[str, Any]] = field(factory=list, doc="a merged session: each source session's id, path, "
                                                                "status, times, hosts and runs")

    @classmethod
    def read(cls, data: Any, where: str) -> SessionRecord:
        if not isinstance(data, dict):
            raise Invalid(f"{where}: expected a JSON object, got {type(data).__name__}")
        record = build(cls, _upgrade(data, where, SESSION_UPGRADES), where)
        record.cells = [{**c, "id": current_cell_id(c["id"])} if isinstance(c, dict) and isinstance(c.get("id"), str)
                        else c for c in record.cells]
        return record
