"""Converters: the harness's own (identical code in every coremltools env, so ct8 and ct9 cells
differ only in the toolchain) and adapters for the coreml-diffusion and Apple packages. Each
writes an .mlpackage and returns how long its steps took."""

from __future__ import annotations

import json
import time
import tomllib
from importlib import metadata
from pathlib import Path

from workers.contract.presets import UNetArch
from workers.coreml import attention
from workers.coreml.request import PALETTE_BITS, ConversionRequest
from workers.unet.torch_unet import build_unet

# Bump when the harness converter's output changes for the same inputs: it is part of the cache key.
HARNESS_CONVERTER_REVISION = "1"
TIMESTEP_TRACE = 500.0  # the traced value does not matter: timestep is a graph input


class ConverterUnavailable(Exception):
    """The cell's converter is not installed in this env."""


def harness_version() -> str:
    """The checkout's version from its pyproject.toml: worker envs run the harness from the
    checkout (PYTHONPATH), not installed, so package metadata does not know it."""
    with open(Path(__file__).resolve().parents[2] / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]["version"]


def converter_version(name: str) -> str:
    if name == "harness":
        return f"{harness_version()}+r{HARNESS_CONVERTER_REVISION}"
    package = {"coreml-diffusion": "coreml-diffusion", "apple": "python_coreml_stable_diffusion"}[name]
    try:
        dist = metadata.distribution(package)
    except metadata.PackageNotFoundError:
        raise ConverterUnavailable(f"converter {name!r} needs the {package} package, which this env lacks") from None
    commit = source_commit(dist)
    return f"{dist.version}+{commit}" if commit else dist.version


def source_commit(dist: metadata.Distribution) -> str | None:
    """The VCS commit a package was installed from (PEP 610 direct_url.json), or None for an
    index install: two commits of a git source can carry the same version string."""
    text = dist.read_text("direct_url.json")
    if not text:
        return None
    try:
        commit = json.loads(text).get("vcs_info", {}).get("commit_id")
    except (ValueError, AttributeError):
        return None
    return commit if isinstance(commit, str) else None


def _example_inputs(req: ConversionRequest):
    import torch

    shapes = req.io_shapes()
    gen = torch.Generator().manual_seed(0)
    return (torch.randn(shapes["sample"], generator=gen),
            torch.full(shapes["timestep"], TIMESTEP_TRACE),
            torch.randn(shapes["encoder_hidden_states"], generator=gen))


def _target(ct, name: str):
    try:
        return getattr(ct.target, name)
    except AttributeError:
        known = ", ".join(t.name for t in ct.target)
        raise ValueError(f"deployment_target {name!r} is not known to coremltools {ct.__version__} ({known})") from None


def convert_harness(req: ConversionRequest, arch: UNetArch, model_path: str, out: Path) -> dict[str, float]:
    """diffusers UNet with the cell's attention -> torch.jit.trace -> ct.convert (mlprogram)."""
    import coremltools as ct
    import numpy as np
    import torch

    class Wrapped(torch.nn.Module):  # positional inputs and a plain tensor output, as tracing needs
        def __init__(self, unet):
            super().__init__()
            self.unet = unet

        def forward(self, sample, timestep, encoder_hidden_states):
            return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]

    t0 = time.perf_counter()
    module = Wrapped(attention.apply(build_unet(arch, model_path), req.attention)).eval()
    example = _example_inputs(req)
    with torch.no_grad():
        traced = torch.jit.trace(module, example)
    trace_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    names = ("sample", "timestep", "encoder_hidden_states")
    model = ct.convert(
        traced,
        convert_to="mlprogram",
        inputs=[ct.TensorType(name=n, shape=tuple(x.shape), dtype=np.float32) for n, x in zip(names, example)],
        outputs=[ct.TensorType(name="noise_pred", dtype=np.float32)],
        compute_precision=ct.precision.FLOAT16 if req.precision == "fp16" else ct.precision.FLOAT32,
        minimum_deployment_target=_target(ct, req.deployment_target),
        skip_model_load=True,  # loading compiles for this host's Core ML, which Linux lacks
    )
    model.save(str(out))
    return {"trace_s": trace_s, "convert_s": time.perf_counter() - t0}


def convert_coreml_diffusion(req: ConversionRequest, arch: UNetArch, model_path: str, out: Path) -> dict[str, float]:
    """The coreml-diffusion package's UNet conversion (`convert_unet`: its attention processors,
    trace, `ct.convert`, and its own k-means palettization) on the harness's UNet. Its `convert()`
    front door is not used because it builds the UNet with `from_single_file`, which fetches a
    config from the Hugging Face hub; the weights and config here are the harness's own."""
    converter_version("coreml-diffusion")
    from coreml_diffusion.convert import convert_unet
    from coreml_diffusion.model_version import ModelVersion

    if req.deployment_target != "macOS13" or req.precision != "fp16":
        raise ValueError("the coreml-diffusion converter always targets macOS13 with fp16 compute precision")
    side = req.resolution // 8
    t0 = time.perf_counter()
    convert_unet(build_unet(arch, model_path), ModelVersion.SD15, str(out), batch_size=req.batch,
                 sample_size=(side, side), attention_implementation=req.attention.upper(),
                 quantize_nbits=str(PALETTE_BITS[req.palettization]) if req.palettization else "none")
    return {"convert_s": time.perf_counter() - t0}



def convert_apple(req: ConversionRequest, arch: UNetArch, model_path: str, out: Path) -> dict[str, float]:
    """Apple's ml-stable-diffusion (`python_coreml_stable_diffusion.torch2coreml.convert_unet`,
    commit e12202c) on the harness's UNet. Its command line loads a whole pipeline from the hub; here the
    pipeline is only what `convert_unet` reads (the UNet, the text encoder's width and length, a
    scheduler for the trace timestep), and the arguments come from its own parser, so every
    option keeps the package's default. Its UNet takes encoder_hidden_states as (B, 768, 1, 77).
    Its `--quantize-nbits` acts in its `main()`, after conversion, through `_quantize_weights`
    (k-means palettes, embedding tables left alone): called here the same way."""
    converter_version("apple")
    import shutil
    import tempfile
    from types import SimpleNamespace

    import torch
    from python_coreml_stable_diffusion import torch2coreml

    side = req.resolution // 8
    unet = build_unet(arch, model_path)
    unet.register_to_config(sample_size=side)

    class TraceTimesteps:  # what convert_unet asks of a scheduler
        timesteps = torch.tensor([TIMESTEP_TRACE])

        def set_timesteps(self, n: int) -> None:
            pass

    text_config = SimpleNamespace(hidden_size=arch.cross_attention_dim, max_position_embeddings=req.io_shapes()["encoder_hidden_states"][-1])
    pipe = SimpleNamespace(unet=unet, text_encoder=SimpleNamespace(config=text_config), scheduler=TraceTimesteps())
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        argv = ["--convert-unet", "--model-version", "harness", "-o", tmp,
                "--attention-implementation", req.attention.upper(),
                "--latent-h", str(side), "--latent-w", str(side)]
        if req.palettization:
            argv += ["--quantize-nbits", str(PALETTE_BITS[req.palettization])]
        args = torch2coreml.parser_spec().parse_args(argv)
        t0 = time.perf_counter()
        torch2coreml.convert_unet(pipe, args)
        timings: dict[str, float] = {"convert_s": time.perf_counter() - t0}
        package = torch2coreml._get_out_path(args, "unet")
        if req.palettization:
            t0 = time.perf_counter()
            torch2coreml._quantize_weights(package, "unet", args.quantize_nbits)
            timings["palettize_s"] = time.perf_counter() - t0
        shutil.move(package, out)
    return timings
