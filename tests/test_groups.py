"""Group ratios: a matrix's `[report] groups`, each cell of one group stated against the other
group as the range of ratios of medians, each end a real cell, in the report (tables, HTML,
summary.json) and through `orchestrate compare DIR:GROUP DIR:GROUP_OR_CELL`."""

import json
import shutil

import pytest
from conftest import REPO, cli

from orchestrator.config.matrix import load_matrix
from orchestrator.errors import UserError
from orchestrator.report.write import write_report
from orchestrator.results.groups import group_ratios
from orchestrator.results.store import SessionDir

ENVS = {"diffusers", "mlx", "coreml-ct8", "coreml-ct9", "coreml-apple"}
QUICK = (REPO / "examples" / "quick.toml").read_text()
GROUPS = {"gpu": ["apple-gpu-fp16", "ours-gpu-fp16", "diffusers-mps-fp16", "mlx-gpu-fp16"],
          "ane": ["apple-ane-fp16", "ours-ane-fp16", "ours-ane-w4"]}


def test_each_end_of_the_range_is_a_real_cell_and_a_cell_without_a_median_is_named():
    energy = {"apple-gpu-fp16": 8.0, "ours-gpu-fp16": 6.0, "diffusers-mps-fp16": 12.0, "mlx-gpu-fp16": None,
              "apple-ane-fp16": 2.0, "ours-ane-fp16": 1.5, "ours-ane-w4": None}
    ratios = group_ratios(GROUPS, {"energy": energy, "latency": {}}, only=("gpu", "ane"))
    assert [r.cell for r in ratios] == ["apple-ane-fp16", "ours-ane-fp16"]  # w4 has no median: not stated
    r = ratios[0]
    assert (r.lowest.cell, r.lowest.ratio, r.highest.cell, r.highest.ratio) == ("diffusers-mps-fp16", 2.0 / 12.0,
                                                                                "ours-gpu-fp16", 2.0 / 6.0)
    assert (r.n_against, r.missing, r.unit) == (3, ["mlx-gpu-fp16"], "J")
    assert r.statement == ("apple-ane-fp16 energy against gpu: 0.1667x (diffusers-mps-fp16) to 0.3333x "
                           "(ours-gpu-fp16), i.e. 3x (ours-gpu-fp16) to 6x (diffusers-mps-fp16) less "
                           "(mlx-gpu-fp16 without a positive median)")
    both = group_ratios(GROUPS, {"energy": energy, "latency": {}})  # every ordered pair of groups
    assert {(r.group, r.against) for r in both} == {("gpu", "ane"), ("ane", "gpu")}
    slower = group_ratios(GROUPS, {"energy": {}, "latency": {**dict.fromkeys(GROUPS["gpu"], 10.0), "ours-ane-w4": 25.0}},
                          only=("gpu", "ane"))
    assert [r.statement for r in slower] == ["ours-ane-w4 latency against gpu: 2.5x (apple-gpu-fp16) to 2.5x (mlx-gpu-fp16)"]


@pytest.mark.parametrize(("groups", "error"), [
    ('a = ["diffusers-cpu-fp32", "nope"]', "[report.groups] 'a': 'nope' is not a cell of the matrix"),
    ('a = ["mlx-cpu-fp32"]\nb = ["mlx-cpu-fp32"]', "[report.groups] 'b': 'mlx-cpu-fp32' is already in group 'a'"),
    ('mlx-cpu-fp32 = ["diffusers-cpu-fp32"]', "[report.groups] 'mlx-cpu-fp32': a group cannot be named like a cell"),
    ("a = []", "[report.groups] 'a': names no cell"),
    ('a = "diffusers-cpu-fp32"', "field 'groups'"),
])
def test_groups_must_name_cells_of_the_matrix_once(tmp_path, groups, error):
    m = tmp_path / "m.toml"
    m.write_text(QUICK.replace('baseline = "diffusers-cpu-fp32"', f'baseline = "diffusers-cpu-fp32"\n[report.groups]\n{groups}'))
    with pytest.raises(UserError) as e:
        load_matrix(m, ENVS)
    assert any(error in line for line in e.value.lines), e.value.lines


def test_the_study_declares_its_two_camps(monkeypatch, tmp_path):
    ckpt = tmp_path / "v1-5.safetensors"
    ckpt.write_bytes(b"stand-in")
    monkeypatch.setenv("SD15_CHECKPOINT", str(ckpt))
    assert load_matrix(REPO / "matrix.toml", ENVS).report.groups == GROUPS


@pytest.fixture
def grouped(tmp_path):
    """The hand-made energy session (gpu: 10.0 J/step median, ane: 1.59) with groups in its matrix."""
    d = tmp_path / "20260102T000000Z-energy"
    shutil.copytree(REPO / "tests" / "fixtures" / "energy-session", d)
    session = json.loads((d / "session.json").read_text())
    session["matrix"]["content"]["report"]["groups"] = {"camp-gpu": ["gpu"], "camp-ane": ["ane"]}
    (d / "session.json").write_text(json.dumps(session))
    return d


@pytest.mark.slow
def test_the_report_states_group_ratios_in_every_form(grouped):
    write_report(SessionDir(grouped))
    summary = json.loads((grouped / "summary.json").read_text())
    energy = next(r for r in summary["group_ratios"] if r["metric"] == "energy" and r["cell"] == "ane")
    assert (energy["against"], energy["lowest"]["cell"], energy["median"], energy["lowest"]["median"]) == (
        "camp-gpu", "gpu", 1.59, 10.0)
    assert energy["statement"] == "ane energy against camp-gpu: 0.159x (gpu), i.e. 6.289x (gpu) less"
    md = (grouped / "report.md").read_text()
    assert "## Group ratios" in md and energy["statement"] in md
    html = (grouped / "report.html").read_text()
    assert 'id="group-ratios"' in html and energy["statement"] in html


@pytest.mark.slow
def test_compare_states_a_group_against_another(grouped):
    p = cli("compare", f"{grouped}:camp-gpu", f"{grouped}:camp-ane", "--format", "json")
    assert p.returncode == 0, p.stderr
    (energy,) = [r for r in json.loads(p.stdout) if r["metric"] == "energy"]
    assert (energy["cell"], energy["against"], energy["lowest"]["ratio"]) == ("ane", "camp-gpu", 1.59 / 10.0)
    p = cli("compare", f"{grouped}:camp-gpu", f"{grouped}:ane")
    assert p.returncode == 0 and "ane energy against camp-gpu: 0.159x (gpu), i.e. 6.289x (gpu) less" in p.stdout
    p = cli("compare", f"{grouped}:ane", f"{grouped}:camp-gpu")
    assert p.returncode == 2 and "A must be a group" in p.stderr and "Traceback" not in p.stderr
