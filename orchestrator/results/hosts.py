"""Which host each run ran on, and how much of a cell's spread is the host's: a fleet study
(`orchestrate merge`) measures one cell on several machines, and their difference is a variance
component a one-machine study cannot see, so it is split out instead of hidden in the spread."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from orchestrator.results.records import RunRecord, SessionRecord
from orchestrator.results.stats import across_runs
from orchestrator.results.values import run_values
from workers.contract.typed import field

UNKNOWN = "unknown host"
EXACT_LIMIT = 20_000  # label assignments enumerated; above, PERMUTATIONS random ones (seeded)
PERMUTATIONS = 20_000
SPREAD_METRICS = (("latency_ms_median", "ms"), ("energy_per_step_j", "J"))


IDENTITY = ("hostname", "machine", "cpu", "memory_bytes", "gpus")  # what tells two machines apart


def hostname(host: dict[str, Any] | None) -> str:
    return str((host or {}).get("hostname") or UNKNOWN)


def same_machine(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    return {k: (a or {}).get(k) for k in IDENTITY} == {k: (b or {}).get(k) for k in IDENTITY}


def host_key(host: dict[str, Any] | None, taken: dict[str, dict[str, Any]]) -> str:
    """The host's name among `taken` (key -> host): the same machine keeps its key; another one
    with the same hostname (cloud VMs are all `vm`) gets `name#2`, `name#3`, ..."""
    name, n = hostname(host), 1
    key = name
    while key in taken and not same_machine(taken[key], host):
        n += 1
        key = f"{name}#{n}"
    return key


def session_hosts(session: SessionRecord) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(key, host, the session.json entry that recorded it: provenance or a resume) for the
    session's start and each resume, in time order."""
    taken: dict[str, dict[str, Any]] = {}
    out = []
    for host, entry in [(session.provenance.get("host"), session.provenance),
                        *((r.get("host"), r) for r in session.resumes)]:
        key = host_key(host, taken)
        taken.setdefault(key, host or {})
        out.append((key, host or {}, entry))
    return out


def run_host(run: RunRecord, session: SessionRecord | None) -> str:
    """The run's recorded host, else the host the session ran on when the run started: a resume
    may have continued on another machine (`resumes`)."""
    if run.host:
        return run.host
    if session is None:
        return UNKNOWN
    hosts = session_hosts(session)
    key = hosts[0][0]
    for k, _, entry in hosts[1:]:
        at = entry.get("at")
        if isinstance(at, str) and run.started_at and at <= run.started_at:
            key = k
    return key


def hosts_of(session: SessionRecord | None, runs: list[RunRecord]) -> list[str]:
    """Every host with a run, in the order their first runs were recorded."""
    return list(dict.fromkeys(run_host(r, session) for r in runs))


@dataclass
class HostCell:
    """One cell's ok runs on one host, summarised as the cell table summarises all of them."""

    host: str = field(doc="a key of session.json's `hosts`")
    cell_id: str = field(doc="the cell")
    n_ok: int = field(0, unit="count", doc="ok runs on this host")
    n_failed: int = field(0, unit="count", doc="failed runs on this host")
    latency_ms_median: float | None = field(None, unit="ms", doc="median of the runs' median latency per step")
    latency_ms_p10: float | None = field(None, unit="ms", doc="its p10 across the runs")
    latency_ms_p90: float | None = field(None, unit="ms", doc="its p90 across the runs")
    energy_per_step_j: float | None = field(None, unit="J", doc="median net energy per step, all channels")
    energy_per_step_j_p10: float | None = field(None, unit="J", doc="its p10 across the runs")
    energy_per_step_j_p90: float | None = field(None, unit="J", doc="its p90 across the runs")


def _spread(runs: list[RunRecord], key: str, prefix: str) -> dict[str, float | None]:
    """`key`'s median across the runs, and its p10 and p90 as `prefix`_p10 and _p90."""
    values = [v for _, v in run_values(runs, key)]
    s = across_runs(values) if values else None
    return {key: s.median if s else None, f"{prefix}_p10": s.p10 if s else None, f"{prefix}_p90": s.p90 if s else None}


def host_cells(session: SessionRecord | None, runs: list[RunRecord], cells: list[str]) -> list[HostCell]:
    """Per host, per cell with runs there: the per-host tables of a fleet session."""
    out = []
    for host in hosts_of(session, runs):
        mine = [r for r in runs if run_host(r, session) == host]
        for cell in cells:
            here = [r for r in mine if r.cell_id == cell]
            if not here:
                continue
            ok = [r for r in here if r.status == "ok"]
            out.append(HostCell(host=host, cell_id=cell, n_ok=len(ok), n_failed=sum(r.status == "failed" for r in here),
                                **_spread(ok, "latency_ms_median", "latency_ms"),
                                **_spread(ok, "energy_per_step_j", "energy_per_step_j")))
    return out


@dataclass
class HostValues:
    host: str = field(doc="a key of session.json's `hosts`")
    n: int = field(unit="count", doc="ok runs with a value on this host")
    median: float = field(doc="median of those runs' values")
    mean: float = field(doc="their mean")


@dataclass
class HostSpread:
    """One metric of one cell measured on several hosts: one-way random effects (each run's
    value = the cell's mean + a host effect + run-to-run noise), estimated from the ANOVA mean
    squares; the test permutes the runs' host labels, so it assumes no distribution."""

    cell_id: str = field(doc="the cell")
    metric: str = field(doc="the run field: `latency_ms_median` or `energy_per_step_j`")
    unit: str = field(doc="of the metric")
    hosts: list[HostValues] = field(factory=list, doc="per host with ok runs")
    within_sd: float = field(0.0, doc="run-to-run standard deviation within a host (sqrt of the within mean square)")
    between_sd: float = field(0.0, doc="standard deviation of the host effect (0 when the between mean square is "
                                       "below the within one)")
    between_share: float | None = field(None, doc="between-host variance / (between + within); null when both are 0")
    p: float | None = field(None, doc="permutation test of the host labels (statistic: between-host sum of squares); "
                                      "null with one run per host")
    method: str | None = field(None, doc="`exact (N assignments)` or `random permutations (N, seed 0)`")
    host_effect: str = field("undecided", doc="`larger than run-to-run noise` (p < 0.05), `not distinguishable` "
                                              "or `undecided` (too few runs for p < 0.05)")
    verdict: str = field("", doc="one line, as the report shows it")


def _ssb(values: np.ndarray, labels: np.ndarray, sizes: list[int]) -> np.ndarray:
    """The between-host sum of squares of each row of host labels (one assignment per row)."""
    between = sum(((labels == g) * values).sum(axis=-1) ** 2 / n for g, n in enumerate(sizes))
    return np.asarray(between - values.sum() ** 2 / values.size)


def _assignments(sizes: list[int]) -> Iterator[np.ndarray]:
    """Every way to split positions 0..N-1 into groups of `sizes`, as label arrays."""
    n = sum(sizes)

    def split(remaining: tuple[int, ...], g: int) -> Iterator[dict[int, int]]:
        if g == len(sizes) - 1:
            yield {i: g for i in remaining}
            return
        for chosen in itertools.combinations(remaining, sizes[g]):
            rest = tuple(i for i in remaining if i not in chosen)
            for tail in split(rest, g + 1):
                yield {**{i: g for i in chosen}, **tail}

    for mapping in split(tuple(range(n)), 0):
        yield np.array([mapping[i] for i in range(n)])


def permutation_p(groups: list[list[float]]) -> tuple[float, str, float]:
    """P of a between-host sum of squares at least the observed one if hosts did not matter; the
    method; and the smallest p the design allows (below 0.05 or the test cannot decide)."""
    sizes = [len(g) for g in groups]
    values = np.array([v for g in groups for v in g], float)
    labels = np.repeat(np.arange(len(groups)), sizes)
    observed = float(_ssb(values, labels, sizes))
    tol = 1e-9 * max(float(((values - values.mean()) ** 2).sum()), 1e-300)  # rounding, relative to the total spread
    count = math.factorial(sum(sizes)) // math.prod(math.factorial(s) for s in sizes)
    if count <= EXACT_LIMIT:
        stats = _ssb(values, np.array(list(_assignments(sizes))), sizes)
        method = f"exact ({count} assignments)"
    else:
        rng = np.random.default_rng(0)
        drawn = rng.permuted(np.tile(labels, (PERMUTATIONS, 1)), axis=1)
        stats = np.append(_ssb(values, drawn, sizes), observed)
        method = f"random permutations ({PERMUTATIONS}, seed 0)"
    p = float(np.count_nonzero(stats >= observed - tol)) / len(stats)
    # the observed split's mirror images (the same groups with labels swapped) tie with it
    same_sized = math.prod(math.factorial(sizes.count(s)) for s in set(sizes))
    return p, method, min(1.0, same_sized / count) if count <= EXACT_LIMIT else 1 / len(stats)


def host_spread(cell_id: str, metric: str, unit: str, by_host: dict[str, list[float]]) -> HostSpread | None:
    """The split for one metric of one cell; None unless 2 or more hosts have ok runs, and none
    whose values' squares leave float range (a damaged record: 1e308 ms)."""
    groups = {h: v for h, v in by_host.items() if v}
    if len(groups) < 2:
        return None
    with np.errstate(over="ignore", invalid="ignore"):
        if not np.isfinite(np.var([x for v in groups.values() for x in v])):
            return None
    k, n = len(groups), sum(len(v) for v in groups.values())
    means = {h: float(np.mean(v)) for h, v in groups.items()}
    grand = float(np.mean([x for v in groups.values() for x in v]))
    ssb = sum(len(v) * (means[h] - grand) ** 2 for h, v in groups.items())
    ssw = sum((x - means[h]) ** 2 for h, v in groups.items() for x in v)
    msw = ssw / (n - k) if n > k else None
    n0 = (n - sum(len(v) ** 2 for v in groups.values()) / n) / (k - 1)
    var_b = max(0.0, (ssb / (k - 1) - (msw or 0.0)) / n0)
    out = HostSpread(cell_id=cell_id, metric=metric, unit=unit,
                     hosts=[HostValues(h, len(v), float(np.median(v)), means[h]) for h, v in groups.items()],
                     within_sd=math.sqrt(msw) if msw is not None else 0.0, between_sd=math.sqrt(var_b))
    total = var_b + (msw or 0.0)
    out.between_share = var_b / total if total > 0 else None
    sds = f"between-host SD {out.between_sd:.4g} {unit}, within-host SD {out.within_sd:.4g} {unit}"
    if msw is None:
        out.verdict = f"undecided: one ok run per host, so the run-to-run noise is unknown ({sds})"
        return out
    out.p, out.method, floor = permutation_p(list(groups.values()))
    if out.p < 0.05:
        out.host_effect = "larger than run-to-run noise"
        out.verdict = f"host effect larger than run-to-run noise (p = {out.p:.2g}; {sds})"
    elif floor >= 0.05:
        out.verdict = (f"undecided: too few runs per host for p < 0.05 (smallest possible p {floor:.2g}; "
                       f"p = {out.p:.2g}; {sds})")
    else:
        out.host_effect = "not distinguishable"
        out.verdict = f"host effect not distinguishable from run-to-run noise (p = {out.p:.2g}; {sds})"
    return out


def host_spreads(session: SessionRecord | None, runs: list[RunRecord], cells: list[str]) -> list[HostSpread]:
    """Each cell's split, per metric, where two or more hosts measured it."""
    out = []
    for cell in cells:
        ok = [r for r in runs if r.cell_id == cell and r.status == "ok"]
        for metric, unit in SPREAD_METRICS:
            by_host: dict[str, list[float]] = {}
            for r in ok:
                by_host.setdefault(run_host(r, session), []).extend(v for _, v in run_values([r], metric))
            if (spread := host_spread(cell, metric, unit, by_host)) is not None:
                out.append(spread)
    return out
