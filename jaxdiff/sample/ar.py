"""Autoregressive decoding with a KV cache (the AR scaffold head, and the AR baseline of the sampler
benchmark): the prompt fills the cache in one pass, then one token per forward pass, inside a
`lax.while_loop` that stops when every row has produced a stop token (or max_new_tokens)."""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import nnx

from jaxdiff.model.kv_cache import KVCache
from jaxdiff.sample.sampler import active_head, gumbel_argmax


@dataclasses.dataclass(frozen=True)
class _ArSettings:
    max_new_tokens: int
    temperature: float
    stop_ids: tuple[int, ...]
    pad_id: int
    lora: str | None


def _ar(model, prompt_ids, prompt_mask, key, s: _ArSettings):
    b, p = prompt_ids.shape
    n = s.max_new_tokens
    cache = KVCache.empty(model.config, b, p + n, dtype=model.dtype)
    out = model.forward(prompt_ids, lora=s.lora, attention="causal", padding_mask=prompt_mask, cache=cache,
                        commit=True)
    logits, cache = out.logits[:, -1], out.cache
    tokens = jnp.full((b, n), s.pad_id, jnp.int32)
    stops = jnp.asarray(s.stop_ids or (-1,), jnp.int32)

    def cond(c):
        i, done = c[0], c[3]
        return (i < n) & ~jnp.all(done)

    def body(c):
        i, tokens, logits, done, cache, nfe = c
        nxt = gumbel_argmax(logits, s.temperature, jax.random.fold_in(key, i)).astype(jnp.int32)
        nxt = jnp.where(done, s.pad_id, nxt)
        tokens = jax.lax.dynamic_update_slice_in_dim(tokens, nxt[:, None], i, axis=1)
        done = done | jnp.any(nxt[:, None] == stops[None], axis=1)
        o = model.forward(nxt[:, None], lora=s.lora, attention="causal", cache=cache, commit=True)
        return i + 1, tokens, o.logits[:, -1], done, o.cache, nfe + 1

    c = (jnp.int32(0), tokens, logits, jnp.zeros((b,), bool), cache, jnp.int32(1))
    i, tokens, _, _, _, nfe = jax.lax.while_loop(cond, body, c)
    return jnp.concatenate([prompt_ids, tokens], axis=1), i, nfe


@functools.partial(jax.jit, static_argnames=("graphdef", "settings"))
def _ar_jit(graphdef, state, prompt_ids, prompt_mask, key, settings):
    return _ar(nnx.merge(graphdef, state), prompt_ids, prompt_mask, key, settings)


@dataclasses.dataclass
class ArStats:
    tokens: int           # new tokens decoded (the longest row)
    forward_passes: int   # the prompt pass + one per token

    @property
    def tokens_per_forward(self) -> float:
        return self.tokens / max(self.forward_passes, 1)


def ar_generate(model, prompt_ids, *, max_new_tokens: int, temperature: float = 0.0, key=None, prompt_mask=None,
                stop_ids=(), pad_id: int | None = None, lora: str | None = "ar"):
    """prompt_ids [B, P] (left-padded) -> (tokens [B, P + max_new_tokens], ArStats). A row stops
    after its first stop token; later positions hold pad_id (default: the config's EOS, else 0).
    lora: the adapter head used, if the model has it (the AR scaffold head by default)."""
    prompt_ids = jnp.asarray(prompt_ids, jnp.int32)
    b, p = prompt_ids.shape
    prompt_mask = jnp.ones((b, p), bool) if prompt_mask is None else jnp.asarray(prompt_mask, bool)
    if max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be positive")
    if pad_id is None:
        pad_id = model.config.eos_token_id if model.config.eos_token_id is not None else 0
    lora = active_head(model, lora)
    s = _ArSettings(max_new_tokens, float(temperature), tuple(int(t) for t in stop_ids), int(pad_id), lora)
    graphdef, state = nnx.split(model)
    out, n, nfe = _ar_jit(graphdef, state, prompt_ids, prompt_mask, jax.random.key(0) if key is None else key, s)
    return out, ArStats(tokens=int(n), forward_passes=int(nfe))
