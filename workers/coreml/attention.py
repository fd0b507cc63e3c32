"""Attention formulations for Core ML, as diffusers attention processors.

`original` is plain softmax(QK^T/sqrt(d))V with static shapes (diffusers' SDPA path does not
convert). `split_einsum` is the Neural-Engine formulation of Apple's "Deploying Transformers on
the Apple Neural Engine" (ml-stable-diffusion): activations as (B, C, 1, S), one einsum per head
instead of a (B*heads) reshape, softmax over the key axis. `split_einsum_v2` additionally
splits the queries of long sequences into chunks of CHUNK_QUERIES, so no (S x S) score tensor
of a 4096-token self-attention is ever whole; the last chunk may be shorter, so any length works.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

CHUNK_QUERIES = 512  # Apple's chunk size for SPLIT_EINSUM_V2

Kernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]


def _heads(x: torch.Tensor, heads: int) -> list[torch.Tensor]:
    """(B, C, 1, S) -> heads x (B, C/heads, 1, S)."""
    return list(x.chunk(heads, dim=1))


def _original(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """q (B, C, 1, Sq), k and v (B, C, 1, Sk) -> (B, C, 1, Sq): all heads in one batched matmul."""
    b, c, _, sq = q.shape
    d = c // heads
    qh = q.reshape(b, heads, d, sq).transpose(2, 3)  # (B, h, Sq, d)
    kh = k.reshape(b, heads, d, -1)  # (B, h, d, Sk)
    vh = v.reshape(b, heads, d, -1).transpose(2, 3)  # (B, h, Sk, d)
    weights = (torch.matmul(qh, kh) * d**-0.5).softmax(dim=-1)
    return torch.matmul(weights, vh).transpose(2, 3).reshape(b, c, 1, sq)


def _one_head(q: torch.Tensor, k_t: torch.Tensor, v: torch.Tensor, d: int) -> torch.Tensor:
    """q (B, d, 1, Sq), k_t (B, Sk, 1, d), v (B, d, 1, Sk) -> (B, d, 1, Sq)."""
    weights = (torch.einsum("bchq,bkhc->bkhq", q, k_t) * d**-0.5).softmax(dim=1)
    return torch.einsum("bkhq,bchk->bchq", weights, v)


def _split_einsum(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    d = q.shape[1] // heads
    k_t = k.transpose(1, 3)  # (B, Sk, 1, C): each head's keys are a slice of the last axis
    return torch.cat([_one_head(qh, k_t[..., i * d:(i + 1) * d], vh, d)
                      for i, (qh, vh) in enumerate(zip(_heads(q, heads), _heads(v, heads)))], dim=1)


def _split_einsum_v2(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    if q.shape[3] <= CHUNK_QUERIES:
        return _split_einsum(q, k, v, heads)
    d = q.shape[1] // heads
    k_t = k.transpose(1, 3)
    out = []
    for i, (qh, vh) in enumerate(zip(_heads(q, heads), _heads(v, heads))):
        kh = k_t[..., i * d:(i + 1) * d]
        out.append(torch.cat([_one_head(chunk, kh, vh, d) for chunk in qh.split(CHUNK_QUERIES, dim=3)], dim=3))
    return torch.cat(out, dim=1)


KERNELS: dict[str, Kernel] = {
    "original": _original,
    "split_einsum": _split_einsum,
    "split_einsum_v2": _split_einsum_v2,
}


class CoreMLAttnProcessor:
    """A diffusers attention processor for the UNet's transformer blocks (3-D hidden states,
    no mask, no group norm: what SD1.5 uses), computing attention with one of KERNELS."""

    def __init__(self, kind: str):
        if kind not in KERNELS:
            raise ValueError(f"unknown attention {kind!r} (known: {', '.join(KERNELS)})")
        self.kind = kind
        self._kernel = KERNELS[kind]

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        if attention_mask is not None or attn.group_norm is not None or attn.spatial_norm is not None:
            raise ValueError("Core ML attention rewrite: masks and attention norms are not part of the SD1.5 UNet")
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states

        def bc1s(x: torch.Tensor) -> torch.Tensor:  # (B, S, C) -> (B, C, 1, S)
            return x.transpose(1, 2).unsqueeze(2)

        q, k, v = bc1s(attn.to_q(hidden_states)), bc1s(attn.to_k(context)), bc1s(attn.to_v(context))
        out = self._kernel(q, k, v, attn.heads).squeeze(2).transpose(1, 2)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor


def apply(unet: torch.nn.Module, kind: str) -> torch.nn.Module:
    """Give every attention layer of `unet` the `kind` formulation."""
    unet.set_attn_processor(CoreMLAttnProcessor(kind))
    return unet
