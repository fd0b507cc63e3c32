"""`worker --cell ID` typed as the README has it: the cell is found in matrix.toml or the
examples, a cell this host cannot predict ends with one line saying why (exit 0), an unknown id
lists the close matches, and the worker's temporary folder is removed."""

import os
import re
import subprocess

import pytest
from conftest import BIN, REPO

TINY_MODEL = """[model]
source = "synthetic"
preset = "tiny"
seed = 0
sha256 = "3e35badb1a7d322f44352cd6cf1b21a25ebb2a91e0c08a0c2a059b34c7c095fb"

"""


def _worker(*args: str, cwd, env=None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "worker"), *args], capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env={**os.environ, **(env or {})})


def _study_on_synthetic_weights(folder):
    """The reference study's matrix.toml, its cells as they are, with the synthetic `tiny` UNet in
    place of the SD1.5 checkpoint this host does not have; in `folder`, where `worker` finds it."""
    text = (REPO / "matrix.toml").read_text()
    (folder / "matrix.toml").write_text(re.sub(r"\[model\]\n.*?(?=\[inputs\])", TINY_MODEL, text, flags=re.S))
    tmp = folder / "tmp"
    tmp.mkdir()
    return {"CDB_CACHE_DIR": str(folder / "cache"), "TMPDIR": str(tmp)}


def test_an_unknown_cell_lists_close_matches_across_the_study_and_the_examples():
    p = _worker("--cell", "ours-ane-w5", cwd=REPO)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    lines = p.stderr.splitlines()
    assert lines[0].startswith("error: no cell 'ours-ane-w5' in matrix.toml, examples/")
    assert "--matrix PATH" in lines[0]
    assert lines[1].startswith("error: close matches: ours-ane-w4 (matrix.toml)")
    assert "harness-ct9-ane-w4 (examples/coreml-toolchains.toml)" in lines[1]


def test_a_study_cell_is_taken_from_matrix_toml_and_a_missing_checkpoint_names_its_variable(tmp_path):
    p = _worker("--cell", "ours-ane-w4", cwd=REPO, env={"SD15_CHECKPOINT": str(tmp_path / "absent.safetensors")})
    assert p.stdout.splitlines()[0] == "cell ours-ane-w4 from matrix.toml"
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip() == (f"error: matrix.toml: [model]: field 'path': file not found: {tmp_path}/absent.safetensors"
                                " (set SD15_CHECKPOINT to the checkpoint's path)")


def test_a_study_cell_s_old_id_finds_it_under_its_new_one(tmp_path):
    p = _worker("--cell", "ours-ct9-ane-w4", cwd=REPO, env={"SD15_CHECKPOINT": str(tmp_path / "absent.safetensors")})
    assert p.stdout.splitlines()[0] == "cell ours-ane-w4 from matrix.toml"


def test_an_example_cell_is_found_in_the_examples(tmp_path):
    p = _worker("--cell", "mlx-cpu-fp32", "--iterations", "0", cwd=REPO)
    assert p.stdout.splitlines()[0] == "cell mlx-cpu-fp32 from examples/quick.toml"
    assert p.returncode == 2 and p.stderr.strip() == "error: --iterations must be >= 1"


@pytest.mark.coreml
def test_the_study_s_w4_cell_converts_here_and_says_prediction_needs_macos(env_python, tmp_path):
    env_python("coreml-ct9")
    env = _study_on_synthetic_weights(tmp_path)
    p = _worker("--cell", "ours-ane-w4", "--iterations", "1", cwd=tmp_path, env=env, timeout=1500)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    lines = p.stdout.splitlines()
    assert lines[0] == "cell ours-ane-w4 from matrix.toml"
    assert "ours-ane-w4: coreml CPU_AND_NE fp16 512px in env coreml-ct9" in p.stdout
    assert lines[-1] == "unsupported: Core ML prediction needs macOS (this host: Linux); the model was converted and verified"
    assert list((tmp_path / "cache" / "coreml").iterdir())  # the converted model, kept in the cache
    assert not list((tmp_path / "tmp").glob("cdb-worker-*"))  # the folder `worker` made is gone


def test_the_study_s_mps_cell_says_mps_needs_apple_silicon(diffusers_python, tmp_path):
    env = _study_on_synthetic_weights(tmp_path)
    p = _worker("--cell", "diffusers-mps-fp16", cwd=tmp_path, env=env, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert p.stdout.splitlines()[0] == "cell diffusers-mps-fp16 from matrix.toml"
    assert p.stdout.splitlines()[-1] == "unsupported: MPS is not available (needs macOS on Apple Silicon)"
    assert not list((tmp_path / "tmp").glob("cdb-worker-*"))
