"""Qwen3-MoE sparse block: softmax router, top-k, optional renormalisation, SwiGLU experts.

Einsum letters: T tokens (B*L flattened), D model width, F expert FFN width, E experts, A = T * k
token-expert assignments.

Experts run grouped: assignments are sorted by expert and each expert multiplies only its own
rows, its adapter (if the active head has one) applied unmerged through the same grouped matmul.
Two grouped kernels compute the same thing:
  "ragged": `jax.lax.ragged_dot_general` (native grouped GEMM on GPU/TPU);
  "tiled":  rows padded per expert to a multiple of a tile and multiplied tile by tile against the
            owning expert's weights (static shapes; compute ~A rows, not T * E). XLA:CPU lowers
            ragged_dot to a dense masked product over all experts, so this is the CPU default.
`dense_reference_moe` pushes every token through every expert; it exists only for tests.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from jaxdiff.model import lora
from jaxdiff.model.config import ModelConfig
from jaxdiff.model.layers import ExpertLinear, param
from jaxdiff.model.lora import ActiveHead
from jaxdiff.model.options import GROUPED_IMPLS, MOE_DISPATCH as DISPATCH, ModelOptions
from jaxdiff.parallel import axes as ax

BATCH_AXES = ("data", "fsdp", "expert")   # the mesh axes tokens are split over (parallel/axes.py rules)


def route(x: jax.Array, router_w: jax.Array, top_k: int, norm_topk_prob: bool):
    """x [T, D], router W [E, D] -> (logits [T, E] f32, weights [T, k] in x.dtype, experts [T, k])."""
    logits = jnp.einsum("TD,ED->TE", x, router_w.astype(x.dtype))
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    weights, experts = jax.lax.top_k(probs, top_k)
    if norm_topk_prob:
        weights = weights / jnp.sum(weights, axis=-1, keepdims=True)
    return logits.astype(jnp.float32), weights.astype(x.dtype), experts


def _ragged(xs: jax.Array, w: jax.Array, group_sizes: jax.Array) -> jax.Array:
    """xs [A, D] sorted by expert, w [E, F, D] -> [A, F]."""
    dn = jax.lax.RaggedDotDimensionNumbers(
        dot_dimension_numbers=(([1], [2]), ([], [])), lhs_ragged_dimensions=[0], rhs_group_dimensions=[0])
    return jax.lax.ragged_dot_general(xs, w.astype(xs.dtype), group_sizes, dn)


def _tile_plan(group_sizes: jax.Array, num_rows: int, tile: int):
    """Row -> padded-row map and tile -> expert map for rows sorted by expert."""
    e = group_sizes.shape[0]
    padded = (group_sizes + tile - 1) // tile * tile
    pad_start = jnp.cumsum(padded) - padded
    start = jnp.cumsum(group_sizes) - group_sizes
    n_tiles = -(-(num_rows + e * (tile - 1)) // tile)
    expert_of_row = jnp.repeat(jnp.arange(e), group_sizes, total_repeat_length=num_rows)
    dest = pad_start[expert_of_row] + jnp.arange(num_rows) - start[expert_of_row]
    tile_expert = jnp.searchsorted(jnp.cumsum(padded), jnp.arange(n_tiles) * tile, side="right")
    return dest, jnp.minimum(tile_expert, e - 1), n_tiles


def _tile_size(rows: int, experts: int) -> int:
    per = max(rows // experts, 1)
    t = 8
    while t < per and t < 128:
        t *= 2
    return t


def grouped_swiglu(xs, gate, up, down, group_sizes, impl: str):
    """SwiGLU expert FFN on rows sorted by expert: xs [A, D] -> [A, D]. gate/up/down are (weights
    [E, F, D] or [E, D, F], LoRAWeights or None), each applied by `lora.project` with the grouped
    matmul of `impl`. The tiled path pads the rows into per-expert tiles once and stays in that
    layout through all three projections (padded rows are zero and stay zero)."""
    if impl == "ragged":
        mm = lambda x, w: _ragged(x, w, group_sizes)
        h = jax.nn.silu(lora.project(xs, *gate, matmul=mm)) * lora.project(xs, *up, matmul=mm)
        return lora.project(h, *down, matmul=mm)
    if impl != "tiled":
        raise ValueError(f"MoE grouped impl {impl!r} unknown; choose from {GROUPED_IMPLS}")
    tile = _tile_size(xs.shape[0], group_sizes.shape[0])
    dest, tile_expert, n_tiles = _tile_plan(group_sizes, xs.shape[0], tile)
    xp = jnp.zeros((n_tiles * tile, xs.shape[1]), xs.dtype).at[dest].set(xs).reshape(n_tiles, tile, -1)
    mm = lambda x, w: jnp.einsum("ZRD,ZFD->ZRF", x, w[tile_expert].astype(x.dtype))   # [Z, tile, out]
    h = jax.nn.silu(lora.project(xp, *gate, matmul=mm)) * lora.project(xp, *up, matmul=mm)
    y = lora.project(h, *down, matmul=mm)
    return y.reshape(n_tiles * tile, -1)[dest]


def dense_reference_moe(x, router_w, gate_w, up_w, down_w, top_k, norm_topk_prob, loras=(None, None, None)):
    """Every token through every expert, weighted by the (zero outside top-k) routing weights.
    loras: the gate/up/down adapters (LoRAWeights with A [E, r, in], B [E, out, r]) or None."""
    _, weights, experts = route(x, router_w, top_k, norm_topk_prob)
    full = jnp.zeros((x.shape[0], router_w.shape[0]), x.dtype)
    full = full.at[jnp.arange(x.shape[0])[:, None], experts].set(weights)  # [T, E]
    def every(t, w):   # [T, in] or per expert [T, E, in] -> [T, E, out]
        return jnp.einsum("TD,EFD->TEF" if t.ndim == 2 else "TED,EFD->TEF", t, w.astype(t.dtype))

    h = jax.nn.silu(lora.project(x, gate_w, loras[0], every)) * lora.project(x, up_w, loras[1], every)
    y = lora.project(h, down_w, loras[2], every)                              # [T, E, D]
    return jnp.einsum("TED,TE->TD", y, full)


def load_balancing_loss(router_logits: tuple[jax.Array, ...], top_k: int, valid: jax.Array | None = None) -> jax.Array:
    """The auxiliary load-balancing loss as transformers computes it for Qwen3-MoE (Switch
    Transformer's, over all layers' tokens together): E * sum_e f_e * P_e, with f_e the share of
    top-k slots routed to expert e (per slot rank) and P_e the mean router probability of e.
    router_logits: one [T, E] per MoE layer; valid [T]: real tokens (padding excluded)."""
    logits = jnp.concatenate(router_logits, axis=0).astype(jnp.float32)        # [N*T, E]
    e = logits.shape[-1]
    probs = jax.nn.softmax(logits, axis=-1)
    _, chosen = jax.lax.top_k(probs, top_k)
    mask = jax.nn.one_hot(chosen, e, dtype=jnp.float32)                         # [N*T, k, E]
    if valid is None:
        w = jnp.ones(logits.shape[:1], jnp.float32)
    else:
        w = jnp.tile(valid.reshape(-1).astype(jnp.float32), len(router_logits))
    denom = jnp.maximum(jnp.sum(w), 1.0)
    tokens_per_expert = jnp.einsum("TKE,T->KE", mask, w) / denom
    prob_per_expert = jnp.einsum("TE,T->E", probs, w) / denom
    return jnp.sum(tokens_per_expert * prob_per_expert[None]) * e


def router_z_loss(router_logits: tuple[jax.Array, ...], valid: jax.Array | None = None) -> jax.Array:
    """ST-MoE's router z-loss: the mean over tokens and layers of logsumexp(router logits)^2."""
    logits = jnp.concatenate(router_logits, axis=0).astype(jnp.float32)
    z = jax.nn.logsumexp(logits, axis=-1) ** 2
    if valid is None:
        return jnp.mean(z)
    w = jnp.tile(valid.reshape(-1).astype(jnp.float32), len(router_logits))
    return jnp.sum(z * w) / jnp.maximum(jnp.sum(w), 1.0)


class SparseMoeBlock(nnx.Module):
    """`gate` is the router W[E, D]; `experts` holds gate/up/down projections stacked on E. How
    tokens reach their experts follows `options` (moe_dispatch, capacity factor, mesh)."""

    def __init__(self, cfg: ModelConfig, *, dtype, fp8: bool, options: ModelOptions, rngs: nnx.Rngs):
        e, d, f = cfg.num_experts, cfg.hidden_size, cfg.moe_intermediate_size
        blk = cfg.fp8_block_size if fp8 else None
        self.top_k, self.norm_topk_prob = cfg.num_experts_per_tok, cfg.norm_topk_prob
        self.gate = _Router(e, d, dtype=dtype, rngs=rngs)
        self.experts = _Experts(e, d, f, dtype=dtype, fp8_block=blk, rngs=rngs)
        self.options = options

    def _all_to_all(self, tokens: int) -> bool:
        o = self.options
        if o.moe_dispatch == "gspmd" or o.mesh is None or o.mesh.shape["expert"] <= 1:
            return False
        if o.moe_dispatch == "all_to_all":
            return True
        # auto: all-to-all needs the tokens split evenly over the batch axes
        return tokens % math.prod(o.mesh.shape[a] for a in BATCH_AXES) == 0

    def __call__(self, x: jax.Array, active: ActiveHead | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
        """x [B, L, D] -> (y [B, L, D], router logits [B*L, E] f32 for auxiliary losses,
        assignments dropped over capacity (0 unless all_to_all dispatch with a capacity factor))."""
        b, l, d = x.shape
        xt = x.reshape(b * l, d)
        projs = (self.experts.gate_proj, self.experts.up_proj, self.experts.down_proj)
        experts = tuple((p.kernel(x.dtype), p.adapter(active)) for p in projs)
        if self._all_to_all(b * l):
            from jaxdiff.model.expert_parallel import expert_parallel_moe
            y, logits, dropped = expert_parallel_moe(
                xt, self.gate.weight[...], *experts, mesh=self.options.mesh, top_k=self.top_k,
                norm_topk_prob=self.norm_topk_prob, capacity_factor=self.options.moe_capacity_factor)
            return y.reshape(b, l, d), logits, dropped
        logits, weights, chosen = route(xt, self.gate.weight[...], self.top_k, self.norm_topk_prob)
        flat = chosen.reshape(-1)                       # [A]
        order = jnp.argsort(flat, stable=True)
        token = order // self.top_k                     # [A] source token of each sorted row
        group_sizes = jnp.bincount(flat, length=self.gate.weight.shape[0]).astype(jnp.int32)
        ys = grouped_swiglu(xt[token], *experts, group_sizes, self.options.grouped_impl)
        ys = ys * weights.reshape(-1)[order][:, None]
        y = jnp.zeros_like(xt).at[token].add(ys)
        return y.reshape(b, l, d), logits, jnp.zeros((), jnp.int32)


class _Router(nnx.Module):
    def __init__(self, e: int, d: int, *, dtype, rngs: nnx.Rngs):
        init = jax.random.normal(rngs.params(), (e, d), jnp.float32) * 0.02
        self.weight = param(init.astype(dtype), (ax.ROUTER, ax.EMBED))


class _Experts(nnx.Module):
    def __init__(self, e: int, d: int, f: int, *, dtype, fp8_block, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, fp8_block=fp8_block, rngs=rngs)
        self.gate_proj = ExpertLinear(e, d, f, axes=(ax.EXPERTS, ax.EXPERT_MLP, ax.EMBED), **kw)
        self.up_proj = ExpertLinear(e, d, f, axes=(ax.EXPERTS, ax.EXPERT_MLP, ax.EMBED), **kw)
        self.down_proj = ExpertLinear(e, f, d, axes=(ax.EXPERTS, ax.EMBED, ax.EXPERT_MLP), **kw)
