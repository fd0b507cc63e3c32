"""Apple Silicon power through `powermetrics` (root): cpu, gpu and ane channels per sample.

One powermetrics process per run, started before the cooldown and stopped after the timed
window. Samples are anchored by their arrival time and their own `elapsed_ns`; the document's
`timestamp` (one-second resolution) is ignored. The fixed /usr/bin/powermetrics runs through a
root meter broker (broker.py), which hands its output streams over: the one forked under sudo,
or else this machine's `sudo orchestrate broker` where one answers; anything else,
including an executable named by `[power] powermetrics` or CDB_POWERMETRICS (tests run a replay
of real captured output that way), runs as the orchestrator's own user under the guard, so it
dies with the orchestrator. Either way the run keeps how the process ended and the end of its
stderr."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from orchestrator.energy.arithmetic import Interval
from orchestrator.energy.meters import broker
from orchestrator.energy.meters.base import Availability, Meter, MeterRecord, MeterSpec, Reading
from orchestrator.energy.meters.plist_stream import PlistStream, Sample
from orchestrator.errors import describe_exit
from orchestrator.processes import end_process

STDERR_TAIL_BYTES = 2000


def executable(configured: str | None = None) -> str:
    return os.environ.get("CDB_POWERMETRICS") or configured or broker.POWERMETRICS


def _broker(exe: str) -> broker.BrokerClient | None:
    """The broker that runs `exe`, where it is the fixed powermetrics and a broker answers."""
    return broker.client() if exe == broker.POWERMETRICS else None


def available(configured: str | None = None) -> Availability:
    exe = executable(configured)
    client = _broker(exe)
    if client is not None:  # the broker's side is where it runs, and what it sees counts
        if client.powermetrics is None:
            return Availability(False, f"{exe} not found by {client.where} (powermetrics is macOS-only)")
        return Availability(True, f"{client.powermetrics} through {client.where}")
    if not (Path(exe).is_file() or shutil.which(exe)):
        return Availability(False, f"{exe} not found (powermetrics is macOS-only)")
    if exe == broker.POWERMETRICS and os.geteuid() != 0:
        return Availability(False, "powermetrics needs root: run the session under sudo, or start this machine's "
                                   f"meter broker (sudo orchestrate broker; none answers at {broker.socket_path()})")
    return Availability(True, exe)


def intervals(samples: list[Sample]) -> list[Interval]:
    """Each sample ends at its arrival and lasts its elapsed_ns; a start that would overlap the
    previous sample (arrival jitter) is moved to that sample's end. The interval keeps elapsed_ns
    as its duration, so its power is always the sample's energy over its own elapsed time. A
    sample that claims no duration is kept as an empty interval, for the validity check to name."""
    out: list[Interval] = []
    for s in samples:
        start = s.arrival_ns - max(s.elapsed_ns, 0)
        if out and start < out[-1].end_ns:
            start = out[-1].end_ns
        if s.arrival_ns > start or s.elapsed_ns <= 0:
            out.append(Interval(min(start, s.arrival_ns), s.arrival_ns, s.joules, s.elapsed_ns))
    return out


class PowermetricsMeter(Meter):
    name = "powermetrics"

    def __init__(self, interval_ms: int, configured: str | None = None):
        self._interval_ms = interval_ms
        self._exe = executable(configured)
        self._proc: subprocess.Popen | None = None  # run here, under the guard
        self._broker = _broker(self._exe)  # or run by a root broker
        self._threads: list[threading.Thread] = []
        self._stream = PlistStream()
        self._stderr = bytearray()

    def command(self) -> list[str]:
        return [self._exe, *broker.command(self._interval_ms, list(broker.SAMPLERS))[1:]]

    def version(self) -> str:
        exe, through = self._exe, ""
        if self._broker is not None:
            exe, through = self._broker.powermetrics or exe, f" through {self._broker.where}"
        return f"{exe} ({','.join(broker.SAMPLERS)}, -i {self._interval_ms}){through}"

    def update_interval_s(self) -> float:
        return self._interval_ms / 1e3

    def start(self) -> None:
        self._stream, self._stderr = PlistStream(), bytearray()
        if self._broker is not None:
            _, out_fd, err_fd = self._broker.start(self._interval_ms, list(broker.SAMPLERS))
        else:
            self._proc = subprocess.Popen([sys.executable, "-m", "orchestrator.energy.meters.guard", "--", *self.command()],
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
            assert self._proc.stdout is not None and self._proc.stderr is not None
            out_fd, err_fd = os.dup(self._proc.stdout.fileno()), os.dup(self._proc.stderr.fileno())
            self._proc.stdout.close()
            self._proc.stderr.close()
        self._threads = [threading.Thread(target=self._read, args=(out_fd,), name="powermetrics-reader", daemon=True),
                         threading.Thread(target=self._read_stderr, args=(err_fd,), name="powermetrics-stderr",
                                          daemon=True)]
        for t in self._threads:
            t.start()

    def _read(self, fd: int) -> None:
        try:
            while chunk := os.read(fd, 1 << 16):
                self._stream.feed(chunk, time.monotonic_ns())
            self._stream.finish()
        finally:
            os.close(fd)

    def _read_stderr(self, fd: int) -> None:
        try:
            while chunk := os.read(fd, 1 << 12):
                self._stderr += chunk
                del self._stderr[:-STDERR_TAIL_BYTES]
        finally:
            os.close(fd)

    def stop(self) -> MeterRecord:
        if self._broker is not None:
            try:
                code, ended_before = self._broker.stop()
            except (broker.BrokerError, OSError) as e:
                code, ended_before = None, True
                self._stderr += f"\n(meter broker: {e})".encode()
        else:
            assert self._proc is not None
            ended_before = self._proc.poll() is not None
            code = end_process(self._proc, grace_s=5)
        for t in self._threads:
            t.join(timeout=5)
        record = self.peek()
        record.exit_status = f"{describe_exit(code)} before it was stopped" if ended_before else "stopped"
        record.stderr_tail = self._stderr.decode(errors="replace")
        return record

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
