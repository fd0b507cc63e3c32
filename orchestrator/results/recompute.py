"""Recompute the energy of a finished session's runs from the meter samples it saved
(`samples/<cell>/run-NNN.meter.json`) with this harness's arithmetic, so a fix to that
arithmetic reaches results already on disk without measuring again. Only the fields the
arithmetic yields change (a record of an older schema is written back in the current one); a line
that is not a readable run record is kept byte for byte. A samples file that cannot be read, or
that lies outside the session folder, is named and its run left as it was. session.json records
each recomputation (when, which harness). A folder without saved meter samples is left as it is."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from orchestrator.energy.arithmetic import Interval, invalid_reason, record_fields, run_energy
from orchestrator.results.provenance import harness
from orchestrator.results.records import RunRecord
from orchestrator.results.store import RUNS, SessionDir, utc_now, write_atomic
from workers.contract.typed import Invalid, build, check, to_dict


@dataclass(frozen=True)
class Recomputed:
    runs: int  # run records whose energy was recomputed
    changed: list[tuple[str, int, float | None, float | None]]  # cell, run, energy_per_step_j before, after
    problems: list[str] = field(default_factory=list)  # samples that could not be used, named; those runs unchanged


@dataclass(frozen=True)
class MeterSamples:
    """A run's `.meter.json`, as the session wrote it."""

    window_ns: list[int]
    intervals: list[list[Any]]
    baseline_ns: list[int] | None = None
    meter: str | None = None
    stats: dict[str, Any] = field(default_factory=dict)


def read_samples(path: Path, where: str) -> tuple[list[Interval], tuple[int, int] | None, tuple[int, int]]:
    """The intervals, baseline and timed window of a `.meter.json`; Invalid naming the field."""
    try:
        data = json.loads(path.read_bytes())
    except OSError as e:
        raise Invalid(f"{where}: cannot be read ({e.strerror})") from None
    except ValueError as e:  # not JSON, or not UTF-8
        raise Invalid(f"{where}: not valid JSON ({e})") from None
    m = build(MeterSamples, data, where, extra="drop")
    window = _span(m.window_ns, f"{where}: field window_ns")
    baseline = _span(m.baseline_ns, f"{where}: field baseline_ns") if m.baseline_ns else None
    intervals = []
    for i, iv in enumerate(m.intervals):
        at = f"{where}: field intervals[{i}]"
        if len(iv) != 3:
            raise Invalid(f"{at}: expected [start_ns, end_ns, {{channel: joules}}], got {len(iv)} items")
        start, end = _span(iv[:2], at)
        intervals.append(Interval(start, end, check(iv[2], dict[str, float], f"{at}[2]")))
    return intervals, baseline, window


def _span(value: list[Any], where: str) -> tuple[int, int]:
    a, b = check(value, list[int], where) if len(value) == 2 else (None, None)
    if a is None or b is None or a > b:
        raise Invalid(f"{where}: expected [start_ns, end_ns] with start <= end, got {str(value)[:60]}")
    return a, b


def inside(sdir: SessionDir, relative: str, where: str) -> Path:
    """A path a results file names, which must stay inside its session folder."""
    root = sdir.root.resolve()
    path = (root / relative).resolve()
    if not path.is_relative_to(root):
        raise Invalid(f"{where}: {relative!r} lies outside the session folder; not read")
    return path


def recompute_energy(sdir: SessionDir) -> Recomputed:
    provenance = harness()  # before writing: the session folder may be part of the checkout
    session = sdir.read_session() if sdir.has_session() else None  # a bad session.json stops it before any write
    path = sdir.root / RUNS
    out: list[bytes] = []
    runs, changed, problems = 0, [], []
    for n, raw in enumerate(path.read_bytes().splitlines(), start=1):
        try:
            rec = RunRecord.read(json.loads(raw), f"{path}:{n}")
        except (ValueError, Invalid):
            out.append(raw)  # kept as it was; `orchestrate report` names it
            continue
        samples = rec.meter_samples_file
        if not samples or rec.iterations is None:
            out.append(raw)
            continue
        where = f"{path}:{n}: field meter_samples_file"
        try:
            if rec.iterations < 1:
                raise Invalid(f"{path}:{n}: field iterations: {rec.iterations} (at least 1 needed)")
            file = inside(sdir, samples, where)
            if not file.is_file():
                out.append(raw)
                continue
            intervals, baseline, window = read_samples(file, str(file))
            if invalid_reason(intervals) is not None:
                out.append(raw)  # values that cannot be energy: the run keeps its `energy_invalid` and no energy
                continue
            after = replace(rec, **record_fields(run_energy(intervals, baseline, window, rec.iterations),
                                                  rec.nvml_check))
            line = json.dumps(to_dict(after), allow_nan=False).encode()
        except (Invalid, ValueError) as e:  # ValueError: a result that is not finite
            problems.append(f"{e}; {rec.cell_id} run {rec.run_index} left as it was")
            out.append(raw)
            continue
        runs += 1
        if after.energy_per_step_j != rec.energy_per_step_j:
            changed.append((rec.cell_id, rec.run_index, rec.energy_per_step_j, after.energy_per_step_j))
        out.append(line)
    if not runs:
        return Recomputed(0, [], problems)  # nothing to recompute from: the folder stays as it is
    write_atomic(path, b"".join(ln + b"\n" for ln in out))
    if session is not None:
        session.energy_recomputed.append({"at": utc_now(), "harness": provenance, "runs": runs})
        sdir.write_session(session)
    return Recomputed(runs, changed, problems)
