"""Semi-autoregressive block diffusion sampling (LLaDA), with Fast-dLLM's threshold decoding and caches.

The answer (gen_length mask tokens after the prompt) is split into blocks of block_length; each
block gets steps * block_length / gen_length denoising steps; at each step the model predicts
every position and the policy commits the best masked positions of the current block (the count
per step split as evenly as possible, remainder on the first steps; threshold policies commit
what clears the threshold, at least one). Committed tokens never change.

Attention (`attention=`): "bidirectional"; "block" (blocks aligned to the prompt's end, each seeing
itself and the blocks before it); "block_diffusion" for a model trained by the block-diffusion
objective: the block being denoised sees itself and the clean (committed) blocks before it. Without a
cache a block_diffusion step runs the training layout x0 ⊕ xt over the whole sequence; "auto" picks
block_diffusion for such a model (`objective_kind`, set from the workdir's config), else bidirectional.

Caches (`cache=`):
  none    every step runs the whole sequence (exact, the reference)
  block   attention="block" or "block_diffusion": prompt and finished blocks are cached once, a step
          runs only the current block. Exact: nothing earlier can see what comes later, and for
          block diffusion the cache holds exactly the clean blocks a noisy block may see.
  prefix  attention="bidirectional", Fast-dLLM prefix cache: at each block's first step the whole
          sequence runs and the keys/values before the block are kept for the block's other steps,
          which run the block and everything after it. Approximate (the prefix's keys no longer
          see the later blocks as they fill in).
  dual    as prefix, and the keys/values after the block are kept too: a step runs only the block.
          Approximate, the cheapest per step.

The blocks are unrolled at trace time (their slices are static) and each block's denoising loop is
a `lax.while_loop`: one compile per (batch, prompt length, gen_length, block_length, settings).
Batches of prompts of different lengths are left-padded (`prompt_mask`). Deterministic given the key.
With `trace` on, every committed position records its step, token and log-probability (`Trace`),
the record rl's rollouts replay; logits are float32-accumulated as the chunked losses compute them.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from jaxdiff.diffusion.losses import head_logits
from jaxdiff.model.kv_cache import KVCache
from jaxdiff.model.lora import ActiveHead
from jaxdiff.sample.policies import get_policy

CACHES = ("auto", "none", "block", "prefix", "dual")
ATTENTIONS = ("auto", "bidirectional", "block", "block_diffusion")
log = logging.getLogger("jaxdiff.sample")


@dataclasses.dataclass
class SampleStats:
    """Per call: denoising steps taken (summed over blocks), model forward passes (denoising steps,
    cache fills and block commits; with classifier-free guidance each pass runs a doubled batch),
    answer tokens decoded by the model per row (EOS fill after an early stop not counted), the
    answer length used, and the number of blocks actually run. With `trace` on, also per row what the
    row needed as if sampled alone with its early stop at EOS (a batch runs until its slowest row is
    done): row_steps [B] and row_forward_passes [B] (`row_forward_passes`), NumPy int arrays."""

    steps: int
    forward_passes: int
    tokens: float
    gen_length: int
    blocks: int
    row_steps: np.ndarray | None = None
    row_forward_passes: np.ndarray | None = None

    @property
    def tokens_per_forward(self) -> float:
        return self.tokens / max(self.forward_passes, 1)


# ----------------------------------------------------------------------------- pure pieces
def transfer_schedule(n_masked: jax.Array, steps: int) -> jax.Array:
    """[B] masked counts -> [B, steps] tokens to commit per step (remainder on the first steps)."""
    base = n_masked // steps
    rem = n_masked % steps
    return base[:, None] + (jnp.arange(steps)[None, :] < rem[:, None]).astype(jnp.int32)


def gumbel_argmax(logits, temperature: float, key):
    """argmax of logits + temperature * Gumbel noise (temperature 0: plain argmax); the same
    distribution as LLaDA's argmax(exp(logits) / (-log u) ** temperature)."""
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


def commit_threshold(scores, eligible, threshold: float):
    """Boolean [B, L]: the best eligible position and every eligible one scoring above threshold."""
    best = commit_top(scores, eligible, jnp.ones(scores.shape[:1], jnp.int32))
    return (best | (scores > threshold)) & eligible


def cfg_combine(cond, uncond, scale: float):
    """LLaDA's classifier-free guidance: uncond + (scale + 1) * (cond - uncond)."""
    return uncond + (scale + 1.0) * (cond - uncond)


def fill_after_eos(x, answer_start: int, eos_id: int):
    """Every answer position after a row's first EOS becomes EOS; returns (x, row has EOS)."""
    col = jnp.arange(x.shape[1])[None]
    is_eos = (x == eos_id) & (col >= answer_start)
    first = jnp.min(jnp.where(is_eos, col, x.shape[1]), axis=1)
    return jnp.where(col > first[:, None], eos_id, x), first < x.shape[1]


def token_logp(logits, tokens, temperature: float):
    """float32 [B, L]: log_softmax(logits / temperature)[tokens], the log-probability of drawing
    `tokens` as `gumbel_argmax` draws them (temperature 0, greedy: the model's own distribution)."""
    t = temperature if temperature > 0 else 1.0
    logp = jax.nn.log_softmax(logits.astype(jnp.float32) / t, axis=-1)
    return jnp.take_along_axis(logp, tokens[..., None], axis=-1)[..., 0]


@struct.dataclass
class Trace:
    """What a call with `trace` on records. Per position [B, P + G]: the global step at which it was
    committed (-1: prompt, or never committed: EOS fill), the token committed then (-1 where none;
    before any EOS fill replaced it) and its float32 log-probability `token_logp` at that step.
    Per row [B]: the steps at which the row still had masked positions in the current block, the
    steps it needed (a batch runs until its slowest row is done)."""

    step: jax.Array
    token: jax.Array
    logp: jax.Array
    row_steps: jax.Array

    @classmethod
    def empty(cls, b: int, length: int) -> "Trace":
        return cls(jnp.full((b, length), -1, jnp.int32), jnp.full((b, length), -1, jnp.int32),
                   jnp.zeros((b, length), jnp.float32), jnp.zeros((b,), jnp.int32))

    def commit(self, put, win, commit, step, tokens, logp, eligible) -> "Trace":
        """The record after one step: put / win write and read the block's window of [B, L] arrays."""
        keep = lambda r, v: put(r, jnp.where(commit, v, win(r)))
        return Trace(keep(self.step, jnp.full(commit.shape, step, jnp.int32)), keep(self.token, tokens),
                     keep(self.logp, logp), self.row_steps + jnp.any(eligible, axis=1).astype(jnp.int32))


# ----------------------------------------------------------------------------- the sampler
@dataclasses.dataclass(frozen=True)
class SamplerSettings:
    """Static settings of one sampling call (one compile per distinct value)."""

    gen_length: int
    block_length: int
    steps: int
    policy: object
    temperature: float
    cfg_scale: float
    mask_id: int
    eos_id: int | None
    attention: str
    cache: str
    lora: str | None
    trace: bool
    on_block: Callable | None


def denoise_block(s: SamplerSettings, x, window: tuple[int, int], in_block, logits_at, first_logits, key, step0,
                  record):
    """Runs one block's denoising loop over the static window [w0, w0 + W) of x [B, L], which holds
    the block; in_block [B, W] marks the block's positions in it. logits_at(x) -> float32 logits
    [B, W, V] of the window; first_logits: the block's first step's logits, already computed (the
    cache-filling pass), or None. record: a `Trace` of x's shape (or None) that gets, at each
    position committed, the global step index, the token and its log-probability, and per row the
    steps it needed. Returns (x, steps, forward passes, record)."""
    w0, w = window
    win = lambda a: jax.lax.slice_in_dim(a, w0, w0 + w, axis=1)
    put = lambda a, v: jax.lax.dynamic_update_slice_in_dim(a, v, w0, axis=1)
    masked0 = (win(x) == s.mask_id) & in_block
    n_blocks = s.gen_length // s.block_length
    fixed = s.policy.threshold is None
    max_steps = s.steps // n_blocks if fixed else s.block_length
    counts = transfer_schedule(jnp.sum(masked0, axis=1), max_steps) if fixed else None

    def cond(c):
        return (c[1] < max_steps) & jnp.any((win(c[0]) == s.mask_id) & in_block)

    def body(c):
        x, i, nfe, rec = c
        k_noise, k_score = jax.random.split(jax.random.fold_in(key, i))
        if first_logits is None:
            logits, called = logits_at(x), 1
        else:
            logits = jax.lax.cond(i == 0, lambda: first_logits, lambda: logits_at(x))
            called = jnp.where(i == 0, 0, 1)
        xw = win(x)
        x0 = gumbel_argmax(logits, s.temperature, k_noise).astype(x.dtype)
        scores = s.policy.score(logits, x0, k_score)
        eligible = (xw == s.mask_id) & in_block
        if fixed:
            commit = commit_top(scores, eligible, counts[:, jnp.minimum(i, max_steps - 1)])
        else:
            commit = commit_threshold(scores, eligible, s.policy.threshold)
        if rec is not None:
            rec = rec.commit(put, win, commit, step0 + i, x0, token_logp(logits, x0, s.temperature), eligible)
        return put(x, jnp.where(commit, x0, xw)), i + 1, nfe + called, rec

    x, i, nfe, record = jax.lax.while_loop(cond, body, (x, jnp.int32(0), jnp.int32(0), record))
    return x, i, nfe, record


@dataclasses.dataclass(frozen=True)
class _Call:
    """What every cache strategy needs of one traced `generate` call: the model, the settings, the
    prompt width p, the real prompt length per row and the validity of every column."""

    model: object
    s: SamplerSettings
    b: int
    p: int
    plen: jax.Array
    valid: jax.Array

    @property
    def total(self) -> int:
        return self.p + self.s.gen_length

    @property
    def cfg(self) -> bool:
        return self.s.cfg_scale > 0

    def expand(self, xs, col0: int):
        """The model input for columns [col0, col0 + W): doubled with the prompt masked under CFG."""
        if not self.cfg:
            return xs
        prompt_col = (col0 + jnp.arange(xs.shape[1]))[None] < self.p
        return jnp.concatenate([xs, jnp.where(prompt_col, self.s.mask_id, xs)], axis=0)

    def rep(self, a):
        return jnp.concatenate([a, a], axis=0) if self.cfg else a

    def hidden(self, tokens, **kw):
        return self.model.forward(tokens, lora=self.s.lora, logits=False, **kw)

    def logits(self, hidden, lo: int, hi: int):
        """float32 logits of hidden rows [lo, hi) only (the vocab matmul is the costliest part),
        guided under CFG. Through `head_logits`, float32-accumulated as the chunked losses compute
        them, so a sampled token's recorded log-probability is the one a learner recomputes."""
        h = hidden[:, lo:hi]
        out = head_logits(h, self.model.output_head(h.dtype, ActiveHead(self.s.lora)))
        return cfg_combine(out[:self.b], out[self.b:], self.s.cfg_scale) if self.cfg else out

    def empty_cache(self, rows: int):
        return KVCache.empty(self.model.config, rows, self.total, dtype=self.model.dtype)


# One function per cache strategy: each returns (logits_at(x) for the block's window, the first
# step's logits when its cache-filling pass already computed them (else None), extra forward passes).
def no_cache(call: _Call, x, start: int, end: int, cache=None):
    """Every step runs the whole sequence (exact, the reference). block_diffusion: the training
    layout x0 ⊕ xt, both copies x; the block's noisy copy sees only itself and the clean copy's
    earlier blocks (prompt and committed blocks), so the masks x0 still holds there are never seen."""
    s = call.s
    if s.attention == "block_diffusion":
        def logits_at(x):
            xe = call.expand(x, 0)
            h = call.hidden(jnp.concatenate([xe, xe], axis=1), attention="block_diffusion",
                            block_size=s.block_length, prompt_lengths=call.rep(call.plen),
                            padding_mask=jnp.concatenate([call.rep(call.valid)] * 2, axis=1)).hidden
            return call.logits(h, call.total + start, call.total + end)

        return logits_at, None, 0

    def logits_at(x):
        h = call.hidden(call.expand(x, 0), attention=s.attention, block_size=s.block_length,
                        prompt_lengths=call.rep(call.plen), padding_mask=call.rep(call.valid)).hidden
        return call.logits(h, start, end)

    return logits_at, None, 0


def block_cache(call: _Call, x, start: int, end: int, cache):
    """attention='block' or 'block_diffusion': prompt and finished (clean) blocks are cached; a step
    runs the block alone (exact for both)."""
    def logits_at(x):
        h = call.hidden(call.expand(x[:, start:end], start), attention="block", cache=cache).hidden
        return call.logits(h, 0, end - start)

    return logits_at, None, 0


def _full_pass_cache(call: _Call, x, start: int):
    """Fast-dLLM: one bidirectional pass over everything fills a cache and gives the first step's
    logits; later steps place the block at the position its first token has."""
    full = call.hidden(call.expand(x, 0), attention="bidirectional", padding_mask=call.rep(call.valid),
                       cache=call.empty_cache(call.rep(x).shape[0]), commit=True)
    block_pos = call.rep(call.plen) + (start - call.p)
    return full, block_pos


def prefix_cache(call: _Call, x, start: int, end: int, cache=None):
    """Keys/values before the block are kept for the block's other steps, which run the block and
    everything after it (approximate: the prefix no longer sees later blocks fill in)."""
    full, block_pos = _full_pass_cache(call, x, start)
    c = full.cache
    kept = c.replace(k=c.k[:, :, :start], v=c.v[:, :, :start], rank=c.rank[:, :start], valid=c.valid[:, :start],
                     length=jnp.int32(start), next_pos=block_pos)

    def logits_at(x):
        h = call.hidden(call.expand(x[:, start:], start), attention="bidirectional", cache=kept).hidden
        return call.logits(h, 0, end - start)

    return logits_at, call.logits(full.hidden, start, end), 1


def dual_cache(call: _Call, x, start: int, end: int, cache=None):
    """As prefix, and the keys/values after the block are kept too: a step runs only the block
    (approximate, the cheapest per step)."""
    full, block_pos = _full_pass_cache(call, x, start)
    c = full.cache
    keep = (jnp.arange(call.total) < start) | (jnp.arange(call.total) >= end)
    kept = c.replace(valid=c.valid & keep[None], next_pos=block_pos)

    def logits_at(x):
        h = call.hidden(call.expand(x[:, start:end], start), attention="bidirectional", cache=kept).hidden
        return call.logits(h, 0, end - start)

    return logits_at, call.logits(full.hidden, start, end), 1


CACHE_STRATEGIES = {"none": no_cache, "block": block_cache, "prefix": prefix_cache, "dual": dual_cache}


def row_blocks_run(s: SamplerSettings, answer_steps):
    """[B] int32: the blocks each row ran, from a trace's answer step map [B, gen_length] (a block
    that ran committed at least one position)."""
    blocks = answer_steps.reshape(answer_steps.shape[0], s.gen_length // s.block_length, s.block_length)
    return jnp.sum(jnp.any(blocks >= 0, axis=2), axis=1).astype(jnp.int32)


def row_forward_passes(s: SamplerSettings, row_steps, row_blocks):
    """Forward passes per row of a call, as if the row had been sampled alone (with early
    stop at its EOS): row_steps [B] its denoising steps, row_blocks [B] the blocks it ran. A step
    is one pass whatever the cache (prefix and dual: the cache-filling pass is the block's first
    step); the block cache adds the prompt's pass and one commit pass per finished block but the
    answer's last. The per-row form of `SampleStats.forward_passes`."""
    if s.cache == "block":
        return 1 + row_steps + jnp.minimum(row_blocks, s.gen_length // s.block_length - 1)
    return row_steps


def sample_tokens(model, prompt_ids, prompt_mask, answer, key, s: SamplerSettings):
    """The traced body of `generate` (for callers that jit their own step, as rl's rollouts).
    answer [B, G]: the answer's starting tokens (mask, or EOS past a row's predicted length).
    Returns (tokens [B, P + G], (steps, forward passes, mean decoded tokens, blocks run), a
    `Trace` when s.trace else None)."""
    b, p = prompt_ids.shape
    bl = s.block_length
    n_blocks = s.gen_length // bl
    plen = jnp.sum(prompt_mask, axis=1).astype(jnp.int32)        # real prompt tokens per row
    valid = jnp.concatenate([prompt_mask, jnp.ones((b, s.gen_length), bool)], axis=1)
    call = _Call(model, s, b, p, plen, valid)
    strategy = CACHE_STRATEGIES[s.cache]
    x = jnp.concatenate([prompt_ids, answer.astype(prompt_ids.dtype)], axis=1)
    record = Trace.empty(b, call.total) if s.trace else None
    steps = nfe = blocks_run = jnp.int32(0)
    done = jnp.zeros((b,), bool)
    cache = None
    if s.cache == "block":   # the prompt is block 0 of the cache
        cache = call.hidden(call.expand(prompt_ids, 0), attention="block", padding_mask=call.rep(prompt_mask),
                            cache=call.empty_cache(call.rep(prompt_ids).shape[0]), commit=True).cache
        nfe += 1
    for blk in range(n_blocks):
        start, end = p + blk * bl, p + (blk + 1) * bl
        bkey = jax.random.fold_in(key, blk)

        def one_block(carry, blk=blk, start=start, end=end, bkey=bkey):
            x, steps, nfe, blocks_run, record, cache = carry
            logits_at, first, extra = strategy(call, x, start, end, cache)
            x, n, f, record = denoise_block(s, x, (start, bl), jnp.ones((b, bl), bool), logits_at, first, bkey,
                                            steps, record)
            steps, nfe = steps + n, nfe + f + extra
            if s.cache == "block" and blk + 1 < n_blocks:   # the finished block joins the cache
                cache = call.hidden(call.expand(x[:, start:end], start), attention="block", cache=cache,
                                    commit=True).cache
                nfe += 1
            return x, steps, nfe, blocks_run + 1, record, cache

        carry = (x, steps, nfe, blocks_run, record, cache)
        if s.eos_id is None:
            carry = one_block(carry)
        else:   # early stop: once every row has committed EOS, later blocks are skipped
            carry = jax.lax.cond(jnp.all(done), lambda c: c, one_block, carry)
        x, steps, nfe, blocks_run, record, cache = carry
        if s.eos_id is not None:
            x, done = fill_after_eos(x, p, s.eos_id)
        if s.on_block is not None:
            jax.debug.callback(s.on_block, blk, x[:, start:end], done, ordered=True)
    decoded = jnp.mean(jnp.sum(_decoded(x, p, s.eos_id), axis=1).astype(jnp.float32))
    return x, (steps, nfe, decoded, blocks_run), record


def _decoded(x, p, eos_id):
    """[B, G] answer positions up to and including the first EOS (what the model decoded)."""
    ans = x[:, p:]
    if eos_id is None:
        return jnp.ones(ans.shape, bool)
    seen = jnp.cumsum(ans == eos_id, axis=1)
    return (seen == 0) | ((seen == 1) & (ans == eos_id))


@functools.partial(jax.jit, static_argnames=("graphdef", "settings"))
def _sample_jit(graphdef, state, prompt_ids, prompt_mask, answer, key, settings):
    return sample_tokens(nnx.merge(graphdef, state), prompt_ids, prompt_mask, answer, key, settings)


def _to_host(tree):
    """Arrays another process holds part of (a model sharded over several hosts) are gathered, so
    every process gets the whole result; local arrays are returned as they are."""
    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            from jax.experimental import multihost_utils
            return multihost_utils.process_allgather(x, tiled=True)
        return x
    return jax.tree.map(one, tree)


def resolve_mask_id(model, mask_id: int | None) -> int:
    """The mask token: the given one, else the model config's; an error naming both if neither."""
    mask_id = model.config.mask_token_id if mask_id is None else mask_id
    if mask_id is None:
        raise ValueError("no mask token: pass mask_id or use a model whose config has mask_token_id")
    return int(mask_id)


def active_head(model, head: str | None) -> str | None:
    """`head` if the model carries that adapter head, else None (the base)."""
    return head if head in getattr(model, "lora_heads", ()) else None


def resolve_attention(model, attention: str, block_length: int) -> str:
    """The sampler's attention: `attention`, or for "auto" what the model's diffusion head was
    trained for (block_diffusion for a block-diffusion model, else bidirectional). A block-diffusion
    model sampled with blocks of another size than it was trained on is warned about."""
    if attention not in ATTENTIONS:
        raise ValueError(f"attention={attention!r}; choose from {ATTENTIONS}")
    block_diffusion = getattr(model, "objective_kind", "masked") == "block_diffusion"
    if attention == "auto":
        attention = "block_diffusion" if block_diffusion else "bidirectional"
    trained = getattr(model, "objective_block_size", None)
    if block_diffusion and attention != "bidirectional" and trained and trained != block_length:
        log.warning("the model was trained with block diffusion at block_size=%d; sampling with block_length=%d",
                    trained, block_length)
    return attention


def as_batch(ids, name: str) -> jax.Array:
    """Token ids as int32 [batch, length], or an error naming the argument."""
    x = jnp.asarray(ids, jnp.int32)
    if x.ndim != 2:
        raise ValueError(f"{name} must be [batch, length], got shape {x.shape}")
    return x


def _length_from_head(model, prompt_ids, prompt_mask) -> np.ndarray:
    """[B] answer lengths the length head predicts (the upper edge of its argmax bucket)."""
    graphdef, state = nnx.split(model)
    return np.asarray(_to_host(_length_jit(graphdef, state, prompt_ids, prompt_mask)))


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _length_jit(graphdef, state, prompt_ids, prompt_mask):
    model = nnx.merge(graphdef, state)
    lora = active_head(model, "length")
    hidden = model.forward(prompt_ids, lora=lora, attention="bidirectional", padding_mask=prompt_mask,
                           logits=False).hidden
    head = model.length_head
    return head.length_of(jnp.argmax(head(hidden, prompt_mask), axis=-1))


def sampler_settings(model, *, gen_length: int, block_length: int, steps: int | None = None,
                     policy="low_confidence", temperature: float = 0.0, cfg_scale: float = 0.0,
                     mask_id: int | None = None, attention: str = "auto", cache: str = "auto",
                     stop_at_eos: bool = True, lora: str | None = "diffusion", on_block: Callable | None = None,
                     trace: bool = False) -> SamplerSettings:
    """The checked static settings of a sampling call, from `generate`'s arguments (gen_length an
    int here); each bad value is refused with its name."""
    mask_id = resolve_mask_id(model, mask_id)
    if block_length <= 0:
        raise ValueError(f"block_length={block_length} must be positive")
    if not isinstance(gen_length, int) or gen_length <= 0:
        raise ValueError(f"gen_length={gen_length!r}: a positive int or 'auto'")
    if gen_length % block_length:
        raise ValueError(f"gen_length={gen_length} is not a multiple of block_length={block_length}")
    n_blocks = gen_length // block_length
    steps = gen_length if steps is None else steps
    if steps <= 0 or steps % n_blocks:
        raise ValueError(f"steps={steps} is not a positive multiple of the number of blocks ({n_blocks})")
    attention = resolve_attention(model, attention, block_length)
    if cache not in CACHES:
        raise ValueError(f"cache={cache!r}; choose from {CACHES}")
    cache = ("none" if attention == "bidirectional" else "block") if cache == "auto" else cache
    if cache == "block" and attention == "bidirectional":
        raise ValueError("cache='block' is exact only for attention='block' or 'block_diffusion'; "
                         "use prefix or dual for bidirectional")
    if cache in ("prefix", "dual") and attention != "bidirectional":
        raise ValueError(f"cache={cache!r} is Fast-dLLM's cache for attention='bidirectional'; use cache='block'")
    eos_id = model.config.eos_token_id if stop_at_eos else None
    return SamplerSettings(gen_length=gen_length, block_length=block_length, steps=steps, policy=get_policy(policy),
                           temperature=float(temperature), cfg_scale=float(cfg_scale), mask_id=int(mask_id),
                           eos_id=None if eos_id is None else int(eos_id), attention=attention, cache=cache,
                           lora=active_head(model, lora), trace=trace, on_block=on_block)


def generate(model, prompt_ids, *, gen_length: int | str, block_length: int, steps: int | None = None,
             policy="low_confidence", temperature: float = 0.0, cfg_scale: float = 0.0, mask_id: int | None = None,
             key: jax.Array | None = None, attention: str = "auto", cache: str = "auto",
             prompt_mask=None, stop_at_eos: bool = True, max_gen_length: int | None = None,
             lora: str | None = "diffusion", on_block: Callable | None = None, trace: bool = False):
    """Block diffusion sampling. prompt_ids [B, P] (left-padded; prompt_mask [B, P] True on real
    tokens, default all) -> (tokens [B, P + gen_length], SampleStats[, record]).

    gen_length: answer tokens, a multiple of block_length; "auto": the length head's prediction per
      row (the batch runs the longest, rounded up to a block; positions past a row's own predicted
      length start as EOS), capped by max_gen_length.
    steps: denoising steps over the whole answer, a multiple of the number of blocks (None: one per
      token). Threshold policies ignore it: each block runs until it is full.
    policy: a policy object or name (see policies.py); temperature: Gumbel noise on the logits
      (0 = greedy); cfg_scale: classifier-free guidance (0 = off; the unconditional pass masks the
      prompt). mask_id defaults to the model config's mask token.
    attention: "bidirectional", "block", "block_diffusion", or "auto": block_diffusion for a model
      trained by the block-diffusion objective (its `objective_kind`), else bidirectional.
    cache: "auto" (block for block and block_diffusion attention, else none), "none", "block",
      "prefix", "dual" (see the module docstring).
    stop_at_eos: once a row commits EOS the rest of its answer is EOS; when every row has, the
      remaining blocks are skipped. lora: the adapter head used, if the model has it.
    on_block(index, tokens [B, block_length], done [B]) is called on the host as each block is
      finished (for streaming output). trace: also return record [B, P + G] int32, the step at
      which each position was committed (-1: prompt / EOS fill).
    """
    prompt_ids = as_batch(prompt_ids, "prompt_ids")
    b, p = prompt_ids.shape
    prompt_mask = jnp.ones((b, p), bool) if prompt_mask is None else jnp.asarray(prompt_mask, bool)
    if prompt_mask.shape != prompt_ids.shape:
        raise ValueError(f"prompt_mask shape {prompt_mask.shape} != prompt_ids shape {prompt_ids.shape}")
    if block_length <= 0:
        raise ValueError(f"block_length={block_length} must be positive")
    row_lengths = None
    if gen_length == "auto":
        if getattr(model, "length_head", None) is None:
            raise ValueError("gen_length='auto' needs a model with a length head (train with objective.length_weight > 0)")
        if steps is not None:
            raise ValueError("gen_length='auto': the steps follow the length (one per token); pass steps=None")
        if not stop_at_eos or model.config.eos_token_id is None:
            raise ValueError("gen_length='auto' ends each row with EOS: needs stop_at_eos and a model config "
                             "with eos_token_id")
        row_lengths = _length_from_head(model, prompt_ids, prompt_mask)
        if max_gen_length is not None:
            row_lengths = np.minimum(row_lengths, max_gen_length)
        gen_length = int(-(-int(row_lengths.max()) // block_length) * block_length)
    settings = sampler_settings(model, gen_length=gen_length, block_length=block_length, steps=steps, policy=policy,
                                temperature=temperature, cfg_scale=cfg_scale, mask_id=mask_id, attention=attention,
                                cache=cache, stop_at_eos=stop_at_eos, lora=lora, on_block=on_block, trace=trace)
    mask_id, eos_id = settings.mask_id, settings.eos_id
    key = jax.random.key(0) if key is None else key
    answer = jnp.full((b, gen_length), mask_id, jnp.int32)
    if row_lengths is not None:   # a row's positions past its predicted length are EOS from the start
        answer = jnp.where(jnp.arange(gen_length)[None] < jnp.asarray(row_lengths)[:, None], answer, eos_id)
    graphdef, state = nnx.split(model)
    out, (n_steps, nfe, decoded, blocks), record = _to_host(_sample_jit(graphdef, state, prompt_ids, prompt_mask,
                                                                        answer, key, settings))
    stats = SampleStats(steps=int(n_steps), forward_passes=int(nfe), tokens=float(decoded), gen_length=gen_length,
                        blocks=int(blocks))
    if trace:
        stats.row_steps = np.asarray(record.row_steps)
        stats.row_forward_passes = np.asarray(row_forward_passes(
            settings, record.row_steps, row_blocks_run(settings, record.step[:, p:])))
    return (out, stats, record.step) if trace else (out, stats)
