"""k-means weight palettization (coremltools.optimize.coreml), and what a package weighs.

Tensors of at most 2048 elements (coremltools' default weight_threshold: norms, biases) stay fp16,
as in Apple's and coreml-diffusion's palettized SD models; effective bits per weight count them."""

from __future__ import annotations

import time
from pathlib import Path

from workers.coreml.request import PALETTE_BITS


def palettize(source: Path, out: Path, palettization: str) -> dict[str, float]:
    import coremltools as ct
    from coremltools.optimize.coreml import OpPalettizerConfig, OptimizationConfig, palettize_weights

    nbits = PALETTE_BITS[palettization]
    t0 = time.perf_counter()
    model = ct.models.MLModel(str(source), skip_model_load=True)
    config = OptimizationConfig(global_config=OpPalettizerConfig(mode="kmeans", nbits=nbits))
    palettize_weights(model, config=config).save(str(out))
    return {"palettize_s": time.perf_counter() - t0}


def package_bytes(package: Path) -> int:
    """On-disk size of an .mlpackage (a folder): the sum of its files."""
    return sum(f.stat().st_size for f in package.rglob("*") if f.is_file())


def weight_bytes(package: Path) -> int:
    """The package's weight files (without the program description, ~0.4 MB even for `tiny`)."""
    return sum(f.stat().st_size for f in package.rglob("weights/*") if f.is_file())


def bits_per_weight(package: Path, n_weights: int) -> float:
    """Effective bits per UNet parameter: the package's weight files over the parameter count."""
    return 8 * weight_bytes(package) / n_weights
