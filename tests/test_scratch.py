"""Scratch folders in the temp dir: a folder whose maker was SIGKILLed is removed when the next
folder of its kind is made on that host; a living maker's folder, another kind's, another host's
and anything not named as ours stay."""

import os
import signal
import subprocess
import sys
import tempfile

import pytest
from conftest import REPO

from orchestrator.run import scratch

MAKER = ("import sys, time\nfrom orchestrator.run import scratch\n"
         "print(scratch.folder(sys.argv[1]), flush=True)\ntime.sleep(600)")


@pytest.fixture
def tmp(tmp_path, monkeypatch):
    """A temp dir of the test's own, for this process and the makers it starts."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def maker(kind: str) -> tuple[subprocess.Popen, str]:
    """A real process that made a folder of `kind` and holds on; it and the folder's name."""
    p = subprocess.Popen([sys.executable, "-c", MAKER, kind], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    return p, os.path.basename(p.stdout.readline().strip())


def test_a_killed_makers_folder_goes_when_the_next_of_its_kind_is_made_and_the_rest_stay(tmp):
    killed, killed_folder = maker("fleet-node")
    alive, alive_folder = maker("fleet-node")
    other_kind, other_kind_folder = maker("fork")
    (tmp / killed_folder / "runs.jsonl").write_text("{}\n")  # a folder with files goes whole
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    other_kind.send_signal(signal.SIGKILL)
    other_kind.wait()
    elsewhere = killed_folder.replace(scratch._prefix("fleet-node"), "cdb-fleet-node-00000000-")
    (tmp / elsewhere).mkdir()  # another host's, sharing this temp dir: its pids are not ours to judge
    (tmp / "cdb-fleet-node-notapid").mkdir()
    try:
        made = scratch.folder("fleet-node")
        left = sorted(p.name for p in tmp.iterdir())
        assert killed_folder not in left
        assert sorted([alive_folder, other_kind_folder, elsewhere, "cdb-fleet-node-notapid", made.name]) == left
        assert made.name.startswith(f"{scratch._prefix('fleet-node')}{os.getpid()}-")
    finally:
        alive.kill()
        alive.wait()


def test_a_temporary_folder_is_removed_after_its_block_even_on_an_error(tmp):
    with pytest.raises(RuntimeError), scratch.temporary("worker") as folder:
        (folder / "worker.log").write_text("a line\n")
        raise RuntimeError("the run failed")
    assert not list(tmp.iterdir())
