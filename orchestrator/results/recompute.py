"""Recompute the energy of a finished session's runs from the meter samples it saved
(`samples/<cell>/run-NNN.meter.json`) with this harness's arithmetic, so a fix to that
arithmetic reaches results already on disk without measuring again. Only the fields the
arithmetic yields change (a record of an older schema is written back in the current one); a line
that is not a readable run record is kept as it was. session.json records each recomputation
(when, which harness). A folder without saved meter samples is left as it is."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace

from orchestrator.energy.arithmetic import Interval, invalid_reason, record_fields, run_energy
from orchestrator.results.provenance import harness
from orchestrator.results.records import RunRecord
from orchestrator.results.store import RUNS, SessionDir, utc_now
from workers.contract.typed import Invalid, to_dict


@dataclass(frozen=True)
class Recomputed:
    runs: int  # run records whose energy was recomputed
    changed: list[tuple[str, int, float | None, float | None]]  # cell, run, energy_per_step_j before, after


def recompute_energy(sdir: SessionDir) -> Recomputed:
    provenance = harness()  # before writing: the session folder may be part of the checkout
    session = sdir.read_session() if sdir.has_session() else None  # a bad session.json stops it before any write
    path = sdir.root / RUNS
    lines = path.read_text().splitlines()
    out: list[str] = []
    runs, changed = 0, []
    for n, line in enumerate(lines, start=1):
        try:
            rec = RunRecord.read(json.loads(line), f"{path}:{n}")
        except (json.JSONDecodeError, Invalid):
            out.append(line)  # kept as it was; `orchestrate report` names it
            continue
        samples = rec.meter_samples_file
        if not samples or rec.iterations is None or not (sdir.root / samples).is_file():
            out.append(line)
            continue
        m = json.loads((sdir.root / samples).read_text())
        intervals = [Interval(a, b, joules) for a, b, joules in m["intervals"]]
        baseline = tuple(m["baseline_ns"]) if m["baseline_ns"] else None
        if invalid_reason(intervals) is not None:
            out.append(line)  # values that cannot be energy: the run keeps its `energy_invalid` and no energy
            continue
        e = run_energy(intervals, baseline, tuple(m["window_ns"]), rec.iterations)
        after = replace(rec, **record_fields(e, rec.nvml_check))
        runs += 1
        if after.energy_per_step_j != rec.energy_per_step_j:
            changed.append((rec.cell_id, rec.run_index, rec.energy_per_step_j, after.energy_per_step_j))
        out.append(json.dumps(to_dict(after), allow_nan=False))
    if not runs:
        return Recomputed(0, [])  # nothing to recompute from: the folder stays as it is
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(f"{ln}\n" for ln in out))
    os.replace(tmp, path)
    if session is not None:
        session.energy_recomputed.append({"at": utc_now(), "harness": provenance, "runs": runs})
        sdir.write_session(session)
    return Recomputed(runs, changed)
