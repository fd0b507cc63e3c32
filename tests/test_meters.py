"""Power meters and the energy arithmetic, on real captures and fake sysfs trees."""

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import REPO

from orchestrator.energy.arithmetic import Interval, median_power, overlap_energy, run_energy
from orchestrator.energy.meters import nvml, rapl
from orchestrator.energy.meters.base import Availability, Meter, MeterRecord, MeterSpec
from orchestrator.energy.meters.plist_stream import PlistStream
from orchestrator.energy.meters.powermetrics import PowermetricsMeter, intervals

HERE = Path(__file__).parent
M4 = HERE / "fixtures" / "powermetrics" / "m4-plist-1sample-thermal.plist"
M1PRO = REPO.parent / "shared" / "fixtures" / "powermetrics" / "m1pro-plist-4samples.bin"
needs_shared = pytest.mark.skipif(not M1PRO.is_file(), reason="../shared/fixtures (AGPL capture) is not beside this checkout")
# SOURCES.md of the captures: processor.*_energy in mJ per document
M1PRO_MJ = {"cpu": [278, 297, 334, 369], "gpu": [13, 36, 67, 66], "ane": [0, 0, 0, 0]}
M1PRO_ELAPSED = [132882041, 122616208, 129526291, 131757791]


# -- energy arithmetic ----------------------------------------------------------------------

def test_overlap_energy_weights_partial_intervals():
    ivs = [Interval(0, 100, {"gpu": 10.0}), Interval(100, 200, {"gpu": 20.0})]
    assert overlap_energy(ivs, 50, 150) == {"gpu": pytest.approx(5.0 + 10.0)}
    assert overlap_energy(ivs, 200, 300) == {}


def test_run_energy_subtracts_the_baseline_median_from_the_counted_energy():
    s = 10**9  # 1 s intervals: joules read as watts
    ivs = [Interval(i * s, (i + 1) * s, {"gpu": w, "cpu": 1.0}) for i, w in enumerate([50, 52, 500, 50, 300, 310, 305, 900])]
    e = run_energy(ivs, baseline=(0, 4 * s), window=(4 * s, 8 * s), iterations=8)
    assert e.baseline_w["gpu"] == pytest.approx(51.0)  # median of 50 52 500 50: one spike does not move it
    # the window is a quantity: its 900 J interval was spent, so it counts
    assert e.window_energy_j["gpu"] == pytest.approx(300 + 310 + 305 + 900)
    assert e.active_w["gpu"] == pytest.approx(1815 / 4)
    assert e.energy_per_step_j["gpu"] == pytest.approx((1815 - 51.0 * 4) / 8)
    assert e.gross_energy_per_step_j["gpu"] == pytest.approx(1815 / 8)
    assert e.energy_per_step_j["total"] == pytest.approx((1815 + 4 - 52.0 * 4) / 8)
    assert e.estimated_energy_per_50_step_image_j["gpu"] == pytest.approx(50 * e.energy_per_step_j["gpu"])
    assert (e.intervals_in_window, e.intervals_in_baseline) == (4, 4)


def test_run_energy_follows_power_that_changes_inside_the_window():
    """A launch-bound run: the GPU's power halves for the last 0.6 s of the window. A median of
    interval powers would report the higher level for the whole window; the counted energy does not."""
    s = 10**8  # 100 ms intervals, like NVML's counter
    watts = [120] * 20 + [400] * 14 + [200] * 6
    ivs = [Interval(i * s, (i + 1) * s, {"gpu": w * 0.1}) for i, w in enumerate(watts)]
    e = run_energy(ivs, baseline=(0, 20 * s), window=(20 * s, 40 * s), iterations=40)
    assert e.energy_per_step_j["gpu"] == pytest.approx(((400 - 120) * 1.4 + (200 - 120) * 0.6) / 40)


def test_window_edges_give_the_outside_part_of_an_interval_the_baseline_power():
    """The window starts 30 ms into a 100 ms counter step and ends 40 ms into another: the
    parts outside ran idle (baseline), so the window keeps the rest of each step's energy."""
    ms = 10**6
    base_w, loop_w = 120.0, 400.0
    ivs = [Interval(i * 100 * ms, (i + 1) * 100 * ms, {"gpu": base_w * 0.1}) for i in range(10)]
    ivs.append(Interval(1000 * ms, 1100 * ms, {"gpu": base_w * 0.03 + loop_w * 0.07}))
    ivs += [Interval(i * 100 * ms, (i + 1) * 100 * ms, {"gpu": loop_w * 0.1}) for i in range(11, 30)]
    ivs.append(Interval(3000 * ms, 3100 * ms, {"gpu": loop_w * 0.04 + base_w * 0.06}))
    e = run_energy(ivs, baseline=(0, 1000 * ms), window=(1030 * ms, 3040 * ms), iterations=10)
    assert e.window_energy_j["gpu"] == pytest.approx(loop_w * 2.01)
    assert e.energy_per_step_j["gpu"] == pytest.approx((loop_w - base_w) * 2.01 / 10)
    # without a baseline, edges split in proportion to time, which hands loop energy to the idle side
    assert overlap_energy(ivs, 1030 * ms, 3040 * ms)["gpu"] < loop_w * 2.01 - 5


def test_a_sample_keeps_its_own_power_wherever_it_is_placed():
    """powermetrics samples carry their own elapsed time; placed on our axis (arrival minus
    elapsed, moved past the previous one) a sample may cover less than that, as when a replay
    sends 1 s samples every 50 ms. Its power stays its energy over its own elapsed time."""
    ms = 10**6
    ivs = [Interval(i * 50 * ms, (i + 1) * 50 * ms, {"cpu": 3.049}, duration_ns=1023685416) for i in range(40)]
    e = run_energy(ivs, baseline=(0, 1000 * ms), window=(1000 * ms, 2000 * ms), iterations=4)
    assert e.active_w["cpu"] == pytest.approx(3.049 / 1.023685416)
    assert e.window_energy_j["cpu"] == pytest.approx(3.049 / 1.023685416 * 1.0)
    assert e.energy_per_step_j["cpu"] == pytest.approx(0.0, abs=1e-9)


def test_window_shorter_than_an_interval_falls_back_to_overlap():
    ivs = [Interval(0, 10**9, {"gpu": 100.0})]
    assert median_power(ivs, 2 * 10**8, 3 * 10**8)["gpu"] == pytest.approx(100.0)


# -- powermetrics -----------------------------------------------------------------------------

def test_m4_capture_parses_to_its_energy_keys():
    stream = PlistStream()
    stream.feed(M4.read_bytes(), 1)  # one document without a NUL: complete at its </plist>
    (s,) = stream.samples
    assert s.joules == {"cpu": 3.049, "gpu": 0.276, "ane": 0.0}
    assert s.elapsed_ns == 1023685416 and s.thermal_pressure == "Nominal"


@needs_shared
def test_every_m1pro_document_parses_to_exactly_its_energy():
    stream = PlistStream()
    stream.feed(M1PRO.read_bytes(), 1)
    stream.finish()
    assert stream.counters() == {"documents": 4, "garbage": 0, "truncated": 0, "overflow": 0}
    for i, s in enumerate(stream.samples):
        assert s.joules == {ch: M1PRO_MJ[ch][i] / 1e3 for ch in M1PRO_MJ}
        assert s.elapsed_ns == M1PRO_ELAPSED[i]
        assert s.thermal_pressure is None  # the thermal sampler was not on in this capture


def test_garbage_and_a_truncated_last_document_are_skipped_and_counted():
    doc = M4.read_bytes()
    stream = PlistStream()
    data = doc + b"\x00" + b"<?xml garbage \xff\xfe" + b"\x00" + doc + b"\x00" + doc[: len(doc) // 2]
    for i in range(0, len(data), 4096):  # arrives in pieces, as from a pipe
        stream.feed(data[i:i + 4096], i)
    stream.finish()
    assert stream.counters() == {"documents": 2, "garbage": 1, "truncated": 1, "overflow": 0}


def test_documents_framed_by_newlines_alone_parse_as_they_arrive():
    """A capture saved without powermetrics' NULs, with text before one document."""
    doc = M4.read_bytes()
    assert doc.endswith(b"</plist>\n") and b"\x00" not in doc
    stream = PlistStream()
    stream.feed(doc, 1)
    assert len(stream.samples) == 1  # complete at its </plist>, before anything else arrives
    stream.feed(b"powermetrics: some warning\n" + doc + doc, 2)
    stream.finish()
    assert [s.arrival_ns for s in stream.samples] == [1, 2, 2]
    assert stream.counters() == {"documents": 3, "garbage": 1, "truncated": 0, "overflow": 0}
    assert all(s.joules == {"cpu": 3.049, "gpu": 0.276, "ane": 0.0} for s in stream.samples)


def test_power_keys_are_used_when_energy_keys_are_absent():
    import plistlib

    d = plistlib.loads(M4.read_bytes())
    for ch in ("cpu", "gpu", "ane"):
        del d["processor"][f"{ch}_energy"]
    stream = PlistStream()
    stream.feed(plistlib.dumps(d) + b"\x00", 1)
    s = stream.samples[0]
    assert s.joules["cpu"] == pytest.approx(2978.45e-3 * 1.023685416)


def test_samples_are_anchored_by_arrival_and_their_own_duration():
    from orchestrator.energy.meters.plist_stream import Sample

    ivs = intervals([Sample(1_000, 400, {"cpu": 1.0}, None), Sample(1_390, 400, {"cpu": 1.0}, None)])
    assert [(iv.start_ns, iv.end_ns) for iv in ivs] == [(600, 1_000), (1_000, 1_390)]
    assert [iv.seconds for iv in ivs] == [400e-9, 400e-9]  # power uses the sample's own duration


@pytest.fixture
def replay(tmp_path, monkeypatch):
    """The replay program as the powermetrics executable, through CDB_POWERMETRICS."""
    exe = tmp_path / "powermetrics"
    exe.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{HERE / "fakes" / "powermetrics_replay.py"}" "$@"\n')
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("CDB_POWERMETRICS", str(exe))
    monkeypatch.setenv("CDB_REPLAY_PIDFILE", str(tmp_path / "pid"))
    return tmp_path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
@needs_shared
def test_meter_fed_by_the_replay_matches_the_capture(replay, monkeypatch):
    monkeypatch.setenv("CDB_REPLAY_FILE", str(M1PRO))
    meter = PowermetricsMeter(interval_ms=50)
    meter.start()
    time.sleep(1.5)  # interpreter start-up, then about 20 documents at -i 50
    record = meter.stop()
    assert record.stats["documents"] >= 5 and record.stats["garbage"] == 0
    got = record.intervals[:4]
    for ch in ("cpu", "gpu"):
        assert sum(iv.joules[ch] for iv in got) == pytest.approx(sum(M1PRO_MJ[ch]) / 1e3)
    assert all(iv.end_ns > iv.start_ns for iv in record.intervals)
    assert not _alive(int((replay / "pid").read_text()))


@pytest.mark.slow
def test_meter_reports_thermal_pressure(replay, monkeypatch):
    monkeypatch.setenv("CDB_REPLAY_FILE", str(M4))
    meter = PowermetricsMeter(interval_ms=30)
    meter.start()
    time.sleep(1.5)
    record = meter.stop()
    assert record.intervals and record.readings
    assert meter.throttled(record, record.intervals[0].start_ns, record.intervals[-1].end_ns) is False


def test_meter_process_dies_with_a_sigkilled_parent(replay, monkeypatch):
    """Run a meter inside a child process, SIGKILL that child, and the replay must be gone in 2 s."""
    monkeypatch.setenv("CDB_REPLAY_FILE", str(M4))
    code = ("import time; from orchestrator.energy.meters.powermetrics import PowermetricsMeter as M; "
            "m = M(interval_ms=50); m.start(); time.sleep(60)")
    parent = subprocess.Popen([sys.executable, "-c", code], cwd=REPO)
    pidfile = replay / "pid"
    deadline = time.monotonic() + 20
    while not pidfile.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    pid = int(pidfile.read_text())
    assert _alive(pid)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    t0 = time.monotonic()
    while _alive(pid) and time.monotonic() - t0 < 10:  # the guard's poll and its 2 s grace, with room for a loaded host
        time.sleep(0.05)
    assert not _alive(pid), "the meter process outlived its orchestrator"


# -- RAPL -------------------------------------------------------------------------------------

def _zone(root: Path, name: str, label: str, uj: int, max_uj: int) -> Path:
    z = root / name
    z.mkdir(parents=True)
    (z / "name").write_text(label + "\n")
    (z / "energy_uj").write_text(f"{uj}\n")
    (z / "max_energy_range_uj").write_text(f"{max_uj}\n")
    return z


def _set_counter(path: Path, uj: int) -> None:
    """Replace a counter file whole: a sysfs read sees one value, never a half-written file."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"{uj}\n")
    os.replace(tmp, path)


def test_rapl_domains_and_wraparound(tmp_path):
    pkg = _zone(tmp_path, "intel-rapl:0", "package-0", 262_143_000_000, 262_143_328_850)
    _zone(tmp_path, "intel-rapl:0:0", "core", 5, 262_143_328_850)
    dram = _zone(tmp_path, "intel-rapl:0:2", "dram", 1_000_000, 65_712_999_613)
    assert rapl.available(tmp_path).ok
    doms = rapl.domains(tmp_path)
    assert [d.channel for d in doms] == ["package-0", "dram-0"]
    samples = [(0, [262_143_000_000, 1_000_000]), (10**9, [171_150, 3_000_000])]  # the package counter wrapped
    (iv,) = rapl.differences(samples, doms)
    assert iv.joules["package-0"] == pytest.approx((262_143_328_850 - 262_143_000_000 + 171_150) / 1e6)
    assert iv.joules["dram-0"] == pytest.approx(2.0)
    meter = rapl.RaplMeter(tmp_path, poll_s=0.005)
    meter.start()
    time.sleep(0.05)
    _set_counter(pkg / "energy_uj", 100)  # wraps while the meter runs
    _set_counter(dram / "energy_uj", 1_500_000)
    time.sleep(0.05)
    record = meter.stop()
    total = {ch: sum(iv.joules[ch] for iv in record.intervals) for ch in ("package-0", "dram-0")}
    assert total["package-0"] == pytest.approx((262_143_328_850 - 262_143_000_000 + 100) / 1e6)
    assert total["dram-0"] == pytest.approx(0.5)


def test_rapl_unavailable_reasons(tmp_path):
    assert "does not exist" in rapl.available(tmp_path / "none").reason
    (tmp_path / "empty").mkdir()
    assert "no RAPL package domain" in rapl.available(tmp_path / "empty").reason


# -- NVML -------------------------------------------------------------------------------------

def test_nvml_intervals_are_cut_at_counter_changes():
    ms = 10**6
    # polled every 10 ms; the counter steps every ~100 ms
    samples = [(t * 10 * ms, 1000 + 8000 * (t // 10)) for t in range(0, 41)]
    ivs = nvml.counter_intervals(samples)
    assert [(iv.start_ns // ms, iv.end_ns // ms) for iv in ivs] == [(100, 200), (200, 300), (300, 400)]
    assert all(iv.joules == {"gpu": 8.0} for iv in ivs)
    assert nvml.update_interval(samples) == pytest.approx(0.1)


def test_nvml_absent_says_why(monkeypatch):
    def no_driver():
        raise ImportError("No module named 'pynvml'")

    monkeypatch.setattr(nvml, "_nvml", no_driver)
    a = nvml.available()
    assert not a.ok and a.reason == "NVML unavailable (ImportError: No module named 'pynvml')"
    assert nvml.throttle_reasons(0) is None


# -- choosing a meter -------------------------------------------------------------------------

def _power(**kw):
    from dataclasses import replace

    from orchestrator.config.matrix import default_power

    return replace(default_power(), **kw)


def _unavailable(spec, why):
    from dataclasses import replace

    from orchestrator.energy.meters.base import Availability

    return replace(spec, available=lambda power: Availability(False, why))


def test_auto_records_why_each_meter_was_skipped(monkeypatch):
    from orchestrator.energy import meters
    from orchestrator.energy.meters.base import NoMeter

    monkeypatch.setattr(meters, "REGISTRY", tuple(_unavailable(s, f"no {s.name} here") for s in meters.REGISTRY))
    chosen = meters.choose(_power())
    assert chosen.name is None
    assert chosen.skipped == {"powermetrics": "no powermetrics here", "nvml": "no nvml here", "rapl": "no rapl here"}
    assert "energy is not measured" in chosen.reason
    cell = SimpleNamespace(id="c", device="cuda:1")  # all a meter reads of a cell
    none = chosen.for_cell(cell)
    assert isinstance(none, NoMeter) and not none.measures and none.reason == chosen.reason
    none.start()
    assert none.stop().intervals == [] and none.update_interval_s() == 0.0
    assert chosen.throttle_reasons(cell) is None


class ToyMeter(Meter):
    """What a contributor writes in orchestrator/energy/meters/toy.py: a source of 1 J every 10 ms."""

    name = "toy"

    def __init__(self, index: int):
        self.index = index

    def version(self) -> str:
        return f"toy 1.0, GPU {self.index}"

    def update_interval_s(self) -> float:
        return 0.01

    def start(self) -> None:
        pass

    def stop(self) -> MeterRecord:
        return MeterRecord([Interval(t, t + 10_000_000, {"toy": 1.0}) for t in range(0, 100_000_000, 10_000_000)])

    def peek(self) -> MeterRecord:
        return self.stop()


TOY = MeterSpec("toy", available=lambda power: Availability(True, "a toy on every host"),
                make=lambda power, index: ToyMeter(index), per_gpu=True, throttle_reasons=lambda index: ["toy_hot"])


@pytest.fixture
def toy_registered(monkeypatch):
    """The one registry line a contributor adds, first in the auto order."""
    from orchestrator.energy import meters

    monkeypatch.setattr(meters, "REGISTRY", (TOY, *meters.REGISTRY))


def test_a_new_meter_is_one_module_and_one_registry_line(toy_registered):
    from orchestrator.energy.meters import choose

    cell = SimpleNamespace(id="c", device="cuda:1")  # all a meter reads of a cell
    for chosen in (choose(_power()), choose(_power(meter="toy"))):
        assert chosen.name == "toy" and "a toy on every host" in chosen.reason
        meter = chosen.for_cell(cell)
        assert isinstance(meter, ToyMeter) and meter.index == 1  # per GPU: follows the cell's device
        assert chosen.throttle_reasons(cell) == ["toy_hot"]
        e = run_energy(meter.stop().intervals, (0, 30_000_000), (50_000_000, 100_000_000), iterations=5)
        assert e.energy_per_step_j["toy"] == pytest.approx(0.0)  # a flat source: nothing above its baseline
        assert e.gross_energy_per_step_j["toy"] == pytest.approx(1.0)


def test_an_unknown_meter_name_is_an_error():
    from orchestrator.energy.meters import choose
    from orchestrator.errors import UserError

    with pytest.raises(UserError, match="field 'meter': 'toy' is not one of auto, none, powermetrics, nvml, rapl"):
        choose(_power(meter="toy"))


def test_named_meter_that_is_missing_is_an_error(tmp_path):
    from orchestrator.energy.meters import choose
    from orchestrator.errors import UserError

    with pytest.raises(UserError, match='meter = "powermetrics" is not available'):
        choose(_power(meter="powermetrics", powermetrics=str(tmp_path / "absent")))
    none = choose(_power(meter="none"))
    assert none.name is None and none.reason == 'power.meter = "none": energy is not measured'


def test_auto_takes_the_replay_when_pointed_at_it(replay):
    from orchestrator.energy.meters import choose

    assert choose(_power()).name == "powermetrics"


class FakeNvml:
    """pynvml as far as NvmlMeter uses it, counting inits as NVML does: once every init has been
    shut down, every call raises (NVMLError_Uninitialized)."""

    NVML_TEMPERATURE_GPU, NVML_CLOCK_SM = 0, 1

    def __init__(self):
        self.inits, self.mj = 0, 0

    def _live(self):
        if self.inits <= 0:
            raise RuntimeError("NVMLError_Uninitialized")

    def nvmlInit(self):
        self.inits += 1

    def nvmlShutdown(self):
        self._live()
        self.inits -= 1

    def nvmlDeviceGetHandleByIndex(self, index):
        self._live()
        return index

    def nvmlDeviceGetTotalEnergyConsumption(self, h):
        self._live()
        self.mj += 1
        return self.mj

    def nvmlDeviceGetPowerUsage(self, h):
        return 100_000

    def nvmlDeviceGetTemperature(self, h, kind):
        return 40

    def nvmlDeviceGetClockInfo(self, h, kind):
        return 1980

    def nvmlDeviceGetCurrentClocksEventReasons(self, h):
        return 0

    def nvmlSystemGetNVMLVersion(self):
        self._live()
        return "13.580"

    def nvmlSystemGetDriverVersion(self):
        self._live()
        return "580.159.04"

    def nvmlDeviceGetName(self, h):
        self._live()
        return "NVIDIA H200"


def test_nvml_meter_names_its_version_after_it_is_closed(monkeypatch):
    # the session writes meter versions into session.json after closing its meters
    fake = FakeNvml()

    def init():
        fake.nvmlInit()
        return fake
    monkeypatch.setattr(nvml, "_nvml", init)
    monkeypatch.setattr(nvml, "CALIBRATE_S", 0.05)
    meter = nvml.NvmlMeter(0, poll_s=0.005)
    meter.close()
    assert fake.inits == 0
    assert meter.version().startswith("NVML 13.580, driver 580.159.04, GPU 0 NVIDIA H200, counter step ")
