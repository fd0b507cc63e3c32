"""The field tables of docs/results-format.md, generated from the record definitions (records.py,
summary.py, compare.py) and the flags table (flags.py), so the reference cannot drift from the
code: `python -m orchestrator.results.fields_doc` rewrites every table between its marker
comments, `--check` only says whether it would (tests/test_records.py runs the check).

A table's markers: `<!-- fields: NAME -->` ... `<!-- /fields -->`, NAME a key of TABLES."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable

from orchestrator.config.paths import REPO_ROOT
from orchestrator.results.budget import TimeBudget
from orchestrator.results.compare import Comparison, RankTest
from orchestrator.results.flags import FLAGS, SEVERITIES
from orchestrator.results.groups import GroupEnd, GroupRatio
from orchestrator.results.hosts import HostCell, HostSpread, HostValues
from orchestrator.results.records import RunRecord, SessionRecord
from orchestrator.results.summary import (
    CellSummary,
    ConversionSummary,
    Failure,
    FigureEntry,
    MetricStats,
    RunValue,
    Summary,
)
from workers.contract.typed import field_rows

DOC = REPO_ROOT / "docs" / "results-format.md"
_BLOCK = re.compile(r"(<!-- fields: (\S+) -->\n)(.*?)(<!-- /fields -->)", re.S)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _fields(cls: type) -> Callable[[], list[str]]:
    def table() -> list[str]:
        rows = [f"| `{name}` | {kind} | {_cell(unit)} | {_cell(doc)} |" for name, kind, unit, doc in field_rows(cls)]
        return ["| field | type | unit | meaning |", "|---|---|---|---|", *rows]
    return table


def _flags() -> list[str]:
    rows = [f"| `{f.name}` | `{f.field}` | {_cell(f.meaning)} | {f.severity} | {'yes' if f.warns else 'no'} |"
            for f in FLAGS]
    return ["| flag | summary field | meaning | severity | warns |", "|---|---|---|---|---|", *rows]


def _severities() -> list[str]:
    return ["| severity | meaning |", "|---|---|", *(f"| {k} | {_cell(v)} |" for k, v in SEVERITIES.items())]


TABLES: dict[str, Callable[[], list[str]]] = {
    "RunRecord": _fields(RunRecord), "SessionRecord": _fields(SessionRecord), "Summary": _fields(Summary),
    "CellSummary": _fields(CellSummary), "MetricStats": _fields(MetricStats), "RunValue": _fields(RunValue),
    "Failure": _fields(Failure), "ConversionSummary": _fields(ConversionSummary),
    "FigureEntry": _fields(FigureEntry), "TimeBudget": _fields(TimeBudget), "Comparison": _fields(Comparison), "RankTest": _fields(RankTest),
    "GroupRatio": _fields(GroupRatio), "GroupEnd": _fields(GroupEnd),
    "HostCell": _fields(HostCell), "HostSpread": _fields(HostSpread), "HostValues": _fields(HostValues),
    "flags": _flags, "severities": _severities,
}


def render(text: str) -> str:
    """`text` with every marked table regenerated; ValueError naming an unknown table."""
    def table(m: re.Match[str]) -> str:
        name = m.group(2)
        if name not in TABLES:
            raise ValueError(f"{DOC.name}: no table named {name!r} (known: {', '.join(TABLES)})")
        return m.group(1) + "\n".join(TABLES[name]()) + "\n" + m.group(4)
    return _BLOCK.sub(table, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the tables differ from the definitions")
    args = parser.parse_args(argv)
    text = DOC.read_text()
    try:
        new = render(text)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if new == text:
        return 0
    if args.check:
        print(f"{DOC}: field tables differ from the definitions; run python -m orchestrator.results.fields_doc",
              file=sys.stderr)
        return 1
    DOC.write_text(new)
    print(f"{DOC}: field tables rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
