"""Matrix validation: every mistake is one line naming file, section or cell, and field."""

import json
import tomllib
from pathlib import Path

import pytest
from conftest import REPO, cli

from orchestrator.config.matrix import load_matrix
from orchestrator.config.plan import describe_duration
from orchestrator.errors import UserError

ENVS = {"diffusers", "mlx", "coreml-ct8", "coreml-ct9", "coreml-apple"}
QUICK = (REPO / "examples" / "quick.toml").read_text()


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "m.toml"
    p.write_text(text)
    return p


def _errors(tmp_path, text) -> list[str]:
    with pytest.raises(UserError) as e:
        load_matrix(_write(tmp_path, text), ENVS)
    return e.value.lines


def test_quick_example_is_valid():
    m = load_matrix(REPO / "examples" / "quick.toml", ENVS)
    assert m.model.synthetic and m.model.preset == "tiny"
    assert {c.precision for c in m.enabled_cells} >= {"fp32", "bf16"}
    assert {c.backend for c in m.enabled_cells} == {"diffusers", "mlx"}
    assert all(c.device == "cpu" for c in m.enabled_cells)
    assert m.timing.runs == 3


def test_reference_study_matrix_holds_the_seven_cells(tmp_path, monkeypatch):
    ckpt = tmp_path / "v1-5.safetensors"
    ckpt.write_bytes(b"stand-in")  # validation checks the file exists; its digest is checked later
    monkeypatch.setenv("SD15_CHECKPOINT", str(ckpt))
    m = load_matrix(REPO / "matrix.toml", ENVS)
    assert m.model.source == "checkpoint" and m.model.path == ckpt
    assert m.model.sha256 == "6ce0161689b3853acaa03779ec93eafe75a02f4ced659bee03f50797806fa2fa"
    t = m.timing
    assert (t.warmup, t.iterations, t.runs, t.cooldown_s) == (1, 10, 7, 30)
    assert (m.power.interval_ms, m.power.baseline_s) == (100, 2)
    eq = m.equivalence
    assert (eq.backend, eq.device, eq.precision, eq.mse_max, eq.cosine_min) == ("diffusers", "cpu", "fp32", 1e-3, 0.999)
    cells = m.enabled_cells
    # the ids the study's published figures are labelled with, in its order
    assert [c.id for c in cells] == ["apple-ane-fp16", "ours-ane-fp16", "ours-ane-w4", "apple-gpu-fp16",
                                     "ours-gpu-fp16", "diffusers-mps-fp16", "mlx-gpu-fp16"]
    coreml = [c for c in cells if c.backend == "coreml"]
    assert sorted(c.compute_unit for c in coreml) == ["CPU_AND_GPU", "CPU_AND_GPU", "CPU_AND_NE", "CPU_AND_NE", "CPU_AND_NE"]
    assert [c.options.get("palettization") for c in coreml].count("w4") == 1
    # the study's two toolchains: Apple's converter on ct8, coreml-diffusion on ct9
    assert {(c.id, c.env, c.options["converter"]) for c in coreml} == {
        ("apple-ane-fp16", "coreml-apple", "apple"), ("apple-gpu-fp16", "coreml-apple", "apple"),
        ("ours-ane-fp16", "coreml-ct9", "coreml-diffusion"), ("ours-ane-w4", "coreml-ct9", "coreml-diffusion"),
        ("ours-gpu-fp16", "coreml-ct9", "coreml-diffusion")}
    assert {(c.backend, c.device, c.precision) for c in cells if c.backend != "coreml"} == {
        ("diffusers", "mps", "fp16"), ("mlx", "gpu", "fp16")}
    # the headline: the Neural Engine cells against the GPU camp (its GPU, MPS and MLX cells)
    assert m.report.groups == {"gpu": ["apple-gpu-fp16", "ours-gpu-fp16", "diffusers-mps-fp16", "mlx-gpu-fp16"],
                               "ane": ["apple-ane-fp16", "ours-ane-fp16", "ours-ane-w4"]}


def test_coreml_toolchains_example_compares_ct8_and_ct9_with_one_converter(tmp_path, monkeypatch):
    ckpt = tmp_path / "v1-5.safetensors"
    ckpt.write_bytes(b"stand-in")
    monkeypatch.setenv("SD15_CHECKPOINT", str(ckpt))
    cells = load_matrix(REPO / "examples" / "coreml-toolchains.toml", ENVS).enabled_cells
    assert {c.options["converter"] for c in cells} == {"harness"}
    variants = {(c.compute_unit, c.attention, c.precision, c.options.get("palettization")) for c in cells}
    assert variants == {("CPU_AND_NE", "split_einsum_v2", "fp16", None), ("CPU_AND_NE", "split_einsum_v2", "fp16", "w4"),
                        ("CPU_AND_GPU", "original", "fp16", None)}
    for v in variants:  # each variant in both toolchains
        assert sorted(c.env for c in cells if (c.compute_unit, c.attention, c.precision,
                                               c.options.get("palettization")) == v) == ["coreml-ct8", "coreml-ct9"]


def test_coreml_options_are_checked(tmp_path):
    cell = QUICK.split("[[cells]]")[0] + """
[[cells]]
id = "c"
backend = "coreml"
env = "coreml-ct9"
compute_unit = "CPU_AND_NE"
precision = "fp16"
resolution = 256
converter = "mine"
palettization = "w3"
"""
    with pytest.raises(UserError) as e:
        load_matrix(_write(tmp_path, cell), ENVS)
    assert "field 'converter': 'mine' is not one of 'harness', 'coreml-diffusion', 'apple'" in str(e.value)
    assert "field 'palettization': 'w3' is not one of 'w8', 'w6', 'w4'" in str(e.value)


def test_missing_checkpoint_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("SD15_CHECKPOINT", str(tmp_path / "absent.safetensors"))
    with pytest.raises(UserError) as e:
        load_matrix(REPO / "matrix.toml", ENVS)
    assert any("[model]" in ln and "'path'" in ln and "absent.safetensors" in ln for ln in e.value.lines)


def test_path_expansion_uses_default_when_variable_unset(tmp_path, monkeypatch):
    monkeypatch.delenv("CDB_TEST_DIR", raising=False)
    text = QUICK.replace('seed = 0\nsha256', f'seed = 0\ncache_dir = "${{CDB_TEST_DIR:-{tmp_path}/fallback}}"\nsha256', 1)
    assert load_matrix(_write(tmp_path, text), ENVS).model.cache_dir == tmp_path / "fallback"
    monkeypatch.setenv("CDB_TEST_DIR", str(tmp_path / "chosen"))
    assert load_matrix(_write(tmp_path, text), ENVS).model.cache_dir == tmp_path / "chosen"


def test_unset_variable_without_default_is_an_error(tmp_path, monkeypatch):
    monkeypatch.delenv("CDB_NOPE", raising=False)
    text = QUICK.replace('seed = 0\nsha256', 'seed = 0\ncache_dir = "${CDB_NOPE}/x"\nsha256', 1)
    (line,) = _errors(tmp_path, text)
    assert "[model]" in line and "cache_dir" in line and "CDB_NOPE" in line


@pytest.mark.parametrize("edit,needles", [
    (('precision = "bf16"', 'precision = "bf16"\nthreads = 4'), ["cell 'diffusers-cpu-bf16'", "unknown field 'threads'"]),
    (("iterations = 20", 'iterations = "twenty"'), ["[timing]", "field 'iterations'", "expected an integer", "twenty"]),
    (('id = "diffusers-cpu-bf16"', 'id = "diffusers-cpu-fp32"'), ["cell 'diffusers-cpu-fp32'", "duplicate cell id"]),
    (('backend = "diffusers"\nenv = "diffusers"\ndevice = "cpu"\nprecision = "bf16"',
      'backend = "onnx"\nenv = "diffusers"\ndevice = "cpu"\nprecision = "bf16"'), ["cell 'diffusers-cpu-bf16'", "field 'backend'", "onnx"]),
    (('env = "diffusers"\ndevice = "cpu"\nprecision = "bf16"', 'env = "torch-nightly"\ndevice = "cpu"\nprecision = "bf16"'),
     ["cell 'diffusers-cpu-bf16'", "field 'env'", "torch-nightly"]),
    (('precision = "bf16"', 'precision = "int3"'), ["cell 'diffusers-cpu-bf16'", "field 'precision'", "int3"]),
    (('device = "cpu"\nprecision = "bf16"', 'device = "tpu"\nprecision = "bf16"'), ["cell 'diffusers-cpu-bf16'", "field 'device'"]),
    (("resolution = 256\n\n[[cells]]", "resolution = 250\n\n[[cells]]"), ["cell 'diffusers-cpu-fp32'", "multiple of 8"]),
    (("[power]", "[powr]"), ["top level", "unknown section 'powr'"]),
    (("runs = 3", "runs = 0"), ["[timing]", "field 'runs'", "> 0"]),
    (('order = "interleaved"', 'order = "random"'), ["[timing]", "field 'order'"]),
    (('source = "synthetic"', 'source = "checkpoint"'), ["[model]", "field 'path' is required"]),
    (("cosine_min = 0.999", "cosine_min = true"), ["[equivalence]", "field 'cosine_min'", "expected a number"]),
])
def test_each_mistake_names_file_place_and_field(tmp_path, edit, needles):
    old, new = edit
    assert old in QUICK
    lines = _errors(tmp_path, QUICK.replace(old, new, 1))
    assert any(all(n in ln for n in needles) and str(tmp_path / "m.toml") in ln for ln in lines), lines


def test_all_mistakes_reported_at_once(tmp_path):
    text = QUICK.replace("runs = 3", "runs = -1").replace('precision = "bf16"', 'precision = "fp8"')
    assert len(_errors(tmp_path, text)) == 2


def test_toml_syntax_error_is_one_line(tmp_path):
    (line,) = _errors(tmp_path, QUICK + "\n[[cells]\n")
    assert "not valid TOML" in line


def test_cli_exits_2_without_traceback(tmp_path):
    bad = _write(tmp_path, QUICK.replace('precision = "bf16"', 'precision = "bf16"\nthreads = 4'))
    p = cli(str(bad), "--out", str(tmp_path / "results"))
    assert p.returncode == 2
    assert "Traceback" not in p.stderr
    assert f"{bad}: cell 'diffusers-cpu-bf16': unknown field 'threads'" in p.stderr
    assert not (tmp_path / "results").exists()


def test_cli_refuses_an_unknown_meter_before_anything_runs(tmp_path):
    bad = _write(tmp_path, QUICK.replace('meter = "auto"', 'meter = "wattmeter"'))
    p = cli(str(bad), "--out", str(tmp_path / "results"))
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert f"{bad}: [power]: field 'meter': 'wattmeter' is not one of auto, none, powermetrics" in p.stderr
    assert not (tmp_path / "results").exists()


def test_cli_missing_matrix_file(tmp_path):
    p = cli(str(tmp_path / "none.toml"))
    assert p.returncode == 2 and "cannot read matrix file" in p.stderr and "Traceback" not in p.stderr


def test_disabled_cells_are_not_run(tmp_path):
    text = QUICK.replace('precision = "bf16"', 'precision = "bf16"\nenabled = false')
    m = load_matrix(_write(tmp_path, text), ENVS)
    assert [c.id for c in m.enabled_cells] == ["diffusers-cpu-fp32", "mlx-cpu-fp32"]
    assert tomllib.loads(text)  # still a well-formed file


def test_backend_option_values_are_checked(tmp_path):
    lines = _errors(tmp_path, QUICK.replace('precision = "bf16"', 'precision = "bf16"\ncompile = "fast"'))
    assert any("cell 'diffusers-cpu-bf16'" in ln and "'compile'" in ln and "reduce-overhead" in ln for ln in lines)
    ok = QUICK.replace('precision = "bf16"', 'precision = "bf16"\ncompile = "reduce-overhead"')
    assert load_matrix(_write(tmp_path, ok), ENVS).cell("diffusers-cpu-bf16").options == {"compile": "reduce-overhead"}


def test_boolean_backend_options_stay_booleans(tmp_path):
    """TOML's `true` is an int to Python; an option that also takes numbers must not make it 1.0."""
    ok = QUICK.replace('resolution = 64', 'resolution = 64\ncompile = true')
    assert load_matrix(_write(tmp_path, ok), ENVS).cell("mlx-cpu-fp32").options == {"compile": True}
    lines = _errors(tmp_path, QUICK.replace('resolution = 64', 'resolution = 64\ncompile = 1'))
    assert any("cell 'mlx-cpu-fp32'" in ln and "'compile'" in ln for ln in lines)


def test_report_baseline_must_be_an_enabled_cell(tmp_path):
    assert load_matrix(REPO / "examples" / "quick.toml", ENVS).report.baseline == "diffusers-cpu-fp32"
    text = QUICK.replace('baseline = "diffusers-cpu-fp32"', 'baseline = "nope"')
    (line,) = _errors(tmp_path, text)
    assert line.startswith(f"{tmp_path / 'm.toml'}: [report]: field 'baseline': 'nope' is not an enabled cell")
    text = QUICK.replace('baseline = "diffusers-cpu-fp32"', 'baseline = "diffusers-cpu-fp32"\ncolour = "red"')
    assert "[report]: unknown field 'colour'" in _errors(tmp_path, text)[0]


def test_a_registered_backend_needs_no_edit_in_the_matrix_loader(tmp_path, monkeypatch):
    """A new backend is one registry entry: cells validate against it (devices, precisions,
    attention, options) and the schema offers it."""
    from orchestrator.config.schema import matrix_schema
    from workers.contract.backends import BACKENDS, Backend, Option

    toy = Backend("toy", "workers.backends.toy", "toy", r"cpu|npu", ("naive", "tiled"), precisions=("fp32",),
                  options={"threads": Option((1, 2, 4), "worker threads")})
    monkeypatch.setitem(BACKENDS, "toy", toy)
    cell = '\n[[cells]]\nid = "toy-npu"\nbackend = "toy"\ndevice = "npu"\nprecision = "fp32"\nresolution = 64\n'
    c = load_matrix(_write(tmp_path, QUICK + cell + "threads = 2\n"), {*ENVS, "toy"}).cell("toy-npu")
    assert (c.env, c.attention, c.options) == ("toy", "naive", {"threads": 2})
    lines = _errors(tmp_path, QUICK + cell.replace('"npu"', '"gpu"').replace('"fp32"\n', '"fp16"\n') + "threads = 3\n")
    assert sorted(ln.split("cell 'toy-npu': ")[1] for ln in lines if "toy-npu" in ln) == [
        "field 'device': 'gpu' is not a toy device", "field 'env': unknown env 'toy' (known: " + ", ".join(sorted(ENVS)) + ")",
        "field 'precision': 'fp16' is not one of fp32", "field 'threads': 3 is not one of 1, 2, 4"]
    cells = matrix_schema()["properties"]["cells"]["items"]
    assert "toy" in cells["properties"]["backend"]["enum"]
    (rules,) = [r["then"] for r in cells["allOf"] if r["if"]["properties"]["backend"]["const"] == "toy"]
    assert rules["properties"]["threads"]["enum"] == [1, 2, 4] and rules["required"] == ["device"]


def test_defaults_are_the_declared_ones(tmp_path):
    """A matrix that leaves a section out gets the dataclass defaults (one declaration)."""
    from orchestrator.config.matrix import Power, Preflight, default_power

    text = "\n\n[".join(s for s in QUICK.split("\n\n[") if not s.startswith(("power]", "preflight]")))
    assert "[power]" not in text and "[preflight]" not in text
    m = load_matrix(_write(tmp_path, text), ENVS)
    assert m.power == default_power() == Power() and m.preflight == Preflight()
    assert (m.power.interval_ms, m.preflight.load_settle_max_s, m.inputs.batch) == (100, 60.0, 2)


def test_report_section_is_read_from_a_sessions_matrix_content():
    from orchestrator.config.matrix import read_report

    content = tomllib.loads(QUICK)
    assert read_report(content, "session.json").baseline == "diffusers-cpu-fp32"
    assert read_report({}, "session.json").baseline is None
    with pytest.raises(UserError) as e:
        read_report({"report": {"baseline": 3}}, "s/session.json")
    assert e.value.lines == ["s/session.json: [report]: field 'baseline': expected a string, got 3"]


def _schema_validator():
    import jsonschema

    from orchestrator.config.schema import matrix_schema

    schema = matrix_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize("path", sorted((REPO / "examples").glob("*.toml")) + [REPO / "matrix.toml"],
                         ids=lambda p: p.name)
def test_json_schema_accepts_every_shipped_matrix(path):
    errors = [e.message for e in _schema_validator().iter_errors(tomllib.loads(path.read_text()))]
    assert errors == []


@pytest.mark.parametrize("edit,needle", [
    (("iterations = 20", 'iterations = "twenty"'), "'twenty' is not of type 'integer'"),
    (('order = "interleaved"', 'order = "random"'), "'random' is not one of"),
    (("runs = 3", "runs = 0"), "0 is less than or equal to the minimum of 0"),
    (('precision = "bf16"', 'precision = "bf16"\nthreads = 4'), "'threads' was unexpected"),
    (('precision = "bf16"', 'precision = "int3"'), "'int3' is not one of"),
    (('device = "cpu"\nprecision = "bf16"', 'device = "tpu"\nprecision = "bf16"'), "'tpu' does not match"),
    (("[power]", "[powr]"), "'powr' was unexpected"),
])
def test_json_schema_rejects_what_the_loader_rejects(edit, needle):
    old, new = edit
    assert old in QUICK
    errors = [e.message for e in _schema_validator().iter_errors(tomllib.loads(QUICK.replace(old, new, 1)))]
    assert any(needle in e for e in errors), errors


def test_schema_command_prints_the_schema():
    p = cli("schema")
    assert p.returncode == 0, p.stderr
    schema = json.loads(p.stdout)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["properties"]["timing"]["properties"]["runs"] == {
        "description": "fresh-process runs per cell", "type": "integer", "default": 7, "exclusiveMinimum": 0,
        "maximum": 1000}


def test_the_plan_bounds_the_study_duration_by_its_waits_and_its_timeouts(tmp_path):
    m = load_matrix(REPO / "examples" / "quick.toml", ENVS)
    # 9 runs of quick.toml: 1 s cooldown + 2 s baseline each at least; plus 300 s timeout at most
    assert describe_duration(m, 9) == ("duration: at least 27 s in cooldowns and baselines alone, plus loading "
                                       "and stepping (host-dependent); at most 45 min 27 s if every run reached "
                                       "its timeout")
    p = tmp_path / "m.toml"
    p.write_text(QUICK.replace('meter = "auto"', 'meter = "none"').replace("cooldown_s = 1", "cooldown_s = 400"))
    assert describe_duration(load_matrix(p, ENVS), 9).startswith("duration: at least 1 h 00 min in cooldowns")
