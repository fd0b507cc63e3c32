"""runs.csv: one row per run for spreadsheets and notebooks; scalar fields as they are in
runs.jsonl, energy per channel flattened to `<channel>.<field>` columns."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

FIRST = ("session_id", "cell_id", "run_index", "order_index", "status", "failure_reason")


def _row(r: dict[str, Any]) -> dict[str, Any]:
    row = {k: v for k, v in r.items() if not isinstance(v, (dict, list))}
    for ch, fields in (r.get("energy_by_channel") or {}).items():
        row.update({f"{ch}.{k}": v for k, v in fields.items()})
    return row


def write_runs_csv(path: Path, runs: list[dict[str, Any]]) -> None:
    rows = [_row(r) for r in runs]
    columns = [c for c in FIRST if any(c in row for row in rows)]
    for row in rows:
        columns += [k for k in row if k not in columns]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, restval="")
        w.writeheader()
        w.writerows(rows)
