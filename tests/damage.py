"""A corpus of damaged session folders, each made from a small real one (two cells of the
committed H100 study, three runs each, with their samples): what a full disk, a crash, a hand
edit, a copy stopped half way or a hostile folder leaves behind."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

from conftest import REPO

STUDY = REPO / "docs" / "results" / "2026-11-27-h100-sd15-cuda"
CELLS = ("diffusers-cuda-fp16", "diffusers-cuda-bf16")
RUNS_KEPT = 3


def small_session(dest: Path) -> Path:
    """Two cells of the study, three runs each, with their samples and logs."""
    dest.mkdir(parents=True)
    shutil.copy(STUDY / "session.json", dest / "session.json")
    lines = [ln for ln in (STUDY / "runs.jsonl").read_text().splitlines()
             if (r := json.loads(ln))["cell_id"] in CELLS and r["run_index"] < RUNS_KEPT]
    (dest / "runs.jsonl").write_text("".join(f"{ln}\n" for ln in lines))
    for cell in CELLS:
        shutil.copytree(STUDY / "samples" / cell, dest / "samples" / cell,
                        ignore=lambda d, names: [n for n in names if not n.startswith(tuple(f"run-00{i}" for i in range(RUNS_KEPT)))])
    return dest


def _json(path: Path, edit: Callable[[object], object]) -> None:
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))


def _session(edit: Callable[[dict], object]) -> Callable[[Path], None]:
    return lambda d: _json(d / "session.json", edit)


def _set(key: str, value: object) -> Callable[[dict], dict]:
    return lambda data: {**data, key: value}


def _first_run(edit: Callable[[dict], dict]) -> Callable[[Path], None]:
    def apply(d: Path) -> None:
        lines = (d / "runs.jsonl").read_text().splitlines()
        lines[0] = json.dumps(edit(json.loads(lines[0])))
        (d / "runs.jsonl").write_text("".join(f"{ln}\n" for ln in lines))
    return apply


def _append(text: bytes) -> Callable[[Path], None]:
    def apply(d: Path) -> None:
        with open(d / "runs.jsonl", "ab") as f:
            f.write(text)
    return apply


def _meter_file(edit: Callable[[object], object]) -> Callable[[Path], None]:
    def apply(d: Path) -> None:
        rec = json.loads((d / "runs.jsonl").read_text().splitlines()[0])
        _json(d / rec["meter_samples_file"], edit)
    return apply


def _replace_with_dir(name: str) -> Callable[[Path], None]:
    def apply(d: Path) -> None:
        target = d / name
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)
        target.mkdir(parents=True)
    return apply


def _file_at(name: str) -> Callable[[Path], None]:
    def apply(d: Path) -> None:
        target = d / name
        if target.is_dir():
            shutil.rmtree(target)
        target.write_text("not a folder")
    return apply


def _truncate(name: str, keep: float) -> Callable[[Path], None]:
    def apply(d: Path) -> None:
        data = (d / name).read_bytes()
        (d / name).write_bytes(data[: int(len(data) * keep)])
    return apply


def _rm(name: str) -> Callable[[Path], None]:
    return lambda d: (d / name).unlink()


def _outside(key: str, value: str) -> Callable[[Path], None]:
    return _first_run(_set(key, value))


CORRUPTIONS: dict[str, Callable[[Path], None]] = {
    # session.json
    "session.json missing": _rm("session.json"),
    "session.json empty": _truncate("session.json", 0),
    "session.json cut in half": _truncate("session.json", 0.5),
    "session.json a list": _session(lambda s: [s]),
    "session.json an empty object": _session(lambda s: {}),
    "session.json a folder": _replace_with_dir("session.json"),
    "session.json schema_version a string": _session(_set("schema_version", "2")),
    "session.json from a newer harness": _session(_set("schema_version", 99)),
    "session.json cells a string": _session(_set("cells", "x")),
    "session.json cells of numbers": _session(_set("cells", [1, 2])),
    "session.json matrix a list": _session(_set("matrix", [])),
    "session.json matrix content wrong": _session(lambda s: {**s, "matrix": {**s["matrix"], "content": {"report": {"baseline": 5}}}}),
    "session.json order_seed a string": _session(_set("order_seed", "x")),
    "session.json timing a number": _session(_set("timing", 5)),
    "session.json power null": _session(_set("power", None)),
    "session.json inputs a number": _session(_set("inputs", 3)),
    "session.json model a string": _session(_set("model", "x")),
    "session.json provenance a list": _session(_set("provenance", [])),
    "session.json equivalence a string": _session(_set("equivalence", "x")),
    "session.json resumes of strings": _session(_set("resumes", ["x"])),
    "session.json invalid UTF-8": lambda d: (d / "session.json").write_bytes(b'{"session_id": "\xff\xfe"}'),
    # runs.jsonl
    "runs.jsonl missing": _rm("runs.jsonl"),
    "runs.jsonl empty": _truncate("runs.jsonl", 0),
    "runs.jsonl torn last line": _truncate("runs.jsonl", 0.9),
    "runs.jsonl a line of garbage": _append(b"garbage {\n"),
    "runs.jsonl NUL bytes": _append(b"\x00" * 64 + b"\n"),
    "runs.jsonl invalid UTF-8": _append(b'{"cell_id": "\xff"}\n'),
    "runs.jsonl a list on a line": _append(b"[1, 2, 3]\n"),
    "runs.jsonl a folder": _replace_with_dir("runs.jsonl"),
    "run energy_by_channel a string": _first_run(_set("energy_by_channel", "x")),
    "run energy_by_channel of numbers": _first_run(_set("energy_by_channel", {"cpu": 5})),
    "run conversion a number": _first_run(_set("conversion", 5)),
    "run cosine a string": _first_run(_set("cosine", "x")),
    "run latency NaN": _first_run(_set("latency_ms_median", float("nan"))),
    "run latency 1e308": _first_run(_set("latency_ms_median", 1e308)),
    "run latency negative": _first_run(_set("latency_ms_median", -5.0)),
    "run energy 1e308": _first_run(_set("energy_per_step_j", 1e308)),
    "run run_index negative": _first_run(_set("run_index", -1)),
    "run run_index a string": _first_run(_set("run_index", "0")),
    "run cell_id a number": _first_run(_set("cell_id", 5)),
    "run cell_id a path": _first_run(_set("cell_id", "../../etc")),
    "run status unknown": _first_run(_set("status", "weird")),
    "run iterations zero": _first_run(_set("iterations", 0)),
    "run versions a list": _first_run(_set("versions", [])),
    "run realized a string": _first_run(_set("realized", "x")),
    "run recorded twice": lambda d: _append((d / "runs.jsonl").read_text().splitlines()[0].encode() + b"\n")(d),
    # paths read from the folder
    "samples_file outside (..)": _outside("samples_file", "../../../../etc/passwd"),
    "samples_file absolute": _outside("samples_file", "/etc/passwd"),
    "meter_samples_file outside (..)": _outside("meter_samples_file", "../../../../etc/passwd"),
    "meter_samples_file absolute": _outside("meter_samples_file", "/etc/hostname"),
    "meter_samples_file a folder": _outside("meter_samples_file", "samples"),
    "log_file outside": _outside("log_file", "/etc/passwd"),
    # samples
    "iteration samples not JSON": lambda d: (d / json.loads((d / "runs.jsonl").read_text().splitlines()[0])["samples_file"]).write_text("{"),
    "iteration samples a list": lambda d: _json(d / json.loads((d / "runs.jsonl").read_text().splitlines()[0])["samples_file"], lambda s: [s]),
    "iteration times strings": lambda d: _json(d / json.loads((d / "runs.jsonl").read_text().splitlines()[0])["samples_file"],
                                               lambda s: {**s, "iteration_start_ns": ["x"], "iteration_end_ns": ["y"]}),
    "meter samples not JSON": _meter_file(lambda m: None) if False else lambda d: (d / json.loads((d / "runs.jsonl").read_text().splitlines()[0])["meter_samples_file"]).write_text("{"),
    "meter samples a list": _meter_file(lambda m: [m]),
    "meter intervals strings": _meter_file(lambda m: {**m, "intervals": [["a", "b", "c"]]}),
    "meter intervals short entries": _meter_file(lambda m: {**m, "intervals": [[1, 2]]}),
    "meter intervals reversed": _meter_file(lambda m: {**m, "intervals": [[iv[1], iv[0], iv[2]] for iv in m["intervals"]]}),
    "meter joules NaN": _meter_file(lambda m: {**m, "intervals": [[a, b, {k: float("nan") for k in j}] if isinstance(j, dict) else [a, b, float("nan")] for a, b, j in m["intervals"]]}),
    "meter window missing": _meter_file(lambda m: {k: v for k, v in m.items() if k != "window_ns"}),
    "meter window a string": _meter_file(_set("window_ns", "x")),
    "meter baseline of three": _meter_file(_set("baseline_ns", [1, 2, 3])),
    "meter samples empty intervals": _meter_file(_set("intervals", [])),
    "samples folder a file": _file_at("samples"),
    # derived files in the way
    "figures a file": _file_at("figures"),
    "report.md a folder": _replace_with_dir("report.md"),
    "summary.json a folder": _replace_with_dir("summary.json"),
    "runs.csv a folder": _replace_with_dir("runs.csv"),
}
