"""Rotary position embeddings as Qwen3 uses them (rotate-half layout), with linear and YaRN scaling.

Frequencies follow transformers' `modeling_rope_utils` for the rope types Qwen3 configs use; every
other type is refused when the config is parsed.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.model.config import RopeConfig


def inv_frequencies(rope: RopeConfig, head_dim: int) -> tuple[np.ndarray, float]:
    """Inverse frequencies [H/2] (float32) and the attention factor that scales cos/sin."""
    exponents = np.arange(0, head_dim, 2, dtype=np.float32) / head_dim
    pos_freqs = np.float32(rope.theta) ** exponents
    inv = (1.0 / pos_freqs).astype(np.float32)
    if rope.type == "default":
        return inv, 1.0
    if rope.type == "linear":
        return (inv / np.float32(rope.factor)).astype(np.float32), 1.0
    # YaRN: interpolate low frequencies, keep high ones, ramp in between.
    factor = rope.factor

    def mscale(scale, m=1.0):
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attn = rope.attention_factor
    if attn is None:
        attn = (mscale(factor, rope.mscale) / mscale(factor, rope.mscale_all_dim)
                if rope.mscale and rope.mscale_all_dim else mscale(factor))
    omp = rope.original_max_position_embeddings

    def correction_dim(rot):
        return (head_dim * math.log(omp / (rot * 2 * math.pi))) / (2 * math.log(rope.theta))

    low, high = correction_dim(rope.beta_fast), correction_dim(rope.beta_slow)
    if rope.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(head_dim // 2, dtype=np.float32) - low) / (high - low), 0, 1)
    extrapolation = 1 - ramp
    interp = (1.0 / (np.float32(factor) * pos_freqs)).astype(np.float32)
    inv = interp * (1 - extrapolation) + inv * extrapolation
    return inv.astype(np.float32), float(attn)


def cos_sin(positions: jax.Array, rope: RopeConfig, head_dim: int, dtype) -> tuple[jax.Array, jax.Array]:
    """cos, sin [B, L, H] for integer positions [B, L]."""
    inv, attn = inv_frequencies(rope, head_dim)
    freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv)  # [B, L, H/2]
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return (jnp.cos(emb) * attn).astype(dtype), (jnp.sin(emb) * attn).astype(dtype)


def apply(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x [B, L, N, H] rotated by cos/sin [B, L, H] (rotate-half, as in HF)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    c1, c2 = cos[:, :, None, :half], cos[:, :, None, half:]
    s1, s2 = sin[:, :, None, :half], sin[:, :, None, half:]
    return jnp.concatenate([x1 * c1 - x2 * s1, x2 * c2 + x1 * s2], axis=-1)
