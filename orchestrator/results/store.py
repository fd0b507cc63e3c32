"""The session folder (docs/results-format.md): session.json, runs.jsonl, samples/, logs/, and
the derived summary.json and reports. Runs are appended and fsync'd as each one ends, so a crash
loses at most the run in flight; both files are read back as typed records (records.py)."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import tempfile
from collections.abc import Iterable
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
TORN = "runs.jsonl.torn"  # last lines of runs.jsonl cut short, set aside by --resume


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def new_session_id() -> str:
    """Sorts by time; the suffix keeps two sessions started in the same second apart."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(2)


def write_json(path: Path, obj: Any) -> None:
    """Atomic: readers see the old file or the new one, never half of one; a write that fails
    (disk full) leaves no temporary file behind."""
    write_atomic(path, (json.dumps(obj, indent=2, default=_jsonable) + "\n").encode())


def write_atomic(path: Path, data: bytes) -> None:
    """`path` holds `data` whole or keeps what it held: written beside it, synced, renamed."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OSError(e.errno, e.strerror, str(path)) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def writable_problem(folder: Path, create: bool) -> str | None:
    """Why results cannot be written into `folder`, or None. With `create` the folder is made
    and a file written and removed there (what a session is about to do); without, nothing is
    written: the nearest existing folder is checked for write access (`orchestrate check`)."""
    if create:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-check-")
            try:
                os.write(fd, b"0")
            finally:
                os.close(fd)
                os.unlink(probe)
        except OSError as e:
            return f"{e.strerror or e}"
        return None
    existing = folder
    while not existing.exists() and existing != existing.parent:
        if existing.is_symlink():
            return f"{existing} is a dangling link"
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is not a folder"
    if os.statvfs(existing).f_flag & os.ST_RDONLY:
        return f"{existing} is on a read-only file system"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable by this user"
    return None


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
    superseded: list[RunRecord] = field(default_factory=list)  # fleet attempts that lost their node, retried later


def finished_runs(records: Iterable[RunRecord]) -> set[tuple[str, int]]:
    """(cell id, run index) of the recorded runs that a resume does not run again: every one but
    a fleet attempt whose node was lost."""
    return {(r.cell_id, r.run_index) for r in records if not r.node_lost}


def _supersedes(later: RunRecord, earlier: RunRecord) -> bool:
    """A fleet run's next attempt, after one whose node was lost: both lines are the run's
    history, the later one is the run."""
    return bool(earlier.node_lost) and (later.attempt or 0) > (earlier.attempt or 0)


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

    def read_session_if_readable(self) -> tuple[SessionRecord | None, str | None]:
        """session.json, or None and why not: reports go on from runs.jsonl without it."""
        if not self.has_session():
            return None, f"{self.root / SESSION}: missing; cell descriptions and provenance are unknown"
        try:
            return self.read_session(), None
        except UserError as e:
            return None, f"{e}; read without it: cell descriptions and provenance are unknown"

    def has_session(self) -> bool:
        return (self.root / SESSION).is_file()

    def append_run(self, record: RunRecord) -> None:
        line = json.dumps(to_dict(record), default=_jsonable, allow_nan=False)
        path = self.root / RUNS
        size = path.stat().st_size if path.exists() else 0
        try:
            with open(path, "a") as f:
                f.write(line + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            with contextlib.suppress(OSError):  # what part of the line reached the disk goes: no torn line
                os.truncate(path, size)
            raise OSError(e.errno, e.strerror, str(path)) from None  # a full disk names no file: name it

    def set_aside_torn(self) -> str | None:
        """A last line of runs.jsonl without its newline is a record cut short (the process or
        the disk stopped mid-write): it moves to runs.jsonl.torn, so the next record starts on
        a line of its own. What was done, or None."""
        path = self.root / RUNS
        if not path.is_file():
            return None
        data = path.read_bytes()
        if not data or data.endswith(b"\n"):
            return None
        keep = data.rfind(b"\n") + 1
        torn = self.root / TORN
        with open(torn, "ab") as f:
            f.write(data[keep:] + b"\n")
        write_atomic(path, data[:keep])
        return (f"{path}: its last line ({len(data) - keep} bytes) was cut short; set aside in {torn}, "
                f"that run will run again")

    def read_runs(self) -> RunsFile:
        out = RunsFile()
        path = self.root / RUNS
        if not path.exists():
            out.problems.append(f"{path}: missing (no run finished in this session)")
            return out
        seen: dict[tuple[str, int], RunRecord] = {}
        try:
            text = path.read_text(errors="replace")
        except OSError as e:
            out.problems.append(f"{path}: cannot be read ({e.strerror})")
            return out
        for n, line in enumerate(text.splitlines(), start=1):
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
            if key in seen and _supersedes(rec, seen[key]):
                out.superseded.append(seen[key])
                out.records.remove(seen[key])
            elif key in seen:
                out.problems.append(f"{path}:{n}: {key[0]} run {key[1]} recorded twice; the later line is used")
                out.records.remove(seen[key])
            seen[key] = rec
            out.records.append(rec)
        return out
