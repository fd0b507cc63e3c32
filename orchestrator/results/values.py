"""One number per run for any metric, by key: `name` is a run field, `name[ch]` that field of
channel `ch` in `energy_by_channel`. The summary, the comparisons and the figures all take their
per-run values here, so they count the same runs."""

from __future__ import annotations

from typing import Any

from orchestrator.energy.arithmetic import STEPS_PER_IMAGE
from orchestrator.results.records import RunRecord

IMAGE_ESTIMATE = "estimated_energy_per_50_step_image_j"


def _value(r: RunRecord, key: str) -> Any:
    """A record with energy per step but no image estimate (written by other tools) gets 50 x the step."""
    if key.endswith("]"):
        name, ch = key[:-1].split("[")
        fields: dict[str, Any] = r.energy_by_channel.get(ch) or {}
    else:
        name, fields = key, {key: getattr(r, key, None), "energy_per_step_j": r.energy_per_step_j}
    if name == IMAGE_ESTIMATE and fields.get(name) is None and isinstance(step := fields.get("energy_per_step_j"), (int, float)):
        return STEPS_PER_IMAGE * step
    return fields.get(name)


def run_values(runs: list[RunRecord], key: str) -> list[tuple[int, float]]:
    """(run_index, value) of every run that has a number for `key`, in the order given."""
    return [(r.run_index, v) for r in runs if isinstance(v := _value(r, key), (int, float)) and not isinstance(v, bool)]
