"""The reference study (`matrix.toml`, its seven cells) rehearsed end to end on Linux, with
stand-ins only at the operating-system boundary: powermetrics replays a real capture (samples
timed by their arrival, as on a Mac), pmset prints real captures, and in the workers
(tests/fakes/mac/sitecustomize.py) MPS and Metal compute on the CPU device and the Core ML
compiler and runtime are stand-ins whose `predict` checks its inputs against the converted
model's spec. The matrix, envs, conversion, verification, workers, protocol, meter, energy
arithmetic, statistics, report, figures and comparisons are the real code. The model is the
synthetic `tiny` UNet at 64x64 with 2 runs of 3 iterations a cell, so the rehearsal takes minutes;
every cell keeps its backend, env, converter, compute unit, attention, precision and palettization."""

import json
import re
import sys

import pytest
from conftest import PMSET_CAPTURES, REPO, cli, only_session

pytestmark = [pytest.mark.coreml, pytest.mark.slow]

CELLS = ["apple-ane-fp16", "ours-ane-fp16", "ours-ane-w4", "apple-gpu-fp16", "ours-gpu-fp16", "diffusers-mps-fp16",
         "mlx-gpu-fp16"]
APPLE = {"apple-ane-fp16", "apple-gpu-fp16"}
COREML = {"ours-ane-fp16", "ours-ane-w4", "ours-gpu-fp16"}
TINY = '''[model]
source = "synthetic"
preset = "tiny"
seed = 0
sha256 = "3e35badb1a7d322f44352cd6cf1b21a25ebb2a91e0c08a0c2a059b34c7c095fb"
'''
PINS_64 = ('"64" = { latent = "44d0f3786e9dad8f63d582b42dd794f1b22f1c0aa53d87bade0fbc20ad4c2e12", '
           'text_embedding = "3c4de1f873c6bdf3c6d8f646180e58014e05e2f722daa94b5549b11d8d5a3df5" }')


def rehearsal_matrix(path):
    """matrix.toml with the tiny model at 64x64 and a short schedule; cells and groups untouched."""
    text = (REPO / "matrix.toml").read_text()
    text = re.sub(r"\[model\]\n(.*\n)*?\n", TINY + "\n", text, count=1)
    text = re.sub(r'^"512" = .*$', PINS_64, text, flags=re.M)
    for old, new in (("resolution = 512", "resolution = 64"), ("iterations = 10", "iterations = 3"),
                     ("runs = 7", "runs = 2"), ("cooldown_s = 30", "cooldown_s = 0"),
                     ("interval_ms = 100", "interval_ms = 50"), ("baseline_s = 2", "baseline_s = 0.5"),
                     ("load_margin = 0.5 ", "load_margin = 2.0 "), ("load_settle_max_s = 60", "load_settle_max_s = 1")):
        assert old in text, old
        text = text.replace(old, new)
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def study(env_python, cache_dir, tmp_path_factory):
    for env in ("diffusers", "mlx", "coreml-ct9"):
        env_python(env)
    tmp = tmp_path_factory.mktemp("rehearsal")
    fakes = REPO / "tests" / "fakes"
    for name, script in (("powermetrics", "powermetrics_replay.py"), ("pmset", "pmset_replay.py")):
        (tmp / name).write_text(f'#!/bin/sh\nexec "{sys.executable}" "{fakes / script}" "$@"\n')
        (tmp / name).chmod(0o755)
    env = {
        "CDB_CACHE_DIR": str(cache_dir), "CDB_FAKE_MAC": "1", "PYTHONPATH": str(fakes / "mac"),
        "CDB_POWERMETRICS": str(tmp / "powermetrics"),
        "CDB_REPLAY_FILE": str(REPO / "tests" / "fixtures" / "powermetrics" / "m4-plist-1sample-thermal.plist"),
        "CDB_PMSET": str(tmp / "pmset"), "CDB_PMSET_BATT": str(PMSET_CAPTURES / "batt-ac-charged-intel-mbp.txt"),
        "CDB_PMSET_SETTINGS": str(PMSET_CAPTURES / "g-currently-in-use-lowpowermode0-m3.txt"),
        "CDB_PMSET_THERM": str(PMSET_CAPTURES / "therm-no-warning-apple-silicon.txt"),
    }
    p = cli(str(rehearsal_matrix(tmp / "matrix.toml")), "--out", str(tmp / "results"), env=env, timeout=1500)
    d = only_session(tmp / "results")
    runs = [json.loads(line) for line in (d / "runs.jsonl").read_text().splitlines()]
    return p, d, runs, json.loads((d / "summary.json").read_text())


def test_all_seven_cells_run_in_matrix_order_with_their_backends(study):
    p, d, runs, summary = study
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert [c["cell_id"] for c in summary["cells"]] == CELLS
    by = {c["cell_id"]: c for c in summary["cells"]}
    for cid in APPLE:  # envs/coreml-apple has no lock without GitHub: unsupported, with that reason
        assert by[cid]["n_unsupported"] >= 1 and "no uv.lock yet" in by[cid]["unsupported_reason"]
    for cid in COREML | {"diffusers-mps-fp16", "mlx-gpu-fp16"}:
        assert (by[cid]["n_ok"], by[cid]["n_failed"]) == (2, 0), (cid, by[cid]["failures"])
    ok = [r for r in runs if r["status"] == "ok"]
    assert len({r["worker_pid"] for r in ok}) == len(ok) == 10  # a fresh worker per run
    for r in ok:
        assert r["meter"] == "powermetrics" and set(r["energy_by_channel"]) == {"cpu", "gpu", "ane", "total"}
        assert r["energy_per_step_j"] is not None and r["throttled"] is False
    realized = {r["cell_id"]: r["realized"] for r in ok}
    assert realized["mlx-gpu-fp16"]["gpu_backend"] == "metal"
    assert {realized[c]["compute_unit"] for c in COREML} == {"CPU_AND_NE", "CPU_AND_GPU"}
    assert realized["ours-ane-w4"]["palettization"] == "w4"
    session = json.loads((d / "session.json").read_text())
    assert session["preflight"]["power"]["source"] == "AC Power"  # pmset's real capture, parsed


def test_the_coreml_runtime_got_inputs_matching_the_converted_spec(study):
    """The stand-in's predict raises on any input that does not fit the spec; the runs are ok, so
    every input fitted, and its output (not the UNet's) is flagged divergent, as it must be."""
    _, _, runs, summary = study
    for r in runs:
        if r["cell_id"] in COREML:
            spec = r["conversion"]["spec"]
            assert spec["inputs"]["encoder_hidden_states"]["shape"] == [2, 77, 768]
            assert r["numerically_divergent"] is True
            assert r["conversion"]["steps"]["compile_s"] is not None or r["conversion"]["cache_hit"]
    by = {c["cell_id"]: c for c in summary["cells"]}
    assert by["diffusers-mps-fp16"]["numerically_divergent"] is False
    assert by["mlx-gpu-fp16"]["numerically_divergent"] is False


def test_the_report_has_the_reference_studys_shape(study):
    _, d, _, summary = study
    md = (d / "report.md").read_text()
    rows = [ln for ln in md.splitlines() if ln.startswith("| ") and ln.split("|")[1].strip() in CELLS]
    assert [ln.split("|")[1].strip() for ln in rows[:7]] == CELLS  # the cell table: seven rows
    assert "energy J/step" in md and "estimate" in md and "50 x the energy per step" in md
    for c in summary["cells"]:
        if c["n_ok"]:
            assert c["latency_ms_p10"] <= c["latency_ms_median"] <= c["latency_ms_p90"]
            assert c["energy_per_step_j_p10"] <= c["energy_per_step_j"] <= c["energy_per_step_j_p90"]
            assert c["estimated_energy_per_50_step_image_j"] == pytest.approx(50 * c["energy_per_step_j"])
    cmp = summary["comparisons"]
    assert {c["other"] for c in cmp} == {"ours-ane-fp16", "ours-ane-w4", "ours-gpu-fp16", "mlx-gpu-fp16"}
    assert all(c["baseline"] == "diffusers-mps-fp16" and c["verdict"] for c in cmp)
    assert all(f["skipped"] is None for f in summary["figures"])
    html = (d / "report.html").read_text()
    assert 'id="group-ratios"' in html and "<h2>Comparisons</h2>" in html


def test_the_headline_is_stated_as_group_ratios_between_real_cells(study):
    _, d, _, summary = study
    by = {c["cell_id"]: c for c in summary["cells"]}
    latency = [r for r in summary["group_ratios"] if r["metric"] == "latency" and r["against"] == "gpu"]
    assert sorted(r["cell"] for r in latency) == ["ours-ane-fp16", "ours-ane-w4"]
    for r in latency:
        assert r["missing"] == ["apple-gpu-fp16"] and r["n_against"] == 3
        ratios = {g: by[r["cell"]]["latency_ms_median"] / by[g]["latency_ms_median"]
                  for g in ("ours-gpu-fp16", "diffusers-mps-fp16", "mlx-gpu-fp16")}
        assert (r["lowest"]["cell"], r["highest"]["cell"]) == (min(ratios, key=ratios.get), max(ratios, key=ratios.get))
        assert r["lowest"]["ratio"] == pytest.approx(min(ratios.values()))
        assert r["statement"] in (d / "report.md").read_text()
    p = cli("compare", f"{d}:gpu", f"{d}:ane", "--format", "json")
    assert p.returncode == 0, p.stderr
    assert {(r["cell"], r["metric"]) for r in json.loads(p.stdout)} >= {("ours-ane-fp16", "latency"), ("ours-ane-w4", "latency")}
