"""Basic layers with HF attribute names, so checkpoint conversion is a table.

Weights keep the HF orientation [out, in] (`y = x W^T`): block-FP8 scales then map one to one and
conversion never transposes. Einsum letters: D model width, F output features, E experts.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx, struct

from jaxdiff.model import lora
from jaxdiff.model.lora import ActiveHead, Adapted
from jaxdiff.parallel import axes as ax

FP8_DTYPE = jnp.float8_e4m3fn


def param(value: jax.Array, axes: tuple[str | None, ...]) -> nnx.Param:
    """A frozen-base parameter carrying its logical axis names (read by `parallel`)."""
    assert len(axes) == value.ndim, (axes, value.shape)
    return nnx.Param(value, axes=axes)


def dequantize_blocks(w: jax.Array, scale_inv: jax.Array, block: tuple[int, int], dtype) -> jax.Array:
    """Block-FP8 weight [..., O, I] times its per-block scale [..., ceil(O/bo), ceil(I/bi)]."""
    bo, bi = block
    o, i = w.shape[-2:]
    s = jnp.repeat(jnp.repeat(scale_inv.astype(jnp.float32), bo, axis=-2)[..., :o, :], bi, axis=-1)[..., :i]
    return (w.astype(jnp.float32) * s).astype(dtype)


@struct.dataclass
class BlockFp8:
    """Block-FP8 weights as stored, not dequantized: e4m3 w [..., O, I] and its per-block scales
    scale_inv [..., ceil(O/bo), ceil(I/bi)]. The grouped expert matmuls take the experts they need
    from it and dequantize only those (`take`), so no full-precision copy of every expert exists."""

    w: jax.Array
    scale_inv: jax.Array
    block: tuple[int, int] = struct.field(pytree_node=False)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.w.shape

    def take(self, idx: jax.Array, dtype) -> jax.Array:
        """Experts idx (leading axis) dequantized to dtype: [*idx.shape, O, I]. The gather moves the
        e4m3 bytes as uint8: a backend without FP8 arithmetic (XLA:CPU) otherwise widens the whole
        FP8 stack before the gather, and hoists that full copy out of the kernel's loop."""
        w = jax.lax.bitcast_convert_type(jax.lax.bitcast_convert_type(self.w, jnp.uint8)[idx], self.w.dtype)
        return dequantize_blocks(w, self.scale_inv[idx], self.block, dtype)

    def dequantize(self, dtype) -> jax.Array:
        return dequantize_blocks(self.w, self.scale_inv, self.block, dtype)


class Linear(nnx.Module, Adapted):
    """y[..., F] = x[..., D] W[F, D]^T, W plain or block-FP8 (dequantized inside the matmul), plus
    the active head's adapter if this projection carries one (lora.project)."""

    def __init__(self, in_features: int, out_features: int, *, axes: tuple[str, str], dtype,
                 fp8_block: tuple[int, int] | None = None, rngs: nnx.Rngs):
        self.fp8_block = fp8_block
        shape = (out_features, in_features)
        if fp8_block is None:
            init = jax.random.normal(rngs.params(), shape, jnp.float32) * 0.02
            self.weight = param(init.astype(dtype), axes)
        else:
            self.weight = param(jnp.zeros(shape, FP8_DTYPE), axes)
            nb = (math.ceil(out_features / fp8_block[0]), math.ceil(in_features / fp8_block[1]))
            self.weight_scale_inv = param(jnp.ones(nb, jnp.float32), (ax.SCALE_BLOCKS, ax.SCALE_BLOCKS))

    def kernel(self, dtype) -> jax.Array:
        """The base weight [F, D] in `dtype` (FP8 dequantized); adapters are never merged in."""
        if self.fp8_block is None:
            return self.weight[...].astype(dtype)
        return dequantize_blocks(self.weight[...], self.weight_scale_inv[...], self.fp8_block, dtype)

    def __call__(self, x: jax.Array, active: ActiveHead | None = None) -> jax.Array:
        return lora.project(x, self.kernel(x.dtype), self.adapter(active))


class ExpertLinear(nnx.Module, Adapted):
    """Per-expert weights stacked on E: W[E, F, D], plain or block-FP8 (scales [E, nbF, nbD]).
    Applied by the grouped expert matmuls of moe.py, adapters per expert (A [E, r, D], B [E, F, r])."""

    def __init__(self, num_experts: int, in_features: int, out_features: int, *, axes: tuple[str, str, str],
                 dtype, fp8_block: tuple[int, int] | None = None, rngs: nnx.Rngs):
        self.fp8_block = fp8_block
        shape = (num_experts, out_features, in_features)
        if fp8_block is None:
            init = jax.random.normal(rngs.params(), shape, jnp.float32) * 0.02
            self.weight = param(init.astype(dtype), axes)
        else:
            self.weight = param(jnp.zeros(shape, FP8_DTYPE), axes)
            nb = (num_experts, math.ceil(out_features / fp8_block[0]), math.ceil(in_features / fp8_block[1]))
            self.weight_scale_inv = param(jnp.ones(nb, jnp.float32), (ax.EXPERTS, ax.SCALE_BLOCKS, ax.SCALE_BLOCKS))

    def stacked(self) -> "jax.Array | BlockFp8":
        """The base weights [E, F, D] as stored: a plain array, or BlockFp8 (e4m3 with its scales),
        which the grouped matmuls dequantize a few experts at a time. Adapters are never merged in."""
        if self.fp8_block is None:
            return self.weight[...]
        return BlockFp8(self.weight[...], self.weight_scale_inv[...], self.fp8_block)


class RMSNorm(nnx.Module):
    """Qwen3 RMSNorm: normalise in float32, cast back, then scale (HF's order of operations)."""

    def __init__(self, dim: int, *, eps: float, dtype, axes=(ax.NORM,)):
        self.eps = eps
        self.weight = param(jnp.ones((dim,), dtype), axes)

    def __call__(self, x: jax.Array) -> jax.Array:
        xf = x.astype(jnp.float32)
        xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        return self.weight[...].astype(x.dtype) * xf.astype(x.dtype)


class Embedding(nnx.Module):
    """Token embedding W[V, D]; `attend` gives tied-head logits x W^T."""

    def __init__(self, vocab: int, dim: int, *, dtype, rngs: nnx.Rngs):
        init = jax.random.normal(rngs.params(), (vocab, dim), jnp.float32) * 0.02
        self.weight = param(init.astype(dtype), (ax.VOCAB, ax.EMBED))

    def __call__(self, tokens: jax.Array, mask_token_id: int | None = None) -> jax.Array:
        x = jnp.take(self.weight[...], tokens, axis=0)
        if mask_token_id is not None and hasattr(self, "mask_vector"):  # trained <|mask|> row
            x = jnp.where((tokens == mask_token_id)[..., None], self.mask_vector[...].astype(x.dtype), x)
        return x

    def attend(self, x: jax.Array) -> jax.Array:
        return jnp.einsum("...D,VD->...V", x, self.weight[...].astype(x.dtype))
