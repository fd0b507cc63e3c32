"""From a cell to a verified .mlpackage: look it up in the conversion cache or convert it (under
the cache lock), check its spec, and say what happened and how long each step took. Runs in the
worker's load, so conversion is always over before the first timed window opens."""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from workers.contract.layout import tensor_specs
from workers.contract.presets import UNetArch
from workers.coreml import convert, palettize, verify
from workers.coreml.cache import COMPILED, FACTS, PACKAGE, ConversionCache, cache_key
from workers.coreml.request import ConversionRequest

CONVERT = {  # converter name -> function writing its .mlpackage
    "harness": convert.convert_harness,
    "coreml-diffusion": convert.convert_coreml_diffusion,
    "apple": convert.convert_apple,
}
OWN_PALETTIZATION = frozenset({"coreml-diffusion", "apple"})  # they palettize while converting
PALETTIZERS = ("scikit-learn", "kmeans1d")  # coremltools' k-means: kmeans1d when installed


@dataclass(frozen=True)
class Source:
    arch: UNetArch
    model_path: str
    model_sha256: str



def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def toolchain() -> dict[str, str | None]:
    return {name: _version(name) for name in ("coremltools", "torch", "diffusers", "numpy", *PALETTIZERS)}


def key_fields(req: ConversionRequest, src: Source) -> dict[str, Any]:
    tools = toolchain()
    fields = {
        "model_sha256": src.model_sha256, "converter": req.converter,
        "converter_version": convert.converter_version(req.converter),
        "coremltools": tools["coremltools"], "torch": tools["torch"],
        **{k: v for k, v in req.as_dict().items() if k != "converter"},
    }
    if req.palettization:  # the clustering library decides the palette
        fields.update({name: tools[name] for name in PALETTIZERS})
    return fields


def _build(req: ConversionRequest, src: Source, cache: ConversionCache, out: Path) -> dict[str, Any]:
    """Convert (or palettize the cached unpalettized artifact) into `out`; the step timings."""
    if req.palettization and req.converter not in OWN_PALETTIZATION:
        base = prepare(req.unpalettized, src, cache)
        timings = palettize.palettize(Path(base["package"]), out, req.palettization)
        return {"trace_s": None, "convert_s": None, **timings, "base_key": base["key"], "base_cache_hit": base["cache_hit"]}
    timings = CONVERT[req.converter](req, src.arch, src.model_path, out)
    return {"trace_s": None, "convert_s": None, "palettize_s": None, **timings}


def prepare(req: ConversionRequest, src: Source, cache: ConversionCache) -> dict[str, Any]:
    """The cell's artifact, verified, and the conversion facts for the run record. A new package
    is verified in its staging folder, so one that fails never becomes an entry; a cached entry
    that fails (written before that rule, or altered since) is removed, so the next run converts."""
    import coremltools  # noqa: F401  imported before the clocks start: its import is no step's time

    fields = key_fields(req, src)
    key = cache_key(fields)
    t0 = time.perf_counter()
    with cache.lock(key) as lock_wait_s:
        facts = cache.facts(key)
        hit = facts is not None
        if hit:
            t1 = time.perf_counter()
            try:
                spec = verify.check(cache.entry(key) / PACKAGE, req)
                verify_s = time.perf_counter() - t1
            except verify.SpecMismatch:
                shutil.rmtree(cache.entry(key), ignore_errors=True)
                raise
        else:
            with cache.staging(key) as tmp:
                steps = _build(req, src, cache, tmp / PACKAGE)
                package = tmp / PACKAGE
                t1 = time.perf_counter()
                spec = verify.check(package, req)
                verify_s = time.perf_counter() - t1
                n_weights = sum(math.prod(s.shape) for s in tensor_specs(src.arch))
                facts = {
                    "key": key, "key_fields": fields, "request": req.as_dict(), "steps": steps,
                    "converted_on": platform.platform(), "package_bytes": palettize.package_bytes(package),
                    "weight_bytes": palettize.weight_bytes(package), "n_weights": n_weights,
                    "bits_per_weight": palettize.bits_per_weight(package, n_weights),
                }
                (tmp / FACTS).write_text(json.dumps(facts, indent=1))
    assert facts is not None
    return {**facts, "cache_hit": hit, "package": str(cache.entry(key) / PACKAGE), "lock_wait_s": lock_wait_s,
            "prepare_s": time.perf_counter() - t0 - verify_s, "verify_s": verify_s, "spec": spec}


def compiled(facts: dict[str, Any], cache: ConversionCache) -> tuple[Path, float | None]:
    """The artifact compiled to .mlmodelc (macOS only: the compiler is part of Core ML), once;
    the compile seconds, or None when it was already compiled."""
    import coremltools as ct

    key = facts["key"]
    target = cache.entry(key) / COMPILED
    with cache.lock(key):
        if target.is_dir():
            return target, None
        t0 = time.perf_counter()
        tmp = target.with_name(f".{COMPILED}.{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        ct.models.utils.compile_model(facts["package"], str(tmp))
        os.replace(tmp, target)  # a compile cut short never leaves a model a later run would trust
        return target, time.perf_counter() - t0
