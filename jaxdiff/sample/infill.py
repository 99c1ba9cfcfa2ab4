"""Infilling and the AR-scaffold + diffusion-infill pipeline.

`infill` fills every mask token of a sequence (any number of spans, anywhere) with the diffusion
head, bidirectionally: the masked positions, in order, are cut into blocks of block_length, filled
block after block with the same step schedule and policies as `generate`. Every given token stays
as it is. `fill_span` is the prefix/suffix form;
`fill_predicted_span` lets the length head choose the span's length.

`scaffold_then_infill` is the pipeline of the seed design: the AR head writes the scaffold (the
signature, docstring and structure lines) causally with its own KV cache, up to a stop token; then
the diffusion head writes the body after it block-parallel.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxdiff.sample.ar import ar_generate
from jaxdiff.sample.sampler import (SamplerSettings, _length_from_head, active_head, as_batch, denoise_block, generate,
                                    resolve_mask_id)
from jaxdiff.sample.policies import get_policy


def _infill(model, x, valid, key, s: SamplerSettings, n_blocks: int):
    b, l = x.shape
    masked = x == s.mask_id
    order = jnp.cumsum(masked, axis=1) - 1                       # index of each mask among its row's
    block_of = jnp.where(masked, order // s.block_length, -1)    # [B, L]

    def logits_at(x):
        return model.forward(x, lora=s.lora, attention="bidirectional", padding_mask=valid).logits

    steps = nfe = jnp.int32(0)
    for blk in range(n_blocks):
        x, n, f, _ = denoise_block(s, x, (0, l), block_of == blk, logits_at, None, jax.random.fold_in(key, blk),
                                    steps, None)
        steps, nfe = steps + n, nfe + f
    return x, steps, nfe


@functools.partial(jax.jit, static_argnames=("graphdef", "settings", "n_blocks"))
def _infill_jit(graphdef, state, x, valid, key, settings, n_blocks):
    return _infill(nnx.merge(graphdef, state), x, valid, key, settings, n_blocks)


def infill(model, tokens, *, block_length: int, steps_per_block: int | None = None, policy="low_confidence",
           temperature: float = 0.0, mask_id: int | None = None, key=None, valid=None, lora: str | None = "diffusion"):
    """tokens [B, L] with mask tokens where text is missing -> (tokens [B, L] filled, stats dict).
    valid [B, L]: False on padding (default: all real). steps_per_block: None = one token per step."""
    mask_id = resolve_mask_id(model, mask_id)
    x = as_batch(tokens, "tokens")
    valid = jnp.ones(x.shape, bool) if valid is None else jnp.asarray(valid, bool)
    n_masked = int(np.max(np.sum(np.asarray(x) == mask_id, axis=1)))
    if n_masked == 0:
        return x, {"steps": 0, "forward_passes": 0}
    n_blocks = -(-n_masked // block_length)
    per_block = block_length if steps_per_block is None else steps_per_block
    lora = active_head(model, lora)
    s = SamplerSettings(gen_length=n_blocks * block_length, block_length=block_length, steps=per_block * n_blocks,
                  policy=get_policy(policy), temperature=float(temperature), cfg_scale=0.0, mask_id=int(mask_id),
                  eos_id=None, attention="bidirectional", cache="none", lora=lora, trace=False, on_block=None)
    graphdef, state = nnx.split(model)
    out, n, f = _infill_jit(graphdef, state, x, valid, jax.random.key(0) if key is None else key, s, n_blocks)
    return out, {"steps": int(n), "forward_passes": int(f)}


def _right_padded(row: list[int], pad_bucket: int | None, mask_id: int):
    """(ids [1, n], valid [1, n]): the row right-padded with padding the model does not see up to a
    multiple of pad_bucket (one compile per bucket instead of per length; positions of the real
    tokens are unchanged)."""
    n = len(row) if not pad_bucket else -(-len(row) // pad_bucket) * pad_bucket
    pad = 0 if mask_id != 0 else 1
    ids = jnp.asarray([row + [pad] * (n - len(row))], jnp.int32)
    return ids, jnp.arange(n)[None] < len(row)


def fill_span(model, prefix_ids, suffix_ids, span_length: int, *, pad_bucket: int | None = None, **kw):
    """One row: prefix + span_length generated tokens + suffix -> (tokens [1, len], stats dict).
    pad_bucket: right-pad the row to a multiple of it (invisible padding; the returned row keeps it)."""
    mask_id = resolve_mask_id(model, kw.get("mask_id"))
    row = list(prefix_ids) + [mask_id] * span_length + list(suffix_ids)
    ids, valid = _right_padded(row, pad_bucket, mask_id)
    return infill(model, ids, valid=valid, **kw)


def predict_span_length(model, prefix_ids, suffix_ids, *, max_length: int | None = None,
                        pad_bucket: int | None = None) -> int:
    """The length head's estimate of the gap between prefix and suffix: the head reads the context
    (prefix then suffix, the gap removed) the way it reads a prompt, and answers the upper edge of
    its most likely bucket, capped at max_length. Over-estimates are expected (bucket edges): fill
    that many masks and cut the span at its first EOS (`fill_predicted_span`)."""
    if getattr(model, "length_head", None) is None:
        raise ValueError("a predicted span length needs a model with a length head "
                         "(train one with objective.length_weight > 0)")
    ids, valid = _right_padded(list(prefix_ids) + list(suffix_ids), pad_bucket, resolve_mask_id(model, None))
    n = int(_length_from_head(model, ids, valid)[0])
    return min(n, max_length) if max_length else n


def fill_predicted_span(model, prefix_ids, suffix_ids, *, eos_id: int, max_length: int | None = None,
                        pad_bucket: int | None = None, tokens_per_step: float | None = None, **kw):
    """fill_span at the length head's span length; the span ends at its first EOS (the model pads a
    shorter span with EOS, as SFT with padded answers teaches it). -> (span ids, stats dict with
    `span_budget`, the predicted length). tokens_per_step: the step budget as a rate (each block of
    the span gets ceil(its length / rate) steps; None: one token per step, or kw's steps_per_block)."""
    budget = predict_span_length(model, prefix_ids, suffix_ids, max_length=max_length, pad_bucket=pad_bucket)
    kw["block_length"] = min(kw.get("block_length", budget), budget)
    if tokens_per_step:
        kw["steps_per_block"] = max(1, math.ceil(kw["block_length"] / tokens_per_step))
    out, stats = fill_span(model, prefix_ids, suffix_ids, budget, pad_bucket=pad_bucket, **kw)
    span = [int(t) for t in np.asarray(out)[0, len(prefix_ids):len(prefix_ids) + budget]]
    if eos_id in span:
        span = span[:span.index(eos_id)]
    return span, dict(stats, span_budget=budget)


def scaffold_then_infill(model, prompt_ids, *, scaffold_max_tokens: int, scaffold_stop_ids, gen_length: int,
                         block_length: int, steps: int | None = None, policy="low_confidence",
                         temperature: float = 0.0, key=None, **diffusion_kw):
    """One prompt [P] (a list of ids) -> (ids of prompt + scaffold + body, info dict).

    The AR head continues the prompt causally (KV cache) until one of scaffold_stop_ids (e.g. the
    token that closes the docstring, or a blank line) or scaffold_max_tokens; the scaffold keeps
    its stop token. The diffusion head then writes gen_length tokens after it, block by block."""
    key = jax.random.key(0) if key is None else key
    k_ar, k_diff = jax.random.split(key)
    p = len(prompt_ids)
    ar_out, ar_stats = ar_generate(model, jnp.asarray([prompt_ids], jnp.int32), max_new_tokens=scaffold_max_tokens,
                                   temperature=temperature, key=k_ar, stop_ids=scaffold_stop_ids)
    new = np.asarray(ar_out[0, p:]).tolist()[:ar_stats.tokens]
    stops = set(int(t) for t in scaffold_stop_ids)
    cut = next((i + 1 for i, t in enumerate(new) if t in stops), len(new))
    scaffold = new[:cut]
    out, d_stats = generate(model, jnp.asarray([list(prompt_ids) + scaffold], jnp.int32), gen_length=gen_length,
                            block_length=block_length, steps=steps, policy=policy, temperature=temperature,
                            key=k_diff, **diffusion_kw)
    info = {"scaffold_tokens": len(scaffold), "ar_forward_passes": ar_stats.forward_passes,
            "diffusion": d_stats, "forward_passes": ar_stats.forward_passes + d_stats.forward_passes}
    return np.asarray(out[0]).tolist(), info
