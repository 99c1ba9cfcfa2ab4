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

from jaxdiff.model import attention_backends as backends
from jaxdiff.model import rope
from jaxdiff.model.config import ModelConfig
from jaxdiff.model.flash import NEG as _NEG
from jaxdiff.model.flash import allowed_mask, flash_attention
from jaxdiff.model.layers import Linear, RMSNorm
from jaxdiff.model.lora import ActiveHead
from jaxdiff.model.options import ATTENTION_IMPLS as IMPLEMENTATIONS
from jaxdiff.model.options import ModelOptions
from jaxdiff.parallel import axes as ax
from jaxdiff.parallel import shard

MODES = ("causal", "bidirectional", "block", "block_diffusion")
# IMPLEMENTATIONS (ModelOptions.attention_impl):
# "auto":      by platform (`select_impl`): cuDNN flash attention on NVIDIA GPUs and the Pallas
#              splash kernel on TPU for the calls they express, "chunked" for every other call.
# "reference": plain einsum over the whole [Q, S] score matrix (the parity reference).
# "chunked":   flash-style tiles with a custom VJP (flash.py): memory O(L * chunk) forward and
#              backward; every mode, every backend.
# "fused":     jax.nn.dot_product_attention with the boolean mask (XLA's implementation; whether a
#              backend picks a fused kernel for a given mask is the backend's choice).
# "cudnn", "splash": that kernel; a call it cannot express raises instead of falling back.


@struct.dataclass
class Visibility:
    """Per-token attention structure: q_rank [B, Q], k_rank [B, S], k_valid [B, S]; q_noisy [B, Q]
    and k_noisy [B, S] flag the noisy copy of a block-diffusion input (None: all clean). kind
    (static): the mode whose rule the ranks encode ("cached" for a call over a KV cache; None:
    unknown). Only "causal" / "bidirectional" calls may go to a backend kernel."""

    q_rank: jax.Array
    k_rank: jax.Array
    k_valid: jax.Array
    q_noisy: jax.Array | None = None
    k_noisy: jax.Array | None = None
    kind: str | None = struct.field(pytree_node=False, default=None)

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
           impl: str = "auto", chunk: int = ModelOptions.attention_chunk,
           key_chunk: int = ModelOptions.attention_key_chunk, platform: str | None = None) -> jax.Array:
    """Attention of q [B, Q, N, H] over k, v [B, S, K, H]; returns [B, Q, N, H]. impl: see
    IMPLEMENTATIONS ("auto" resolves for `platform`, default this process's backend); chunk /
    key_chunk: query rows / keys per tile of the chunked path."""
    b, nq, n, h = q.shape
    impl = select_impl(impl, platform=platform or backends.platform(), vis=vis, q=q, k=k, bias=bias)
    if impl == "fused":
        return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=vis.allowed(), scale=h ** -0.5)
    if impl == "reference":
        kv = k.shape[2]
        out = _scores_to_out(q.reshape(b, nq, kv, n // kv, h), k, v, vis.allowed(), bias, h ** -0.5)
        return out.reshape(b, nq, n, h)

    def chunked():
        return flash_attention(q, k, v, vis.q_rank, vis.k_rank, vis.k_valid, vis.q_noisy, vis.k_noisy, bias,
                               q_chunk=chunk, k_chunk=key_chunk)

    if impl == "chunked":
        return chunked()
    kernel = backends.cudnn_attention if impl == "cudnn" else backends.splash_attention
    # the kernels take key lengths (right padding); a row padded otherwise takes the chunked path
    return jax.lax.cond(backends.prefix_padded(vis.k_valid), lambda: kernel(q, k, v, vis), chunked)


def select_impl(impl: str, *, platform: str, vis: Visibility, q: jax.Array, k: jax.Array,
                bias: jax.Array | None) -> str:
    """The implementation one call runs: `impl` itself unless "auto"; "auto" is "cudnn" on CUDA
    GPUs and "splash" on TPUs when that kernel expresses the call (`backends.unsupported`), else
    "chunked". A forced "cudnn" / "splash" that cannot express the call raises, saying why."""
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"attention impl {impl!r} unknown; choose from {IMPLEMENTATIONS}")
    if impl in backends.KERNELS:
        why = backends.unsupported(impl, vis.kind, q, k, bias)
        if why:
            raise ValueError(f"attention impl {impl!r} cannot run this call: {why}")
        return impl
    if impl != "auto":
        return impl
    kernel = backends.KERNEL_OF_PLATFORM.get(platform)
    if kernel is not None and not backends.unsupported(kernel, vis.kind, q, k, bias):
        return kernel
    return "chunked"


class Attention(nnx.Module):
    """Qwen3 self-attention: q/k/v/o projections, per-head RMSNorm on q and k, RoPE, GQA."""

    def __init__(self, cfg: ModelConfig, *, dtype, fp8_block, impl: str = "auto",
                 chunk: int = ModelOptions.attention_chunk, key_chunk: int = ModelOptions.attention_key_chunk,
                 rngs: nnx.Rngs):
        """fp8_block(name) -> block size or None for the projection `name`; impl / chunk / key_chunk:
        see `attend` (ModelOptions.attention_impl / attention_chunk / attention_key_chunk)."""
        d, n, kv, h = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.num_heads, self.num_kv_heads, self.head_dim = n, kv, h
        self.impl, self.chunk, self.key_chunk = impl, chunk, key_chunk
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
        with jax.named_scope("attend"):   # profiles (tools/bench_train.py --profile) group by it
            out = attend(q, keys, values, vis, bias=bias, impl=self.impl, chunk=self.chunk,
                         key_chunk=self.key_chunk)
        return self.o_proj(out.reshape(b, nq, self.num_heads * self.head_dim), active), (k, v)
