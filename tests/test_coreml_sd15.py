"""The synthetic sd15 UNet (synthetic weights) converted once with the harness converter in the
ct9 env at 512x512: fp16, then 4-bit palettized. About 5 minutes and 9 GB of memory here; the
sizes it prints are the ones docs/backends.md compares with the reference study (1.72 GB, 430 MB)."""

import json
import subprocess

import pytest
from conftest import REPO

from orchestrator.config.envs import Env

pytestmark = pytest.mark.coreml

PROBE = REPO / "tests" / "fakes" / "coreml_probe.py"


@pytest.mark.slow
def test_sd15_converts_and_palettizes_to_under_a_third(env_python, tmp_path):
    p = subprocess.run([str(env_python("coreml-ct9")), str(PROBE), "sd15", str(tmp_path)],
                       capture_output=True, text=True, timeout=3600, cwd=REPO, env=Env.worker_environ())
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(p.stdout.strip().splitlines()[-1])
    fp16, w4 = r["fp16"], r["w4"]
    print(f"sd15 synthetic, harness converter, coremltools 9.0: fp16 package {fp16['package_bytes']} bytes "
          f"({fp16['bits_per_weight']:.2f} bits/weight), w4 package {w4['package_bytes']} bytes "
          f"({w4['bits_per_weight']:.2f} bits/weight); steps fp16 {fp16['steps']}, w4 {w4['steps']}")
    assert fp16["n_weights"] > 800_000_000  # the whole SD1.5 UNet
    assert fp16["lut_ops"] == 0 < w4["lut_ops"]
    assert w4["package_bytes"] < fp16["package_bytes"] / 3
    assert 16 <= fp16["bits_per_weight"] < 16.5 and w4["bits_per_weight"] < 4.5
