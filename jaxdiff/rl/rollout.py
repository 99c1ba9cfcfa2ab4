"""Traced rollouts: G samples per prompt from the block sampler, with what the learner replays.

Letters: N = B * G sampled rows (the G samples of prompt i are rows i*G .. i*G + G - 1), P prompt
width (left-padded), A answer length (the sampler's gen_length).

A rollout is one jitted call of the sampler (`sample.sample_tokens`, the body of `generate`) with
its trace on, at temperature tau (default 1.0) and without classifier-free guidance. For every
answer position it keeps the global step at which the token was committed and log_softmax(logits /
tau)[token] at that step, in float32: the probability with which the sampler drew that token. The
order in which positions are committed is a choice too (by confidence, or at random), and that
choice is not in the log-probability (docs/rl.md).

After a row's first EOS the sampler fills the answer with EOS. Positions of the EOS's own block
were committed before the fill and were visible to the block's later steps, so the rollout keeps
the tokens as committed (`committed`, what trace replay puts back in context) beside the filled
answer (`tokens`, what is verified and what the other estimators score). Neither is in `valid`.

Per row, `steps_used` and `forward_passes` are what the row would have cost sampled alone with its
early stop at EOS: in a batch the sampler runs until every row is done.

The sampler draws from the whole vocabulary, the mask token included (as LLaDA's does; a trained
model gives it next to no probability). A position that draws it stays masked: it may be committed
again at a later step (the trace keeps the last commit, so the earlier draw's log-probability is
not in the record), or stay masked to the end (step -1, not valid).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx, struct

from jaxdiff.sample.sampler import (SamplerSettings, as_batch, row_blocks_run, row_forward_passes, sample_tokens,
                                    sampler_settings)


@struct.dataclass
class Rollout:
    """One batch of traced samples (all arrays; a pytree).

    prompt_ids [N, P] int32, prompt_mask [N, P] bool: each prompt repeated G times.
    group [N] int32: the prompt each row samples (row // G).
    tokens [N, A] int32: the answer as `generate` returns it (EOS after the first EOS).
    committed [N, A] int32: the token committed at each position, before any EOS fill replaced it
      (equal to `tokens` up to the first EOS; EOS where nothing was committed).
    step_map [N, A] int32: the global denoising step at which each position was committed (-1: never,
      the EOS fill of a later block).
    logp [N, A] float32: log_softmax(logits / tau)[committed] at that step (0 where never committed).
    valid [N, A] bool: committed positions up to and including the row's first EOS (all if none):
      the tokens the loss and its normaliser count.
    steps_used [N] int32: the denoising steps the row needed, up to the block of its EOS (the steps
      at which it still had masked positions in the current block).
    forward_passes [N] int32: its forward passes (`sample.row_forward_passes`).
    batch_steps, batch_forward_passes [] int32: what the batched call ran (the slowest row sets them).
    """

    prompt_ids: jax.Array
    prompt_mask: jax.Array
    group: jax.Array
    tokens: jax.Array
    committed: jax.Array
    step_map: jax.Array
    logp: jax.Array
    valid: jax.Array
    steps_used: jax.Array
    forward_passes: jax.Array
    batch_steps: jax.Array
    batch_forward_passes: jax.Array


def rollout_settings(model, *, gen_length: int, block_length: int, steps: int | None = None,
                     policy="low_confidence", temperature: float = 1.0, attention: str = "bidirectional",
                     cache: str = "auto", lora: str | None = "diffusion",
                     mask_id: int | None = None) -> SamplerSettings:
    """The sampler settings of a rollout: `generate`'s checks, trace on, no guidance, early stop at
    the model's EOS. temperature must be > 0 (a greedy rollout has no log-probabilities to learn from)."""
    if not temperature > 0:
        raise ValueError(f"temperature={temperature}: rollouts sample, so it must be > 0 (evaluation is greedy)")
    return sampler_settings(model, gen_length=gen_length, block_length=block_length, steps=steps, policy=policy,
                            temperature=temperature, cfg_scale=0.0, mask_id=mask_id, attention=attention, cache=cache,
                            stop_at_eos=True, lora=lora, trace=True)


def trace_rollout(model, prompt_ids, prompt_mask, key, s: SamplerSettings, group_size: int) -> Rollout:
    """The traced body of `rollout` (call inside jit): prompt_ids / prompt_mask [B, P] -> a Rollout of
    B * group_size rows. s: from `rollout_settings`."""
    if not s.trace or s.cfg_scale:
        raise ValueError("trace_rollout needs settings from rollout_settings (trace on, no guidance)")
    b, p = prompt_ids.shape
    ids = jnp.repeat(prompt_ids, group_size, axis=0)
    mask = jnp.repeat(prompt_mask.astype(bool), group_size, axis=0)
    n = b * group_size
    answer = jnp.full((n, s.gen_length), s.mask_id, jnp.int32)
    x, (steps, nfe, _, _), trace = sample_tokens(model, ids, mask, answer, key, s)
    tokens, step_map, logp = x[:, p:], trace.step[:, p:], trace.logp[:, p:]
    committed = jnp.where(step_map >= 0, trace.token[:, p:], tokens)
    col = jnp.arange(s.gen_length)[None]
    if s.eos_id is None:
        before_eos = jnp.ones(tokens.shape, bool)
    else:   # the first EOS is the same in tokens and committed: the fill only acts after it
        first = jnp.min(jnp.where(tokens == s.eos_id, col, s.gen_length), axis=1)
        before_eos = col <= first[:, None]
    steps_used = trace.row_steps
    blocks_used = row_blocks_run(s, step_map)
    return Rollout(prompt_ids=ids, prompt_mask=mask, group=jnp.arange(n, dtype=jnp.int32) // group_size,
                   tokens=tokens, committed=committed, step_map=step_map, logp=jnp.where(step_map >= 0, logp, 0.0),
                   valid=before_eos & (step_map >= 0), steps_used=steps_used,
                   forward_passes=row_forward_passes(s, steps_used, blocks_used).astype(jnp.int32),
                   batch_steps=steps, batch_forward_passes=nfe)


@functools.partial(jax.jit, static_argnames=("graphdef", "settings", "group_size"))
def _rollout_jit(graphdef, state, prompt_ids, prompt_mask, key, settings, group_size):
    return trace_rollout(nnx.merge(graphdef, state), prompt_ids, prompt_mask, key, settings, group_size)


def rollout(model, prompt_ids, *, group_size: int, key: jax.Array, prompt_mask=None, **settings) -> Rollout:
    """G = group_size traced samples of each prompt (jitted). prompt_ids [B, P] left-padded, prompt_mask
    [B, P] True on real tokens (default all). settings: `rollout_settings`' keywords (gen_length,
    block_length, steps, policy, temperature, attention, cache, lora, mask_id)."""
    if group_size <= 0:
        raise ValueError(f"group_size={group_size} must be positive")
    prompt_ids = as_batch(prompt_ids, "prompt_ids")
    prompt_mask = jnp.ones(prompt_ids.shape, bool) if prompt_mask is None else jnp.asarray(prompt_mask, bool)
    if prompt_mask.shape != prompt_ids.shape:
        raise ValueError(f"prompt_mask shape {prompt_mask.shape} != prompt_ids shape {prompt_ids.shape}")
    s = rollout_settings(model, **settings)
    graphdef, state = nnx.split(model)
    return _rollout_jit(graphdef, state, prompt_ids, prompt_mask, key, s, group_size)
