"""The typed results records: what the results store reads and writes, and the field tables of
docs/results-format.md, which must be what the definitions say."""

import dataclasses
import json

import pytest

from orchestrator.errors import UserError
from orchestrator.results.fields_doc import DOC, TABLES, render
from orchestrator.results.flags import FLAGS
from orchestrator.results.records import SCHEMA_VERSION, RunRecord, SessionRecord
from orchestrator.results.store import SessionDir
from orchestrator.results.summary import CellSummary


def test_results_format_doc_matches_the_definitions():
    text = DOC.read_text()
    assert render(text) == text, "run: uv run python -m orchestrator.results.fields_doc"
    for name in TABLES:
        assert f"<!-- fields: {name} -->" in text, name


def test_every_flag_has_its_summary_field_and_every_runs_field_its_flag():
    cell_fields = {f.name for f in dataclasses.fields(CellSummary)}
    assert {f.field for f in FLAGS} <= cell_fields
    runs_fields = {n for n in cell_fields if n.endswith("_runs") and n != "n_runs"}
    assert runs_fields == {f.field for f in FLAGS}


def _run(**fields):
    return RunRecord(session_id="s", cell_id="gpu", run_index=0, status="ok", **fields)


def test_runs_round_trip_and_a_bad_line_is_named_by_file_line_and_field(tmp_path):
    sdir = SessionDir(tmp_path)
    sdir.append_run(_run(latency_ms_median=10.0, energy_by_channel={"gpu": {"energy_per_step_j": 1.0}}))
    with open(tmp_path / "runs.jsonl", "a") as f:
        f.write(json.dumps({"session_id": "s", "cell_id": "gpu", "run_index": 1, "status": "ok", "iterations": 2.5}) + "\n")
        f.write(json.dumps({"session_id": "s", "cell_id": "gpu", "run_index": 2, "status": "done"}) + "\n")
        f.write(json.dumps({"session_id": "s", "cell_id": "gpu", "run_index": 3, "status": "ok", "colour": "red"}) + "\n")
    runs = sdir.read_runs()
    assert runs.records == [_run(latency_ms_median=10.0, energy_by_channel={"gpu": {"energy_per_step_j": 1.0}})]
    path = tmp_path / "runs.jsonl"
    assert runs.problems == [
        f"{path}:2: field iterations: expected an integer or null, got 2.5; not a run record, line skipped",
        f"{path}:3: field status: 'done' is not one of ok, failed, unsupported; not a run record, line skipped",
        f"{path}:4: field colour: unknown; not a run record, line skipped",
    ]


def test_a_version_1_record_is_upgraded_and_a_newer_one_refused(tmp_path):
    lines = [{"schema_version": 1, "session_id": "s", "cell_id": "gpu", "run_index": 0, "status": "ok"},
             {"schema_version": SCHEMA_VERSION + 1, "session_id": "s", "cell_id": "gpu", "run_index": 1, "status": "ok"}]
    (tmp_path / "runs.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    runs = SessionDir(tmp_path).read_runs()
    assert [r.schema_version for r in runs.records] == [SCHEMA_VERSION]
    assert len(runs.problems) == 1 and "written by a newer harness" in runs.problems[0]


def test_session_round_trips_and_a_bad_one_is_one_line(tmp_path):
    sdir = SessionDir(tmp_path)
    session = SessionRecord(session_id="s", status="complete", order_seed=7, cells=[{"id": "gpu"}])
    sdir.write_session(session)
    assert sdir.read_session() == session
    (tmp_path / "session.json").write_text(json.dumps({"session_id": "s", "cells": {"gpu": {}}}))
    with pytest.raises(UserError, match=r"session.json: field cells: expected a list, got"):
        sdir.read_session()
    (tmp_path / "session.json").write_text(json.dumps({"session_id": "s", "schema_version": SCHEMA_VERSION + 1}))
    with pytest.raises(UserError, match="written by a newer harness"):
        sdir.read_session()


def test_a_fleet_run_tried_again_after_its_node_was_lost_supersedes_the_lost_attempt(tmp_path):
    def run(**fields):
        return RunRecord(**{"session_id": "s", "cell_id": "gpu", "run_index": 0, "status": "ok", **fields})

    sdir = SessionDir(tmp_path)
    lost = run(status="failed", attempt=1, node_lost=True, host="vm/node-1", failure_reason="node lost")
    sdir.append_run(lost)
    sdir.append_run(run(attempt=2, host="vm/node-2", latency_ms_median=5.0))
    sdir.append_run(run(run_index=1, status="failed", attempt=1, host="vm/node-2", failure_reason="worker crashed"))
    sdir.append_run(run(run_index=1, attempt=2, host="vm/node-2"))  # not after a lost node: recorded twice
    runs = sdir.read_runs()
    assert [(r.run_index, r.attempt, r.host) for r in runs.records] == [(0, 2, "vm/node-2"), (1, 2, "vm/node-2")]
    assert runs.superseded == [lost]
    assert len(runs.problems) == 1 and "gpu run 1 recorded twice" in runs.problems[0]
