"""Apple Silicon power through `powermetrics` (root): cpu, gpu and ane channels per sample.

One powermetrics process per run, started before the cooldown and stopped after the timed
window, under the guard so it dies with the orchestrator. Samples are anchored by their arrival
time and their own `elapsed_ns`; the document's `timestamp` (one-second resolution) is ignored.
The executable is configurable (`[power] powermetrics` or CDB_POWERMETRICS), so tests run a
replay of real captured output in its place."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from orchestrator.energy.arithmetic import Interval
from orchestrator.energy.meters.base import Availability, Meter, MeterRecord, MeterSpec, Reading
from orchestrator.energy.meters.plist_stream import PlistStream, Sample

DEFAULT_EXECUTABLE = "/usr/bin/powermetrics"
SAMPLERS = "cpu_power,gpu_power,ane_power,thermal"


def executable(configured: str | None = None) -> str:
    return os.environ.get("CDB_POWERMETRICS") or configured or DEFAULT_EXECUTABLE


def available(configured: str | None = None) -> Availability:
    exe = executable(configured)
    if not (Path(exe).is_file() or shutil.which(exe)):
        return Availability(False, f"{exe} not found (powermetrics is macOS-only)")
    if exe == DEFAULT_EXECUTABLE and os.geteuid() != 0:
        return Availability(False, "powermetrics needs root: run the session under sudo")
    return Availability(True, exe)


def intervals(samples: list[Sample]) -> list[Interval]:
    """Each sample ends at its arrival and lasts its elapsed_ns; a start that would overlap the
    previous sample (arrival jitter) is moved to that sample's end. The interval keeps elapsed_ns
    as its duration, so its power is always the sample's energy over its own elapsed time."""
    out: list[Interval] = []
    for s in samples:
        start = s.arrival_ns - s.elapsed_ns
        if out and start < out[-1].end_ns:
            start = out[-1].end_ns
        if s.arrival_ns > start:
            out.append(Interval(start, s.arrival_ns, s.joules, s.elapsed_ns))
    return out


class PowermetricsMeter(Meter):
    name = "powermetrics"

    def __init__(self, interval_ms: int, configured: str | None = None):
        self._interval_ms = interval_ms
        self._exe = executable(configured)
        self._proc: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None
        self._stream = PlistStream()

    def command(self) -> list[str]:
        return [self._exe, "--samplers", SAMPLERS, "-i", str(self._interval_ms), "-f", "plist", "-b", "0"]

    def version(self) -> str:
        return f"{self._exe} ({SAMPLERS}, -i {self._interval_ms})"

    def update_interval_s(self) -> float:
        return self._interval_ms / 1e3

    def start(self) -> None:
        self._stream = PlistStream()
        self._proc = subprocess.Popen([sys.executable, "-m", "orchestrator.energy.meters.guard", "--", *self.command()],
                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        self._thread = threading.Thread(target=self._read, name="powermetrics-reader", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        while chunk := os.read(fd, 1 << 16):
            self._stream.feed(chunk, time.monotonic_ns())
        self._stream.finish()

    def stop(self) -> MeterRecord:
        assert self._proc is not None and self._proc.stdout is not None and self._thread is not None
        self._proc.terminate()
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._thread.join(timeout=5)
        self._proc.stdout.close()
        return self.peek()

    def peek(self) -> MeterRecord:
        samples = list(self._stream.samples)
        readings = [Reading(s.arrival_ns, {"thermal_pressure": s.thermal_pressure}) for s in samples
                    if s.thermal_pressure is not None]
        return MeterRecord(intervals(samples), readings, self._stream.counters())

    def throttled(self, record: MeterRecord, start_ns: int, end_ns: int) -> bool | None:
        seen = [r.values["thermal_pressure"] for r in record.readings if start_ns <= r.t_ns <= end_ns + self._interval_ms * 10**6]
        if not seen:
            return None
        return any(p != "Nominal" for p in seen)


METER = MeterSpec("powermetrics", available=lambda power: available(power.powermetrics),
                  make=lambda power, index: PowermetricsMeter(power.interval_ms, power.powermetrics))
