"""The worker's timed loop counts the minor page faults of its steps, the allocator state a CPU
run measured (docs/methodology.md, "Harness overhead"), and the session records them per step."""

from __future__ import annotations

import mmap

import numpy as np

from orchestrator.results.records import RunRecord
from workers.backends.base import LoadedModel
from workers.serve import timed_loop

PAGES = 64


class _Model(LoadedModel):
    """A step that maps `pages` fresh anonymous pages and writes one byte in each, as a step
    whose tensors come fresh from the kernel does; 0 pages: a step that reuses its memory."""

    realized: dict = {}

    def __init__(self, pages: int):
        self.pages = pages

    def step(self) -> None:
        if self.pages:
            with mmap.mmap(-1, self.pages * mmap.PAGESIZE) as m:
                for i in range(self.pages):
                    m[i * mmap.PAGESIZE] = 1

    def output(self) -> np.ndarray:
        return np.zeros((1, 4, 1, 1), np.float32)


def test_the_timed_loop_counts_the_page_faults_its_steps_take():
    starts, ends, touching = timed_loop(_Model(PAGES), iterations=50, min_window_s=0)
    assert len(starts) == len(ends) == 50
    assert touching >= PAGES * 50
    _, _, reusing = timed_loop(_Model(0), iterations=50, min_window_s=0)
    assert reusing < PAGES * 50 / 4


def test_records_of_earlier_workers_read_their_faults_as_null():
    record = RunRecord.read({"schema_version": 2, "session_id": "s", "cell_id": "c", "run_index": 0, "status": "ok",
                             "latency_ms_median": 1.0}, "runs.jsonl:1")
    assert record.minor_faults_per_step is None and record.latency_ms_median == 1.0
