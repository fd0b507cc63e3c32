"""The session folder (DESIGN section 5): session.json, runs.jsonl, samples/, logs/, and the
derived summary.json and report.md. Runs are appended and fsync'd as each one ends, so a crash
loses at most the run in flight."""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from orchestrator.results.records import RunRecord, SessionRecord
from workers.contract.typed import to_dict

SCHEMA_VERSION = 1
RUN_STATUSES = ("ok", "failed", "unsupported")
RUNS = "runs.jsonl"
SESSION = "session.json"


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def new_session_id() -> str:
    """Sorts by time; the suffix keeps two sessions started in the same second apart."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(2)


def write_json(path: Path, obj: Any) -> None:
    """Atomic: readers see the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=_jsonable) + "\n")
    os.replace(tmp, path)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, (np.generic,)):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


@dataclass
class RunsFile:
    records: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # lines that could not be read, named


class SessionDir:
    def __init__(self, root: Path):
        self.root = root

    @property
    def id(self) -> str:
        return self.root.name

    @classmethod
    def create(cls, results_root: Path) -> SessionDir:
        root = results_root / new_session_id()
        (root / "samples").mkdir(parents=True)
        (root / "logs").mkdir()
        return cls(root)

    def sample_path(self, cell_id: str, run_index: int, suffix: str) -> Path:
        d = self.root / "samples" / cell_id
        d.mkdir(parents=True, exist_ok=True)
        return d / f"run-{run_index:03d}{suffix}"

    def log_path(self, name: str) -> Path:
        return self.root / "logs" / f"{name}.log"

    def rel(self, path: Path) -> str:
        return str(path.relative_to(self.root))

    def write_session(self, session: SessionRecord | dict[str, Any]) -> None:
        write_json(self.root / SESSION, to_dict(session) if isinstance(session, SessionRecord) else session)

    def read_session(self) -> dict[str, Any]:
        return json.loads((self.root / SESSION).read_text())

    def has_session(self) -> bool:
        return (self.root / SESSION).is_file()

    def append_run(self, record: RunRecord | dict[str, Any]) -> None:
        data = to_dict(record) if isinstance(record, RunRecord) else record
        line = json.dumps(data, default=_jsonable, allow_nan=False)
        with open(self.root / RUNS, "a") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())

    def read_runs(self) -> RunsFile:
        out = RunsFile()
        path = self.root / RUNS
        if not path.is_file():
            out.problems.append(f"{path}: missing (no run finished in this session)")
            return out
        seen: dict[tuple[str, int], dict[str, Any]] = {}
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                out.problems.append(f"{path}:{n}: not valid JSON ({e.msg}); line skipped")
                continue
            if not (isinstance(rec, dict) and isinstance(rec.get("cell_id"), str)
                    and rec.get("status") in RUN_STATUSES and type(rec.get("run_index")) is int):
                out.problems.append(f"{path}:{n}: not a run record (needs cell_id, run_index and a status "
                                    f"of {', '.join(RUN_STATUSES)}); line skipped")
                continue
            key = (rec["cell_id"], rec["run_index"])
            if key in seen:
                out.problems.append(f"{path}:{n}: {key[0]} run {key[1]} recorded twice; the later line is used")
                out.records.remove(seen[key])
            seen[key] = rec
            out.records.append(rec)
        return out
