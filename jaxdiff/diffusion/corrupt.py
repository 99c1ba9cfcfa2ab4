"""Forward (noising) processes for masked-diffusion training. Pure functions, explicit keys.

Every function takes tokens [B, L] and returns new tokens plus boolean masks [B, L]; `maskable`
marks positions that may be noised (answer tokens in SFT, real tokens in pretraining).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def mask_iid(key, tokens, p, mask_id: int, maskable):
    """Each maskable token is replaced by `mask_id` independently with probability p [B] (or [B, L])."""
    p = p[:, None] if p.ndim == 1 else p
    masked = (jax.random.uniform(key, tokens.shape) < p) & maskable
    return jnp.where(masked, mask_id, tokens), masked


def mask_span(key, tokens, p, mask_id: int, maskable):
    """One contiguous run of round(p * n_maskable) maskable tokens per row, at a random start."""
    n = jnp.sum(maskable, axis=1)
    span = jnp.round(p * n).astype(jnp.int32)
    start = jnp.floor(jax.random.uniform(key, p.shape) * (n - span + 1)).astype(jnp.int32)
    idx = jnp.cumsum(maskable, axis=1) - 1  # rank among maskable positions
    masked = maskable & (idx >= start[:, None]) & (idx < (start + span)[:, None])
    return jnp.where(masked, mask_id, tokens), masked


def corrupt_mask(key, tokens, p, mask_id: int, maskable, *, span_prob: float = 0.0):
    """Mask corruption: contiguous span with probability `span_prob` per row, else i.i.d."""
    k_iid, k_span, k_pick = jax.random.split(key, 3)
    t_iid, m_iid = mask_iid(k_iid, tokens, p, mask_id, maskable)
    if span_prob <= 0:
        return t_iid, m_iid
    t_span, m_span = mask_span(k_span, tokens, p, mask_id, maskable)
    use_span = (jax.random.uniform(k_pick, p.shape) < span_prob)[:, None]
    return jnp.where(use_span, t_span, t_iid), jnp.where(use_span, m_span, m_iid)


def random_replace(key, noisy, corrupted, vocab_size: int, fraction: float):
    """A `fraction` of corrupted positions get a uniformly random token instead of the mask token
    (they stay loss positions: the model must still predict the original)."""
    k1, k2 = jax.random.split(key)
    swap = corrupted & (jax.random.uniform(k1, noisy.shape) < fraction)
    rand = jax.random.randint(k2, noisy.shape, 0, vocab_size, dtype=noisy.dtype)
    return jnp.where(swap, rand, noisy)


def edit_corrupt(key, noisy, tokens, masked, maskable, vocab_size: int, fraction: float):
    """Seed-Diffusion stage 2: substitute a `fraction` of the *unmasked* maskable tokens with random
    tokens, so the model learns to revise tokens it did not see masked. Returns (tokens, edited)."""
    k1, k2 = jax.random.split(key)
    edited = maskable & ~masked & (jax.random.uniform(k1, noisy.shape) < fraction)
    rand = jax.random.randint(k2, noisy.shape, 0, vocab_size, dtype=noisy.dtype)
    edited = edited & (rand != tokens)  # a "substitution" by the same token is no edit
    return jnp.where(edited, rand, noisy), edited


def random_shorten(key, tokens, valid, *, prob: float = 0.01, pad_id: int):
    """LLaDA: a `prob` fraction of rows is cut to a uniformly random length in [1, L]; the cut-off
    tail becomes padding and leaves the loss. Returns (tokens, valid)."""
    k1, k2 = jax.random.split(key)
    b, l = tokens.shape
    cut = jax.random.uniform(k1, (b,)) < prob
    length = jax.random.randint(k2, (b,), 1, l + 1)
    keep = jnp.where(cut[:, None], jnp.arange(l)[None] < length[:, None], True)
    return jnp.where(keep, tokens, pad_id), valid & keep


def stage_for_step(step, switch_step: int | None) -> jax.Array:
    """Two-stage curriculum: 1 (mask-based) before `switch_step`, 2 (adds edits) from it on."""
    if switch_step is None:
        return jnp.ones((), jnp.int32)
    return jnp.where(step >= switch_step, 2, 1).astype(jnp.int32)
