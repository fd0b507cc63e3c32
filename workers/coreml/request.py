"""What one Core ML conversion is asked to produce, and what the converted program must look like.
Pure Python: the orchestrator and tests read it without coremltools."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from workers.contract.backends import CONVERTERS
from workers.contract.inputs import TEXT_DIM, TEXT_TOKENS

DEFAULT_CONVERTER = CONVERTERS[0]
DEFAULT_DEPLOYMENT_TARGET = "macOS13"  # the first target with palettized (LUT) weights
PALETTE_BITS = {"w8": 8, "w6": 6, "w4": 4}
BATCH = 2  # classifier-free guidance: the pinned input's batch


@dataclass(frozen=True)
class ConversionRequest:
    converter: str
    attention: str  # original | split_einsum | split_einsum_v2
    precision: str  # compute precision of the program: fp16 (or fp32)
    palettization: str | None  # w8 | w6 | w4 | None
    resolution: int  # image pixels; the latent is resolution/8
    deployment_target: str  # coremltools.target member, e.g. macOS13
    batch: int = BATCH

    @classmethod
    def from_cell(cls, cell: dict[str, Any]) -> ConversionRequest:
        return cls(
            converter=cell.get("converter") or DEFAULT_CONVERTER,
            attention=cell["attention"],
            precision=cell["precision"],
            palettization=cell.get("palettization"),
            resolution=cell["resolution"],
            deployment_target=cell.get("deployment_target") or DEFAULT_DEPLOYMENT_TARGET,
        )

    @property
    def unpalettized(self) -> ConversionRequest:
        return ConversionRequest(**{**asdict(self), "palettization": None})

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def io_shapes(self) -> dict[str, tuple[int, ...]]:
        """The UNet's inputs and output, by the names every converter here gives them. Apple's
        UNet takes the text embedding channels-first, as (B, 768, 1, 77)."""
        side = self.resolution // 8
        text = (self.batch, TEXT_DIM, 1, TEXT_TOKENS) if self.converter == "apple" else (self.batch, TEXT_TOKENS, TEXT_DIM)
        return {
            "sample": (self.batch, 4, side, side),
            "timestep": (self.batch,),
            "encoder_hidden_states": text,
            "noise_pred": (self.batch, 4, side, side),
        }
