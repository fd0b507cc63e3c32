"""A session fanned out over a Ray cluster (`orchestrate MATRIX --ray ...`). The driver starts
the session as a local one does (one folder, session.json, the plan, the references), then puts
one actor on each measuring node (node.py), each running one measurement at a time: two runs on
one machine would share its power rails and its cores, and a run's energy and latency would be
the other's too. Where cells opt in (`isolation = "gpu"`), each GPU Ray knows of on a node also
gets an actor of its own (a GPU slot, `num_gpus=1`): GPU slots of one node run at the same time,
each on its board, and never beside a run of the whole node. Each free node or slot takes the next
planned run its labels allow; each run's record is appended to runs.jsonl, with its node or slot
as `host`, the moment it comes back. A node that dies mid-run fails that attempt, with the reason
and the node, and the run goes to another node up to `[fleet] retries` more times."""

from __future__ import annotations

import contextlib
import shutil
from collections import Counter, deque
from dataclasses import dataclass, replace
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from orchestrator.config.envs import Env
from orchestrator.config.matrix import Cell, Matrix
from orchestrator.config.plan import PlannedRun
from orchestrator.console import Display
from orchestrator.errors import UserError
from orchestrator.fleet.cluster import Cluster, RayNode
from orchestrator.fleet.node import Job, Node, NodeFacts, RunDone
from orchestrator.results import provenance
from orchestrator.results.merge import differences, identity
from orchestrator.results.records import RunRecord
from orchestrator.results.store import SessionDir, finished_runs, write_atomic
from orchestrator.run.session import Session, SessionResult, Started, run_record


@dataclass
class Member:
    """A measuring node, or one GPU of it (`facts.gpu`): its actor, its key in session.json's
    `hosts`, what it said at setup."""

    key: str
    node: RayNode
    actor: Any
    facts: NodeFacts
    lost: str | None = None  # why the node left the session, once it has

    def labels(self) -> dict[str, str]:
        """What a cell's `hosts` is matched against: the host's facts, `chip`, and Ray's labels."""
        host = self.facts.host
        gpus = [str(g).split(",")[0].strip() for g in host.get("gpus") or []]
        apple = host.get("system") == "Darwin" and host.get("machine") == "arm64"
        facts = {k: str(v) for k, v in host.items() if isinstance(v, str | int)}
        return {**facts, "gpu": gpus[0] if gpus else "", "chip": str(host.get("cpu") if apple or not gpus else gpus[0]),
                **self.node.labels}

    def matches(self, cell: Cell) -> bool:
        """The cell's `hosts` match this node."""
        mine = self.labels()
        return all(label in mine and fnmatchcase(mine[label], pattern) for label, pattern in cell.hosts.items())

    def serves(self, cell: Cell) -> bool:
        """The cell's `hosts` match, and its runs take a GPU slot where this is one, the whole node else."""
        return self.matches(cell) and (cell.isolation == "gpu") == (self.facts.gpu is not None)

    def free(self, busy: list[Member]) -> bool:
        """Not running, and nothing of the other kind runs on its node: a whole-node run has no GPU
        run beside it, and a GPU run no whole-node run."""
        beside = [x for x in busy if x.node.node_id == self.node.node_id]
        return self not in busy and (not beside if self.facts.gpu is None else all(x.facts.gpu is not None
                                                                                   for x in beside))


@dataclass
class Attempt:
    planned: PlannedRun
    attempt: int  # 1 the first; counted across resumes
    left: int  # further attempts this session may give it after this one
    host: str | None = None  # each-host: the node whose run it is; None: any node that serves its cell


def host_keys(facts: list[NodeFacts]) -> list[str]:
    """Each node's key: its hostname, or `hostname/node-I` where nodes share one (simulated
    nodes on one machine, or cloud hosts all named `vm`), I counting from 1 in node id order."""
    names = [str(f.host.get("hostname") or "unknown host") for f in facts]
    counts = Counter(names)
    seen: Counter[str] = Counter()
    keys = []
    for name in names:
        seen[name] += 1
        keys.append(name if counts[name] == 1 else f"{name}/node-{seen[name]}")
    return keys


def refusals(mine: dict[str, Any], members: list[Member]) -> list[str]:
    """One line per node that cannot join: its setup failed, or its study (harness commit, env
    locks, matrix, model and input digests) is not the driver's, each difference named."""
    out = []
    for m in members:
        if m.facts.problem:
            out.append(f"--ray: refusing node {m.key} ({m.node.address}): {m.facts.problem}")
        elif differ := differences(mine, m.facts.study):
            out.append(f"--ray: refusing node {m.key} ({m.node.address}), it differs from this driver: "
                       + "; ".join(differ))
    return out


class Fleet:
    def __init__(self, matrix: Matrix, envs: dict[str, Env], display: Display, cluster: Cluster, job: Job):
        self.matrix, self.display, self.cluster, self.job = matrix, display, cluster, job
        self.session = Session(matrix, envs, display, nvml_check=job.nvml_check, force_power=job.force_power,
                               runs_here=False)
        self.session.ray = cluster.address
        self.members: list[Member] = []
        self.queued: tuple[int, deque[Attempt]] = (0, deque())  # the session's run count, the runs to hand out
        self.ran = 0  # records appended by this invocation

    def join(self, st: Started) -> None:
        """An actor on every measuring node, its session started there; a node whose harness,
        locks, model or inputs differ from the driver's is refused, named with each difference."""
        ray = self.cluster.ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        remote = ray.remote(Node)
        nodes = self.cluster.nodes()
        if not nodes:
            raise UserError(f"--ray {self.cluster.address}: the cluster has no live node")
        # A GPU slot is an actor that holds one of the node's GPUs for the session: Ray picks which.
        per_gpu = any(c.isolation == "gpu" for c in self.matrix.enabled_cells)
        slots = [(n, i) for n in nodes for i in range(n.gpus)] if per_gpu else []
        actors = [remote.options(num_cpus=0, max_concurrency=1,
                                 scheduling_strategy=NodeAffinitySchedulingStrategy(n.node_id, soft=False))
                  .remote(self.job) for n in nodes]
        gpu_actors = [remote.options(num_cpus=0, num_gpus=1, max_concurrency=1,
                                     scheduling_strategy=NodeAffinitySchedulingStrategy(n.node_id, soft=False))
                      .remote(self.job, gpu_slot=True) for n, _ in slots]
        with self.display.status(f"starting the session on {len(nodes)} node(s), {len(slots)} GPU slot(s)"):
            refs = [a.setup.remote() for a in [*actors, *gpu_actors]]
            facts = [self._setup(ray, ref) for ref in refs]
        keys = host_keys(facts[:len(nodes)])
        key_of = {n.node_id: k for n, k in zip(nodes, keys, strict=True)}
        self.members = [Member(key, node, actor, f)
                        for key, node, actor, f in zip(keys, nodes, actors, facts[:len(nodes)], strict=True)]
        self.members += [Member(f"{key_of[n.node_id]}/gpu-{f.gpu if f.gpu is not None else i}", n, actor, f)
                         for (n, i), actor, f in zip(slots, gpu_actors, facts[len(nodes):], strict=True)]
        mine = {**identity(st.session), "harness commit": [str(provenance.harness().get("git_commit"))]}
        if problems := refusals(mine, self.members):
            raise UserError(*problems)
        for m in self.members:
            self.display.log(f"node {m.key}: {m.node.address}, " + (
                f"GPU {m.facts.gpu}, isolation = \"gpu\" cells" if m.facts.gpu is not None else
                f"{m.facts.host.get('cpu')}, {len(m.facts.host.get('gpus') or [])} GPU(s)"))

    @staticmethod
    def _setup(ray: Any, ref: Any) -> NodeFacts:
        """A node's facts; a node that died or failed in its setup is a problem, as its one line."""
        try:
            facts: NodeFacts = ray.get(ref)
        except ray.exceptions.RayError as e:
            return NodeFacts(problem=f"its setup failed ({_first_line(e)})")
        return facts

    def run(self, results_root: Path, resume: SessionDir | None) -> SessionResult:
        st = self.session.start(results_root, resume)
        try:
            self.join(st)
            self.queued = self._queue(st)
        except UserError:
            if not st.resumed:  # nothing ran: no session folder is left behind
                shutil.rmtree(st.sdir.root, ignore_errors=True)
            raise
        st.session.status = "running"
        interrupted = False
        failure: UserError | None = None
        try:
            self._dispatch(st)
            st.session.status = "complete"
        except KeyboardInterrupt:
            st.session.status = "interrupted"
            interrupted = True
            for member in self.members:  # the runs in flight stop now: their workers leave with their actor
                with contextlib.suppress(self.cluster.ray.exceptions.RayError):
                    self.cluster.ray.kill(member.actor)
            self.session.interrupted(st.sdir)
        except OSError as e:  # the results folder stopped taking writes (disk full, gone)
            st.session.status = "interrupted"
            failure = self.session.write_failed(st.sdir, e, self.ran)
        finally:
            self._record_hosts(st, finished=not interrupted)
            self.session.close()
            summary, failure = self.session.finish(st, self.ran, failure)
        if failure is not None:
            raise failure
        return self.session.result(st.sdir, summary, interrupted)

    def _queue(self, st: Started) -> tuple[int, deque[Attempt]]:
        """How many runs the session has, and those still to run. `spread`: the plan. `each-host`:
        each planned run once on every node that serves its cell, node J of the cell's nodes (in
        key order) holding run indices J*runs to (J+1)*runs-1; a lost node's runs are not moved
        to another node, which would make them another host's."""
        tried = Counter({(r.cell_id, r.run_index): r.attempt or 1 for r in st.done})
        if self.matrix.fleet.replicate == "spread":
            retries = self.matrix.fleet.retries
            return len(st.plan), deque(Attempt(p, tried[(p.cell_id, p.run_index)] + 1, retries) for p in st.todo)
        runs, width = self.matrix.timing.runs, len(self.members)
        finished = finished_runs(st.done)
        placed: list[Attempt] = []
        for p in st.plan:
            cell = self.matrix.cell(p.cell_id)
            keys = sorted(x.key for x in self.members if x.serves(cell))
            placed += [Attempt(PlannedRun(p.cell_id, j * runs + p.run_index, p.order_index * width + j),
                               tried[(p.cell_id, j * runs + p.run_index)] + 1, 0, key)
                       for j, key in enumerate(keys)] or [Attempt(p, tried[(p.cell_id, p.run_index)] + 1, 0)]
        owner = {(a.planned.cell_id, a.planned.run_index): a.host for a in placed}
        if moved := sorted({r.host for r in st.done if r.host and owner.get((r.cell_id, r.run_index), r.host) != r.host}):
            raise UserError(f"--resume {st.sdir.root}: with [fleet] replicate = \"each-host\" runs stay with their "
                            f"node, and {', '.join(moved)} is not where it was among this cluster's nodes "
                            f"({', '.join(x.key for x in self.members)}); resume on the nodes the session started on")
        for cell in self.matrix.enabled_cells:
            keys = sorted(x.key for x in self.members if x.serves(cell))
            self.display.log(f"each-host: {cell.id}: {runs} run(s) on each of {', '.join(keys) or 'no node'}")
        return len(placed), deque(a for a in placed if (a.planned.cell_id, a.planned.run_index) not in finished)

    def _serving(self, cell: Cell, attempt: Attempt, alive: bool) -> list[Member]:
        """The nodes that may run this attempt (only the live ones with `alive`)."""
        return [x for x in self.members if x.serves(cell) and attempt.host in (None, x.key)
                and (x.lost is None or not alive)]

    def _dispatch(self, st: Started) -> None:
        """Every queued run on a free node or GPU slot that serves its cell, records appended as
        they come back. A whole-node run that waits for a node's GPU runs to end holds back the
        GPU runs queued after it there, so it keeps its place in the run order."""
        ray = self.cluster.ray
        m, sdir = self.matrix, st.sdir
        total, queue = self.queued
        busy: dict[Any, tuple[Member, Attempt]] = {}
        with self.display.progress(total=total, completed=total - len(queue)) as progress:
            while queue or busy:
                held: set[str] = set()  # node ids a waiting whole-node run is owed
                for attempt in list(queue):
                    cell = m.cell(attempt.planned.cell_id)
                    serving = self._serving(cell, attempt, alive=True)
                    if not serving:
                        queue.remove(attempt)
                        self._append(sdir, self._unserved(sdir, cell, attempt), progress)
                        continue
                    running = [x for x, _ in busy.values()]
                    member = next((x for x in serving if x.free(running)
                                   and (x.facts.gpu is None or x.node.node_id not in held)), None)
                    if member is None:
                        if cell.isolation == "node":
                            held |= {x.node.node_id for x in serving}
                        continue
                    queue.remove(attempt)
                    p = attempt.planned
                    busy[member.actor.run.remote(p.cell_id, p.run_index, p.order_index)] = (member, attempt)
                    progress.start_run(p, cell, total)
                if not busy:
                    break
                (ref,), _ = ray.wait(list(busy), num_returns=1)
                member, attempt = busy.pop(ref)
                try:
                    done: RunDone = ray.get(ref)
                except ray.exceptions.RayActorError as e:  # the node died or left: this attempt is lost
                    member.lost = _first_line(e)
                    rec = self._lost(sdir, m.cell(attempt.planned.cell_id), attempt, member)
                    if attempt.left > 0:
                        queue.appendleft(replace(attempt, attempt=attempt.attempt + 1, left=attempt.left - 1))
                except ray.exceptions.RayError as e:  # the harness failed on the node: the run's failure, not the node's
                    rec = run_record(sdir.id, m.cell(attempt.planned.cell_id), attempt.planned)
                    rec.status, rec.host, rec.gpu, rec.attempt = "failed", member.key, member.facts.gpu, attempt.attempt
                    rec.failure_reason = f"the harness failed the run on node {member.key}: {_first_line(e)}"
                else:
                    rec = self._received(sdir, done, member, attempt)
                self._append(sdir, rec, progress)

    def _append(self, sdir: SessionDir, rec: RunRecord, progress: Any) -> None:
        sdir.append_run(rec)
        self.ran += 1
        progress.end_run(rec, self.matrix.timing.runs)

    def _received(self, sdir: SessionDir, done: RunDone, member: Member, attempt: Attempt) -> RunRecord:
        for relative, data in done.files.items():
            path = sdir.root / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, data)
        return replace(done.record, session_id=sdir.id, host=member.key, gpu=member.facts.gpu, attempt=attempt.attempt)

    def _lost(self, sdir: SessionDir, cell: Cell, attempt: Attempt, member: Member) -> RunRecord:
        rec = run_record(sdir.id, cell, attempt.planned)
        rec.status, rec.host, rec.attempt, rec.node_lost = "failed", member.key, attempt.attempt, True
        rec.gpu = member.facts.gpu
        rec.failure_reason = (f"node {member.key} ({member.node.address}) was lost during the run ({member.lost})"
                              + ("; to be tried again on another node" if attempt.left > 0 else
                                 "; each-host: its runs stay with it" if attempt.host else "; no retries left"))
        return rec

    def _unserved(self, sdir: SessionDir, cell: Cell, attempt: Attempt) -> RunRecord:
        """A run no live node can take: unsupported when no node of the session ever matched its
        cell, else failed as lost (its nodes are gone), for `--resume` to run again."""
        rec = run_record(sdir.id, cell, attempt.planned)
        rec.attempt = attempt.attempt
        gone = [m.key for m in self._serving(cell, attempt, alive=False)]
        if gone:
            rec.status, rec.node_lost = "failed", True
            rec.failure_reason = f"no live node is left to run it (lost: {', '.join(gone)})"
            return rec
        wanted = ", ".join(f"{k} = {v!r}" for k, v in cell.hosts.items())
        rec.status = "unsupported"
        if cell.isolation == "gpu" and any(x.matches(cell) for x in self.members):
            rec.failure_reason = ("isolation = \"gpu\": no node of the cluster that matches its hosts has a GPU "
                                  "that Ray knows of")
        else:
            rec.failure_reason = f"no node of the cluster matches hosts {{ {wanted} }}"
        return rec

    def _record_hosts(self, st: Started, finished: bool) -> None:
        """Every node in session.json's `hosts`: hardware, harness, locks, preflight, idle power;
        a resume's entries go beside the first run's."""
        ray = self.cluster.ray
        hosts = st.session.hosts
        label = st.sdir.id if not st.resumed else f"{st.sdir.id} resume {len(st.session.resumes)}"
        for member in self.members:
            here: dict[str, Any] = {"lost": member.lost} if member.lost else {}
            if finished and member.lost is None:
                try:
                    here = ray.get(member.actor.finish.remote())
                except ray.exceptions.RayError as e:
                    here = {"lost": _first_line(e)}
            for env, versions in (here.get("worker_versions") or {}).items():
                st.session.worker_versions.setdefault(env, versions)
            gpus = member.facts.host.get("gpus") or []
            gpu = member.facts.gpu
            slot = {} if gpu is None else {"gpu": {"index": gpu, "nvidia_smi": gpus[gpu] if gpu < len(gpus) else None}}
            entry = hosts.setdefault(member.key, {"host": member.facts.host, **slot, "harness": member.facts.harness,
                                                  "env_lock_sha256": member.facts.env_lock_sha256,
                                                  "ray": {"node_id": member.node.node_id,
                                                          "address": member.node.address,
                                                          "labels": member.node.labels},
                                                  "sessions": {}})
            entry["sessions"][label] = {"preflight": member.facts.preflight, "order_seed": st.session.order_seed,
                                        **here}


def _first_line(e: Exception) -> str:
    """An exception as one line of at most 300 characters: Ray's messages run to many."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:300]}" if text else type(e).__name__


def run_fleet(matrix: Matrix, envs: dict[str, Env], display: Display, address: str, job: Job, results_root: Path,
              resume: SessionDir | None) -> SessionResult:
    """The session on the cluster at `address` (or a local one), the cluster let go after it."""
    with Cluster(address) as cluster:
        return Fleet(matrix, envs, display, cluster, job).run(results_root, resume)
