import numpy as np
import pytest

from orchestrator.config.envs import Env
from orchestrator.config.matrix import Equivalence
from orchestrator.config.paths import REPO_ROOT
from orchestrator.run.equivalence import compare, reference_key
from orchestrator.run.pins import PinnedModel
from workers.contract.fileguard import FileGuard
from workers.contract.inputs import pinned_inputs

SPEC = Equivalence(backend="diffusers", env="diffusers", device="cpu", precision="fp32", mse_max=1e-3, cosine_min=0.999)
REF = np.array([[1.0, -2.0], [3.0, 0.5]], dtype=np.float32)


def test_identical_output():
    c = compare(REF.copy(), REF, SPEC)
    assert (c.mse, c.cosine, c.max_abs_diff, c.finite, c.numerically_divergent) == (0.0, 1.0, 0.0, True, False)


def test_hand_computed_mse_and_cosine():
    out = REF + np.array([[0.02, 0.0], [0.0, -0.04]], dtype=np.float32)
    c = compare(out, REF, SPEC)
    assert c.mse == pytest.approx((0.02**2 + 0.04**2) / 4, rel=1e-5)
    assert c.mse_relative == pytest.approx(c.mse / ((1 + 4 + 9 + 0.25) / 4), rel=1e-6)
    o, r = out.astype(np.float64).ravel(), REF.astype(np.float64).ravel()
    assert c.cosine == pytest.approx(o @ r / np.linalg.norm(o) / np.linalg.norm(r))
    assert c.numerically_divergent is False


def test_each_threshold_flags_on_its_own():
    sign_flip = compare(-REF, REF, SPEC)
    assert sign_flip.cosine == pytest.approx(-1.0) and sign_flip.numerically_divergent
    scaled = compare(REF * 1.05, REF, SPEC)  # cosine 1.0, but MSE 0.0025 * 3.5625 > 1e-3
    assert scaled.cosine == pytest.approx(1.0) and scaled.mse > SPEC.mse_max and scaled.numerically_divergent


def test_non_finite_output_is_divergent_without_numbers():
    bad = REF.copy()
    bad[0, 0] = np.nan
    c = compare(bad, REF, SPEC)
    assert c.finite is False and c.numerically_divergent is True and c.mse is None


def test_shape_mismatch_raises():
    with pytest.raises(ValueError):
        compare(REF.ravel()[:3], REF, SPEC)


def test_an_interpreter_standing_in_for_the_env_gets_its_own_reference(tmp_path):
    """A reference made by `--env diffusers=OTHER_PYTHON` (another torch, a test's fake worker) is
    never the one a session in the env's own venv compares against, nor one of another python."""
    model, inputs = PinnedModel(path=tmp_path / "m", sha256="0" * 64, source="synthetic", preset="tiny", seed=0,
                        guard=FileGuard(size=1, mtime_ns=1, ctime_ns=1, inode=1, device=1)), pinned_inputs(64)
    project = REPO_ROOT / "envs" / "diffusers"
    keys = {reference_key(SPEC, Env("diffusers", project, external_python=python), model, inputs)
            for python in (None, tmp_path / "a" / "python", tmp_path / "b" / "python")}
    assert len(keys) == 3
    assert reference_key(SPEC, Env("diffusers", project), model, inputs) in keys
