"""Energy per step from the NVML samples of the committed H100 study: the arithmetic against a
plain count of the meter's energy, and recomputing a copy of the folder (in-process, and the
`orchestrate recompute-energy` command itself for what only it says)."""

import json
import shutil
from pathlib import Path

import pytest
from conftest import REPO, cli

from orchestrator.energy.arithmetic import Interval, run_energy
from orchestrator.results.recompute import recompute_energy
from orchestrator.results.records import SCHEMA_VERSION
from orchestrator.results.store import SessionDir

STUDY = REPO / "docs" / "results" / "2026-11-27-h100-sd15-cuda"
# the run fields the energy arithmetic yields; recomputing leaves every other field alone
ARITHMETIC = {"schema_version", "baseline_w", "active_w", "energy_per_step_j", "gross_energy_per_step_j", "estimated_energy_per_50_step_image_j",
              "energy_by_channel", "meter_intervals_in_window", "meter_intervals_in_baseline", "nvml_check"}


def _runs(folder: Path) -> list[dict]:
    return [json.loads(ln) for ln in (folder / "runs.jsonl").read_text().splitlines() if ln.strip()]


def _computed(folder: Path, rec: dict) -> float:
    m = json.loads((folder / rec["meter_samples_file"]).read_text())
    ivs = [Interval(a, b, j) for a, b, j in m["intervals"]]
    return run_energy(ivs, tuple(m["baseline_ns"]), tuple(m["window_ns"]), rec["iterations"]).energy_per_step_j["total"]


def _counted(folder: Path, rec: dict) -> float:
    """Net joules per step over the counter steps that lie wholly inside the timed window,
    divided by the iterations' share of that span: no edges to split, no medians."""
    m = json.loads((folder / rec["meter_samples_file"]).read_text())
    it = json.loads((folder / rec["samples_file"]).read_text())
    w0, w1 = m["window_ns"]
    whole = [(a, b, j["gpu"]) for a, b, j in m["intervals"] if a >= w0 and b <= w1]
    a, b = whole[0][0], whole[-1][1]
    steps = sum(max(0, min(b, e) - max(a, s)) / (e - s) for s, e in zip(it["iteration_start_ns"], it["iteration_end_ns"]))
    return (sum(j for _, _, j in whole) - rec["baseline_w"] * (b - a) / 1e9) / steps


def test_every_run_matches_the_energy_its_meter_counted():
    """Runs on that VM swung between 25 and 125 ms per step inside one window, and the GPU's
    power with them: the energy per step must still be what the counter counted. (A median of
    interval powers times the window's length missed it by -10.5% to +5.4%.)"""
    runs = _runs(STUDY)
    assert len(runs) == 35
    for rec in runs:
        computed, counted = _computed(STUDY, rec), _counted(STUDY, rec)
        assert computed == pytest.approx(counted, rel=0.015), (rec["cell_id"], rec["run_index"])


def test_recompute_energy_restores_each_run_from_its_samples(tmp_path):
    folder = tmp_path / "study"
    shutil.copytree(STUDY, folder)
    runs = _runs(folder)
    expected = {(r["cell_id"], r["run_index"]): _computed(folder, r) for r in runs}
    stale = [{**r, "energy_per_step_j": 1.0, "energy_by_channel": {}} for r in runs]
    lines = [json.dumps(r) for r in stale]
    lines.insert(3, "{not json")
    (folder / "runs.jsonl").write_text("\n".join(lines) + "\n")

    done = recompute_energy(SessionDir(folder))
    assert done.runs == 35 and len(done.changed) == 35

    text = (folder / "runs.jsonl").read_text().splitlines()
    assert text[3] == "{not json"  # an unreadable line is kept as it was
    after = [json.loads(ln) for i, ln in enumerate(text) if i != 3]
    for r in after:
        assert r["energy_per_step_j"] == pytest.approx(expected[(r["cell_id"], r["run_index"])])
        gpu = r["energy_by_channel"]["gpu"]
        assert gpu["window_energy_j"] == pytest.approx(gpu["gross_energy_per_step_j"] * r["iterations"])
        before = next(s for s in stale if (s["cell_id"], s["run_index"]) == (r["cell_id"], r["run_index"]))
        assert r["schema_version"] == SCHEMA_VERSION  # written back in the current schema
        added = {k for k in r.keys() - before.keys() if r[k] is None}  # fields newer than the fixture, at their default
        assert {k: v for k, v in r.items() if k not in ARITHMETIC | added} == {k: v for k, v in before.items() if k not in ARITHMETIC}
    session = json.loads((folder / "session.json").read_text())
    assert session["energy_recomputed"][-1]["runs"] == 35


def test_recompute_energy_names_a_folder_without_runs(tmp_path):
    p = cli("recompute-energy", str(tmp_path))
    assert p.returncode == 2 and "no runs.jsonl; not a session folder" in p.stderr


def test_recompute_energy_leaves_a_folder_without_meter_samples_alone(tmp_path):
    folder = tmp_path / "study"
    shutil.copytree(STUDY, folder, ignore=shutil.ignore_patterns("*.meter.json"))
    before = {f.name: f.read_bytes() for f in folder.iterdir() if f.is_file()}
    p = cli("recompute-energy", str(folder))
    assert p.returncode == 0 and "no run has saved meter samples" in p.stderr
    assert {f.name: f.read_bytes() for f in folder.iterdir() if f.is_file()} == before
