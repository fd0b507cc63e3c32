"""The pinned UNet input: one latent, one text embedding, one timestep, for every backend."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from workers.contract.digest import sha256_array

TEXT_TOKENS = 77
TEXT_DIM = 768
TIMESTEP = 500


@dataclass(frozen=True)
class PinnedInputs:
    latent: np.ndarray  # [batch, 4, res/8, res/8] float32
    text_embedding: np.ndarray  # [batch, 77, 768] float32
    timestep: int

    def digests(self) -> dict[str, str]:
        return {"latent": sha256_array(self.latent), "text_embedding": sha256_array(self.text_embedding)}


def pinned_inputs(resolution: int, batch: int = 2, seed: int = 0, timestep: int = TIMESTEP) -> PinnedInputs:
    """`default_rng(seed)` draws the text embedding first (its shape never changes), then the
    latent, so the embedding is the same at every resolution. Anyone can rebuild them with numpy."""
    if resolution % 8:
        raise ValueError(f"resolution {resolution} is not a multiple of 8")
    rng = np.random.default_rng(seed)
    text = rng.standard_normal((batch, TEXT_TOKENS, TEXT_DIM), dtype=np.float32)
    latent = rng.standard_normal((batch, 4, resolution // 8, resolution // 8), dtype=np.float32)
    return PinnedInputs(latent=latent, text_embedding=text, timestep=timestep)
