"""Checks on a converted program, read from its spec (no Core ML runtime needed): the UNet's
input and output names, shapes and dtypes, and how its weights are stored."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

from workers.coreml.request import PALETTE_BITS, ConversionRequest

# Model.proto ArrayFeatureType.ArrayDataType and MIL.proto DataType values
ARRAY_DTYPES = {65568: "float32", 65552: "float16", 131104: "int32"}
MIL_FLOAT16, MIL_FLOAT32 = 10, 11
WEIGHT_THRESHOLD = 2048  # coremltools palettizes tensors with more elements than this (its default)
# (input, output) dtypes each converter declares; None: Apple's converter leaves the output dtype
# to coremltools, so it is recorded, not checked.
IO_DTYPES = {"harness": ("float32", "float32"), "coreml-diffusion": ("float16", "float32"), "apple": ("float16", None)}


class SpecMismatch(Exception):
    """The converted program is not the UNet the cell asked for."""


def _features(features) -> dict[str, dict[str, Any]]:
    return {f.name: {"shape": [int(d) for d in f.type.multiArrayType.shape],
                     "dtype": ARRAY_DTYPES.get(f.type.multiArrayType.dataType, str(f.type.multiArrayType.dataType))}
            for f in features}


def _dims(value_type) -> list[int]:
    return [int(d.constant.size) for d in value_type.tensorType.dimensions]


def _weights(spec) -> dict[str, Any]:
    """LUT ops, their palette sizes, and the dtype of every large dense constant that an op
    takes as its `weight` (conv and linear; palettization leaves biases and norm parameters)."""
    fn = spec.mlProgram.functions["main"]
    ops = fn.block_specializations[fn.opset].operations
    luts = [op for op in ops if op.type.startswith("constexpr_lut_to_dense")]
    palette = []
    for op in luts:
        lut = op.attributes.get("lut")
        if lut is not None:  # iOS16/17 form: the palette is an attribute of shape (2^bits,)
            palette.append(_dims(lut.type)[-1])
    weights = {arg.name for op in ops if "weight" in op.inputs for arg in op.inputs["weight"].arguments}
    dense = Counter()
    for op in ops:
        if op.type == "const" and op.outputs[0].name in weights:
            value = op.attributes["val"].type
            if math.prod(_dims(value)) > WEIGHT_THRESHOLD:
                dense[value.tensorType.dataType] += 1
    return {"opset": fn.opset, "lut_ops": len(luts), "max_palette_entries": max(palette, default=None),
            "large_dense_fp16": dense[MIL_FLOAT16], "large_dense_fp32": dense[MIL_FLOAT32]}


def check(package: Path, req: ConversionRequest) -> dict[str, Any]:
    """Facts about `package`; raises SpecMismatch naming every difference from what `req` asked."""
    import coremltools as ct

    spec = ct.models.MLModel(str(package), skip_model_load=True).get_spec()
    inputs, outputs = _features(spec.description.input), _features(spec.description.output)
    shapes = req.io_shapes()
    in_dtype, out_dtype = IO_DTYPES[req.converter]
    problems = []
    expected_in = {n: {"shape": list(shapes[n]), "dtype": in_dtype} for n in ("sample", "timestep", "encoder_hidden_states")}
    expected_out = {"noise_pred": {"shape": list(shapes["noise_pred"]), "dtype": out_dtype}}
    for kind, got, want in (("input", inputs, expected_in), ("output", outputs, expected_out)):
        if got.keys() != want.keys():
            problems.append(f"{kind}s {sorted(got)}, expected {sorted(want)}")
        for name in got.keys() & want.keys():
            expected = {k: v for k, v in want[name].items() if v is not None}
            actual = {k: got[name][k] for k in expected}
            if actual != expected:
                problems.append(f"{kind} {name}: {actual}, expected {expected}")
    weights = _weights(spec)
    if req.palettization:
        entries = 2 ** PALETTE_BITS[req.palettization]
        if not weights["lut_ops"]:
            problems.append(f"{req.palettization}: no palettized (LUT) weights in the program")
        elif weights["max_palette_entries"] is not None and weights["max_palette_entries"] > entries:
            problems.append(f"{req.palettization}: a palette of {weights['max_palette_entries']} entries, at most {entries} expected")
        if weights["large_dense_fp16"] or weights["large_dense_fp32"]:
            problems.append(f"{req.palettization}: large weights left dense ({weights['large_dense_fp16']} fp16, "
                            f"{weights['large_dense_fp32']} fp32)")
    else:
        if weights["lut_ops"]:
            problems.append(f"{weights['lut_ops']} palettized weights in a model asked for without palettization")
        if req.precision == "fp16" and weights["large_dense_fp32"]:
            problems.append(f"fp16: {weights['large_dense_fp32']} large weights stored as fp32")
    if problems:
        raise SpecMismatch(f"{package.name}: " + "; ".join(problems))
    return {"inputs": inputs, "outputs": outputs, "weights": weights, "specification_version": spec.specificationVersion}
