"""`orchestrate report` on a session whose per-run values are known: the report and compare
functions in-process, and the CLI itself in a few subprocesses for what only it does (exit codes,
messages on stderr, several folders at once)."""

import io
import json
import re
import shutil

import pytest
from conftest import REPO, cli
from rich.console import Console

from orchestrator.console import Display
from orchestrator.errors import UserError
from orchestrator.report.compare_sessions import compare_sides, parse_side
from orchestrator.report.tables import budget_table, markdown_table
from orchestrator.report.write import derive, write_report
from orchestrator.results.store import SessionDir
from workers.contract.typed import to_dict

KNOWN = REPO / "tests" / "fixtures" / "known-session"


def _copy(src, dest):
    """A fixture session copied under its session-id-shaped name, so tests may write into it."""
    shutil.copytree(src, dest)
    return dest


@pytest.fixture
def known(tmp_path):
    return _copy(KNOWN, tmp_path / "20260101T000000Z-known")


@pytest.fixture(scope="module")
def known_report(tmp_path_factory):
    """The known session reported once, figures drawn, for the tests that only read what was written."""
    d = _copy(KNOWN, tmp_path_factory.mktemp("known") / "20260101T000000Z-known")
    return write_report(SessionDir(d)), d


def _json_report(d):
    """summary.json's numbers as `orchestrate report --format json` prints them (figures not drawn)."""
    return to_dict(derive(SessionDir(d)).summary)


def test_summary_matches_hand_computed_statistics(known):
    s = _json_report(known)
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
    s = _json_report(known)
    assert len(s["problems"]) == 1
    assert "runs.jsonl:4: not valid JSON" in s["problems"][0]
    assert s["n_runs"] == 13


def test_report_files_are_written(known_report):
    _, known = known_report
    md = (known / "report.md").read_text()
    assert "| ane | coreml CPU_AND_NE fp16 | 7/0 | 10.00 [8.90–10.24] |" in md
    assert "outlier runs: run 4 (7.40 ms, -26.0% from the median)" in md  # the median is 10.00 ms
    assert "DIVERGENT (runs 1)" in md
    assert "gpu run 3: timeout" in md
    assert "## Time budget" not in md  # its runs recorded no wall time
    assert json.loads((known / "summary.json").read_text())["cells"][0]["latency_ms_median"] == 10.0


def test_runs_alone_are_enough(known):
    (known / "session.json").unlink()
    s = _json_report(known)
    assert "session.json: missing" in s["problems"][0]
    assert {c["cell_id"]: c["latency_ms_median"] for c in s["cells"]}["ane"] == 10.0
    assert s["session_id"] == known.name and s["status"] is None


def test_a_bad_session_file_is_one_clear_line_and_the_report_goes_on(known):
    (known / "session.json").write_text('{"session_id": "x", "order_seed": "seven"}')
    d = derive(SessionDir(known))
    assert "session.json: field order_seed: expected an integer or null, got 'seven'; read without it" in d.summary.problems[0]
    assert d.session is None and {c.cell_id for c in d.summary.cells} == {"gpu", "ane", "mlx"}
    (known / "session.json").write_text("{")
    assert "session.json: not valid JSON" in derive(SessionDir(known)).summary.problems[0]


def test_records_without_identity_are_named_and_duplicates_resolved(known):
    runs = known / "runs.jsonl"
    lines = runs.read_text().splitlines()
    first = json.loads(lines[0])
    lines.append(json.dumps({**first, "latency_ms_median": 10.05}))  # ane run 0 again
    lines.append(json.dumps({"session_id": "s", "cell_id": "ane", "status": "ok", "latency_ms_median": 3.0}))
    lines.append(json.dumps({**first, "run_index": 9, "cosine": "high"}))  # a field of the wrong type
    runs.write_text("\n".join(lines) + "\n")
    s = _json_report(known)
    assert any("runs.jsonl:15" in p and "recorded twice" in p for p in s["problems"])
    assert any("runs.jsonl:16: field run_index: missing; not a run record" in p for p in s["problems"])
    assert any("runs.jsonl:17: field cosine: expected a number or null, got 'high'" in p for p in s["problems"])
    ane = next(c for c in s["cells"] if c["cell_id"] == "ane")
    assert ane["n_ok"] == 7 and ane["metrics"]["latency_ms_median"]["max"] == 10.3


@pytest.mark.slow
def test_report_cli_exit_codes_and_messages(known, tmp_path):
    """The CLI itself: a folder that is not a session, an unknown baseline."""
    p = cli("report", str(tmp_path))
    assert p.returncode == 2 and "not a session folder" in p.stderr
    p = cli("report", str(known), "--baseline", "cpu")
    assert p.returncode == 2 and "baseline 'cpu' (--baseline) is not a cell of it (cells: ane, gpu, mlx)" in p.stderr
    assert "Traceback" not in p.stderr


# --- reports with figures, comparisons, warnings and the Reproduce panel ---

ENERGY = REPO / "tests" / "fixtures" / "energy-session"


@pytest.fixture
def energy(tmp_path):
    return _copy(ENERGY, tmp_path / "20260102T000000Z-energy")


@pytest.fixture(scope="module")
def energy_report(tmp_path_factory):
    """The energy session reported once, figures drawn, for the tests that only read what was written."""
    d = _copy(ENERGY, tmp_path_factory.mktemp("energy") / "20260102T000000Z-energy")
    return write_report(SessionDir(d)), d


def _report(d, baseline=None):
    return write_report(SessionDir(d), baseline=baseline)


def _figure(rep, name):
    return next(f for f in rep.inputs.figures if f.name == name)


def test_latency_vs_energy_points_are_the_medians_and_p10_p90(energy_report):
    rep, energy = energy_report
    f = _figure(rep, "latency_vs_energy")
    assert f.skipped is None and f.files == ["figures/latency_vs_energy.svg", "figures/latency_vs_energy.png"]
    points = {p["cell_id"]: p for p in f.data["points"]}
    # gpu energy sorted 7.4 9.8 9.9 10.0 10.1 10.2 10.3: median 10.0, p10 7.4 + 0.6 x 2.4, p90 10.2 + 0.4 x 0.1; x 50
    assert points["gpu"]["y"] == pytest.approx(500.0)
    assert (points["gpu"]["y_p10"], points["gpu"]["y_p90"]) == pytest.approx((442.0, 512.0))
    # gpu latency sorted 19.8 .. 20.4: median 20.1, p10 19.86, p90 20.34
    assert (points["gpu"]["x"], points["gpu"]["x_p10"], points["gpu"]["x_p90"]) == pytest.approx((20.1, 19.86, 20.34))
    assert (points["ane"]["x"], points["ane"]["y"]) == pytest.approx((20.55, 79.5))
    assert "estimated: 50 x energy per step" in f.data["y_label"]
    for path in f.files:
        assert (energy / path).stat().st_size > 1000


def test_runs_per_cell_mark_the_median_and_the_outlier(energy_report):
    rep, _ = energy_report
    total = {p["cell_id"]: p for p in _figure(rep, "runs_energy_per_step_j_total").data["panels"]}
    assert total["gpu"]["runs"] == [(0, 10.0), (1, 10.2), (2, 9.8), (3, 10.1), (4, 7.4), (5, 9.9), (6, 10.3)]
    assert total["gpu"]["median"] == 10.0 and total["gpu"]["outliers"] == [(4, 7.4)]
    assert total["ane"]["outliers"] == []
    # one figure per channel: cpu is 10% of each run's total
    cpu = {p["cell_id"]: p for p in _figure(rep, "runs_energy_per_step_j_cpu").data["panels"]}
    assert cpu["gpu"]["median"] == pytest.approx(1.0)
    ane_channel = _figure(rep, "runs_energy_per_step_j_ane").data["panels"]
    assert [p["cell_id"] for p in ane_channel] == ["ane"]  # the gpu cell has no ane channel
    latency = {p["cell_id"]: p for p in _figure(rep, "runs_latency_ms_median").data["panels"]}
    assert latency["ane"]["median"] == 20.55 and len(latency["ane"]["runs"]) == 7


def test_equivalence_figure_holds_every_run_and_the_thresholds(energy_report):
    f = _figure(energy_report[0], "equivalence")
    assert (f.data["cosine_min"], f.data["mse_max"]) == (0.999, 0.001)
    cells = {c["cell_id"]: c for c in f.data["cells"]}
    assert [v for _, v in cells["ane"]["cosine"]] == [0.9996] * 7 and [v for _, v in cells["gpu"]["mse"]] == [1e-5] * 7


NO_METER = ("no power meter available on this host (powermetrics: /usr/bin/powermetrics not found (powermetrics is "
            "macOS-only); nvml: NVML unavailable (NVMLError_LibraryNotFound: NVML Shared Library Not Found); rapl: "
            "/sys/class/powercap does not exist (not Linux, or no powercap)); energy is not measured")


def test_the_long_no_meter_reason_is_given_once_in_full_and_referred_to_after(known):
    session = json.loads((known / "session.json").read_text())
    session["power"]["energy_unavailable_reason"] = NO_METER  # what a Linux box without counters records
    (known / "session.json").write_text(json.dumps(session))
    rep = _report(known)
    md = (known / "report.md").read_text()
    for text in (md, (known / "report.html").read_text()):
        assert text.count("NVML Shared Library Not Found") == 1
    assert f"- Energy: {NO_METER}" in md
    assert md.count("no power meter available on this host; energy is not measured; in full under Energy") == 3
    out = io.StringIO()
    display = Display()
    display.err = display.out = Console(file=out, width=80)
    display.explain("power: none", NO_METER)  # a session's first line about power
    display.summary_table(rep.summary)  # and its table at the end
    assert out.getvalue().count("NVML Shared Library Not Found") == 1
    assert "energy: no power meter available on this host; energy is not measured; in full under 'power: none'" \
        in out.getvalue()


def test_an_interrupted_session_shows_every_planned_cell(known, tmp_path):
    runs = [x for x in (known / "runs.jsonl").read_text().splitlines() if '"cell_id": "ane"' in x]
    (known / "runs.jsonl").write_text("\n".join(runs) + "\n")  # stopped before gpu or mlx finished a run
    cells = {c.cell_id: c for c in derive(SessionDir(known)).summary.cells}
    assert list(cells) == ["ane", "gpu", "mlx"]
    assert (cells["gpu"].n_ok, cells["gpu"].n_runs, cells["gpu"].status) == (0, 0, "not run")
    assert cells["ane"].n_ok > 0
    (known / "runs.jsonl").write_text("")  # stopped before any run finished
    assert [(c.cell_id, c.n_ok) for c in derive(SessionDir(known)).summary.cells] == [("ane", 0), ("gpu", 0), ("mlx", 0)]
    created = SessionDir.create(tmp_path / "results")
    assert (created.root / "runs.jsonl").read_text() == ""  # a session has its runs.jsonl from the start


@pytest.mark.slow
def test_an_mse_of_zero_is_drawn_at_the_floor_of_the_log_panel_and_said_so(energy):
    runs = [json.loads(x) for x in (energy / "runs.jsonl").read_text().splitlines()]
    for r in runs:
        if r["cell_id"] == "gpu":
            r["mse"], r["cosine"] = 0.0, 1.0  # bit-identical to the reference
    (energy / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in runs))
    f = _figure(_report(energy), "equivalence")
    cells = {c["cell_id"]: c for c in f.data["cells"]}
    assert [v for _, v in cells["gpu"]["mse"]] == [0.0] * 7  # every run is in the figure's data
    smallest = min([v for _, v in cells["ane"]["mse"]] + [f.data["mse_max"]])
    assert f.data["mse_floor"] == pytest.approx(smallest / 10)
    assert f.note.startswith("Runs of gpu have an MSE of exactly 0 (output identical to the reference)")
    svg = (energy / "figures" / "equivalence.svg").read_text()
    assert "MSE = 0 (identical output) drawn here" in svg
    assert f.note in (energy / "report.md").read_text()
    assert "Runs of gpu have an MSE of exactly 0" in (energy / "report.html").read_text()


def test_comparisons_against_the_matrix_baseline(energy):
    s = to_dict(derive(SessionDir(energy)).summary)
    assert s["baseline"] == "gpu"
    cmp = {c["metric"]: c for c in s["comparisons"]}
    e = cmp["energy"]
    assert e["other"] == "ane" and e["ratio_of_medians"] == pytest.approx(1.59 / 10.0)
    # ane's p10-p90 [1.562, 1.614] divided by gpu's [8.84, 10.24]
    assert e["ratio_range"] == pytest.approx([1.562 / 10.24, 1.614 / 8.84])
    assert e["test"]["p"] == pytest.approx(2 / 3432)  # all seven ane runs below all seven gpu runs
    assert e["verdict"] == "6.29x (5.48-6.56x) lower energy; intervals disjoint; p = 0.00058"
    lat = cmp["latency"]
    assert lat["test"]["u"] == 48 and lat["test"]["p"] == pytest.approx(4 / 3432)  # only 20.35 < 20.4
    assert lat["verdict"] == "2.2% slower; intervals disjoint; p = 0.0012"


def test_baseline_option_overrides_the_matrix_and_unknown_one_is_refused(energy):
    s = derive(SessionDir(energy), baseline="ane").summary
    assert {c.other for c in s.comparisons} == {"gpu"}
    with pytest.raises(UserError, match=r"baseline 'cpu' \(--baseline\) is not a cell of it \(cells: gpu, ane\)"):
        derive(SessionDir(energy), baseline="cpu")


def test_stability_warnings(energy):
    s = derive(SessionDir(energy)).summary
    assert s.warnings == [
        "gpu: energy p10-p90 spread is 14.0% of the median (above 10%)",
        "gpu: run 4 is an outlier in energy (7.4 J, -26.0% from the median; more than 3 scaled MADs from it)",
        "gpu: throttled run(s) 2",
        "ane: run(s) 6 timed fewer than 10 meter updates",
    ]


def test_report_files_tables_and_reproduce_panel(energy_report):
    _, energy = energy_report
    md = (energy / "report.md").read_text()
    assert ("| gpu | diffusers mps fp16 | 7/0 | 20.10 [19.86–20.34] | 0.2 | – | 1 [0.884–1.024] | "
            "9 [7.956–9.216] | 10 [8.84–10.24] | 500 [442–512] | 0.9999000 | 1e-05 | ok | energy outlier runs: run 4 (7.4 J, -26.0% from the median); "
            "throttled: runs 2 |") in md  # channels ane (none on this cell), cpu, gpu, then total
    assert "![Latency vs energy per image (estimated, 50 x step)](figures/latency_vs_energy.svg)" in md
    reproduce = md.split("## Reproduce")[1]
    for needle in ("orchestrate matrix.toml --runs 7 (in /repo)", "commit " + "e" * 40 + " (dirty", "sha256 " + "a" * 64,
                   "Env coreml-ct9**: lock sha256 " + "0" * 64 + "; Python 3.11.9", "coremltools 9.0",
                   "Apple M2 Pro (12 logical CPUs, 32 GiB RAM)", "powermetrics (replayed capture", "synthetic",
                   "latent " + "c" * 64, "interleaved, seed 1234", "2026-01-02T00:00:00+00:00"):
        assert needle in reproduce, needle
    csv_lines = (energy / "runs.csv").read_text().splitlines()
    assert len(csv_lines) == 15 and "total.energy_per_step_j" in csv_lines[0].split(",")
    for name in ("latency_vs_energy", "runs_latency_ms_median", "runs_energy_per_step_j_total", "equivalence"):
        assert (energy / "figures" / f"{name}.svg").is_file() and (energy / "figures" / f"{name}.png").is_file()


def test_missing_metric_leaves_its_figure_out_with_the_reason(known_report):
    rep, known = known_report
    f = _figure(rep, "latency_vs_energy")
    assert f.skipped == "no cell has energy (no meter in this fixture)" and f.files == []
    assert not (known / "figures" / "latency_vs_energy.svg").exists()
    lat = {p["cell_id"]: p for p in _figure(rep, "runs_latency_ms_median").data["panels"]}
    assert lat["ane"]["outliers"] == [(4, 7.4)] and lat["ane"]["median"] == 10.0
    assert [r for r, _ in lat["gpu"]["runs"]] == [0, 1, 2, 4]  # run 3 failed: not drawn
    md = (known / "report.md").read_text()
    assert "- Latency vs energy per image (estimated, 50 x step): left out: no cell has energy (no meter in this fixture)" in md


@pytest.mark.slow
def test_many_sessions_show_progress_and_go_to_out(known, energy, tmp_path):
    out = tmp_path / "reports"
    p = cli("report", str(known), str(energy), "--out", str(out))
    assert p.returncode == 0, p.stderr
    assert f"[1/2] {known}" in p.stderr and f"[2/2] {energy}" in p.stderr
    assert (out / known.name / "report.html").is_file() and (out / energy.name / "report.html").is_file()
    assert not (energy / "report.html").exists()  # the session folder stays as it was
    assert "runs.jsonl:4" in p.stderr  # the corrupt line of the known session, named
    assert "warning: gpu: throttled run(s) 2" in p.stderr
    assert "ane" in p.stdout and "6.29x (5.48-6.56x) lower energy" in p.stdout  # the terminal tables


@pytest.mark.slow
def test_report_as_json_prints_the_summary_and_changes_no_file(known):
    def files():
        return {p.relative_to(known): p.read_bytes() for p in known.rglob("*") if p.is_file()}

    before = files()
    p = cli("report", str(known), "--format", "json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["cells"][0]["cell_id"] == "ane"
    assert files() == before
    p = cli("report", str(known), "--format", "json", "--write")  # asked: the files are written
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["figures"] and (known / "report.md").is_file() and (known / "summary.json").is_file()


# --- orchestrate compare ---

def _compare(a, b):
    return {c.metric: c for c in compare_sides(parse_side(a), parse_side(b))}


def test_compare_two_cells_of_a_session(energy):
    cmp = _compare(f"{energy}:gpu", f"{energy}:ane")
    assert cmp["energy"].verdict == "6.29x (5.48-6.56x) lower energy; intervals disjoint; p = 0.00058"


def test_compare_one_cell_across_sessions_and_refuse_other_inputs(energy, tmp_path):
    after = tmp_path / "after"
    shutil.copytree(energy, after)
    runs = [json.loads(x) for x in (after / "runs.jsonl").read_text().splitlines()]
    for r in runs:
        r["latency_ms_median"] *= 0.9  # a driver update made every run 10% faster
    (after / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in runs))
    lat = _compare(str(energy), f"{after}:gpu")["latency"]
    assert lat.ratio_of_medians == pytest.approx(0.9) and lat.other == "after:gpu"
    assert lat.verdict.startswith("10.0% faster; intervals disjoint")
    session = json.loads((after / "session.json").read_text())
    session["model"]["sha256"] = "9" * 64
    session["inputs"]["512"]["sha256"]["latent"] = "8" * 64
    (after / "session.json").write_text(json.dumps(session))
    with pytest.raises(UserError) as e:
        _compare(str(energy), str(after))
    assert e.value.lines[0] == "refusing to compare: the sessions did not run the same model on the same inputs"
    assert f"model sha256 differs: {energy} has {'b' * 64}, {after} has {'9' * 64}" in e.value.lines
    assert any("input latent sha256 differs" in x for x in e.value.lines)
    assert not any("text embedding" in x for x in e.value.lines)


def _rename_cells(folder, names):
    """The session in `folder` with its cells recorded under other ids, as an older harness wrote them."""
    runs = [json.loads(x) for x in (folder / "runs.jsonl").read_text().splitlines()]
    (folder / "runs.jsonl").write_text("".join(json.dumps({**r, "cell_id": names[r["cell_id"]]}) + "\n" for r in runs))
    session = json.loads((folder / "session.json").read_text())
    session["cells"] = [{**c, "id": names[c["id"]]} for c in session["cells"]]
    session["matrix"]["content"]["report"]["baseline"] = names["gpu"]
    (folder / "session.json").write_text(json.dumps(session))


def test_sessions_recorded_with_the_study_s_old_cell_ids_report_and_compare_under_the_new(energy, tmp_path):
    old, new = tmp_path / "20260101T000000Z-old", tmp_path / "20260102T000000Z-new"
    shutil.copytree(energy, old)
    shutil.copytree(energy, new)
    _rename_cells(old, {"gpu": "diffusers-mps-fp16", "ane": "ours-ct9-ane-w4"})
    _rename_cells(new, {"gpu": "diffusers-mps-fp16", "ane": "ours-ane-w4"})
    summary = derive(SessionDir(old)).summary
    assert [c.cell_id for c in summary.cells] == ["diffusers-mps-fp16", "ours-ane-w4"]
    assert summary.comparisons and summary.comparisons[0].other == "ours-ane-w4"
    cmp = compare_sides(parse_side(str(old)), parse_side(str(new)))  # the common cells, found by their new ids
    assert {c.other for c in cmp} == {"20260102T000000Z-new:diffusers-mps-fp16", "20260102T000000Z-new:ours-ane-w4"}
    typed_old = _compare(f"{old}:ours-ct9-ane-w4", f"{new}:ours-ane-w4")  # the old id, as a user remembers it
    assert typed_old["latency"].ratio_of_medians == pytest.approx(1.0)


def test_compare_tables_print_whole_cell_and_session_ids(energy, tmp_path):
    long = {"gpu": "diffusers-mps-fp16-compiled-reduce-overhead", "ane": "ours-ane-w4-split-einsum-v2-palettized"}
    a, b = tmp_path / "20260101T000000Z-before-driver-update", tmp_path / "20260102T000000Z-after-driver-update"
    shutil.copytree(energy, a)
    shutil.copytree(energy, b)
    _rename_cells(a, long)
    _rename_cells(b, long)
    p = cli("compare", str(a), str(b))  # not a terminal: 160 columns
    assert p.returncode == 0, p.stderr
    table, verdicts = p.stdout.split("\nlatency: ", 1)
    assert table.startswith(f"B ({b.name}) against A ({a.name})")  # the sessions, named once in full
    for cell in long.values():
        assert any(re.match(rf"│ \w+ +│ {cell} +│ {cell} +│", line) for line in table.splitlines())
        assert f"{b.name}:{cell} vs {a.name}:{cell}: " in "latency: " + verdicts
    assert "…" not in table


def test_compare_needs_two_cells_within_a_session(energy):
    with pytest.raises(UserError, match="name two cells of the session"):
        _compare(str(energy), str(energy))
    with pytest.raises(UserError, match=r"no cell 'nope' \(cells: gpu, ane\)"):
        _compare(f"{energy}:gpu", f"{energy}:nope")


@pytest.mark.slow
def test_compare_cli_output_and_exit_codes(energy):
    """The CLI itself: JSON, the verdict lines, a refusal's exit code and message."""
    p = cli("compare", f"{energy}:gpu", f"{energy}:ane", "--format", "json")
    assert p.returncode == 0, p.stderr
    cmp = {c["metric"]: c for c in json.loads(p.stdout)}
    assert cmp["energy"]["verdict"] == "6.29x (5.48-6.56x) lower energy; intervals disjoint; p = 0.00058"
    p = cli("compare", f"{energy}:gpu", f"{energy}:ane")
    assert "energy: ane vs gpu: 6.29x (5.48-6.56x) lower energy" in p.stdout
    p = cli("compare", f"{energy}:gpu", f"{energy}:nope")
    assert p.returncode == 2 and "error: " in p.stderr and "no cell 'nope'" in p.stderr and "Traceback" not in p.stderr


def test_without_matplotlib_the_report_says_figures_are_left_out(energy, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    rep = _report(energy)
    assert [(f.name, f.skipped) for f in rep.inputs.figures] == [
        ("figures", "matplotlib is not installed in this interpreter (uv sync installs it)")]
    assert "- Figures: left out: matplotlib is not installed" in (energy / "report.md").read_text()
    assert rep.summary.comparisons  # everything else is still there


def test_runs_without_the_image_estimate_get_50_x_the_step(energy):
    runs = [json.loads(x) for x in (energy / "runs.jsonl").read_text().splitlines()]
    for r in runs:
        del r["estimated_energy_per_50_step_image_j"]
        for ch in r["energy_by_channel"].values():
            del ch["estimated_energy_per_50_step_image_j"]
    (energy / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in runs))
    gpu = derive(SessionDir(energy)).summary.cells[0]  # what latency_vs_energy draws: the cell's image metric
    image = gpu.metrics["estimated_energy_per_50_step_image_j"]
    assert (image.median, image.p10, image.p90) == pytest.approx((500.0, 442.0, 512.0))
    assert gpu.estimated_energy_per_50_step_image_j == pytest.approx(500.0)


@pytest.mark.slow
def test_runs_with_energy_but_no_channels_are_drawn_as_the_total(energy):
    runs = [json.loads(x) for x in (energy / "runs.jsonl").read_text().splitlines()]
    for r in runs:
        del r["energy_by_channel"]
    (energy / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in runs))
    rep = _report(energy)
    total = {p["cell_id"]: p for p in _figure(rep, "runs_energy_per_step_j").data["panels"]}
    assert total["gpu"]["outliers"] == [(4, 7.4)] and total["ane"]["median"] == pytest.approx(1.59)


def test_every_flag_that_warns_warns_and_the_console_names_them(energy):
    """Load, power and thermal flags reach the warnings, the flags column and the console line."""
    from orchestrator.console import run_flags
    from orchestrator.report.tables import cell_table

    runs = [json.loads(x) for x in (energy / "runs.jsonl").read_text().splitlines()]
    for r in runs:
        if r["cell_id"] == "ane" and r["run_index"] == 1:
            r.update(load_unsettled=True, gpu_throttle_before_run=["HW slowdown"])
        if r["cell_id"] == "ane" and r["run_index"] == 2:
            r.update(power_problems=["on battery"], thermal_before_run={"reported": ["warning"], "limited": True})
    (energy / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in runs))
    d = derive(SessionDir(energy))
    ane = [w for w in d.summary.warnings if w.startswith("ane:")]
    assert ane == ["ane: run(s) 6 timed fewer than 10 meter updates",
                   "ane: run(s) 2 recorded no energy: power preconditions failed",
                   "ane: run(s) 1 started before the load average settled",
                   "ane: run(s) 1, 2 began under a thermal warning or GPU slowdown"]
    row = next(r for r in cell_table(d.summary).rows if r[0] == "ane")
    assert row[-1] == ("window < 10 meter updates: runs 6; energy withheld: power preconditions failed: runs 2; "
                       "load average never settled before the run: runs 1; "
                       "thermal warning or GPU slowdown before the run: runs 1, 2")
    one = next(r for r in d.runs if r.cell_id == "ane" and r.run_index == 1)
    from rich.console import Console

    console = Console(record=True, width=200)
    console.print(f"ane run 1: ok{run_flags(one)}", highlight=False)
    assert console.export_text().strip() == "ane run 1: ok  [load unsettled, thermal]"


def test_the_time_budget_of_the_h100_study_splits_its_wall_time(tmp_path):
    """The committed H100 study (35 runs): 1745.7 s of run wall time, of which load 1222.1 s,
    cooldown 184.7 s, baseline 70.0 s, warmup 40.7 s, timed windows 70.6 s; 4.77x the irreducible."""
    d = _copy(REPO / "docs" / "results" / "2026-11-27-h100-sd15-cuda", tmp_path / "20261127T000000Z-h100")
    budgets = {b["scope"]: b for b in _json_report(d)["time_budget"]}
    runs = [json.loads(ln) for ln in (d / "runs.jsonl").read_text().splitlines()]
    every = budgets["all runs"]
    assert every["runs"] == 35 and every["wall_s"] == pytest.approx(sum(r["wall_s"] for r in runs))
    assert every["load_s"] == pytest.approx(sum(r["load_s"] for r in runs))
    parts = ("load_s", "cooldown_s", "baseline_s", "warmup_s", "window_s", "other_s")
    assert sum(every[p] for p in parts) == pytest.approx(every["wall_s"])
    assert every["wall_s"] == pytest.approx(1745.73, abs=0.01) and every["wall_over_irreducible"] == pytest.approx(4.77, abs=0.01)
    assert sum(budgets[c]["wall_s"] for c in budgets if c != "all runs") == pytest.approx(every["wall_s"])
    table = markdown_table(budget_table(derive(SessionDir(d)).summary.time_budget))
    assert table[2].startswith("| all runs | 35 | 1745.7 | 1222.1 (70%) | 184.7 (11%) | 70.0 (4%) | 40.7 (2%) | 70.6 (4%) |")
