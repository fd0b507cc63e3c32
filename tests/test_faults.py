"""Worker and meter faults through a whole session: a fake worker (tests/fakes/fake_worker.py)
and a stand-in powermetrics (tests/fakes/powermetrics_replay.py) misbehave one run at a time,
and the session must record each fault as a reason or a flag, keep every other run, print every
worker's and meter's words as text, and never show a traceback."""

import json
import time

import pytest
from conftest import REPO, cli, fake_worker_matrix, only_session, stand_in

from orchestrator.energy.arithmetic import invalid_reason
from orchestrator.energy.meters.plist_stream import MAX_DOCUMENT_BYTES
from orchestrator.energy.meters.powermetrics import PowermetricsMeter

FAKES = REPO / "tests" / "fakes"
CAPTURE = REPO / "tests" / "fixtures" / "powermetrics" / "m4-plist-1sample-thermal.plist"

# Meter faults: what the run must record for each.
METER_FAULTS = {
    "nan": "powermetrics: sample 0: cpu energy is nan",
    "huge": "powermetrics: sample 0: cpu at ",
    "negative": "powermetrics: sample 0: cpu energy is negative (-400.0 J)",
    "zero_elapsed": "powermetrics: sample 0 lasts 0 ns",
}


@pytest.fixture
def fake_meter(tmp_path, monkeypatch):
    exe = stand_in(tmp_path / "powermetrics", FAKES / "powermetrics_replay.py")
    monkeypatch.setenv("CDB_POWERMETRICS", str(exe))
    monkeypatch.setenv("CDB_REPLAY_FILE", str(CAPTURE))
    return lambda mode: monkeypatch.setenv("CDB_REPLAY_MODE", mode)


def _metered(seconds: float = 1.0):
    meter = PowermetricsMeter(interval_ms=20)
    meter.start()
    time.sleep(seconds)
    return meter, meter.stop()


@pytest.mark.slow
@pytest.mark.parametrize("mode,reason", METER_FAULTS.items())
def test_impossible_meter_values_are_named_not_used(fake_meter, mode, reason):
    fake_meter(mode)
    _, record = _metered()
    assert record.intervals and record.exit_status == "stopped"
    assert reason in f"powermetrics: {invalid_reason(record.intervals)}"


@pytest.mark.slow
def test_the_real_capture_is_valid(fake_meter):
    fake_meter("replay")
    _, record = _metered()
    assert record.intervals and invalid_reason(record.intervals) is None


def test_a_meter_that_exits_keeps_its_status_and_words(fake_meter):
    fake_meter("exit_early")
    meter = PowermetricsMeter(interval_ms=20)
    meter.start()
    meter._proc.wait(timeout=60)  # it ends on its own, however long a busy host takes to start it
    record = meter.stop()
    assert not record.intervals
    assert record.exit_status == "exited with code 1 before it was stopped"
    assert "cannot open [/dev/xcpm] [bold]" in record.stderr_tail


@pytest.mark.slow
def test_a_flooding_meter_is_held_to_a_bounded_buffer(fake_meter):
    fake_meter("flood")
    meter, record = _metered(1.5)
    assert record.stats["overflow"] >= 1 and record.stats["documents"] == 0
    assert len(meter._stream._pending) <= MAX_DOCUMENT_BYTES


@pytest.mark.slow
def test_a_garbage_meter_is_counted(fake_meter):
    fake_meter("garbage")
    _, record = _metered()
    assert record.stats["garbage"] >= 1 and not record.intervals


# One session, one run per fault: meter faults first (worker sane; each of these runs lasts long
# enough for its meter to start, so the stand-in meets them in this order), then worker faults
# (the meter replays the capture), then a sane run. (worker fault, meter fault, what the record says)
SESSION_RUNS = [
    ("ok", "nan", "cpu energy is nan"),
    ("ok", "huge", "cpu at "),
    ("ok", "negative", "cpu energy is negative"),
    ("ok", "zero_elapsed", "sample 0 lasts 0 ns"),
    ("ok", "exit_early", "the meter exited with code 1 before it was stopped: powermetrics: cannot open [/dev/xcpm]"),
    ("ok", "flood", "the meter recorded no samples"),
    ("ok", "garbage", "the meter recorded no samples"),
    ("markup_error", "replay", "worker error: OSError: could not open [/Users/me/sd/v1-5.safetensors] [/]"),
    ("realized_nan", "replay", "protocol: ready: field realized.x: expected a finite number, got nan"),
    ("conversion_str", "replay", "protocol: ready: field realized.conversion"),
    ("facts_int", "replay", "protocol: unsupported: field facts: expected a table, got 3"),
    ("iter_empty", "replay", "protocol: result: field iteration_start_ns: 0 iterations"),
    ("output_shape", "replay", "protocol: result: field output: shape [2, 4, 1, 1]"),
    ("truncated_hello", "replay", "truncated frame"),
    ("bogus_length", "replay", "oversized frame: the header announces 4294967295 bytes"),
    ("ok", "replay", None),
]


@pytest.mark.slow
def test_every_worker_and_meter_fault_is_one_run_recorded_and_the_session_goes_on(tmp_path):
    worker = stand_in(tmp_path / "python", FAKES / "fake_worker.py")
    meter = stand_in(tmp_path / "powermetrics", FAKES / "powermetrics_replay.py")
    matrix = fake_worker_matrix(tmp_path / "faults.toml", len(SESSION_RUNS), f'meter = "powermetrics"\n'
                                f'powermetrics = "{meter}"\ninterval_ms = 20\nbaseline_s = 0.5', order="sequential")
    modes = ";".join(f"run-{i:03d}={w}" for i, (w, _, _) in enumerate(SESSION_RUNS))
    p = cli(str(matrix), "--out", str(tmp_path / "out"), "--env", f"diffusers={worker}",
            env={"CDB_CACHE_DIR": str(tmp_path / "cache"), "FAKE_MODES": modes, "CDB_REPLAY_FILE": str(CAPTURE),
                 "CDB_REPLAY_MODES": ",".join(m for _, m, _ in SESSION_RUNS if m != "replay"),
                 "CDB_REPLAY_COUNTER": str(tmp_path / "meter-starts")}, timeout=600)
    assert p.returncode == 1, p.stderr[-3000:]  # some runs failed; none crashed the session
    assert "Traceback" not in p.stderr + p.stdout and "MarkupError" not in p.stderr
    assert "could not open [/Users/me/sd/v1-5.safetensors] [/]" in p.stderr  # text, not markup
    d = only_session(tmp_path / "out")
    runs = sorted((json.loads(ln) for ln in (d / "runs.jsonl").read_text().splitlines()), key=lambda r: r["run_index"])
    assert [r["run_index"] for r in runs] == list(range(len(SESSION_RUNS)))
    for r, (worker_fault, meter_fault, said) in zip(runs, SESSION_RUNS, strict=True):
        if worker_fault != "ok":
            assert r["status"] == "failed" and said in r["failure_reason"], r
            continue
        assert r["status"] == "ok", r
        if meter_fault in METER_FAULTS:
            assert said in r["energy_invalid"] and r["energy_per_step_j"] is None and r["energy_by_channel"] in ({}, None)
        elif said is not None:
            assert said in r["energy_unavailable_reason"] and r["energy_per_step_j"] is None
        else:
            assert r["energy_invalid"] is None and r["energy_per_step_j"] is not None
        assert r["meter_exit"] == ("exited with code 1 before it was stopped" if meter_fault == "exit_early" else "stopped")
        if meter_fault == "exit_early":
            assert "cannot open [/dev/xcpm] [bold]" in r["meter_stderr"]
    assert runs[SESSION_RUNS.index(("ok", "flood", "the meter recorded no samples"))]["meter_stats"]["overflow"] >= 1
    (cell,) = json.loads((d / "summary.json").read_text())["cells"]
    invalid = [i for i, (_, m, _) in enumerate(SESSION_RUNS) if m in METER_FAULTS]
    assert cell["energy_invalid_runs"] == invalid
    (sane,) = [r for r in runs if r["energy_per_step_j"] is not None]
    assert cell["energy_per_step_j"] == pytest.approx(sane["energy_per_step_j"])  # the only value in the statistics
    assert json.loads((d / "session.json").read_text())["status"] == "complete"
    assert "energy invalid" in (d / "report.md").read_text()
