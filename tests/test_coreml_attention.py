"""The Neural-Engine attention rewrites compute what diffusers' attention computes (fp32)."""

import json
import subprocess

import pytest
from conftest import REPO

from orchestrator.config.envs import Env

pytestmark = pytest.mark.coreml

PROBE = REPO / "tests" / "fakes" / "coreml_probe.py"
COSINE_MIN = 0.99999


@pytest.fixture(scope="module")
def cosines(env_python, tmp_path_factory):
    p = subprocess.run([str(env_python("coreml-ct8")), str(PROBE), "attention", str(tmp_path_factory.mktemp("att"))],
                       capture_output=True, text=True, timeout=900, cwd=REPO, env=Env.worker_environ())
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_rewrites_match_diffusers_on_the_tiny_unet(cosines):
    # 32x32 latents: 1024 tokens, so split_einsum_v2 runs its query chunks here too
    assert set(cosines["tiny"]) == {"original", "split_einsum", "split_einsum_v2"}
    assert all(c >= COSINE_MIN for c in cosines["tiny"].values()), cosines["tiny"]


def test_rewrites_match_diffusers_at_every_sd15_attention_shape(cosines):
    shapes = cosines["sd15"]
    assert sorted(shapes) == sorted(f"{c}ch-{t}tok-{k}" for c, t in ((320, 4096), (640, 1024), (1280, 256))
                                    for k in ("self", "cross"))
    low = {(s, k): c for s, kinds in shapes.items() for k, c in kinds.items() if not c >= COSINE_MIN}
    assert not low, low
