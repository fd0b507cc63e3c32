"""`orchestrate check` estimates a study's duration from a previous session's time budget: the
committed H100 study (docs/results/2026-11-27-h100-sd15-cuda, 35 runs, 1746 s of run wall
time) stands as the previous session of examples/sd15-cuda.toml."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import REPO, cli

from orchestrator.config.matrix import load_matrix
from orchestrator.errors import UserError
from orchestrator.results.estimate import estimate_lines, latest_estimate

H100 = REPO / "docs" / "results" / "2026-11-27-h100-sd15-cuda"
SD15 = REPO / "examples" / "sd15-cuda.toml"
ENVS = {"diffusers"}
CELLS = ["diffusers-cuda-fp16", "diffusers-cuda-bf16", "diffusers-cuda-fp32", "diffusers-cuda-fp16-compile",
         "diffusers-cuda-fp16-compile-ro"]


def _planned(runs: int = 7, cells: list[str] = CELLS) -> dict[str, int]:
    return dict.fromkeys(cells, runs)


def _variant(tmp_path: Path, old: str, new: str) -> Path:
    text = SD15.read_text()
    assert old in text
    path = tmp_path / "variant.toml"
    path.write_text(text.replace(old, new))
    return path


def _copy(tmp_path: Path, name: str = "20261127T074558Z-fae2") -> Path:
    """The study's records only (session.json, runs.jsonl): what the estimate reads."""
    d = tmp_path / "results" / name
    d.mkdir(parents=True)
    for f in ("session.json", "runs.jsonl"):
        shutil.copy(H100 / f, d / f)
    return d


def test_the_same_matrix_is_estimated_cell_by_cell_from_the_study():
    lines = estimate_lines(load_matrix(SD15, ENVS), _planned(), H100)
    assert lines[0].startswith(f"estimate from session 20261127T074558Z-fae2 ({H100}, the same matrix)")
    assert "  diffusers-cuda-fp16             7 x 33.4 s = 3 min 54 s" in lines
    assert "  diffusers-cuda-fp16-compile     7 x 74.9 s = 8 min 45 s" in lines
    assert lines[-1] == "  total: 29 min 06 s, plus the idle-power window, the fork servers' imports, the references and the waits between runs"  # 1745.7 s


def test_more_runs_scale_each_cell():
    lines = estimate_lines(load_matrix(SD15, ENVS), _planned(runs=14), H100)
    assert lines[-1] == "  total: 58 min 11 s, plus the idle-power window, the fork servers' imports, the references and the waits between runs"  # 2 x 1745.7 s


def test_a_cell_the_study_did_not_run_falls_back_to_the_bounds(tmp_path):
    path = _variant(tmp_path, 'id = "diffusers-cuda-fp32"', 'id = "diffusers-cuda-fp32-new"')
    cells = [c if c != "diffusers-cuda-fp32" else "diffusers-cuda-fp32-new" for c in CELLS]
    lines = estimate_lines(load_matrix(path, ENVS), _planned(cells=cells), H100)
    assert "another matrix" in lines[0]
    assert any(ln.startswith("  diffusers-cuda-fp32-new") and "(not in that session: the matrix's bounds)" in ln
               for ln in lines)
    assert lines[-1].startswith("  total: ") and " to " in lines[-1]


def test_a_cell_defined_differently_is_not_estimated_from_its_namesake(tmp_path):
    path = _variant(tmp_path, 'compile = "reduce-overhead"', 'compile = "max-autotune"')
    lines = estimate_lines(load_matrix(path, ENVS), _planned(), H100)
    assert any(ln.startswith("  diffusers-cuda-fp16-compile-ro") and "defined differently there" in ln for ln in lines)


def test_damaged_lines_of_runs_are_skipped_and_said(tmp_path):
    d = _copy(tmp_path)
    with open(d / "runs.jsonl", "a") as f:
        f.write("{not json\n")
    lines = estimate_lines(load_matrix(SD15, ENVS), _planned(), d)
    assert "1 damaged line(s) of runs.jsonl skipped" in lines[0]


@pytest.mark.parametrize(("damage", "says"), [
    ("missing", "no such folder"),
    ("no-session", "no session.json; not a session folder to estimate from"),
    ("bad-json", "session.json: not valid JSON"),
    ("no-runs", "no run of this matrix's cells with a wall time in session 20261127T074558Z-fae2"),
])
def test_a_folder_that_cannot_give_an_estimate_is_one_line(tmp_path, damage, says):
    d = _copy(tmp_path)
    if damage == "missing":
        shutil.rmtree(d)
    elif damage == "no-session":
        (d / "session.json").unlink()
    elif damage == "bad-json":
        (d / "session.json").write_text("{")
    else:
        (d / "runs.jsonl").write_text("")
    with pytest.raises(UserError) as e:
        estimate_lines(load_matrix(SD15, ENVS), _planned(), d)
    assert len(e.value.lines) == 1 and says in e.value.lines[0]


def test_another_matrix_with_none_of_its_cells_is_one_line(tmp_path):
    with pytest.raises(UserError) as e:
        estimate_lines(load_matrix(REPO / "examples" / "quick.toml", {"diffusers", "mlx"}),
                       {"diffusers-cpu-fp32": 3}, H100)
    assert len(e.value.lines) == 1 and "(it ran diffusers-cuda-fp16, diffusers-cuda-bf16" in e.value.lines[0]


def test_the_newest_session_of_the_same_matrix_is_found_under_the_results_folder(tmp_path):
    older = _copy(tmp_path)
    (tmp_path / "results" / "20261201T000000Z-zzzz").mkdir()  # newer, but not a session: passed over
    lines = latest_estimate(load_matrix(SD15, ENVS), _planned(), tmp_path / "results")
    assert lines and f"({older}, the same matrix)" in lines[0]
    assert latest_estimate(load_matrix(SD15, ENVS), _planned(), tmp_path / "nothing-here") == []


def test_check_prints_the_estimate_and_a_bad_from_is_one_error_line(tmp_path):
    p = cli("check", str(SD15), "--from", str(H100), "--out", str(tmp_path / "results"))
    assert p.returncode == 0, p.stderr
    assert "estimate from session 20261127T074558Z-fae2" in p.stdout + p.stderr
    assert "total: 29 min 06 s" in p.stdout + p.stderr
    p = cli("check", str(SD15), "--from", str(tmp_path / "nope"), "--out", str(tmp_path / "results"))
    assert p.returncode == 2
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert errors == [f"error: --from {tmp_path / 'nope'}: no such folder"] and "Traceback" not in p.stderr
