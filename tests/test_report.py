"""`orchestrate report` on a session whose per-run values are known."""

import json
import shutil

import pytest

from conftest import REPO, cli

KNOWN = REPO / "tests" / "fixtures" / "known-session"


@pytest.fixture
def known(tmp_path):
    d = tmp_path / "20260101T000000Z-known"
    shutil.copytree(KNOWN, d)
    return d


def _json_report(d):
    p = cli("report", str(d), "--format", "json")
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout), p.stderr


def test_summary_matches_hand_computed_statistics(known):
    s, _ = _json_report(known)
    cells = {c["cell_id"]: c for c in s["cells"]}
    ane = cells["ane"]
    assert ane["n_ok"] == 7 and ane["status"] == "ok"
    assert ane["latency_ms_median"] == 10.0
    assert ane["latency_ms_p10"] == pytest.approx(8.9)
    assert ane["latency_ms_p90"] == pytest.approx(10.24)
    assert ane["latency_ms_mad"] == pytest.approx(0.1)
    assert ane["outlier_runs"] == [{"run_index": 4, "value": 7.4}]
    assert ane["numerically_divergent"] is False and ane["cosine_min"] == 0.9995
    gpu = cells["gpu"]
    assert (gpu["n_ok"], gpu["n_failed"], gpu["status"]) == (4, 1, "partial")
    assert gpu["latency_ms_median"] == pytest.approx(20.25)  # median of 19, 20, 20.5, 21
    assert gpu["failures"] == [{"run_index": 3, "reason": "timeout: no result within run_timeout_s=900"}]
    assert gpu["numerically_divergent"] is True and gpu["divergent_runs"] == [1]
    assert gpu["output_sha256_distinct"] == 4
    assert cells["mlx"]["status"] == "unsupported"
    assert cells["mlx"]["unsupported_reason"] == "the MLX backend is not implemented yet"
    assert [c["cell_id"] for c in s["cells"]] == ["ane", "gpu", "mlx"]  # matrix order


def test_corrupt_line_is_named_and_skipped(known):
    s, stderr = _json_report(known)
    assert len(s["problems"]) == 1
    assert "runs.jsonl:4" in s["problems"][0] and "runs.jsonl:4" in stderr
    assert s["n_runs"] == 13


def test_report_files_are_written(known):
    p = cli("report", str(known))
    assert p.returncode == 0
    md = (known / "report.md").read_text()
    assert "| ane | coreml CPU_AND_NE fp16 | 7/0 | 10.00 [8.90–10.24] |" in md
    assert "outlier runs: run 4 (7.40 ms)" in md
    assert "DIVERGENT (runs 1)" in md
    assert "gpu run 3: timeout" in md
    assert "ane" in p.stdout  # the terminal table


def test_runs_alone_are_enough(known):
    (known / "session.json").unlink()
    s, stderr = _json_report(known)
    assert "session.json: missing" in s["problems"][0] and "session.json: missing" in stderr
    assert {c["cell_id"]: c["latency_ms_median"] for c in s["cells"]}["ane"] == 10.0


def test_records_without_identity_are_named_and_duplicates_resolved(known):
    runs = known / "runs.jsonl"
    lines = runs.read_text().splitlines()
    first = json.loads(lines[0])
    lines.append(json.dumps({**first, "latency_ms_median": 10.05}))  # ane run 0 again
    lines.append(json.dumps({"cell_id": "ane", "status": "ok", "latency_ms_median": 3.0}))  # no run_index
    runs.write_text("\n".join(lines) + "\n")
    s, _ = _json_report(known)
    assert any("runs.jsonl:15" in p and "recorded twice" in p for p in s["problems"])
    assert any("runs.jsonl:16" in p and "not a run record" in p for p in s["problems"])
    ane = next(c for c in s["cells"] if c["cell_id"] == "ane")
    assert ane["n_ok"] == 7 and ane["metrics"]["latency_ms_median"]["max"] == 10.3


def test_report_on_a_folder_that_is_not_a_session(tmp_path):
    p = cli("report", str(tmp_path))
    assert p.returncode == 2 and "not a session folder" in p.stderr
