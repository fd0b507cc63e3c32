"""Matrices fuzzed (hypothesis): examples/quick.toml with fields replaced by values of any type,
removed, added under unknown names, or its cells' ids changed. Loading one either yields a
matrix that can be measured or a UserError of one line per problem; never another exception.
`uv run pytest tests/test_fuzz_matrix.py --hypothesis-show-statistics` shows the outcomes."""

import json
import math
import re
import tomllib
from pathlib import Path

from conftest import REPO
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from orchestrator.config.matrix import load_matrix
from orchestrator.errors import UserError

BASE = tomllib.loads((REPO / "examples" / "quick.toml").read_text())
ENVS = {"diffusers", "mlx"}
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                         HealthCheck.function_scoped_fixture])

scalars = (st.booleans() | st.integers(min_value=-2**63, max_value=2**63 - 1)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=80)
           | st.sampled_from(["", "cpu", "cuda", "mps", "fp16", "bf16", "ane", "A" * 65, "../x", "x y", "Ä"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(min_size=1, max_size=8), inner, max_size=3), max_leaves=6)


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)  # a lone surrogate comes out as TOML refuses it: one more bad input
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"


def _toml(doc: dict) -> str:
    out: list[str] = []
    for name, section in doc.items():
        if name == "cells" and isinstance(section, list) and all(isinstance(c, dict) for c in section):
            for cell in section:
                out += ["[[cells]]", *(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in cell.items())]
        else:
            out.append(f"{json.dumps(name)} = {_toml_value(section)}")
    return "\n".join(out) + "\n"


@st.composite
def matrices(draw) -> dict:
    doc = json.loads(json.dumps(BASE))
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from(sorted(doc) + ["extra"]))
        target = doc.get(name)
        if name == "cells" and isinstance(target, list) and target:
            target = target[draw(st.integers(0, len(target) - 1))]
        if not isinstance(target, dict):
            doc[name] = draw(values)
            continue
        key = draw(st.sampled_from(sorted(target) + ["unknown_key"]))
        action = draw(st.sampled_from(["replace", "remove", "id"]))
        if action == "remove":
            target.pop(key, None)
        elif action == "id" and name == "cells":  # ids that clash, differ only in case, or are long
            target["id"] = draw(st.sampled_from([c["id"] for c in BASE["cells"]] + ["DIFFUSERS-CPU-FP32", "a" * 65,
                                                                                       "a/b", "ok.id_1", ""]))
        else:
            target[key] = draw(values)
    return doc


def _measurable(m) -> None:
    """What a session needs of any matrix it accepts."""
    assert m.enabled_cells and m.timing.runs >= 1 and m.timing.iterations >= 1
    ids = [c.id for c in m.cells]
    assert len({i.lower() for i in ids}) == len(ids) and all(re.fullmatch(r"[A-Za-z0-9._-]{1,64}", i) for i in ids)
    for name in ("cooldown_s", "run_timeout_s"):
        assert math.isfinite(getattr(m.timing, name)) and getattr(m.timing, name) >= 0
    assert math.isfinite(m.equivalence.mse_max) and math.isfinite(m.equivalence.cosine_min)


@FUZZ
@given(doc=matrices())
def test_a_matrix_is_measurable_or_refused_one_line_per_problem(doc, tmp_path: Path):
    path = tmp_path / "m.toml"
    path.write_text(_toml(doc), encoding="utf-8", errors="surrogatepass")
    try:
        m = load_matrix(path, ENVS)
    except UserError as e:
        event("refused")
        assert e.lines and all(line.strip() and "\n" not in line and "Traceback" not in line for line in e.lines)
        return
    event("accepted")
    _measurable(m)
