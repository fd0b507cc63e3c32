"""`report`, `compare` and `recompute-energy` on every folder of the damage corpus
(tests/damage.py), in-process through the CLI: each ends with exit 0 or 2 and never a traceback;
what cannot be read is named and skipped, and the commands go on."""

import shutil

import pytest
from click.testing import CliRunner
from damage import CELLS, CORRUPTIONS, small_session

from orchestrator.cli import cli
from orchestrator.errors import UserError

pytestmark = pytest.mark.slow

IN_THE_WAY = {"figures a file", "report.md a folder", "summary.json a folder", "runs.csv a folder"}
NO_RUNS = {"runs.jsonl missing", "runs.jsonl empty", "runs.jsonl a folder"}
SESSION_UNREADABLE = {n for n in CORRUPTIONS if n.startswith("session.json")} - {
    "session.json missing", "session.json a folder", "session.json invalid UTF-8", "session.json matrix content wrong"}


def _expected(name: str, command: str) -> int:
    """The exit status each command must give: 2 only where nothing can be done."""
    if command == "report":
        return 2 if name in IN_THE_WAY else 0
    if command == "compare":
        return 2 if name in NO_RUNS else 0
    if name == "runs.jsonl empty":
        return 0  # nothing to recompute: said, and the folder left alone
    return 2 if name in IN_THE_WAY | NO_RUNS | SESSION_UNREADABLE else 0


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return small_session(tmp_path_factory.mktemp("damage") / "base")


@pytest.mark.parametrize("command", ["report", "compare", "recompute-energy"])
@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_a_damaged_folder_is_named_never_a_traceback(base, tmp_path, name, command):
    d = tmp_path / "session"
    shutil.copytree(base, d)
    CORRUPTIONS[name](d)
    args = {"report": ["report", str(d)], "compare": ["compare", f"{d}:{CELLS[0]}", f"{d}:{CELLS[1]}"],
            "recompute-energy": ["recompute-energy", str(d)]}[command]
    r = CliRunner().invoke(cli, args)
    e = r.exception
    assert e is None or isinstance(e, (SystemExit, UserError)), f"{type(e).__name__}: {e}"
    code = 2 if isinstance(e, UserError) else r.exit_code
    assert code == _expected(name, command), r.output


def test_recompute_reads_no_samples_outside_the_folder_and_names_the_field(base, tmp_path):
    d = tmp_path / "session"
    shutil.copytree(base, d)
    CORRUPTIONS["meter_samples_file outside (..)"](d)
    r = CliRunner().invoke(cli, ["recompute-energy", str(d)])
    assert r.exit_code == 0
    said = " ".join(r.output.split())
    assert f"{d / 'runs.jsonl'}:1: field meter_samples_file: '../../../../etc/passwd' lies outside the session folder; not read" in said


def test_one_damaged_folder_does_not_stop_the_others(base, tmp_path):
    good, bad = tmp_path / "good", tmp_path / "bad"
    shutil.copytree(base, good)
    shutil.copytree(base, bad)
    CORRUPTIONS["figures a file"](bad)
    r = CliRunner().invoke(cli, ["report", str(bad), str(good)])
    assert isinstance(r.exception, UserError) and f"no report written for {bad}" in str(r.exception)
    assert (good / "report.html").is_file()
