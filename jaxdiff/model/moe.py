"""Qwen3-MoE sparse block: softmax router, top-k, optional renormalisation, SwiGLU experts.

Einsum letters: T tokens (B*L flattened), D model width, F expert FFN width, E experts, A = T * k
token-expert assignments, Z tiles, R rows per tile.

Experts run grouped: assignments are sorted by expert and each expert multiplies only its own
rows, its adapter (if the active head has one) applied unmerged through the same grouped matmul.
Two grouped kernels compute the same thing:
  "ragged": `jax.lax.ragged_dot_general` (the default on TPU; on GPU, jax 0.11.2, it measured 5.5x
            slower than "tiled" in the 30B-A3B train step);
  "tiled":  rows padded per expert to a multiple of a tile (~9 tiles per expert) and multiplied tile
            by tile against the owning expert's weights, in a loop over chunks of CHUNK_TILES tiles
            (static shapes; compute ~9/8 A rows, not T * E; weights gathered a chunk at a time).
            XLA:CPU lowers ragged_dot to a dense masked product over all experts; this is the
            default on CPU and GPU.
Block-FP8 experts stay FP8 (BlockFp8): "tiled" dequantizes only the chunk's experts, "ragged" one
input block of the weights at a time. `dense_reference_moe` pushes every token through every
expert; it exists only for tests.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx

from jaxdiff.model import lora
from jaxdiff.model.config import ModelConfig
from jaxdiff.model.layers import BlockFp8, ExpertLinear, param
from jaxdiff.model.lora import ActiveHead
from jaxdiff.model.options import GROUPED_IMPLS, MOE_DISPATCH as DISPATCH, ModelOptions
from jaxdiff.parallel import axes as ax

BATCH_AXES = ("data", "fsdp", "expert")   # the mesh axes tokens are split over (parallel/axes.py rules)
CHUNK_TILES = 8   # tiles per step of the tiled kernel: bounds the expert weights gathered / dequantized at once


def route(x: jax.Array, router_w: jax.Array, top_k: int, norm_topk_prob: bool):
    """x [T, D], router W [E, D] -> (logits [T, E] f32, weights [T, k] in x.dtype, experts [T, k])."""
    logits = jnp.einsum("TD,ED->TE", x, router_w.astype(x.dtype))
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    weights, experts = jax.lax.top_k(probs, top_k)
    if norm_topk_prob:
        weights = weights / jnp.sum(weights, axis=-1, keepdims=True)
    return logits.astype(jnp.float32), weights.astype(x.dtype), experts


def _take(w, idx: jax.Array, dtype) -> jax.Array:
    """Experts idx of stacked weights (an array [E, out, in] or BlockFp8) in dtype; of an FP8 stack
    only these experts are dequantized."""
    return w.take(idx, dtype) if isinstance(w, BlockFp8) else w[idx].astype(dtype)


def _ragged(xs: jax.Array, w, group_sizes: jax.Array) -> jax.Array:
    """xs [A, in] sorted by expert, w [E, out, in] (array or BlockFp8) -> [A, out]. FP8 weights go
    one input block at a time: the block is cast to xs.dtype unscaled (an e4m3 value is exact in
    bf16/f32), multiplied, and its per-(expert, output block) scales applied to the partial product,
    so at most 1/ceil(in/bi) of the experts exists at full precision."""
    dn = jax.lax.RaggedDotDimensionNumbers(
        dot_dimension_numbers=(([1], [2]), ([], [])), lhs_ragged_dimensions=[0], rhs_group_dimensions=[0])
    if not isinstance(w, BlockFp8):
        return jax.lax.ragged_dot_general(xs, w.astype(xs.dtype), group_sizes, dn)
    (bo, bi), (e, o, i), rows = w.block, w.w.shape, xs.shape[0]
    nbi = w.scale_inv.shape[-1]
    w8, x = w.w, xs
    if i % bi:   # a ragged last block: pad the input dimension with zeros (rare; Qwen3's widths divide)
        w8 = jnp.pad(w8, ((0, 0), (0, 0), (0, nbi * bi - i)))
        x = jnp.pad(xs, ((0, 0), (0, nbi * bi - i)))
    expert_of_row = jnp.repeat(jnp.arange(e), group_sizes, total_repeat_length=rows)
    scale = w.scale_inv[expert_of_row].astype(jnp.float32)                     # [A, nbo, nbi]

    @jax.checkpoint   # the backward recomputes the block's cast instead of keeping every block
    def step(acc, b):
        xb = jax.lax.dynamic_slice_in_dim(x, b * bi, bi, axis=1)                  # [A, bi]
        wb = jax.lax.dynamic_slice_in_dim(w8, b * bi, bi, axis=2).astype(xs.dtype)   # [E, out, bi]
        part = jax.lax.ragged_dot_general(xb, wb, group_sizes, dn).astype(jnp.float32)
        s = jnp.repeat(scale[:, :, b], bo, axis=1)[:, :o]                          # [A, out]
        return acc + part * s, None

    acc, _ = jax.lax.scan(step, jnp.zeros((rows, o), jnp.float32), jnp.arange(nbi))
    return acc.astype(xs.dtype)


def _tiling(rows: int, experts: int) -> tuple[int, int]:
    """-> (rows per tile, tiles: a multiple of CHUNK_TILES) for `rows` sorted by expert, each expert
    padding its rows to whole tiles: tiles * tile >= rows + experts * (tile - 1). About 9 tiles per
    expert, so the rows multiplied are ~9/8 of `rows` whatever E (doubling E halves the tile rather
    than doubling the padding); tiles of at most 128 rows; one row per tile when rows <= 8 E."""
    up = lambda n: -(-n // CHUNK_TILES) * CHUNK_TILES
    if rows <= 8 * experts:
        return 1, up(rows)
    z = up(max(9 * experts, experts + -(-rows // 128)))
    return -(-rows // (z - experts)), z


def _tile_plan(group_sizes: jax.Array, num_rows: int):
    """Row -> padded-row map, tile -> expert map, tile rows and tiles for rows sorted by expert. Rows
    past sum(group_sizes) (empty slots of a dispatch buffer) map past the end: never computed."""
    e = group_sizes.shape[0]
    tile, n_tiles = _tiling(num_rows, e)
    padded = (group_sizes + tile - 1) // tile * tile
    pad_start = jnp.cumsum(padded) - padded
    start = jnp.cumsum(group_sizes) - group_sizes
    row = jnp.arange(num_rows)
    expert_of_row = jnp.repeat(jnp.arange(e), group_sizes, total_repeat_length=num_rows)
    dest = jnp.where(row < jnp.sum(group_sizes), pad_start[expert_of_row] + row - start[expert_of_row],
                     n_tiles * tile)
    tile_expert = jnp.searchsorted(jnp.cumsum(padded), jnp.arange(n_tiles) * tile, side="right")
    return dest, jnp.minimum(tile_expert, e - 1), tile, n_tiles


def tiled_swiglu(xp: jax.Array, tile_expert: jax.Array, gate, up, down, *, unroll: bool = False) -> jax.Array:
    """SwiGLU experts on tiles of rows: xp [Z, R, D], tile z owned by expert tile_expert[z] -> [Z, R, D].
    A loop over chunks of up to CHUNK_TILES tiles: each step gathers its tiles' experts (weights,
    adapters) and dequantizes only those, so the weights held at full precision at once are
    CHUNK_TILES experts' whatever E is; the backward recomputes the gathers, keeping the products.
    unroll: inline every step (the same arithmetic; XLA's cost analysis counts a loop body once)."""
    z = xp.shape[0]
    g = max(c for c in range(1, min(CHUNK_TILES, z) + 1) if z % c == 0)

    def drop_key(p, i):   # a fresh adapter-dropout draw per chunk (not the same mask in every chunk)
        lw = p[1]
        if lw is None or lw.dropout_key is None:
            return p
        return p[0], lw.replace(dropout_key=jax.random.fold_in(lw.dropout_key, i))

    @functools.partial(jax.checkpoint, policy=jax.checkpoint_policies.dots_saveable)
    def step(carry, chunk):
        i, xc, ec = chunk
        mm = lambda x, w: jnp.einsum("ZRD,ZFD->ZRF", x, _take(w, ec, x.dtype))   # [g, R, out]
        h = jax.nn.silu(lora.project(xc, *drop_key(gate, i), matmul=mm)) * lora.project(xc, *drop_key(up, i), matmul=mm)
        return carry, lora.project(h, *drop_key(down, i), matmul=mm)

    chunks = (jnp.arange(z // g), xp.reshape(z // g, g, *xp.shape[1:]), tile_expert.reshape(z // g, g))
    _, y = jax.lax.scan(step, None, chunks, unroll=(z // g) if unroll else 1)
    return y.reshape(z, *y.shape[2:])


def grouped_swiglu(xs, gate, up, down, group_sizes, impl: str, *, unroll: bool = False):
    """SwiGLU expert FFN on rows sorted by expert: xs [A, D] -> [A, D]; rows past sum(group_sizes)
    give zeros. gate/up/down are (weights [E, F, D] or [E, D, F] as an array or BlockFp8, LoRAWeights
    or None), each applied by `lora.project` with the grouped matmul of `impl`. The tiled path pads
    the rows into per-expert tiles once and stays in that layout through all three projections
    (padded rows are zero and stay zero)."""
    if impl == "ragged":
        mm = lambda x, w: _ragged(x, w, group_sizes)
        h = jax.nn.silu(lora.project(xs, *gate, matmul=mm)) * lora.project(xs, *up, matmul=mm)
        y = lora.project(h, *down, matmul=mm)
        return jnp.where((jnp.arange(xs.shape[0]) < jnp.sum(group_sizes))[:, None], y, 0)
    if impl != "tiled":
        raise ValueError(f"MoE grouped impl {impl!r} unknown; choose from {GROUPED_IMPLS}")
    dest, tile_expert, tile, n_tiles = _tile_plan(group_sizes, xs.shape[0])
    xp = jnp.zeros((n_tiles * tile, xs.shape[1]), xs.dtype).at[dest].set(xs, mode="drop")
    y = tiled_swiglu(xp.reshape(n_tiles, tile, -1), tile_expert, gate, up, down, unroll=unroll)
    return y.reshape(n_tiles * tile, -1).at[dest].get(mode="fill", fill_value=0)


def grouped_moe(x, router_w, gate, up, down, *, top_k: int, norm_topk_prob: bool, impl: str,
                unroll: bool = False):
    """The MoE layer on one device, dropless: x [T, D] -> (y [T, D], router logits [T, E] f32).
    Assignments sorted by expert, each expert multiplying only its own rows (grouped_swiglu)."""
    logits, weights, chosen = route(x, router_w, top_k, norm_topk_prob)
    flat = chosen.reshape(-1)                       # [A]
    order = jnp.argsort(flat, stable=True)
    token = order // top_k                          # [A] source token of each sorted row
    group_sizes = jnp.bincount(flat, length=router_w.shape[0]).astype(jnp.int32)
    ys = grouped_swiglu(x[token], gate, up, down, group_sizes, impl, unroll=unroll)
    ys = ys * weights.reshape(-1)[order][:, None]
    return jnp.zeros_like(x).at[token].add(ys), logits


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

    def __call__(self, x: jax.Array, active: ActiveHead | None = None, capacity: bool = False
                 ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """x [B, L, D] -> (y [B, L, D], router logits [B*L, E] f32 for auxiliary losses,
        assignments dropped over capacity). capacity: bound the all-to-all dispatch by
        options.moe_capacity_factor (the training loss's forward only; everything else is dropless,
        and so is any dispatch that is not all-to-all: 0 dropped)."""
        b, l, d = x.shape
        xt = x.reshape(b * l, d)
        projs = (self.experts.gate_proj, self.experts.up_proj, self.experts.down_proj)
        experts = tuple((p.stacked(), p.adapter(active)) for p in projs)
        if self._all_to_all(b * l):
            from jaxdiff.model.expert_parallel import expert_parallel_moe
            y, logits, dropped = expert_parallel_moe(
                xt, self.gate.weight[...], *experts, mesh=self.options.mesh, top_k=self.top_k,
                norm_topk_prob=self.norm_topk_prob, impl=self.options.grouped_impl,
                capacity_factor=self.options.moe_capacity_factor if capacity else None)
            return y.reshape(b, l, d), logits, dropped
        y, logits = grouped_moe(xt, self.gate.weight[...], *experts, top_k=self.top_k,
                                norm_topk_prob=self.norm_topk_prob, impl=self.options.grouped_impl)
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
