"""Figures and comparisons from a real session (examples/quick.toml, run once for the test
session by conftest's quick_session): what they drew is what runs.jsonl and summary.json hold."""

import json
import shutil

import pytest
from conftest import cli

from orchestrator.report.reasons import again

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def quick_report(quick_session, tmp_path_factory):
    """A copy of the quick session, reported in this process so the figures' data can be read."""
    from orchestrator.report.write import write_report
    from orchestrator.results.store import SessionDir

    p, d = quick_session
    assert p.returncode == 0, p.stderr[-3000:]
    copy = tmp_path_factory.mktemp("quick-report") / d.name
    shutil.copytree(d, copy)
    runs = [json.loads(line) for line in (copy / "runs.jsonl").read_text().splitlines()]
    return write_report(SessionDir(copy)), runs, d


def _figure(rep, name):
    return next(f for f in rep.inputs.figures if f.name == name)


def test_session_wrote_the_full_report(quick_session):
    _, d = quick_session
    for name in ("report.md", "report.html", "summary.json", "runs.csv", "figures/runs_latency_ms_median.svg",
                 "figures/runs_latency_ms_median.png", "figures/equivalence.svg"):
        assert (d / name).is_file(), name


def test_runs_figure_holds_every_run_and_the_median(quick_report):
    rep, runs, _ = quick_report
    panels = {p["cell_id"]: p for p in _figure(rep, "runs_latency_ms_median").data["panels"]}
    assert set(panels) == {"diffusers-cpu-fp32", "diffusers-cpu-bf16", "mlx-cpu-fp32"}
    for cell, panel in panels.items():
        mine = sorted((r["run_index"], r["latency_ms_median"]) for r in runs if r["cell_id"] == cell)
        assert panel["runs"] == mine
        assert panel["median"] == pytest.approx(sorted(v for _, v in mine)[1])


def test_energy_figures_follow_what_the_host_measured(quick_report):
    rep, runs, _ = quick_report
    f = _figure(rep, "latency_vs_energy")
    if all(r.get("energy_per_step_j") is None for r in runs):
        reason = rep.summary.energy_unavailable_reason
        assert f.skipped == f"no cell has energy ({again(reason)})" and f.files == []
    else:
        assert {p["cell_id"] for p in f.data["points"]} == {"diffusers-cpu-fp32", "diffusers-cpu-bf16", "mlx-cpu-fp32"}


def test_equivalence_figure_and_the_baseline_comparison(quick_report):
    rep, runs, _ = quick_report
    eq = {c["cell_id"]: c for c in _figure(rep, "equivalence").data["cells"]}
    for cell, c in eq.items():
        assert sorted(c["cosine"]) == sorted((r["run_index"], r["cosine"]) for r in runs if r["cell_id"] == cell)
        assert sorted(c["mse"]) == sorted((r["run_index"], r["mse"]) for r in runs if r["cell_id"] == cell)
    # examples/quick.toml names the fp32 cell as the baseline
    latency = {c.other: c for c in rep.summary.comparisons if c.metric == "latency"}
    assert set(latency) == {"diffusers-cpu-bf16", "mlx-cpu-fp32"}  # every other cell against the baseline
    lat = latency["diffusers-cpu-bf16"]
    assert lat.baseline == "diffusers-cpu-fp32"
    fp32 = sorted(r["latency_ms_median"] for r in runs if r["cell_id"] == "diffusers-cpu-fp32")
    bf16 = sorted(r["latency_ms_median"] for r in runs if r["cell_id"] == "diffusers-cpu-bf16")
    assert lat.ratio_of_medians == pytest.approx(bf16[1] / fp32[1])
    assert lat.test is not None and lat.test.method == "exact" and lat.verdict.startswith("undecided: 3 vs 3 runs")


def test_compare_cli_on_the_real_session(quick_report):
    _, _, d = quick_report
    p = cli("compare", f"{d}:diffusers-cpu-fp32", f"{d}:diffusers-cpu-bf16")
    assert p.returncode == 0, p.stderr
    assert "latency: diffusers-cpu-bf16 vs diffusers-cpu-fp32: undecided" in p.stdout


def test_the_time_budget_accounts_for_every_run(quick_report):
    rep, runs, d = quick_report
    every, *cells = rep.summary.time_budget
    assert every.scope == "all runs" and every.runs == len(runs) == 9
    assert every.wall_s == pytest.approx(sum(r["wall_s"] for r in runs))
    assert [c.scope for c in cells] == [c.cell_id for c in rep.summary.cells]
    assert every.session_wall_s is not None and every.session_wall_s >= every.wall_s  # the references too
    assert '<h2 id="time-budget">' in (d / "report.html").read_text()
