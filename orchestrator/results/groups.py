"""Group ratios (docs/reports.md, "Group ratios"): a study's headline compares camps, not pairs
("the ANE cell uses a to b times less energy than the GPU cells"). Each cell of one group is set
against every cell of another by the ratio of their medians, and the statement is the range of
those ratios, from the lowest to the highest, each end named by the real cell it came from, so
no end is a rounded or invented figure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from orchestrator.config.matrix import read_report
from orchestrator.errors import UserError
from orchestrator.results.records import SessionRecord
from workers.contract.typed import field

METRICS = (("energy", "J", "energy_per_step_j"), ("latency", "ms", "latency_ms_median"))


def recorded_groups(session: SessionRecord | None, where: str) -> dict[str, list[str]]:
    """The `[report] groups` of the matrix a session recorded; none from a damaged session.json
    (the report names the damage where it reads the baseline, and goes on)."""
    content = (session.matrix.get("content") or {}) if session else {}
    try:
        return read_report(content, where).groups
    except UserError:
        return {}


@dataclass(frozen=True)
class GroupEnd:
    cell: str = field(doc="the cell of the other group at this end of the range")
    median: float = field(doc="its median (the metric's unit)")
    ratio: float = field(doc="the stated cell's median / this cell's median")


@dataclass(frozen=True)
class GroupRatio:
    """One cell of one group against every cell of another group, for one metric."""

    metric: str = field(doc="`energy` (net energy per step) or `latency` (run median latency per step)")
    unit: str = field(doc="`J` or `ms`")
    group: str = field(doc="the stated cell's group")
    cell: str = field(doc="the stated cell")
    median: float = field(doc="its median")
    against: str = field(doc="the other group")
    lowest: GroupEnd = field(doc="the other group's cell giving the lowest ratio")
    highest: GroupEnd = field(doc="the other group's cell giving the highest ratio")
    n_against: int = field(unit="count", doc="cells of the other group with a positive median")
    missing: list[str] = field(factory=list, doc="cells of the other group without a positive median (no ok run, no "
                                                 "meter, or net energy <= 0)")
    statement: str = field("", doc="the range in words")


def _times(ratio: float) -> str:
    return f"{ratio:.4g}x"


def _span(lo: tuple[float, str], hi: tuple[float, str]) -> str:
    return f"{_times(lo[0])} ({lo[1]})" + ("" if lo[1] == hi[1] else f" to {_times(hi[0])} ({hi[1]})")


def statement(r: GroupRatio) -> str:
    """`ours-ane-w4 energy against gpu: 0.1893x (mlx-gpu-fp16) to 0.3021x (apple-gpu-fp16),
    i.e. 3.31x (apple-gpu-fp16) to 5.283x (mlx-gpu-fp16) less`; ratios are the cell over the
    group's cell."""
    lo, hi = r.lowest, r.highest
    text = f"{r.cell} {r.metric} against {r.against}: {_span((lo.ratio, lo.cell), (hi.ratio, hi.cell))}"
    if hi.ratio < 1:
        text += f", i.e. {_span((1 / hi.ratio, hi.cell), (1 / lo.ratio, lo.cell))} less"
    if r.missing:
        text += f" ({', '.join(r.missing)} without a positive median)"
    return text


def medians_of(cells: list) -> dict[str, dict[str, float | None]]:
    """`medians[metric][cell]` from the summary's cells."""
    return {metric: {c.cell_id: getattr(c, key) for c in cells} for metric, _, key in METRICS}


def cell_against_group(metric: str, unit: str, group: str, cell: str, median: float, against: str,
                       medians: Mapping[str, float | None], members: list[str]) -> GroupRatio | None:
    """`cell` against each member with a positive median; None when none has one."""
    ends = [GroupEnd(m, v, median / v) for m in members if (v := medians.get(m)) is not None and v > 0]
    if not ends or median <= 0:
        return None
    ends.sort(key=lambda e: e.ratio)
    r = GroupRatio(metric=metric, unit=unit, group=group, cell=cell, median=median, against=against,
                   lowest=ends[0], highest=ends[-1], n_against=len(ends),
                   missing=[m for m in members if m not in {e.cell for e in ends}])
    return GroupRatio(**{**r.__dict__, "statement": statement(r)})


def group_ratios(groups: Mapping[str, list[str]], medians: Mapping[str, Mapping[str, float | None]],
                 only: tuple[str, str] | None = None) -> list[GroupRatio]:
    """Each cell of each group against each other group (or only group `only[1]` against group
    `only[0]`), per metric; `medians[metric][cell]` as the summary has them."""
    pairs = [only] if only else [(a, b) for a in groups for b in groups if a != b]
    out = []
    for metric, unit, _ in METRICS:
        values = medians.get(metric, {})
        for against, group in pairs:
            for cell in groups[group]:
                median = values.get(cell)
                if median is None:
                    continue
                r = cell_against_group(metric, unit, group, cell, median, against, values, groups[against])
                if r is not None:
                    out.append(r)
    return out
