"""Expert parallelism: the MoE block with tokens dispatched to the devices holding their experts by
all-to-all inside `jax.shard_map`.

Einsum letters: T local tokens, D model width, F expert FFN width, E experts, L local experts
(E / n, n = size of the `expert` mesh axis), S source devices (n), A = T * k assignments,
C capacity (slots per expert per source device), R = T * min(k, L) (the most assignments one
device can send another: a token picks k distinct experts, at most L of them on one device).

Per device: route the local tokens, all-to-all over `expert` so every device holds the rows
routed to its own L experts, run the SwiGLU experts, all-to-all back, and combine with the
routing weights. Tokens stay sharded over the batch axes (data, fsdp, expert); expert weights
enter sharded on E only (an FSDP / tensor split of their other dimensions is gathered at the
boundary, and its gradient reduce-scattered back); block-FP8 experts enter as FP8 (BlockFp8).

Two dispatches, both with buffers and expert FLOPs that grow with T * k, not with E:
  dropless (capacity_factor None; sampling, evaluation, RL, parity): assignments sorted by
    destination device into [S, R, D] (a slot per assignment that can possibly go there), the
    receiver sorts its S * R rows by local expert and runs the grouped kernel (moe.grouped_swiglu)
    over them; exact. Buffers n * R rows per device: at most n x the assignments (the worst case a
    static shape must hold); the ragged kernel multiplies only the rows received.
  capacity (the training loss's forward; GShard / Switch-style): the c-th assignment to an expert
    from this device takes slot c of its [E, C, D] buffer, C = ceil(cf * A / E); past C it is
    dropped (contributes nothing) and counted. Buffers and FLOPs cf * A rows.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from jaxdiff.model.layers import BlockFp8
from jaxdiff.model.moe import BATCH_AXES, grouped_swiglu, route, tiled_swiglu

def capacity(tokens: int, top_k: int, experts: int, capacity_factor: float) -> int:
    """Slots per expert per source device (an expert gets at most one assignment per token)."""
    return max(1, min(tokens, math.ceil(capacity_factor * tokens * top_k / experts)))


def dropless_rows(tokens: int, top_k: int, experts: int, devices: int) -> int:
    """Rows of a device's dropless send (and receive) buffer: each of `devices` destinations gets
    a slot for every assignment that can go there, T * min(k, E / n) (the static worst case)."""
    return devices * tokens * min(top_k, experts // devices)


def _rank_in_group(keys: jax.Array, groups: int) -> jax.Array:
    """[A] ints in [0, groups) -> each one's rank among the equal keys before it (flat order)."""
    order = jnp.argsort(keys, stable=True)
    sizes = jnp.bincount(keys, length=groups)
    start = jnp.cumsum(sizes) - sizes
    return jnp.zeros_like(keys).at[order].set(jnp.arange(keys.shape[0]) - start[keys[order]])


def _dropless(x, experts, gate, up, down, *, n, impl, unroll):
    """-> per-assignment outputs [A, D] (unweighted), in the flat order of `experts` [T, k]."""
    t, d = x.shape
    top_k, l = experts.shape[1], gate[0].shape[0]
    r = dropless_rows(t, top_k, n * l, n) // n
    flat = experts.reshape(-1)                                         # [A]
    dev, local = flat // l, flat % l
    pos = _rank_in_group(dev, n)                                       # slot in dev's buffer
    send = jnp.zeros((n, r, d), x.dtype).at[dev, pos].set(x[jnp.arange(flat.shape[0]) // top_k])
    ids = jnp.full((n, r), l, jnp.int32).at[dev, pos].set(local)       # l marks an empty slot
    recv = jax.lax.all_to_all(send, "expert", split_axis=0, concat_axis=0, tiled=True)   # [S, R, D]
    rid = jax.lax.all_to_all(ids, "expert", split_axis=0, concat_axis=0, tiled=True).reshape(-1)
    order = jnp.argsort(rid, stable=True)                              # by local expert, empty last
    sizes = jnp.bincount(rid, length=l + 1)[:l].astype(jnp.int32)
    ys = grouped_swiglu(recv.reshape(n * r, d)[order], gate, up, down, sizes, impl, unroll=unroll)
    out = jnp.zeros((n * r, d), ys.dtype).at[order].set(ys).reshape(n, r, d)
    back = jax.lax.all_to_all(out, "expert", split_axis=0, concat_axis=0, tiled=True)   # [n, R, D], mine
    return back[dev, pos]


def _capped(x, experts, gate, up, down, *, n, capacity_factor, unroll):
    """-> (per-assignment outputs [A, D], zero where dropped; kept [A])."""
    t, d = x.shape
    top_k, l = experts.shape[1], gate[0].shape[0]
    e = n * l
    c = capacity(t, top_k, e, capacity_factor)
    flat = experts.reshape(-1)                                         # [A]
    slot = _rank_in_group(flat, e)
    keep = slot < c
    buf = jnp.zeros((e, c, d), x.dtype).at[flat, jnp.where(keep, slot, c)].set(
        x[jnp.arange(flat.shape[0]) // top_k], mode="drop")
    recv = jax.lax.all_to_all(buf, "expert", split_axis=0, concat_axis=0, tiled=True)   # [S*L, C, D]
    tiles = recv.reshape(n, l, c, d).transpose(1, 0, 2, 3).reshape(l, n * c, d)        # one tile per expert
    out = tiled_swiglu(tiles, jnp.arange(l), gate, up, down, unroll=unroll)
    out = out.reshape(l, n, c, d).transpose(1, 0, 2, 3).reshape(e, c, d)
    back = jax.lax.all_to_all(out, "expert", split_axis=0, concat_axis=0, tiled=True)   # [E, C, D], mine
    return back.at[flat, jnp.where(keep, slot, 0)].get() * keep[:, None], keep


def _local_moe(x, router_w, gate, up, down, *, top_k, norm_topk_prob, capacity_factor, impl, unroll):
    """One device's share: x [T, D], router [E, D], local experts (weights [L, F, D] / [L, D, F] as
    arrays or BlockFp8, adapters with A [L, r, in], B [L, out, r] or None)."""
    n = jax.lax.axis_size("expert")
    logits, weights, experts = route(x, router_w, top_k, norm_topk_prob)
    if capacity_factor is None:
        ys = _dropless(x, experts, gate, up, down, n=n, impl=impl, unroll=unroll)
        dropped = jnp.zeros((), jnp.int32)
    else:
        ys, keep = _capped(x, experts, gate, up, down, n=n, capacity_factor=capacity_factor, unroll=unroll)
        dropped = jax.lax.psum(jnp.sum(~keep), BATCH_AXES)
    ys = ys * weights.reshape(-1)[:, None]
    y = jnp.zeros_like(x).at[jnp.arange(ys.shape[0]) // top_k].add(ys.astype(x.dtype))
    return y, logits, dropped


def expert_parallel_moe(x, router_w, gate, up, down, *, mesh, top_k: int, norm_topk_prob: bool,
                        capacity_factor: float | None = None, impl: str = "tiled", unroll: bool = False):
    """x [T, D] (T split over the batch axes); gate/up/down: (weights [E, out, in] (array or
    BlockFp8), LoRAWeights or None) -> (y [T, D], router logits [T, E] f32, assignments dropped over
    capacity (a scalar over all devices; 0 when dropless)). capacity_factor None: dropless.
    impl: the dropless path's grouped kernel (moe.grouped_swiglu); unroll: see moe.tiled_swiglu."""
    n = mesh.shape["expert"]
    if router_w.shape[0] % n:
        raise ValueError(f"expert parallelism: {router_w.shape[0]} experts do not divide over expert={n} devices")
    ways = math.prod(mesh.shape[a] for a in BATCH_AXES)
    if x.shape[0] % ways:
        raise ValueError(f"expert parallelism: {x.shape[0]} tokens do not divide over the batch axes "
                         f"{BATCH_AXES} ({ways} ways)")
    if capacity_factor is not None and capacity_factor <= 0:
        raise ValueError(f"expert parallelism: capacity_factor={capacity_factor} must be > 0 (None = dropless)")
    tok, w = P(BATCH_AXES, None), P("expert", None, None)

    def weight_spec(v):   # FP8 experts enter as FP8 with their scales, both split on E
        return BlockFp8(w, w, v.block) if isinstance(v, BlockFp8) else w

    # Adapters enter like their weights (sharded on E); the dropout key is replicated.
    spec = lambda proj: (weight_spec(proj[0]), None if proj[1] is None else proj[1].replace(a=w, b=w, dropout_key=(
        None if proj[1].dropout_key is None else P())))

    def body(x, router_w, gate, up, down):
        return _local_moe(x, router_w, gate, up, down, top_k=top_k, norm_topk_prob=norm_topk_prob,
                          capacity_factor=capacity_factor, impl=impl, unroll=unroll)

    fn = jax.shard_map(body, mesh=mesh, in_specs=(tok, P(None, None), spec(gate), spec(up), spec(down)),
                       out_specs=(tok, tok, P()))
    return fn(x, router_w, gate, up, down)
