"""Core ML: the cell's UNet converted (or taken from the conversion cache) and verified in load,
then, on macOS, compiled once to .mlmodelc, loaded with the cell's compute unit and predicted
synchronously. Other hosts stop after the verified conversion: the cell is `unsupported` and
its record carries the conversion facts."""

from __future__ import annotations

import platform
import sys
import time
from typing import Any

import numpy as np

from workers.backends.base import LoadedModel, LoadSpec, Unsupported
from workers.coreml.cache import ConversionCache
from workers.coreml.request import CONVERTERS, ConversionRequest

NEEDS_MACOS = "Core ML prediction needs macOS"
NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16}


def versions() -> dict[str, str]:
    from workers.coreml.artifact import toolchain
    from workers.coreml.convert import ConverterUnavailable, converter_version

    out = {k: v for k, v in toolchain().items() if v is not None}
    for name in CONVERTERS:
        try:
            out[f"converter:{name}"] = converter_version(name)
        except ConverterUnavailable:
            pass
    return out


def probe() -> dict[str, Any]:
    """What this env can do here (for `orchestrate doctor`)."""
    v = versions()
    return {"platform": platform.platform(), "predict": sys.platform == "darwin",
            "predict_detail": None if sys.platform == "darwin" else NEEDS_MACOS,
            "converters": [n for n in CONVERTERS if f"converter:{n}" in v]}


class CoreMLUNet(LoadedModel):
    """The compiled model and the pinned inputs in the dtypes and layout its spec declares."""

    def __init__(self, spec: LoadSpec, facts: dict[str, Any], cache: ConversionCache):
        import coremltools as ct

        from workers.coreml.artifact import compiled

        unit = spec.cell["compute_unit"]
        path, compile_s = compiled(facts, cache)
        t0 = time.perf_counter()
        self._model = ct.models.CompiledMLModel(str(path), compute_units=ct.ComputeUnit[unit])
        model_load_s = time.perf_counter() - t0
        declared = facts["spec"]["inputs"]
        inp = spec.inputs
        text = inp.text_embedding
        if len(declared["encoder_hidden_states"]["shape"]) == 4:  # (B, 768, 1, 77): Apple's layout
            text = text.transpose(0, 2, 1)[:, :, None, :]
        values = {"sample": inp.latent, "encoder_hidden_states": text,
                  "timestep": np.full(declared["timestep"]["shape"], inp.timestep)}
        self._inputs = {k: np.ascontiguousarray(v, dtype=NUMPY_DTYPES[declared[k]["dtype"]]) for k, v in values.items()}
        self._out: np.ndarray | None = None
        facts["steps"]["compile_s"] = compile_s
        self.realized: dict[str, Any] = {
            "compute_unit": unit, "dtype": facts["request"]["precision"], "attention": facts["request"]["attention"],
            "converter": facts["request"]["converter"], "palettization": facts["request"]["palettization"],
            "model_load_s": model_load_s, "compile_s": compile_s, "conversion": facts,
        }

    def step(self) -> None:
        # predict() returns only when Core ML has finished: it is its own synchronisation
        self._out = self._model.predict(self._inputs)["noise_pred"]

    def output(self) -> np.ndarray:
        if self._out is None:
            raise RuntimeError("output() before step()")
        return np.asarray(self._out, dtype=np.float32)


def load(spec: LoadSpec) -> LoadedModel:
    from workers.coreml.artifact import Source, prepare
    from workers.coreml.convert import ConverterUnavailable

    if spec.cache_dir is None:
        raise ValueError("the coreml backend needs the session's cache_dir for converted models")
    cache = ConversionCache(spec.cache_dir)
    req = ConversionRequest.from_cell(spec.cell)
    try:
        facts = prepare(req, Source(spec.arch, spec.model_path, spec.model_sha256), cache)
    except ConverterUnavailable as e:
        raise Unsupported(str(e)) from None
    facts["steps"]["compile_s"] = None
    if sys.platform != "darwin":
        raise Unsupported(f"{NEEDS_MACOS} (this host: {platform.system()}); the model was converted and verified",
                          facts={"conversion": facts})
    return CoreMLUNet(spec, facts, cache)
