"""Grouped-query attention with q/k RMSNorm, three attention modes, and a KV cache hook.

Einsum letters: B batch, Q query length, S key length, N query heads, K kv heads, G = N // K query
heads per kv head, H head dim, D model width.

Which key a query may see is given by O(L) data, never by a materialised [B, N, L, L] mask:
every token carries a *visibility rank* r (its block id) and, optionally, a *noisy* flag n; keys
also carry a validity bit. Query q sees key s iff valid[s] and

  s clean:  r[s] + n[q] <= r[q]            (a clean query sees clean keys of its own and earlier
                                             blocks; a noisy query only those of earlier blocks)
  s noisy:  n[q] and r[s] == r[q]           (noisy keys are seen only by their own noisy block)

Without noisy tokens this is `r[s] <= r[q]`, and the modes are choices of rank:
  causal          r = position                      (sees itself and everything before)
  bidirectional   r = 0                             (sees every valid token)
  block           r = 0 for the prompt, 1 + (pos - prompt_len) // block_size after it
                                                    (sees its own block and all earlier blocks)
  block_diffusion the input is x0 ⊕ xt (BD3LM): the clean copy x0 with block ranks as in `block`,
                  then the noisy copy xt with the same positions and ranks, flagged noisy. A noisy
                  block sees itself and the clean blocks strictly before it, never an earlier noisy
                  block; clean tokens see clean blocks block-causally.
The same rule covers cached keys (always clean), so block decoding with a cache is exact, also for a
block-diffusion model: the block being denoised sees itself and the clean blocks before it.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx, struct

from jaxdiff.model import rope
from jaxdiff.model.config import ModelConfig
from jaxdiff.model.layers import Linear, RMSNorm
from jaxdiff.model.lora import ActiveHead
from jaxdiff.model.options import ATTENTION_IMPLS as IMPLEMENTATIONS
from jaxdiff.parallel import axes as ax
from jaxdiff.parallel import shard

MODES = ("causal", "bidirectional", "block", "block_diffusion")
# IMPLEMENTATIONS:
# "reference": plain einsum over the whole [Q, S] score matrix (the parity reference).
# "chunked":   the same math one query chunk at a time (memory O(chunk * S)); the default.
# "fused":     jax.nn.dot_product_attention with the boolean mask (XLA's implementation; whether a
#              backend picks a fused kernel for a given mask is the backend's choice).
_NEG = float(jnp.finfo(jnp.float32).min)


def allowed_mask(q_rank, k_rank, k_valid, q_noisy=None, k_noisy=None) -> jax.Array:
    """The one visibility rule (module docstring) as a boolean [B, 1, Q, S], from per-token
    descriptors: ranks q_rank [B, Q] / k_rank [B, S], k_valid [B, S], noisy flags [B, Q] / [B, S]
    (None: every token clean). Built per query chunk by the chunked path."""
    qr, kr = q_rank[:, None, :, None], k_rank[:, None, None, :]
    valid = k_valid[:, None, None, :]
    if q_noisy is None and k_noisy is None:
        return valid & (kr <= qr)
    qn = (jnp.zeros_like(q_rank, bool) if q_noisy is None else q_noisy)[:, None, :, None]
    kn = (jnp.zeros_like(k_rank, bool) if k_noisy is None else k_noisy)[:, None, None, :]
    clean_key = kr + qn.astype(kr.dtype) <= qr
    noisy_key = qn & (kr == qr)
    return valid & jnp.where(kn, noisy_key, clean_key)


@struct.dataclass
class Visibility:
    """Per-token attention structure: q_rank [B, Q], k_rank [B, S], k_valid [B, S]; q_noisy [B, Q]
    and k_noisy [B, S] flag the noisy copy of a block-diffusion input (None: all clean)."""

    q_rank: jax.Array
    k_rank: jax.Array
    k_valid: jax.Array
    q_noisy: jax.Array | None = None
    k_noisy: jax.Array | None = None

    def allowed(self, q_slice=slice(None)) -> jax.Array:
        """Boolean [B, 1, Q, S] (materialised only by the reference and fused paths)."""
        q_noisy = None if self.q_noisy is None else self.q_noisy[:, q_slice]
        return allowed_mask(self.q_rank[:, q_slice], self.k_rank, self.k_valid, q_noisy, self.k_noisy)


def _scores_to_out(q, k, v, allowed, bias, scale):
    """q [B, Q, K, G, H], k/v [B, S, K, H], allowed [B, 1, Q, S] -> out [B, Q, K, G, H]."""
    s = jnp.einsum("BQKGH,BSKH->BKGQS", q, k, preferred_element_type=jnp.float32) * scale
    if bias is not None:  # [B, 1, Q, S]
        s = s + bias[:, :, None].astype(jnp.float32)
    s = jnp.where(allowed[:, :, None], s, _NEG)
    p = jax.nn.softmax(s, axis=-1).astype(v.dtype)
    return jnp.einsum("BKGQS,BSKH->BQKGH", p, v)


def attend(q: jax.Array, k: jax.Array, v: jax.Array, vis: Visibility, *, bias: jax.Array | None = None,
           impl: str = "chunked", chunk: int = 512) -> jax.Array:
    """Attention of q [B, Q, N, H] over k, v [B, S, K, H]; returns [B, Q, N, H]."""
    b, nq, n, h = q.shape
    kv = k.shape[2]
    scale = h ** -0.5
    if impl == "fused":
        return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=vis.allowed(), scale=scale)
    qg = q.reshape(b, nq, kv, n // kv, h)
    if impl == "reference" or nq <= chunk:
        out = _scores_to_out(qg, k, v, vis.allowed(), bias, scale)
        return out.reshape(b, nq, n, h)
    if impl != "chunked":
        raise ValueError(f"attention impl {impl!r} unknown; choose from {IMPLEMENTATIONS}")
    pad = (-nq) % chunk
    n_chunks = (nq + pad) // chunk
    qp = jnp.pad(qg, ((0, 0), (0, pad), (0, 0), (0, 0), (0, 0)))
    rp = jnp.pad(vis.q_rank, ((0, 0), (0, pad)))
    noisy_p = None if vis.q_noisy is None else jnp.pad(vis.q_noisy, ((0, 0), (0, pad)))
    bp = None if bias is None else jnp.pad(jnp.broadcast_to(bias, (b, 1, nq, k.shape[1])),
                                           ((0, 0), (0, 0), (0, pad), (0, 0)))

    def one(i):
        sl = lambda x, axis: jax.lax.dynamic_slice_in_dim(x, i * chunk, chunk, axis)
        q_noisy = None if noisy_p is None else sl(noisy_p, 1)
        allowed = allowed_mask(sl(rp, 1), vis.k_rank, vis.k_valid, q_noisy, vis.k_noisy)
        return _scores_to_out(sl(qp, 1), k, v, allowed, None if bp is None else sl(bp, 2), scale)

    out = jax.lax.map(one, jnp.arange(n_chunks))  # [C, B, chunk, K, G, H]
    out = jnp.moveaxis(out, 0, 1).reshape(b, n_chunks * chunk, n, h)
    return out[:, :nq]


class Attention(nnx.Module):
    """Qwen3 self-attention: q/k/v/o projections, per-head RMSNorm on q and k, RoPE, GQA."""

    def __init__(self, cfg: ModelConfig, *, dtype, fp8_block, impl: str = "chunked", chunk: int = 512,
                 rngs: nnx.Rngs):
        """fp8_block(name) -> block size or None for the projection `name`; impl / chunk: see
        IMPLEMENTATIONS (ModelOptions.attention_impl / attention_chunk)."""
        d, n, kv, h = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.num_heads, self.num_kv_heads, self.head_dim = n, kv, h
        self.impl, self.chunk = impl, chunk
        lin = lambda i, o, axes, name: Linear(i, o, axes=axes, dtype=dtype, fp8_block=fp8_block(name), rngs=rngs)
        self.q_proj = lin(d, n * h, (ax.Q_HEADS, ax.EMBED), "q_proj")
        self.k_proj = lin(d, kv * h, (ax.KV_HEADS, ax.EMBED), "k_proj")
        self.v_proj = lin(d, kv * h, (ax.KV_HEADS, ax.EMBED), "v_proj")
        self.o_proj = lin(n * h, d, (ax.EMBED, ax.Q_HEADS), "o_proj")
        self.q_norm = RMSNorm(h, eps=cfg.rms_norm_eps, dtype=dtype, axes=(ax.HEAD_DIM,))
        self.k_norm = RMSNorm(h, eps=cfg.rms_norm_eps, dtype=dtype, axes=(ax.HEAD_DIM,))

    def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, vis: Visibility, *,
                 bias: jax.Array | None = None, past_kv: tuple[jax.Array, jax.Array] | None = None,
                 active: ActiveHead | None = None) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        """x [B, Q, D] -> (out [B, Q, D], this call's (k, v) [B, Q, K, H] for a cache)."""
        b, nq, _ = x.shape
        q = self.q_norm(self.q_proj(x, active).reshape(b, nq, self.num_heads, self.head_dim))
        k = self.k_norm(self.k_proj(x, active).reshape(b, nq, self.num_kv_heads, self.head_dim))
        v = self.v_proj(x, active).reshape(b, nq, self.num_kv_heads, self.head_dim)
        q, k = rope.apply(q, cos, sin), rope.apply(k, cos, sin)
        q = shard(q, (ax.BATCH, ax.LENGTH, ax.ACT_HEADS, None))
        k = shard(k, (ax.BATCH, ax.LENGTH, ax.ACT_KV_HEADS, None))
        keys, values = k, v
        if past_kv is not None:
            keys = jnp.concatenate([past_kv[0].astype(k.dtype), k], axis=1)
            values = jnp.concatenate([past_kv[1].astype(v.dtype), v], axis=1)
        out = attend(q, keys, values, vis, bias=bias, impl=self.impl, chunk=self.chunk)
        return self.o_proj(out.reshape(b, nq, self.num_heads * self.head_dim), active), (k, v)
