"""The shipped UNet definitions, the LDM key mapping, synthetic weights and pinned inputs."""

import json
import tomllib

import numpy as np
import pytest
from conftest import REPO, in_env
from safetensors import safe_open
from safetensors.numpy import save_file

from workers.contract.checkpoint import read_unet, write_synthetic
from workers.contract.digest import sha256_array, sha256_file
from workers.contract.inputs import pinned_inputs
from workers.contract.layout import LDM_PREFIX, ldm_to_diffusers, tensor_specs
from workers.contract.presets import PRESETS

PROBE = REPO / "tests" / "fakes" / "diffusers_probe.py"
QUICK = tomllib.loads((REPO / "examples" / "quick.toml").read_text())


def _probe(python, *args):
    return json.loads(in_env(python, PROBE, *args).strip().splitlines()[-1])


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_key_mapped_exactly_once(name):
    specs = tensor_specs(PRESETS[name])
    assert len({s.ldm_key for s in specs}) == len(specs)
    assert len({s.diffusers_key for s in specs}) == len(specs)


def test_sd15_has_the_686_unet_tensors_of_the_real_checkpoint():
    specs = tensor_specs(PRESETS["sd15"])
    assert len(specs) == 686
    assert sum(int(np.prod(s.shape)) for s in specs) == 859_520_964
    keys = {s.ldm_key: s.shape for s in specs}
    # a few landmarks of v1-5-pruned-emaonly.safetensors' UNet
    assert keys["input_blocks.0.0.weight"] == (320, 4, 3, 3)
    assert keys["input_blocks.3.0.op.weight"] == (320, 320, 3, 3)
    assert keys["middle_block.1.transformer_blocks.0.attn2.to_k.weight"] == (1280, 768)
    assert keys["output_blocks.2.1.conv.weight"] == (1280, 1280, 3, 3)
    assert keys["output_blocks.5.2.conv.weight"] == (1280, 1280, 3, 3)
    assert keys["out.2.weight"] == (4, 320, 3, 3)


def test_mapping_matches_diffusers_names_and_shapes(diffusers_python):
    theirs = _probe(diffusers_python, "shapes")
    for name, arch in PRESETS.items():
        ours = {s.diffusers_key: list(s.shape) for s in tensor_specs(arch)}
        assert ours == theirs[name], name


def test_mapping_refuses_a_checkpoint_of_another_architecture():
    tiny = {LDM_PREFIX + s.ldm_key: np.zeros(s.shape, np.float32) for s in tensor_specs(PRESETS["tiny"])}
    with pytest.raises(ValueError, match="does not match UNet preset 'sd15'"):
        ldm_to_diffusers(PRESETS["sd15"], tiny)
    bad = dict(tiny)
    bad[LDM_PREFIX + "out.2.weight"] = np.zeros((4, 32, 1, 1), np.float32)
    with pytest.raises(ValueError, match="out.2.weight: shape"):
        ldm_to_diffusers(PRESETS["tiny"], bad)


def test_synthetic_weights_are_bit_identical_to_the_pinned_digest(tmp_path):
    path = write_synthetic(PRESETS["tiny"], QUICK["model"]["seed"], tmp_path / "tiny.safetensors")
    assert sha256_file(path) == QUICK["model"]["sha256"]
    ours = read_unet(path)
    with safe_open(str(path), framework="numpy") as f:  # the safetensors library reads what we wrote
        theirs = {k.removeprefix(LDM_PREFIX): f.get_tensor(k) for k in f.keys()}
    assert set(ours) == set(theirs) == {s.ldm_key for s in tensor_specs(PRESETS["tiny"])}
    assert all(t.dtype == np.float32 and np.array_equal(t, theirs[k]) for k, t in ours.items())
    other_seed = write_synthetic(PRESETS["tiny"], 1, tmp_path / "seed1.safetensors")
    assert sha256_file(other_seed) != QUICK["model"]["sha256"]


def test_reader_takes_any_single_file_checkpoint_and_refuses_what_it_cannot_read(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {LDM_PREFIX + "a.weight": rng.standard_normal((3, 5)).astype(np.float16),
               LDM_PREFIX + "b.bias": rng.standard_normal(7).astype(np.float32),
               "first_stage_model.decoder.weight": np.ones(4, np.float32)}
    save_file(tensors, str(tmp_path / "full.safetensors"))
    got = read_unet(tmp_path / "full.safetensors")
    assert set(got) == {"a.weight", "b.bias"}  # the VAE tensor is left out
    assert got["a.weight"].dtype == np.float16 and np.array_equal(got["a.weight"], tensors[LDM_PREFIX + "a.weight"])
    got["b.bias"][0] = 42.0  # a private copy-on-write view: the file is never written
    assert np.array_equal(read_unet(tmp_path / "full.safetensors")["b.bias"], tensors[LDM_PREFIX + "b.bias"])
    (tmp_path / "short.safetensors").write_bytes((tmp_path / "full.safetensors").read_bytes()[:-40])
    with pytest.raises(ValueError, match="has offsets"):
        read_unet(tmp_path / "short.safetensors")
    (tmp_path / "text.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a safetensors file"):
        read_unet(tmp_path / "text.safetensors")


def test_synthetic_activations_stay_finite_in_every_precision(diffusers_python, tmp_path):
    path = write_synthetic(PRESETS["tiny"], 0, tmp_path / "tiny.safetensors")
    report = _probe(diffusers_python, "forward", "tiny", str(path))
    for precision in ("fp32", "bf16", "fp16"):
        r = report[precision]
        assert r["finite"], precision
        assert 0.05 < r["std"] < 20, r
        assert r["activation_peak"] < 1000, r  # far from fp16's 65504


def test_pinned_inputs_match_the_quick_example_pins_and_plain_numpy():
    inp = pinned_inputs(256)
    assert inp.latent.shape == (2, 4, 32, 32) and inp.text_embedding.shape == (2, 77, 768)
    assert inp.latent.dtype == inp.text_embedding.dtype == np.float32
    assert inp.timestep == 500
    assert inp.digests() == QUICK["inputs"]["sha256"]["256"]
    rng = np.random.default_rng(0)
    text = rng.standard_normal((2, 77, 768), dtype=np.float32)
    assert sha256_array(text) == inp.digests()["text_embedding"]
    assert np.array_equal(rng.standard_normal((2, 4, 32, 32), dtype=np.float32), inp.latent)


def test_text_embedding_is_the_same_at_every_resolution():
    assert pinned_inputs(512).digests()["text_embedding"] == pinned_inputs(256).digests()["text_embedding"]
    with pytest.raises(ValueError):
        pinned_inputs(500)
