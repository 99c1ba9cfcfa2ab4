"""Qwen3 / Qwen3-MoE decoder as a Flax NNX module, with HF attribute names.

Einsum letters: B batch, L length, D model width, F FFN width, V vocab.

`Qwen3(tokens, attention=..., ...)` returns float32 logits [B, L, V]. With a `KVCache` it returns
(logits, cache), the cache extended by this call's tokens when `commit=True`.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from jaxdiff.model import rope
from jaxdiff.model.attention import MODES, Attention, Visibility
from jaxdiff.model.config import ModelConfig
from jaxdiff.model.kv_cache import KVCache
from jaxdiff.model.layers import Embedding, Linear, RMSNorm
from jaxdiff.model.lora import ActiveHead, LoRAWeights
from jaxdiff.model.moe import SparseMoeBlock
from jaxdiff.model.options import ModelOptions
from jaxdiff.parallel import axes as ax
from jaxdiff.parallel import shard


@dataclasses.dataclass
class ForwardOutput:
    logits: jax.Array | None
    hidden: jax.Array
    router_logits: tuple[jax.Array, ...]
    cache: KVCache | None
    moe_dropped: jax.Array | None = None   # token-expert assignments over capacity, all MoE layers


def _is_fp8(cfg: ModelConfig, module_name: str) -> bool:
    """Whether a module's weights are block-FP8: the config has FP8 and no `modules_to_not_convert`
    entry names this module or one of its parents (matched on whole dotted components)."""
    if cfg.fp8_block_size is None:
        return False
    padded = f".{module_name}."
    return not any(f".{s.strip('.')}." in padded for s in cfg.fp8_skip_modules)


class MLP(nnx.Module):
    """Dense SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: ModelConfig, prefix: str, *, dtype, rngs: nnx.Rngs):
        d, f = cfg.hidden_size, cfg.intermediate_size
        blk = lambda n: cfg.fp8_block_size if _is_fp8(cfg, f"{prefix}.{n}") else None
        self.gate_proj = Linear(d, f, axes=(ax.MLP, ax.EMBED), dtype=dtype, fp8_block=blk("gate_proj"), rngs=rngs)
        self.up_proj = Linear(d, f, axes=(ax.MLP, ax.EMBED), dtype=dtype, fp8_block=blk("up_proj"), rngs=rngs)
        self.down_proj = Linear(f, d, axes=(ax.EMBED, ax.MLP), dtype=dtype, fp8_block=blk("down_proj"), rngs=rngs)

    def __call__(self, x, active: ActiveHead | None = None):
        h = jax.nn.silu(self.gate_proj(x, active)) * self.up_proj(x, active)
        return self.down_proj(shard(h, (ax.BATCH, ax.LENGTH, ax.ACT_MLP)), active)


class DecoderLayer(nnx.Module):
    def __init__(self, cfg: ModelConfig, idx: int, *, dtype, options: ModelOptions, rngs: nnx.Rngs):
        prefix = f"model.layers.{idx}"
        self.is_moe = cfg.layer_is_moe(idx)
        self.input_layernorm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, dtype=dtype)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, dtype=dtype)
        attn_blk = lambda n: cfg.fp8_block_size if _is_fp8(cfg, f"{prefix}.self_attn.{n}") else None
        self.self_attn = Attention(cfg, dtype=dtype, fp8_block=attn_blk, impl=options.attention_impl,
                                   chunk=options.attention_chunk, key_chunk=options.attention_key_chunk, rngs=rngs)
        if self.is_moe:
            self.mlp = SparseMoeBlock(cfg, dtype=dtype, fp8=_is_fp8(cfg, f"{prefix}.mlp.experts"), options=options,
                                      rngs=rngs)
        else:
            self.mlp = MLP(cfg, f"{prefix}.mlp", dtype=dtype, rngs=rngs)

    def __call__(self, x, cos, sin, vis, *, bias, past_kv, active: ActiveHead, moe_capacity: bool = False):
        h, kv = self.self_attn(self.input_layernorm(x), cos, sin, vis, bias=bias, past_kv=past_kv, active=active)
        x = x + h
        router = None
        y = self.post_attention_layernorm(x)
        if self.is_moe:
            y, logits, dropped = self.mlp(y, active, moe_capacity)
            router = (logits, dropped)
        else:
            y = self.mlp(y, active)
        x = shard(x + y, (ax.BATCH, ax.LENGTH, ax.ACT_EMBED))
        return x, kv, router


class Decoder(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, dtype, options: ModelOptions, rngs: nnx.Rngs):
        self.embed_tokens = Embedding(cfg.vocab_size, cfg.hidden_size, dtype=dtype, rngs=rngs)
        self.layers = nnx.List([DecoderLayer(cfg, i, dtype=dtype, options=options, rngs=rngs)
                                for i in range(cfg.num_hidden_layers)])
        self.norm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, dtype=dtype)


def visibility_ranks(attention: str, positions: jax.Array, *, block_size: int | None = None,
                     prompt_lengths: jax.Array | None = None, cache: KVCache | None = None) -> jax.Array:
    """Visibility rank [B, L] of each token of a call (the one rule; see attention.py). Without a
    cache in block mode the first prompt_lengths real tokens of a row are block 0, then blocks of
    block_size (block_diffusion: the same, for each copy's own positions); with a cache in block
    mode the whole call is the cache's next block."""
    if attention == "causal":
        return positions
    if attention == "bidirectional":
        return jnp.zeros_like(positions)
    if cache is not None:
        return jnp.broadcast_to(cache.next_rank[:, None], positions.shape)
    if block_size is None or block_size <= 0:
        raise ValueError(f"attention={attention!r} needs block_size > 0")
    plen = jnp.zeros(positions.shape[:1], jnp.int32) if prompt_lengths is None else prompt_lengths
    rel = positions - plen[:, None]
    return jnp.where(rel < 0, 0, 1 + rel // block_size).astype(jnp.int32)


def token_positions(valid: jax.Array) -> jax.Array:
    """Position ids [B, L]: real tokens count from 0 (left padding gets 0, trailing padding the last
    real position); padding is never seen, so its positions do not matter."""
    return jnp.maximum(jnp.cumsum(valid, axis=1, dtype=jnp.int32) - 1, 0)


def block_diffusion_layout(valid: jax.Array) -> tuple[jax.Array, jax.Array]:
    """x0 ⊕ xt: validity [B, 2L] -> (positions [B, 2L], noisy [B, 2L]). The noisy copy reuses the
    clean copy's position ids (each copy has the same padding); the second half is flagged noisy."""
    b, l2 = valid.shape
    if l2 % 2:
        raise ValueError(f"attention='block_diffusion' takes x0 ⊕ xt (an even length), got length {l2}")
    pos = token_positions(valid[:, :l2 // 2])
    return jnp.concatenate([pos, pos], axis=1), jnp.broadcast_to(jnp.arange(l2) >= l2 // 2, (b, l2))


@dataclasses.dataclass(frozen=True)
class OutputHead:
    """The output projection as vocab-chunked losses use it: logits = h W^T (+ the active head's
    adapter on lm_head, unmerged). W [V, D] (tied embedding or lm_head, FP8 dequantized)."""

    weight: jax.Array
    lora: LoRAWeights | None = None


class Qwen3(nnx.Module):
    """Qwen3ForCausalLM / Qwen3MoeForCausalLM. `dtype` is the dtype of params and activations
    (FP8 weights are dequantized to it inside each matmul)."""

    def __init__(self, cfg: ModelConfig, *, dtype=jnp.float32, options: ModelOptions = ModelOptions(),
                 rngs: nnx.Rngs):
        self.config = cfg
        self.dtype = dtype
        self.options = options
        self.model = Decoder(cfg, dtype=dtype, options=options, rngs=rngs)
        if not cfg.tie_word_embeddings:
            self.lm_head = Linear(cfg.hidden_size, cfg.vocab_size, axes=(ax.VOCAB, ax.EMBED), dtype=dtype,
                                  fp8_block=cfg.fp8_block_size if _is_fp8(cfg, "lm_head") else None, rngs=rngs)

    def __call__(self, tokens: jax.Array, **kw):
        """tokens [B, L] -> logits [B, L, V] float32; (logits, cache) when a cache is given.
        Keyword arguments as for `forward`."""
        out = self.forward(tokens, **kw)
        return out.logits if kw.get("cache") is None else (out.logits, out.cache)

    def forward(self, tokens: jax.Array, *, lora: str | None = None, lora_dropout_key: jax.Array | None = None,
                **kw) -> "ForwardOutput":
        """The full forward pass: logits (unless logits=False), final hidden states, router logits
        of every MoE layer ([B*L, E] float32 each), and the (possibly extended) cache.
        lora: None (the base), "ar", "diffusion" or "length": whose adapters are active.
        lora_dropout_key: enables adapter dropout (training)."""
        return self._forward(tokens, active=ActiveHead(lora, lora_dropout_key), **kw)

    def _forward(self, tokens: jax.Array, *, active: ActiveHead, attention: str = "causal",
                 block_size: int | None = None, prompt_lengths: jax.Array | None = None,
                 padding_mask: jax.Array | None = None, bias: jax.Array | None = None,
                 cache: KVCache | None = None, commit: bool = False, logits: bool = True,
                 moe_capacity: bool = False) -> "ForwardOutput":
        """

        attention: "causal" | "bidirectional" | "block" (block needs block_size; without a cache the
          first `prompt_lengths` real tokens of each row form block 0, then blocks of block_size).
          With a cache in block mode, the whole call is one block.
          "block_diffusion": tokens [B, 2L] are x0 ⊕ xt (clean copy, then noisy copy; BD3LM), blocks
          as in block mode for each copy, the noisy copy at the clean copy's positions (see
          attention.py for who sees whom). Hidden states and logits cover both copies; no cache.
        padding_mask [B, L]: True for real tokens (left padding expected); positions skip padding.
          block_diffusion: [B, 2L], each copy's padding (the same for both).
        bias [B, 1, L, S]: additive attention bias, S = cached slots + L.
        moe_capacity: bound expert-parallel dispatch by options.moe_capacity_factor, dropping (and
          counting in moe_dropped) the overflow. Only the training loss's forward sets it: which
          tokens drop depends on the rest of the batch, so everything else stays dropless.
        """
        if attention not in MODES:
            raise ValueError(f"attention={attention!r}; choose from {MODES}")
        b, l = tokens.shape
        valid = jnp.ones((b, l), bool) if padding_mask is None else padding_mask.astype(bool)
        noisy = None
        if attention == "block_diffusion":
            if cache is not None:
                raise ValueError("attention='block_diffusion' is the x0 ⊕ xt training layout; decode with "
                                 "attention='block' and a cache (exact for a block-diffusion model)")
            positions, noisy = block_diffusion_layout(valid)
        else:
            offset = jnp.zeros((b,), jnp.int32) if cache is None else cache.next_pos
            positions = offset[:, None] + token_positions(valid)
        rank = visibility_ranks(attention, positions, block_size=block_size, prompt_lengths=prompt_lengths,
                                cache=cache)
        if cache is None:
            vis = Visibility(rank, rank, valid, noisy, noisy, kind=attention)
        else:
            vis = Visibility(rank, jnp.concatenate([cache.rank, rank], 1), jnp.concatenate([cache.valid, valid], 1),
                             kind="cached")
        x = self.model.embed_tokens(tokens, self.config.mask_token_id).astype(self.dtype)
        x = shard(x, (ax.BATCH, ax.LENGTH, ax.ACT_EMBED))
        cos, sin = rope.cos_sin(positions, self.config.rope, self.config.head_dim, self.dtype)
        new_kv = []
        router, dropped = [], []
        for i, layer in enumerate(self.model.layers):
            past = None if cache is None else cache.layer(i)

            def run(layer, x, cos, sin, vis, bias, past, active):
                return layer(x, cos, sin, vis, bias=bias, past_kv=past, active=active, moe_capacity=moe_capacity)

            if self.options.remat:
                # jax.checkpoint over the layer's state, not nnx.remat: nnx.remat writes the state
                # back into the layer's variables, and a frozen base variable (traced by the outer
                # jit, not by the grad) refuses that write ("different trace level").
                graphdef, state = nnx.split(layer)
                pure = lambda state, *a: run(nnx.merge(graphdef, state), *a)
                x, kv, rl = jax.checkpoint(pure, policy=self.options.checkpoint_policy)(
                    state, x, cos, sin, vis, bias, past, active)
            else:
                x, kv, rl = run(layer, x, cos, sin, vis, bias, past, active)
            new_kv.append(kv)
            if rl is not None:
                router.append(rl[0])
                dropped.append(rl[1])
        x = self.model.norm(x)
        out = None
        if logits:
            out = self.head(x, active)
        if cache is not None and commit:
            cache = cache.append(new_kv, rank, valid, positions, block_mode=attention == "block")
        return ForwardOutput(logits=out, hidden=x, router_logits=tuple(router), cache=cache,
                             moe_dropped=sum(dropped) if dropped else None)

    def output_head(self, dtype, active: ActiveHead | None = None) -> OutputHead:
        """The output projection for vocab-chunked losses: W [V, D] (tied embedding or lm_head, FP8
        dequantized) and the active head's lm_head adapter, unmerged."""
        if self.config.tie_word_embeddings:
            return OutputHead(self.model.embed_tokens.weight[...].astype(dtype))
        return OutputHead(self.lm_head.kernel(dtype), self.lm_head.adapter(active))

    def head(self, x: jax.Array, active: ActiveHead | None = None) -> jax.Array:
        """Final hidden states [..., D] -> float32 logits [..., V] (tied or untied head; an active
        head's lm_head adapter applies)."""
        if self.config.tie_word_embeddings:
            out = self.model.embed_tokens.attend(x)
        else:
            out = self.lm_head(x, active)
        return out.astype(jnp.float32)
