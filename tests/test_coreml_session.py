"""Core ML cells on this Linux host: every converter converts the synthetic `tiny` UNet (fp16
and w4) in the worker's load, the spec checks pass, the cell is recorded `unsupported` with the
reason and the conversion facts, the diffusers cell beside them runs, and a second session takes
every model from the conversion cache."""

import hashlib
import json
import subprocess

import pytest
from conftest import REPO, cli

from orchestrator.config.envs import Env

pytestmark = pytest.mark.coreml

MATRIX = REPO / "tests" / "fixtures" / "matrices" / "coreml-tiny.toml"
PROBE = REPO / "tests" / "fakes" / "coreml_probe.py"
COREML_CELLS = {  # cell -> (env, converter, palettization)
    "harness-ct8-ane-fp16": ("coreml-ct8", "harness", None),
    "harness-ct8-ane-w4": ("coreml-ct8", "harness", "w4"),
    "harness-ct9-ane-fp16": ("coreml-ct9", "harness", None),
    "harness-ct9-ane-w4": ("coreml-ct9", "harness", "w4"),
    "ours-ane-fp16": ("coreml-ct9", "coreml-diffusion", None),
    "ours-ane-w4": ("coreml-ct9", "coreml-diffusion", "w4"),
}
COREMLTOOLS = {"coreml-ct8": "8.3.0", "coreml-ct9": "9.0"}


def _session(out, cache):
    p = cli("run", str(MATRIX), "--out", str(out), env={"CDB_CACHE_DIR": str(cache)}, timeout=1500)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    (sdir,) = list(out.iterdir())
    runs = [json.loads(line) for line in (sdir / "runs.jsonl").read_text().splitlines()]
    return {"runs": runs, "summary": json.loads((sdir / "summary.json").read_text()),
            "report": (sdir / "report.md").read_text(),
            "cache_files": {str(f.relative_to(cache)): (_inode(f), hashlib.sha256(f.read_bytes()).hexdigest())
                            for f in (cache / "coreml").rglob("*") if f.is_file() and ".lock" not in f.name}}


def _inode(f):
    """A cached file's inode, which a conversion would change; not Manifest.json's: coremltools
    writes an opened package's manifest again (same bytes) through a new file, whose inode is
    the old one only when the filesystem happens to reuse it."""
    return None if f.name == "Manifest.json" else f.stat().st_ino


@pytest.fixture(scope="module")
def sessions(env_python, tmp_path_factory):
    for env in ("diffusers", "coreml-ct8", "coreml-ct9"):
        env_python(env)
    cache = tmp_path_factory.mktemp("coreml-cache")
    first = _session(tmp_path_factory.mktemp("first"), cache)
    second = _session(tmp_path_factory.mktemp("second"), cache)
    return first, second, cache


def _by_cell(runs):
    out = {}
    for r in runs:
        out.setdefault(r["cell_id"], []).append(r)
    return out


def test_the_other_cells_run_and_the_coreml_cells_are_unsupported_with_their_conversion(sessions):
    first, _, _ = sessions
    cells = _by_cell(first["runs"])
    assert [r["status"] for r in cells["diffusers-cpu-fp32"]] == ["ok", "ok"]
    for cell, (env, converter, palettization) in COREML_CELLS.items():
        assert len(cells[cell]) == 2
        for r in cells[cell]:
            assert r["status"] == "unsupported"
            assert r["failure_reason"].startswith("Core ML prediction needs macOS"), r["failure_reason"]
            c = r["conversion"]
            assert c["key_fields"]["converter"] == converter and c["key_fields"]["coremltools"] == COREMLTOOLS[env]
            assert c["request"]["palettization"] == palettization and c["request"]["resolution"] == 64
        assert cells[cell][0]["worker_pid"] is not None  # the first run's worker converted and verified


def test_the_spec_checks_hold_for_every_converter(sessions):
    first, _, _ = sessions
    cells = _by_cell(first["runs"])
    for cell, (_, converter, palettization) in COREML_CELLS.items():
        spec = cells[cell][0]["conversion"]["spec"]
        in_dtype = "float16" if converter == "coreml-diffusion" else "float32"
        assert spec["inputs"] == {"sample": {"shape": [2, 4, 8, 8], "dtype": in_dtype},
                                  "timestep": {"shape": [2], "dtype": in_dtype},
                                  "encoder_hidden_states": {"shape": [2, 77, 768], "dtype": in_dtype}}
        assert spec["outputs"] == {"noise_pred": {"shape": [2, 4, 8, 8], "dtype": "float32"}}
        w = spec["weights"]
        if palettization:
            assert w["lut_ops"] > 0 and w["max_palette_entries"] == 16 and w["large_dense_fp16"] == 0
        else:
            assert w["lut_ops"] == 0 and w["large_dense_fp16"] > 0 and w["large_dense_fp32"] == 0


def test_w4_weights_are_under_a_third_of_fp16(sessions):
    first, _, _ = sessions
    facts = {r["cell_id"]: r["conversion"] for r in first["runs"] if r.get("conversion")}
    for fp16, w4 in (("harness-ct8-ane-fp16", "harness-ct8-ane-w4"), ("harness-ct9-ane-fp16", "harness-ct9-ane-w4"),
                     ("ours-ane-fp16", "ours-ane-w4")):
        assert facts[w4]["weight_bytes"] < facts[fp16]["weight_bytes"] / 3, (w4, facts[w4]["weight_bytes"])
        assert facts[w4]["package_bytes"] < facts[fp16]["package_bytes"]
        assert facts[w4]["bits_per_weight"] < 5 < 16 <= facts[fp16]["bits_per_weight"]


def test_each_model_is_converted_once_and_its_steps_are_timed(sessions):
    first, _, cache = sessions
    facts = {r["cell_id"]: r["conversion"] for r in first["runs"] if r.get("conversion")}
    assert len({f["key"] for f in facts.values()}) == len(COREML_CELLS)
    assert sorted(p.name for p in (cache / "coreml").iterdir() if p.is_dir() and not p.name.startswith(".")) == \
        sorted(f["key"] for f in facts.values())
    bases = {f["steps"].get("base_key") for f in facts.values()}
    for cell, f in facts.items():
        # a harness fp16 model may already be in the cache as the base its w4 cell palettized
        assert f["cache_hit"] is False or f["key"] in bases, cell
        steps = f["steps"]
        if COREML_CELLS[cell][1] == "harness" and not COREML_CELLS[cell][2]:
            assert steps["trace_s"] > 0 and steps["convert_s"] > 0 and steps["palettize_s"] is None
        elif COREML_CELLS[cell][1] == "harness":
            assert steps["palettize_s"] > 0 and steps["convert_s"] is None
        else:
            assert steps["convert_s"] > 0
        assert steps["compile_s"] is None  # compiling needs macOS
    assert "## Core ML conversions" in first["report"]


def test_a_second_session_takes_every_model_from_the_cache(sessions):
    first, second, _ = sessions
    keys = {r["cell_id"]: r["conversion"]["key"] for r in first["runs"] if r.get("conversion")}
    again = {r["cell_id"]: r["conversion"] for r in second["runs"] if r.get("conversion")}
    assert {c: f["key"] for c, f in again.items()} == keys
    for cell, f in again.items():
        assert f["cache_hit"] is True, cell
    # a hit converts nothing: every file of every entry is the one the first session wrote, same inode (but
    # Manifest.json's, see _inode) and bytes; coremltools rewrites an opened package's manifest, so no mtimes
    assert second["cache_files"] == first["cache_files"]
    summary = {c["cell_id"]: c for c in second["summary"]["cells"]}
    assert all(summary[c]["conversion"]["cache_hit"] and summary[c]["conversion"]["runs_that_converted"] == []
               for c in COREML_CELLS)
    assert all(f"| {c} |" in second["report"] and "cache hit" in second["report"] for c in COREML_CELLS)


def test_an_env_without_its_lock_is_reported_not_fatal(sessions):
    first, _, _ = sessions
    runs = _by_cell(first["runs"])["apple-ane-fp16"]
    assert [r["status"] for r in runs] == ["unsupported", "unsupported"]
    assert "coreml-apple has no uv.lock" in runs[0]["failure_reason"] and "GitHub" in runs[0]["failure_reason"]
    p = cli("doctor", "--json")
    assert p.returncode == 0, p.stderr
    envs = json.loads(p.stdout)["backends"]["coreml"]["envs"]
    assert envs["coreml-apple"]["synced"] is False and "GitHub" in envs["coreml-apple"]["detail"]
    for name, converters in (("coreml-ct8", ["harness"]), ("coreml-ct9", ["harness", "coreml-diffusion"])):
        devices = envs[name]["devices"]
        assert devices["converters"] == converters and devices["predict"] is False
        assert devices["predict_detail"] == "Core ML prediction needs macOS"
    text = cli("doctor").stdout
    assert "env coreml-apple: env coreml-apple has no uv.lock" in text and "prediction: no" in text


@pytest.mark.parametrize("change, error", [
    ({}, None),
    ({"resolution": 128}, "input sample"),
    ({"palettization": "w4"}, "no palettized (LUT) weights"),
    ({"converter": "coreml-diffusion"}, "'dtype': 'float32'"),
])
def test_the_spec_check_rejects_a_model_that_is_not_the_one_asked_for(sessions, env_python, change, error):
    first, _, _ = sessions
    facts = next(r["conversion"] for r in first["runs"] if r["cell_id"] == "harness-ct9-ane-fp16")
    request = json.dumps({**facts["request"], **change})
    p = subprocess.run([str(env_python("coreml-ct9")), str(PROBE), "check", facts["package"], request],
                       capture_output=True, text=True, timeout=300, cwd=REPO, env=Env.worker_environ())
    assert p.returncode == 0, p.stderr[-2000:]
    result = json.loads(p.stdout.strip().splitlines()[-1])
    if error is None:
        assert result["ok"] is True
    else:
        assert result["ok"] is False and error in result["error"], result
