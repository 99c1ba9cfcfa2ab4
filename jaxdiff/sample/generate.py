"""Semi-autoregressive block diffusion sampling, as published for LLaDA.

The answer (gen_length mask tokens after the prompt) is split into blocks of block_length; each
block gets steps * block_length / gen_length denoising steps; at each step the model predicts every
position, and the policy's highest-scoring masked positions of the current block are committed
(the count per step split as evenly as possible, remainder on the first steps). Committed tokens
never change. The whole loop runs inside `lax.fori_loop`s: one compile per shape.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import nnx

from jaxdiff.sample.policies import get_policy


@dataclasses.dataclass
class SampleStats:
    steps: int
    forward_passes: int


def transfer_schedule(n_masked: jax.Array, steps: int) -> jax.Array:
    """[B] masked counts -> [B, steps] tokens to commit per step (remainder on the first steps)."""
    base = n_masked // steps
    rem = n_masked % steps
    return base[:, None] + (jnp.arange(steps)[None, :] < rem[:, None]).astype(jnp.int32)


def gumbel_argmax(logits, temperature: float, key):
    """argmax of logits + temperature * Gumbel noise (temperature 0: plain argmax); equivalent to
    LLaDA's exp(logits) / (-log u)**temperature."""
    if temperature == 0:
        return jnp.argmax(logits, axis=-1)
    u = jax.random.uniform(key, logits.shape, minval=1e-20, maxval=1.0)
    return jnp.argmax(logits - temperature * jnp.log(-jnp.log(u)), axis=-1)


def commit_top(scores, eligible, k):
    """Boolean [B, L]: the k[b] highest scores among eligible positions (ties: lower index first)."""
    s = jnp.where(eligible, scores, -jnp.inf)
    order = jnp.argsort(-s, axis=-1, stable=True)
    rank = jnp.argsort(order, axis=-1, stable=True)
    return (rank < k[:, None]) & eligible


def _generate(model, prompt_ids, *, gen_length, block_length, steps, policy, temperature, mask_id, key,
              attention, lora):
    if mask_id is None:
        raise ValueError("no mask token: pass mask_id or use a model whose config has mask_token_id")
    if gen_length % block_length:
        raise ValueError(f"gen_length={gen_length} is not a multiple of block_length={block_length}")
    n_blocks = gen_length // block_length
    if steps % n_blocks:
        raise ValueError(f"steps={steps} is not a multiple of the number of blocks ({n_blocks})")
    per_block = steps // n_blocks
    b, p = prompt_ids.shape

    def logits_of(x):
        return model.forward(x, lora=lora, attention=attention, block_size=block_length,
                             prompt_lengths=jnp.full((b,), p, jnp.int32)).logits

    x = jnp.concatenate([prompt_ids, jnp.full((b, gen_length), mask_id, prompt_ids.dtype)], axis=1)

    def block_body(blk, x):
        start = p + blk * block_length
        in_block = (jnp.arange(x.shape[1]) >= start) & (jnp.arange(x.shape[1]) < start + block_length)
        counts = transfer_schedule(jnp.sum((x == mask_id) & in_block[None], axis=1), per_block)

        def step_body(i, x):
            k = jax.random.fold_in(key, blk * per_block + i)
            k_noise, k_score = jax.random.split(k)
            logits = logits_of(x)
            x0 = gumbel_argmax(logits, temperature, k_noise)
            scores = policy.score(jax.nn.softmax(logits, axis=-1), x0, k_score)
            masked = x == mask_id
            commit = commit_top(scores, masked & in_block[None], counts[:, i])
            return jnp.where(commit, x0, x)

        return jax.lax.fori_loop(0, per_block, step_body, x)

    x = jax.lax.fori_loop(0, n_blocks, block_body, x)
    return x, SampleStats(steps=steps, forward_passes=steps)


_STATIC = ("gen_length", "block_length", "steps", "policy", "temperature", "mask_id", "attention", "lora")


@functools.partial(jax.jit, static_argnames=("graphdef",) + _STATIC)
def _generate_jit(graphdef, state, prompt_ids, key, **kw):
    return _generate(nnx.merge(graphdef, state), prompt_ids, key=key, **kw)[0]


def generate(model, prompt_ids: jax.Array, *, gen_length: int, block_length: int, steps: int,
             policy="low_confidence", temperature: float = 0.0, mask_id: int | None = None,
             key: jax.Array | None = None, attention: str = "bidirectional", lora: str | None = "diffusion"):
    """prompt_ids [B, P] -> (tokens [B, P + gen_length], SampleStats); jitted, one compile per
    (shapes, settings). `lora` names the adapter head to use if the model has it."""
    mask_id = model.config.mask_token_id if mask_id is None else mask_id
    lora = lora if lora in getattr(model, "lora_heads", ()) else None
    graphdef, state = nnx.split(model)
    kw = dict(gen_length=gen_length, block_length=block_length, steps=steps, policy=get_policy(policy),
              temperature=float(temperature), mask_id=mask_id, attention=attention, lora=lora)
    key = jax.random.key(0) if key is None else key
    out = _generate_jit(graphdef, state, jnp.asarray(prompt_ids), key, **kw)
    return out, SampleStats(steps=steps, forward_passes=steps)
