"""Run inside a worker env by the tests: one step of a backend on the pinned input, through the
backend module a worker would load, the output saved as .npy (float32 NCHW).

    python backend_step.py BACKEND PRESET CHECKPOINT RESOLUTION PRECISION OUT.npy [--compile]
"""

import sys

import numpy as np

from workers.backends import backend_module
from workers.backends.base import LoadSpec
from workers.contract.inputs import pinned_inputs
from workers.contract.presets import preset

backend, name, path, resolution, precision, out = sys.argv[1:7]
cell = {"backend": backend, "device": "cpu", "precision": precision}
if "--compile" in sys.argv[7:]:
    cell["compile"] = True
model = backend_module(backend).load(LoadSpec(cell=cell, arch=preset(name), model_path=path,
                                              inputs=pinned_inputs(int(resolution))))
model.step()
np.save(out, model.output())
