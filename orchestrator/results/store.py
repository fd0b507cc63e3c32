"""The session folder (docs/results-format.md): session.json, runs.jsonl, samples/, logs/, and
the derived summary.json and reports. Runs are appended and fsync'd as each one ends, so a crash
loses at most the run in flight; both files are read back as typed records (records.py)."""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from orchestrator.errors import UserError
from orchestrator.results.records import RunRecord, SessionRecord
from workers.contract.typed import Invalid, to_dict

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
    records: list[RunRecord] = field(default_factory=list)
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
        (root / RUNS).touch()  # there from the start: an interrupted session always has one
        return cls(root)

    def sample_path(self, cell_id: str, run_index: int, suffix: str) -> Path:
        d = self.root / "samples" / cell_id
        d.mkdir(parents=True, exist_ok=True)
        return d / f"run-{run_index:03d}{suffix}"

    def log_path(self, name: str) -> Path:
        return self.root / "logs" / f"{name}.log"

    def rel(self, path: Path) -> str:
        return str(path.relative_to(self.root))

    def write_session(self, session: SessionRecord) -> None:
        write_json(self.root / SESSION, to_dict(session))

    def read_session(self) -> SessionRecord:
        """session.json, upgraded and checked; a UserError naming what is wrong otherwise."""
        path = self.root / SESSION
        try:
            data = json.loads(path.read_text(errors="replace"))
        except OSError as e:
            raise UserError(f"{path}: cannot be read ({e.strerror})") from None
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
        try:
            return SessionRecord.read(data, str(path))
        except Invalid as e:
            raise UserError(str(e)) from None

    def has_session(self) -> bool:
        return (self.root / SESSION).is_file()

    def append_run(self, record: RunRecord) -> None:
        line = json.dumps(to_dict(record), default=_jsonable, allow_nan=False)
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
        seen: dict[tuple[str, int], RunRecord] = {}
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rec = RunRecord.read(json.loads(line), f"{path}:{n}")
                if rec.status is None:
                    raise Invalid(f"{path}:{n}: field status: missing")
            except json.JSONDecodeError as e:
                out.problems.append(f"{path}:{n}: not valid JSON ({e.msg}); line skipped")
                continue
            except Invalid as e:
                out.problems.append(f"{e}; not a run record, line skipped")
                continue
            key = (rec.cell_id, rec.run_index)
            if key in seen:
                out.problems.append(f"{path}:{n}: {key[0]} run {key[1]} recorded twice; the later line is used")
                out.records.remove(seen[key])
            seen[key] = rec
            out.records.append(rec)
        return out
