"""A background thread that reads a counter at a fixed period with monotonic stamps, shared by
the meters whose sources are polled (NVML, RAPL)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any


class Poller:
    def __init__(self, read: Callable[[], Any], period_s: float):
        self._read = read
        self._period_ns = int(period_s * 1e9)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.samples: list[tuple[int, Any]] = []
        self.error: BaseException | None = None

    def start(self) -> None:
        self.samples = []
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="meter-poller", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        next_t = time.monotonic_ns()
        try:
            while not self._stop.is_set():
                t = time.monotonic_ns()
                self.samples.append((t, self._read()))
                next_t += self._period_ns
                self._stop.wait(max(0.0, (next_t - time.monotonic_ns()) / 1e9))
        except Exception as e:  # surfaced by stop(): a meter that broke mid-run must say so
            self.error = e

    def stop(self) -> list[tuple[int, Any]]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.error is not None:
            raise RuntimeError(f"meter polling failed: {self.error}") from self.error
        self.samples.append((time.monotonic_ns(), self._read()))
        return self.samples
