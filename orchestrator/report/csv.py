"""runs.csv: one row per run for spreadsheets and notebooks; scalar fields as they are in
runs.jsonl, energy per channel flattened to `<channel>.<field>` columns."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from orchestrator.results.records import RunRecord
from workers.contract.typed import to_dict

FIRST = ("session_id", "cell_id", "run_index", "order_index", "status", "failure_reason")


def _row(r: RunRecord) -> dict[str, Any]:
    row = {k: v for k, v in to_dict(r).items() if not isinstance(v, (dict, list))}
    for ch, fields in r.energy_by_channel.items():
        row.update({f"{ch}.{k}": v for k, v in fields.items()})
    return row


def write_runs_csv(path: Path, runs: list[RunRecord]) -> None:
    rows = [_row(r) for r in runs]
    columns = [c for c in FIRST if any(c in row for row in rows)]
    for row in rows:
        columns += [k for k in row if k not in columns]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, restval="")
        w.writeheader()
        w.writerows(rows)
