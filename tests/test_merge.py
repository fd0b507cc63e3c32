"""`orchestrate merge`: sessions of one matrix from several hosts become one fleet session whose
runs keep their host; sessions of another study are refused with the reason. The quick tests merge
copies of a hand-made session (tests/fixtures/energy-session) given different host names; the
slow one merges real sessions of the fake worker."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import REPO, cli, fake_worker_matrix, only_session, stand_in

FIXTURE = REPO / "tests" / "fixtures" / "energy-session"


def host_copy(tmp_path: Path, name: str, hostname: str, latency_scale: float = 1.0, **session_changes) -> Path:
    """A copy of the fixture session as if `hostname` had run it, its latencies scaled."""
    d = tmp_path / name
    shutil.copytree(FIXTURE, d)
    s = json.loads((d / "session.json").read_text())
    s["session_id"] = name
    s["provenance"]["host"]["hostname"] = hostname
    for path, value in session_changes.items():
        *parents, leaf = path.split("__")
        node = s
        for p in parents:
            node = node[p]
        node[leaf] = value
    (d / "session.json").write_text(json.dumps(s))
    runs = [json.loads(ln) for ln in (d / "runs.jsonl").read_text().splitlines()]
    for r in runs:
        r["session_id"] = name
        r["latency_ms_median"] *= latency_scale
    (d / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in runs))
    return d


def read_runs(d: Path) -> list[dict]:
    return [json.loads(ln) for ln in (d / "runs.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_merge_keeps_every_run_with_its_host_and_renumbers_within_each_cell(tmp_path):
    a = host_copy(tmp_path, "a", "mac-a")
    b = host_copy(tmp_path, "b", "mac-b", latency_scale=1.2)
    p = cli("merge", str(a), str(b), "--out", str(tmp_path / "fleet"))
    assert p.returncode == 0, p.stderr
    assert "28 run(s) from 2 sessions on 2 host(s): mac-a, mac-b" in p.stdout + p.stderr
    runs = read_runs(tmp_path / "fleet")
    assert len(runs) == 28 and {r["session_id"] for r in runs} == {"fleet"}
    for cell in ("gpu", "ane"):
        mine = [r for r in runs if r["cell_id"] == cell]
        assert sorted(r["run_index"] for r in mine) == list(range(14))
        assert [r["host"] for r in sorted(mine, key=lambda r: r["run_index"])] == ["mac-a"] * 7 + ["mac-b"] * 7
        assert sorted((r["merged_from"]["session_id"], r["merged_from"]["run_index"]) for r in mine) == \
            sorted((s, i) for s in ("a", "b") for i in range(7))
    s = json.loads((tmp_path / "fleet" / "session.json").read_text())
    assert list(s["hosts"]) == ["mac-a", "mac-b"]
    seed = json.loads((FIXTURE / "session.json").read_text())["order_seed"]
    assert s["hosts"]["mac-b"]["sessions"]["b"]["order_seed"] == seed and s["merged_from"][1]["hosts"] == ["mac-b"]
    assert [m["session_id"] for m in s["merged_from"]] == ["a", "b"] and s["order_seed"] is None
    summary = json.loads((tmp_path / "fleet" / "summary.json").read_text())
    assert summary["hosts"] == ["mac-a", "mac-b"]
    assert [(h["host"], h["cell_id"], h["n_ok"]) for h in summary["host_cells"]] == \
        [(h, c, 7) for h in ("mac-a", "mac-b") for c in ("gpu", "ane")]
    spread = {(x["cell_id"], x["metric"]): x for x in summary["host_spreads"]}
    # b's latencies are a's x 1.2: every b run is slower than every a run, p = 2 / C(14, 7)
    assert spread["gpu", "latency_ms_median"]["p"] == pytest.approx(2 / 3432)
    assert spread["gpu", "latency_ms_median"]["host_effect"] == "larger than run-to-run noise"
    assert spread["gpu", "energy_per_step_j"]["host_effect"] == "not distinguishable"  # the same energies
    figures = {f["name"]: f for f in summary["figures"]}
    for name in ("hosts_latency_ms_median", "hosts_energy_per_step_j"):
        assert figures[name]["skipped"] is None and (tmp_path / "fleet" / figures[name]["files"][0]).is_file()
    report = (tmp_path / "fleet" / "report.md").read_text()
    assert "## Hosts" in report and "| mac-b | ane | 7/0 |" in report and "- Host mac-b: Apple M2 Pro" in report
    assert "- **Host mac-b**: macOS-15.1-arm64-arm-64bit; Apple M2 Pro" in report and "- **Merged from**: " in report
    # the merged folder reads like any session
    p = cli("compare", f"{tmp_path / 'fleet'}:gpu", f"{tmp_path / 'fleet'}:ane")
    assert p.returncode == 0, p.stderr
    # one cell on two hosts
    p = cli("compare", f"{tmp_path / 'fleet'}:gpu@mac-a", f"{tmp_path / 'fleet'}:gpu@mac-b", "--format", "json")
    assert p.returncode == 0, p.stderr
    (latency,) = [c for c in json.loads(p.stdout) if c["metric"] == "latency"]
    assert (latency["baseline"], latency["other"], latency["n_baseline"]) == ("gpu@mac-a", "gpu@mac-b", 7)
    assert latency["ratio_of_medians"] == pytest.approx(1.2) and latency["verdict"].startswith("20.0% slower")
    p = cli("compare", f"{tmp_path / 'fleet'}:gpu@mac-a", f"{tmp_path / 'fleet'}:gpu@mac-c")
    assert p.returncode == 2 and "no runs on host 'mac-c' (hosts: mac-a, mac-b)" in p.stderr


@pytest.mark.slow
@pytest.mark.parametrize(("change", "said"), [
    ({"model__sha256": "f" * 64}, "model sha256 ffffffffffff… (vs bbbbbbbbbbbb…)"),
    ({"provenance__harness__git_commit": "1" * 40}, "harness commit ['" + "1" * 40 + "']"),
    ({"provenance__envs__diffusers__lock_sha256": "9" * 64}, "env diffusers lock sha256 999999999999…"),
    ({"matrix__sha256": "8" * 64}, "matrix sha256 888888888888…"),
])
def test_merge_refuses_another_study_naming_the_session_and_what_differs(tmp_path, change, said):
    a = host_copy(tmp_path, "a", "mac-a")
    b = host_copy(tmp_path, "b", "mac-b", **change)
    p = cli("merge", str(a), str(b), "--out", str(tmp_path / "fleet"))
    assert p.returncode == 2 and "Traceback" not in p.stderr
    (line,) = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert f"refusing to merge {b}: not the same study as {a}" in line and said in line, line
    assert not (tmp_path / "fleet").exists()


@pytest.mark.slow
def test_merge_refuses_bad_arguments_in_one_line(tmp_path):
    a = host_copy(tmp_path, "a", "mac-a")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    for args, said in [((str(a), str(a)), "given twice"), ((str(a),), "two or more session folders"),
                       ((str(a), str(FIXTURE), "--out", str(tmp_path / "full")), "not an empty folder"),
                       ((str(a), str(tmp_path / "full")), "no session.json")]:
        out = () if "--out" in args else ("--out", str(tmp_path / "o"))
        p = cli("merge", *args, *out)
        assert p.returncode == 2 and said in p.stderr and "Traceback" not in p.stderr, (args, p.stderr)


@pytest.mark.slow
def test_two_machines_sharing_a_hostname_stay_two_hosts(tmp_path):
    a = host_copy(tmp_path, "a", "MacBook-Pro")
    b = host_copy(tmp_path, "b", "MacBook-Pro", provenance__host__cpu="Apple M4 Max")
    c = host_copy(tmp_path, "c", "MacBook-Pro")  # the first machine again
    p = cli("merge", str(a), str(b), str(c), "--out", str(tmp_path / "fleet"))
    assert p.returncode == 0, p.stderr
    s = json.loads((tmp_path / "fleet" / "session.json").read_text())
    assert list(s["hosts"]) == ["MacBook-Pro", "MacBook-Pro#2"]
    assert sorted(s["hosts"]["MacBook-Pro"]["sessions"]) == ["a", "c"]
    assert {r["host"] for r in read_runs(tmp_path / "fleet") if r["merged_from"]["session_id"] == "b"} == {"MacBook-Pro#2"}


@pytest.mark.slow
def test_real_sessions_from_two_hosts_merge_and_read_like_any_session(tmp_path):
    worker = stand_in(tmp_path / "python", REPO / "tests" / "fakes" / "fake_worker.py")
    meter = stand_in(tmp_path / "powermetrics", REPO / "tests" / "fakes" / "powermetrics_replay.py")
    matrix = fake_worker_matrix(tmp_path / "m.toml", 3, f'meter = "powermetrics"\npowermetrics = "{meter}"\n'
                                'interval_ms = 20\nbaseline_s = 0.5')
    capture = REPO / "tests" / "fixtures" / "powermetrics" / "m4-plist-1sample-thermal.plist"
    sessions = []
    for host in ("mac-a", "mac-b"):
        p = cli(str(matrix), "--out", str(tmp_path / host), "--env", f"diffusers={worker}",
                env={"CDB_CACHE_DIR": str(tmp_path / "cache"), "CDB_REPLAY_FILE": str(capture)}, timeout=300)
        assert p.returncode == 0, p.stderr[-3000:]
        d = only_session(tmp_path / host)
        s = json.loads((d / "session.json").read_text())
        s["provenance"]["host"]["hostname"] = host  # the other machine
        (d / "session.json").write_text(json.dumps(s))
        sessions.append(d)
    fleet = tmp_path / "fleet"
    p = cli("merge", *map(str, sessions), "--out", str(fleet))
    assert p.returncode == 0, p.stderr[-3000:]
    runs = sorted(read_runs(fleet), key=lambda r: r["run_index"])
    assert [(r["run_index"], r["host"], r["status"]) for r in runs] == \
        [(i, "mac-a" if i < 3 else "mac-b", "ok") for i in range(6)]
    for r in runs:  # every file moved with its run, under its new index
        for key in ("samples_file", "output_file", "log_file", "meter_samples_file"):
            assert (fleet / r[key]).is_file() and f"{r['run_index']:03d}" in r[key], r[key]
    assert all(r["energy_per_step_j"] is not None for r in runs)
    spreads = json.loads((fleet / "summary.json").read_text())["host_spreads"]
    assert {(x["cell_id"], x["metric"]) for x in spreads} == {("fake", "latency_ms_median"), ("fake", "energy_per_step_j")}
    for args in (("report", str(fleet)), ("recompute-energy", str(fleet)), ("compare", str(sessions[0]), f"{fleet}:fake"),
                 ("compare", f"{fleet}:fake@mac-a", f"{fleet}:fake@mac-b")):
        p = cli(*args)
        assert p.returncode == 0 and "Traceback" not in p.stderr, (args, p.stderr[-2000:])
        if args[0] == "recompute-energy":
            assert "energy recomputed for 6 run(s)" in p.stdout + p.stderr
    p = cli(str(matrix), "--resume", str(fleet), "--env", f"diffusers={worker}")
    assert p.returncode == 2 and "a merged session is not resumed" in p.stderr, p.stderr[-2000:]


def fleet_copy(tmp_path: Path, name: str) -> Path:
    """A copy of the fixture session as a fleet session over two simulated nodes of one machine
    (`--ray local:2`) records it: `hosts` keyed by node, each run's `host` its node."""
    d = host_copy(tmp_path, name, "vm")
    s = json.loads((d / "session.json").read_text())
    s["hosts"] = {node: {"host": s["provenance"]["host"], "harness": s["provenance"].get("harness"),
                         "env_lock_sha256": {}, "sessions": {name: {"order_seed": s["order_seed"]}}}
                  for node in ("vm/node-1", "vm/node-2")}
    (d / "session.json").write_text(json.dumps(s))
    runs = read_runs(d)
    for i, r in enumerate(runs):
        r["host"] = f"vm/node-{1 + i % 2}"
    (d / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in runs))
    return d


@pytest.mark.slow
def test_a_fleet_runs_lost_attempt_is_merged_before_the_attempt_that_replaced_it(tmp_path):
    a, b = fleet_copy(tmp_path, "a"), fleet_copy(tmp_path, "b")
    runs = read_runs(a)
    lost = {**runs[0], "status": "failed", "node_lost": True, "attempt": 1, "host": "vm/node-2",
            "failure_reason": "node vm/node-2 was lost during the run"}
    runs[0]["attempt"] = 2
    (a / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [lost, *runs]))
    p = cli("merge", str(a), str(b), "--out", str(tmp_path / "fleet"))
    assert p.returncode == 0, p.stderr
    assert "recorded twice" not in p.stdout + p.stderr
    merged = read_runs(tmp_path / "fleet")
    assert len(merged) == 29
    lost_i = next(i for i, r in enumerate(merged) if r.get("node_lost"))
    after = merged[lost_i + 1]
    assert (after["cell_id"], after["run_index"], after["attempt"]) == (lost["cell_id"], merged[lost_i]["run_index"], 2)
    assert merged[lost_i]["host"] == "vm/node-2" and merged[lost_i]["merged_from"]["session_id"] == "a"
    p = cli("report", str(tmp_path / "fleet"))
    assert p.returncode == 0 and "recorded twice" not in p.stdout + p.stderr


@pytest.mark.slow
def test_fleet_sessions_merge_keeping_each_run_on_its_node(tmp_path):
    a, b = fleet_copy(tmp_path, "a"), fleet_copy(tmp_path, "b")
    p = cli("merge", str(a), str(b), "--out", str(tmp_path / "fleet"))
    assert p.returncode == 0, p.stderr
    s = json.loads((tmp_path / "fleet" / "session.json").read_text())
    assert list(s["hosts"]) == ["vm/node-1", "vm/node-2"]
    assert sorted(s["hosts"]["vm/node-2"]["sessions"]) == ["a", "b"]
    merged = {(r["merged_from"]["session_id"], r["merged_from"]["run_index"], r["cell_id"]): r["host"]
              for r in read_runs(tmp_path / "fleet")}
    for src in (a, b):
        for r in read_runs(src):
            assert merged[(src.name, r["run_index"], r["cell_id"])] == r["host"]
