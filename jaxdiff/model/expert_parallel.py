"""Expert parallelism: the MoE block with tokens dispatched to the devices holding their experts by
all-to-all inside `jax.shard_map` (GShard-style capacity buffers).

Einsum letters: T local tokens, D model width, F expert FFN width, E experts, L local experts
(E / n, n = size of the `expert` mesh axis), S source devices (n), C capacity (slots per expert
per source device), A = T * k assignments.

Per device: route the local tokens, write each assignment into its expert's buffer [E, C, D] (the
c-th assignment to an expert from this device takes slot c; past C it is dropped and counted),
all-to-all over `expert` so every device holds [S, L, C, D] rows for its own L experts, run the
SwiGLU experts, all-to-all back, and combine with the routing weights. Tokens stay sharded over the
batch axes (data, fsdp, expert); expert weights enter sharded on E only (an FSDP / tensor split of
their other dimensions is gathered at the boundary, and its gradient reduce-scattered back).

Capacity: an expert gets at most one assignment per token, so C = T is dropless (exact, the
default); `capacity_factor` cf gives C = ceil(cf * T * k / E), memory E * C * D per device.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from jaxdiff.model import lora
from jaxdiff.model.moe import BATCH_AXES, route


def capacity(tokens: int, top_k: int, experts: int, capacity_factor: float | None) -> int:
    """Slots per expert per source device."""
    if capacity_factor is None or capacity_factor <= 0:
        return tokens
    return max(1, min(tokens, math.ceil(capacity_factor * tokens * top_k / experts)))


def _local_moe(x, router_w, gate, up, down, *, top_k, norm_topk_prob, capacity_factor):
    """One device's share: x [T, D], router [E, D], local experts (weights [L, F, D] / [L, D, F],
    adapters with A [L, r, in], B [L, out, r] or None)."""
    t, d = x.shape
    e = router_w.shape[0]
    n = jax.lax.axis_size("expert")
    c = capacity(t, top_k, e, capacity_factor)
    logits, weights, experts = route(x, router_w, top_k, norm_topk_prob)
    flat = experts.reshape(-1)                                         # [A]
    onehot = jax.nn.one_hot(flat, e, dtype=jnp.int32)                  # [A, E]
    slot = jnp.sum(jnp.cumsum(onehot, axis=0) * onehot, axis=1) - 1    # [A] rank within its expert
    keep = slot < c
    token = jnp.arange(flat.shape[0]) // top_k
    buf = jnp.zeros((e, c, d), x.dtype).at[flat, jnp.where(keep, slot, c)].set(x[token], mode="drop")
    recv = jax.lax.all_to_all(buf, "expert", split_axis=0, concat_axis=0, tiled=True)   # [S*L, C, D]
    recv = recv.reshape(n, e // n, c, d)
    mm = lambda h, w: jnp.einsum("SLCD,LFD->SLCF", h, w.astype(h.dtype))
    h = jax.nn.silu(lora.project(recv, *gate, matmul=mm)) * lora.project(recv, *up, matmul=mm)
    out = lora.project(h, *down, matmul=mm).reshape(e, c, d)
    back = jax.lax.all_to_all(out, "expert", split_axis=0, concat_axis=0, tiled=True)   # [E, C, D], mine
    ys = back.at[flat, jnp.where(keep, slot, 0)].get() * (keep[:, None] * weights.reshape(-1)[:, None])
    y = jnp.zeros_like(x).at[token].add(ys.astype(x.dtype))
    dropped = jax.lax.psum(jnp.sum(~keep), BATCH_AXES)
    return y, logits, dropped


def expert_parallel_moe(x, router_w, gate, up, down, *, mesh, top_k: int, norm_topk_prob: bool,
                        capacity_factor: float | None = None):
    """x [T, D] (T split over the batch axes); gate/up/down: (weights [E, out, in], LoRAWeights or
    None) -> (y [T, D], router logits [T, E] f32, assignments dropped over capacity (a scalar, over
    all devices))."""
    n = mesh.shape["expert"]
    if router_w.shape[0] % n:
        raise ValueError(f"expert parallelism: {router_w.shape[0]} experts do not divide over expert={n} devices")
    ways = math.prod(mesh.shape[a] for a in BATCH_AXES)
    if x.shape[0] % ways:
        raise ValueError(f"expert parallelism: {x.shape[0]} tokens do not divide over the batch axes "
                         f"{BATCH_AXES} ({ways} ways)")
    tok, w = P(BATCH_AXES, None), P("expert", None, None)
    # Adapters enter like their weights (sharded on E); the dropout key is replicated.
    spec = lambda proj: (w, None if proj[1] is None else proj[1].replace(a=w, b=w, dropout_key=(
        None if proj[1].dropout_key is None else P())))

    def body(x, router_w, gate, up, down):
        return _local_moe(x, router_w, gate, up, down, top_k=top_k, norm_topk_prob=norm_topk_prob,
                          capacity_factor=capacity_factor)

    fn = jax.shard_map(body, mesh=mesh, in_specs=(tok, P(None, None), spec(gate), spec(up), spec(down)),
                       out_specs=(tok, tok, P()))
    return fn(x, router_w, gate, up, down)
