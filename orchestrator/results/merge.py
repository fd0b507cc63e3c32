"""`orchestrate merge DIR... --out DIR`: a fleet study without a cluster. Each machine runs its
own session of the same matrix; merging them makes one session folder whose runs keep their
host, so one report shows every host and the host-to-host spread. Sessions are merged only when
they ran the same matrix, weights, inputs, env locks and harness: otherwise a difference between
hosts could be the software's."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from orchestrator.errors import UserError
from orchestrator.results.hosts import host_key, run_host, same_machine, session_hosts
from orchestrator.results.recompute import inside
from orchestrator.results.records import RunRecord, SessionRecord
from orchestrator.results.store import RUNS, SessionDir
from workers.contract.typed import Invalid

FILES = (("samples_file", ".json"), ("output_file", ".output.npy"), ("meter_samples_file", ".meter.json"))


@dataclass
class Source:
    sdir: SessionDir
    session: SessionRecord
    runs: list[RunRecord]
    problems: list[str]
    lost: list[RunRecord]  # a fleet's attempts whose node was lost, each before the attempt that replaced it


@dataclass
class Merged:
    sdir: SessionDir
    runs: int
    hosts: list[str]
    problems: list[str]  # lines of the sources that could not be merged, and files they lacked


def _read(path: Path) -> Source:
    sdir = SessionDir(path)
    if not sdir.has_session():
        raise UserError(f"{path}: no session.json; its matrix, digests and host are unknown, so it cannot be merged")
    session = sdir.read_session()
    runs = sdir.read_runs()
    if not runs.records:
        raise UserError(f"{path}: no readable runs ({'; '.join(runs.problems) or 'runs.jsonl is empty'}); nothing to merge")
    return Source(sdir, session, runs.records, runs.problems, runs.superseded)


def _harnesses(s: SessionRecord) -> list[str | None]:
    """The harness commit of the session and of each resume (a resume may run another checkout)."""
    return [(s.provenance.get("harness") or {}).get("git_commit"),
            *((r.get("harness") or {}).get("git_commit") for r in s.resumes)]


def study(matrix_sha256: Any, model_sha256: Any, inputs: dict[str, Any], env_locks: dict[str, Any],
          harnesses: list[Any]) -> dict[str, Any]:
    """What must be equal for runs of two hosts to be one study's: the matrix, the model's and
    each resolution's input digests, each env's lock and the harness commits."""
    return {
        "matrix sha256": matrix_sha256,
        "model sha256": model_sha256,
        **{f"input sha256 at {res}": sha for res, sha in sorted(inputs.items())},
        **{f"env {name} lock sha256": lock for name, lock in sorted(env_locks.items())},
        "harness commit": sorted(set(map(str, harnesses))),
    }


def identity(s: SessionRecord) -> dict[str, Any]:
    """A session's study (`study`), from its session.json."""
    envs = s.provenance.get("envs") or {}
    return study(s.matrix.get("sha256"), s.model.get("sha256"),
                 {res: (i or {}).get("sha256") for res, i in s.inputs.items()},
                 {name: (e or {}).get("lock_sha256") for name, e in envs.items()}, _harnesses(s))


def _short(v: Any) -> str:
    text = str(v)
    return text[:12] + "…" if len(text) > 13 and " " not in text and "{" not in text and "[" not in text else text


def differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Each key whose value differs, as `key B (vs A)`."""
    return [f"{k} {_short(b.get(k))} (vs {_short(a.get(k))})" for k in dict.fromkeys([*a, *b]) if a.get(k) != b.get(k)]


def check_same_study(first: Source, other: Source) -> None:
    """One line naming `other` and every difference from `first`, or nothing."""
    if differ := differences(identity(first.session), identity(other.session)):
        raise UserError(f"refusing to merge {other.sdir.root}: not the same study as {first.sdir.root}: "
                        + "; ".join(differ))


def _source_hosts(s: SessionRecord) -> dict[str, dict[str, Any]]:
    """The hosts a session ran on, each as a merged session records it."""
    if s.hosts:
        return s.hosts
    envs = {n: (e or {}).get("lock_sha256") for n, e in (s.provenance.get("envs") or {}).items()}
    out: dict[str, dict[str, Any]] = {}
    for key, host, entry in session_hosts(s):
        idle_w = s.power.get("idle_w") if entry is s.provenance else entry.get("idle_w")
        preflight = s.preflight if entry is s.provenance else entry.get("preflight")
        out.setdefault(key, {"host": host, "harness": entry.get("harness"), "env_lock_sha256": envs, "sessions": {}})
        out[key]["sessions"][s.session_id] = {"idle_w": idle_w, "preflight": preflight, "order_seed": s.order_seed,
                                               "worker_versions": s.worker_versions}
    return out


def _merged_key(name: str, host: dict[str, Any] | None, hosts: dict[str, dict[str, Any]]) -> str:
    """A source's host in the merged session: under its own key where that key is new or names the
    same machine (so a fleet session's `vm/node-1` and `vm/node-2`, simulated nodes of one machine,
    stay two), else under the machine's key among those merged so far (`host_key`)."""
    if name not in hosts or same_machine(hosts[name].get("host"), host):
        return name
    return host_key(host, {k: v.get("host") or {} for k, v in hosts.items()})


def _copy(src: Source, rec: RunRecord, out: SessionDir, index: int, problems: list[str]) -> RunRecord:
    """The run's files under its new index; a file the source lacks is named and its field cleared."""
    stem = f"run-{index:03d}"
    changes: dict[str, Any] = {}
    where = f"{src.sdir.root / RUNS}: {rec.cell_id} run {rec.run_index}"
    for name, suffix in (*FILES, ("log_file", ".log")):
        relative = getattr(rec, name)
        if not relative:
            continue
        try:
            path = inside(src.sdir, relative, f"{where}: field {name}")
        except Invalid as e:
            problems.append(str(e))
            changes[name] = None
            continue
        if not path.is_file():
            problems.append(f"{where}: {relative} is missing; the merged run has no {name}")
            changes[name] = None
            continue
        target = out.log_path(f"{rec.cell_id}.{stem}") if name == "log_file" else \
            out.sample_path(rec.cell_id, index, suffix)
        shutil.copy2(path, target)
        changes[name] = out.rel(target)
    return replace(rec, **changes)


def merge(dirs: list[Path], out: Path) -> Merged:
    """Read and check every source first; write the merged folder only when all of them fit."""
    if len(dirs) < 2:
        raise UserError("orchestrate merge: give two or more session folders")
    resolved = [d.resolve() for d in dirs]
    if len(set(resolved)) < len(resolved):
        raise UserError("orchestrate merge: a session folder is given twice")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out}: exists and is not an empty folder; the merged session needs a new one")
    if any(out.resolve().is_relative_to(d) for d in resolved):
        raise UserError(f"--out {out}: lies inside a session being merged")
    sources = [_read(d) for d in dirs]
    for other in sources[1:]:
        check_same_study(sources[0], other)
    try:
        (out / "samples").mkdir(parents=True, exist_ok=True)
        (out / "logs").mkdir(exist_ok=True)
        return _write(sources, SessionDir(out))
    except OSError as e:
        raise UserError(f"{e.filename or out}: cannot be written ({e.strerror or e}); the merged session in {out} "
                        f"is incomplete, the sources are unchanged") from None


def _write(sources: list[Source], out: SessionDir) -> Merged:
    first = sources[0].session
    hosts: dict[str, dict[str, Any]] = {}
    next_index: dict[str, int] = {}
    problems: list[str] = []
    (out.root / RUNS).touch()
    merged_from = []
    for src in sources:
        renamed: dict[str, str] = {}
        for name, entry in _source_hosts(src.session).items():
            key = _merged_key(name, entry.get("host"), hosts)
            renamed[name] = key
            if key in hosts:
                hosts[key]["sessions"].update(entry["sessions"])
            else:
                hosts[key] = {**entry, "sessions": dict(entry["sessions"])}
        problems += src.problems
        src_hosts = []
        for rec in sorted(src.runs, key=lambda r: (r.order_index if r.order_index is not None else r.run_index,
                                                    r.cell_id, r.run_index)):
            index = next_index.get(rec.cell_id, 0)
            next_index[rec.cell_id] = index + 1
            earlier = sorted((x for x in src.lost if (x.cell_id, x.run_index) == (rec.cell_id, rec.run_index)),
                             key=lambda x: x.attempt or 0)
            for attempt in [*earlier, rec]:  # the lost attempts first, so the merged file reads them as superseded
                host = renamed.get(run_host(attempt, src.session), run_host(attempt, src.session))
                src_hosts.append(host)
                moved = _copy(src, attempt, out, index, problems)
                out.append_run(replace(moved, session_id=out.id, run_index=index, host=host,
                                       merged_from=attempt.merged_from or {"session_id": src.session.session_id,
                                                                           "run_index": attempt.run_index}))
        merged_from.append({"session_id": src.session.session_id, "path": str(src.sdir.root.resolve()),
                            "status": src.session.status, "started_at": src.session.started_at,
                            "finished_at": src.session.finished_at, "hosts": list(dict.fromkeys(src_hosts)),
                            "runs": len(src.runs)})
    statuses = {s.session.status for s in sources}
    session = replace(
        first, session_id=out.id, status="complete" if statuses == {"complete"} else "interrupted",
        started_at=min((s.session.started_at for s in sources if s.session.started_at), default=None),
        finished_at=max((s.session.finished_at for s in sources if s.session.finished_at), default=None),
        order_seed=None,  # each host's own seed is in `hosts`; a merged session is not resumed
        resumes=[], hosts=hosts, merged_from=merged_from,
        worker_versions={k: v for s in sources for k, v in s.session.worker_versions.items()},
        energy_recomputed=[e for s in sources for e in s.session.energy_recomputed],
    )
    out.write_session(session)
    return Merged(out, sum(next_index.values()), list(hosts), problems)
