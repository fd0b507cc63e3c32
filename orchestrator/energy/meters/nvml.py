"""NVIDIA GPU energy through NVML (nvidia-ml-py): `nvmlDeviceGetTotalEnergyConsumption`, a
cumulative millijoule counter, polled at 100 Hz with monotonic stamps, plus power, temperature,
SM clock and clocks-event (throttle) reasons at 10 Hz.

The counter itself moves in steps (about every 100 ms on an H200), far slower than we poll.
Intervals are therefore cut at the counter's changes, each stamped with the first poll that saw
the new value, and carry the energy of that step. A window edge that falls inside a step is split
at the baseline power (energy/arithmetic.py): the part outside the window is charged the loaded,
idle worker's power and the window keeps the rest. Each edge's position is uncertain by one poll
period (10 ms), not by one counter step."""

from __future__ import annotations

import time

import numpy as np

from orchestrator.energy.arithmetic import Interval
from orchestrator.energy.meters.base import Availability, Meter, MeterRecord, MeterSpec, Reading
from orchestrator.energy.meters.polling import Poller

POLL_S = 0.01
READINGS_EVERY = 10  # polls
CALIBRATE_S = 1.5
# clocks-event reasons that mean the GPU was slowed by heat or a power brake
THROTTLE_BITS = {
    "sw_thermal_slowdown": 0x20,
    "hw_thermal_slowdown": 0x40,
    "hw_power_brake_slowdown": 0x80,
    "hw_slowdown": 0x08,
}


def _nvml():
    import pynvml

    pynvml.nvmlInit()
    return pynvml


def available(index: int = 0) -> Availability:
    try:
        nv = _nvml()
    except Exception as e:  # ImportError, or NVMLError when no driver: either way not here
        return Availability(False, f"NVML unavailable ({type(e).__name__}: {e})")
    try:
        count = nv.nvmlDeviceGetCount()
        if index >= count:
            return Availability(False, f"GPU {index} requested, NVML sees {count}")
        h = nv.nvmlDeviceGetHandleByIndex(index)
        nv.nvmlDeviceGetTotalEnergyConsumption(h)
        return Availability(True, f"GPU {index}: {nv.nvmlDeviceGetName(h)}")
    except Exception as e:
        return Availability(False, f"NVML energy counter not readable: {e}")


def throttle_reasons(index: int = 0) -> list[str] | None:
    """The heat and power-brake slowdowns active on GPU `index` now; None where NVML cannot tell."""
    try:
        nv = _nvml()
    except Exception:
        return None
    try:
        h = nv.nvmlDeviceGetHandleByIndex(index)
        read = getattr(nv, "nvmlDeviceGetCurrentClocksEventReasons", None) or nv.nvmlDeviceGetCurrentClocksThrottleReasons
        bits = int(read(h))
    except Exception:
        return None
    finally:
        nv.nvmlShutdown()
    return [name for name, bit in THROTTLE_BITS.items() if bits & bit]


def counter_intervals(samples: list[tuple[int, int]]) -> list[Interval]:
    """Intervals between the polls at which the millijoule counter changed."""
    changes = [(t, v) for (t, v), (_, prev) in zip(samples[1:], samples) if v != prev]
    return [Interval(t0, t1, {"gpu": (v1 - v0) / 1e3}) for (t0, v0), (t1, v1) in zip(changes, changes[1:])]


def update_interval(samples: list[tuple[int, int]]) -> float | None:
    ivs = counter_intervals(samples)
    return float(np.median([iv.seconds for iv in ivs])) if len(ivs) >= 2 else None


class NvmlMeter(Meter):
    name = "nvml"

    def __init__(self, index: int = 0, poll_s: float = POLL_S):
        self._nv = _nvml()
        self._h = self._nv.nvmlDeviceGetHandleByIndex(index)
        self._reasons = (getattr(self._nv, "nvmlDeviceGetCurrentClocksEventReasons", None)
                         or self._nv.nvmlDeviceGetCurrentClocksThrottleReasons)
        self._count = 0
        self._readings: list[Reading] = []
        self._poller = Poller(self._read, poll_s)
        self._poller.start()
        time.sleep(CALIBRATE_S)
        self._update_s = update_interval(self._poller.stop()) or 0.1
        # read now: session.json asks for it after the session has closed its meters, when NVML
        # answers only if some other init is still open
        self._version = (f"NVML {self._nv.nvmlSystemGetNVMLVersion()}, driver {self._nv.nvmlSystemGetDriverVersion()}, "
                         f"GPU {index} {self._nv.nvmlDeviceGetName(self._h)}, counter step {self._update_s * 1e3:.0f} ms")

    def _read(self) -> int:
        """The energy counter first, right at the poller's time stamp; the slower extra readings after."""
        nv, h = self._nv, self._h
        energy = int(nv.nvmlDeviceGetTotalEnergyConsumption(h))
        self._count += 1
        if self._count % READINGS_EVERY == 1:
            self._readings.append(Reading(time.monotonic_ns(), {
                "power_w": nv.nvmlDeviceGetPowerUsage(h) / 1e3,
                "temperature_c": nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU),
                "sm_clock_mhz": nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM),
                "clocks_event_reasons": int(self._reasons(h)),
            }))
        return energy

    def version(self) -> str:
        return self._version

    def update_interval_s(self) -> float:
        return self._update_s

    def start(self) -> None:
        self._readings = []
        self._poller.start()

    def _record(self, samples: list[tuple[int, int]]) -> MeterRecord:
        return MeterRecord(counter_intervals(samples), list(self._readings),
                           {"polls": len(samples), "counter_update_interval_s": update_interval(samples)})

    def peek(self) -> MeterRecord:
        return self._record(list(self._poller.samples))

    def stop(self) -> MeterRecord:
        return self._record(self._poller.stop())

    def throttled(self, record: MeterRecord, start_ns: int, end_ns: int) -> bool | None:
        mask = sum(THROTTLE_BITS.values())
        seen = [r.values["clocks_event_reasons"] for r in record.readings if start_ns <= r.t_ns <= end_ns]
        return any(v & mask for v in seen) if seen else None

    def close(self) -> None:
        self._nv.nvmlShutdown()


METER = MeterSpec("nvml", available=lambda power: available(), make=lambda power, index: NvmlMeter(index),
                  per_gpu=True, throttle_reasons=throttle_reasons, sees_host=False)
