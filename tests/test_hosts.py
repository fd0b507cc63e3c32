"""Each run's host and the between-host / within-host split of a cell's spread, against values
computed by hand (one-way random effects from the ANOVA mean squares; an exact permutation test)."""

from __future__ import annotations

import json

import pytest
from conftest import REPO, cli

from orchestrator.results.hosts import host_spread, run_host
from orchestrator.results.records import RunRecord, SessionRecord


def test_two_hosts_of_three_runs_split_as_computed_by_hand_but_cannot_decide():
    s = host_spread("c", "latency_ms_median", "ms", {"a": [1.0, 2.0, 3.0], "b": [4.0, 5.0, 6.0]})
    assert s is not None
    # MSB = 13.5, MSW = 1, n0 = 3: between variance (13.5 - 1) / 3
    assert s.within_sd == pytest.approx(1.0)
    assert s.between_sd == pytest.approx((12.5 / 3) ** 0.5)
    assert s.between_share == pytest.approx((12.5 / 3) / (12.5 / 3 + 1))
    assert [(h.host, h.n, h.median) for h in s.hosts] == [("a", 3, 2.0), ("b", 3, 5.0)]
    # the observed split and its mirror are the 2 most extreme of 20: p = 0.1, as small as 3 against 3 allows
    assert s.p == pytest.approx(0.1) and s.method == "exact (20 assignments)"
    assert s.host_effect == "undecided" and "too few runs per host for p < 0.05" in s.verdict


def test_a_host_effect_beyond_the_noise_is_decided_and_equal_hosts_are_not_distinguishable():
    apart = host_spread("c", "energy_per_step_j", "J", {"a": [1.0, 2.0, 3.0, 4.0], "b": [5.0, 6.0, 7.0, 8.0]})
    assert apart is not None and apart.p == pytest.approx(2 / 70)
    assert apart.host_effect == "larger than run-to-run noise"
    assert apart.verdict.startswith("host effect larger than run-to-run noise (p = 0.029")
    same = host_spread("c", "energy_per_step_j", "J", {"a": [1.0, 2.0, 3.0, 4.0], "b": [4.0, 3.0, 2.0, 1.0]})
    assert same is not None and same.p == pytest.approx(1.0) and same.between_sd == 0.0
    assert same.host_effect == "not distinguishable"


def test_one_host_or_one_run_per_host_gives_no_test():
    assert host_spread("c", "m", "ms", {"a": [1.0, 2.0], "b": []}) is None
    lone = host_spread("c", "m", "ms", {"a": [1.0], "b": [2.0]})
    assert lone is not None and lone.p is None and lone.verdict.startswith("undecided: one ok run per host")


def test_many_runs_use_seeded_random_permutations():
    a, b, c = [float(i) for i in range(8)], [float(i) + 0.5 for i in range(8)], [float(i) + 10 for i in range(8)]
    s = host_spread("c", "m", "ms", {"a": a, "b": b, "c": c})
    assert s is not None and s.method == "random permutations (20000, seed 0)" and s.p is not None and s.p < 0.001
    assert host_spread("c", "m", "ms", {"a": a, "b": b, "c": c}) == s  # the same every time


def test_runs_after_a_resume_on_another_machine_belong_to_that_machine():
    vm = {"hostname": "vm", "gpus": ["H100, GPU-1"]}
    session = SessionRecord(session_id="s", provenance={"host": vm},
                            resumes=[{"at": "2026-01-01T01:00:00+00:00", "host": {"hostname": "vm", "gpus": ["H100, GPU-2"]}},
                                     {"at": "2026-01-01T02:00:00+00:00", "host": vm}])
    at = ["2026-01-01T00:30:00+00:00", "2026-01-01T01:30:00+00:00", "2026-01-01T02:30:00+00:00"]
    runs = [RunRecord(session_id="s", cell_id="c", run_index=i, started_at=t) for i, t in enumerate(at)]
    assert [run_host(r, session) for r in runs] == ["vm", "vm#2", "vm"]
    assert run_host(RunRecord(session_id="s", cell_id="c", run_index=9, host="mac-b"), session) == "mac-b"


@pytest.mark.slow
def test_the_h100_study_resumed_on_three_machines_reports_them_as_docs_reports_md_says(tmp_path):
    p = cli("report", str(REPO / "docs" / "results" / "2026-11-27-h100-sd15-cuda"), "--out", str(tmp_path),
            "--format", "json")
    assert p.returncode == 0, p.stderr
    summary = json.loads(p.stdout)
    assert summary["hosts"] == ["vm", "unknown host", "vm#2", "vm#3"]
    spread = {(x["cell_id"], x["metric"]): x for x in summary["host_spreads"]}
    compiled = spread["diffusers-cuda-fp16-compile", "energy_per_step_j"]
    assert compiled["p"] == pytest.approx(0.0048, abs=5e-5) and compiled["host_effect"] == "larger than run-to-run noise"
    assert (compiled["between_sd"], compiled["within_sd"]) == (pytest.approx(0.058, abs=5e-4), pytest.approx(0.017, abs=5e-4))
    assert spread["diffusers-cuda-fp16-compile-ro", "energy_per_step_j"]["p"] == pytest.approx(0.019, abs=5e-4)
    assert spread["diffusers-cuda-bf16", "latency_ms_median"]["p"] == pytest.approx(0.038, abs=5e-4)
    assert {k for k, x in spread.items() if x["host_effect"] == "larger than run-to-run noise"} == {
        ("diffusers-cuda-fp16-compile", "energy_per_step_j"), ("diffusers-cuda-fp16-compile-ro", "energy_per_step_j"),
        ("diffusers-cuda-bf16", "latency_ms_median")}
