"""A Mac at the operating-system boundary, for the worker processes of the seven-cell rehearsal
(tests/test_rehearsal.py puts this folder on PYTHONPATH and sets CDB_FAKE_MAC=1).

Only what Linux lacks is replaced, as each backend module is imported: an `mps` device is the
CPU device, and Metal reports itself available and computes on the CPU device; the platform check says macOS; the Core ML
compiler copies the package; and the Core ML runtime is a stand-in whose `predict` checks the
inputs against the converted model's own spec (names, shapes, dtypes, Apple's [2, 768, 1, 77]
layout) and returns `noise_pred` in the declared dtype and shape. Its output is not the UNet's
(no Core ML here to execute the program), so Core ML cells diverge from the reference, and the
report says so. Everything else (conversion, verification, the protocol, the timed loop) is the
harness's own code."""

import importlib.abc
import importlib.util
import os
import shutil
import sys
import types

SOURCE = "source.mlpackage"  # where the stand-in compiler leaves the package inside the .mlmodelc


def _diffusers(module):
    import torch

    real = module._device

    def device(name):
        return torch.device("cpu") if name.split(":")[0] == "mps" else real(name)

    module._device = device


def _mlx(module):
    import mlx.core as mx

    mx.metal.is_available = lambda: True
    real = module._device

    def device(name):
        return mx.cpu if name == "gpu" and module._gpu_backend(mx) == "metal" else real(name)

    module._device = device


class StandInCompiledModel:
    """coremltools.models.CompiledMLModel without Core ML: predict checks what it is given."""

    DTYPES = {65552: "float16", 65568: "float32"}  # ArrayFeatureType.ArrayDataType values

    def __init__(self, path, compute_units=None):
        import coremltools as ct

        spec = ct.models.MLModel(os.path.join(path, SOURCE), skip_model_load=True).get_spec()
        self.compute_units = compute_units
        self.inputs = {f.name: (tuple(f.type.multiArrayType.shape), self.DTYPES[f.type.multiArrayType.dataType])
                       for f in spec.description.input}
        self.outputs = {f.name: (tuple(f.type.multiArrayType.shape), self.DTYPES[f.type.multiArrayType.dataType])
                        for f in spec.description.output}

    def predict(self, data):
        import numpy as np

        if set(data) != set(self.inputs):
            raise ValueError(f"inputs {sorted(data)}, the model declares {sorted(self.inputs)}")
        for name, (shape, dtype) in self.inputs.items():
            value = data[name]
            if tuple(value.shape) != shape or str(value.dtype) != dtype:
                raise ValueError(f"input {name}: {value.dtype}{list(value.shape)}, declared {dtype}{list(shape)}")
        out = {}
        for name, (shape, dtype) in self.outputs.items():
            sample = data["sample"]
            out[name] = (sample * 0.5 if sample.shape == shape else np.zeros(shape)).astype(dtype)
        return out


def _coreml(module):
    import coremltools as ct

    def compile_model(package, destination):
        os.makedirs(destination)
        shutil.copytree(package, os.path.join(destination, SOURCE))
        return destination

    ct.models.utils.compile_model = compile_model
    ct.models.CompiledMLModel = StandInCompiledModel
    module.sys = types.SimpleNamespace(platform="darwin")


PATCHES = {"workers.backends.diffusers_backend": _diffusers, "workers.backends.mlx_backend": _mlx,
           "workers.backends.coreml_backend": _coreml}


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name not in PATCHES:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        real_exec = spec.loader.exec_module

        def exec_module(module):
            real_exec(module)
            PATCHES[name](module)

        spec.loader.exec_module = exec_module
        return spec


if os.environ.get("CDB_FAKE_MAC") == "1":
    sys.meta_path.insert(0, _Finder())
