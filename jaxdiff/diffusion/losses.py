"""Masked-diffusion losses, cross-entropy always in float32 and vocab-chunked.

Per-token negative log-likelihoods come from final hidden states h [N, D] and the output head
W [V, D] without ever holding [N, V] float32 logits: the vocabulary is scanned in chunks with an
online log-sum-exp (and the running target logit, for accuracy). The `llada`, `mdlm` and `soft_ce`
reductions then weight those per-token terms as published:

  llada   (LLaDA eq. 3):  sum_{i masked} nll_i / p_i                        / (B * L)
          SFT variant:    sum_b sum_{i masked in b} nll_i / p_i / answer_len_b   / B
  mdlm    (MDLM eq. 10):  sum_{i masked} nll_i * p'(t_b) / p(t_b)           / (B * L)
  soft_ce (label smoothing eps): ((1 - eps) nll_i + eps * mean_v(-log q_v)) / p_i, reduced as llada

Block diffusion (BD3LM) weights the same per-token terms (p_i is then the t of token i's block; under
the linear schedule all three weights are BD3LM's 1/t) and averages over the tokens the model learns
to generate (`block_diffusion_loss`).
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from jaxdiff.model.lora import LoRAWeights, project

from jaxdiff.config.schema import LOSSES  # the names live in the config schema


@dataclasses.dataclass(frozen=True)
class TokenStats:
    """Per-token float32 statistics [N]: -log q(target), mean_v -log q(v), argmax == target."""

    nll: jax.Array
    mean_nll: jax.Array
    correct: jax.Array


def token_stats_from_logits(logits: jax.Array, targets: jax.Array) -> TokenStats:
    """Reference path from full logits [..., V] (tests; small vocabularies)."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    return TokenStats(nll, -jnp.mean(logp, axis=-1), jnp.argmax(logits, axis=-1) == targets)


def f32_matmul(x: jax.Array, w: jax.Array) -> jax.Array:
    """x [..., D] W [V, D]^T accumulated and returned in float32 (inputs stay in their dtype)."""
    return jnp.einsum("...D,VD->...V", x, w.astype(x.dtype), preferred_element_type=jnp.float32)


def head_logits(hidden: jax.Array, head) -> jax.Array:
    """hidden [..., D] -> float32 logits [..., V] over the whole vocabulary at once, through the same
    unmerged apply and float32 accumulation as `token_stats_chunked` (head: the model's
    `output_head`, W [V, D] and its adapter). The sampler's logits, so what it records is what a
    learner recomputes chunk by chunk."""
    return project(hidden, head.weight, head.lora, matmul=f32_matmul).astype(jnp.float32)


def vocab_chunking(vocab: int, chunk: int) -> tuple[int, int]:
    """(chunks, rows per chunk) for scanning a head of `vocab` rows at most `chunk` at a time:
    ceil(vocab / chunk) chunks of equal size, so the head pads by fewer rows than there are chunks
    (a vocabulary below one chunk is one chunk of exactly its size, never padded up to `chunk`)."""
    n = -(-vocab // chunk)
    return n, -(-vocab // n)


ROW_BLOCK = 512      # rows per block when only some rows need statistics (`rows=`) ...
MAX_ROW_BLOCKS = 8   # ... in at most this many blocks (each a copy of the vocabulary scan in the program)


def token_stats_chunked(hidden: jax.Array, head_w: jax.Array, targets: jax.Array, *,
                        chunk: int = 8192, lora: LoRAWeights | None = None,
                        temperature: float = 1.0, rows: jax.Array | None = None,
                        row_block: int = ROW_BLOCK) -> TokenStats:
    """hidden [N, D], head W [V, D], targets [N] -> TokenStats, scanning V in chunks of at most
    `chunk` rows (`vocab_chunking`). `lora`: the output head's adapter (A [r, D], B [V, r]), applied
    unmerged per chunk (lora.project). temperature: the statistics of softmax(logits / temperature)
    (a sampling temperature).
    rows [N] bool: only these rows' statistics are wanted (a loss over masked tokens); the others
    come back as 0 / False. The wanted rows are moved to the front and the head is scanned only for
    blocks of `row_block` rows that hold one, so a step pays for the vocabulary in proportion to
    the tokens its loss counts (about half of them under the LLaDA loss), not to all N.
    Gradient: a head without adapter whose weight is not differentiated (the LoRA case) takes the
    one-pass gradient (`_frozen_head_lse`: the forward scan accumulates it, the backward multiplies
    by the cotangent); otherwise each chunk is rematerialised in the backward.
    Memory, forward and backward: O(N x chunk) float32 plus O(N x V / chunk) carries (one-pass:
    O(N x chunk) in the forward and G [N, D] kept for the backward)."""
    v, d = head_w.shape
    n_chunks, chunk = vocab_chunking(v, chunk)
    pad = n_chunks * chunk - v
    w = jnp.pad(head_w, ((0, pad), (0, 0))).reshape(n_chunks, chunk, d)
    b = None if lora is None else jnp.pad(lora.b, ((0, pad), (0, 0))).reshape(n_chunks, chunk, -1)
    f32 = f32_matmul

    # With an adapter, rematerialised per chunk: the backward recomputes each chunk's logits from h and the chunk's
    # weights, so reverse mode holds the four [N] carries per chunk and one [N, chunk] working set,
    # never [N, V] (autodiff of the online log-sum-exp stays exact: the same ops, run again).
    # need: a traced bool; when False every chunk is skipped (lax.cond inside the rematerialised
    # body, so the skip holds in the backward too and the cond keeps no residuals of its own).
    # Accuracy without an argmax over the vocabulary (a variadic reduce XLA:CPU runs slowly): each
    # chunk picks its rows' target logit out of its own logits, and a row is correct when that logit
    # is the maximum (ties count as correct, where argmax would pick the lowest index).
    def scan_vocab(h, t, lw, need=None):   # h [n, D], t [n] -> (log-sum-exp, sum of logits, target is top)
        if lw is None:   # a frozen-or-full head without adapter: the one-pass gradient (_frozen_head_lse)
            need_arr = jnp.asarray(True) if need is None else need
            lse, top = _frozen_head_lse(h, w, t, need_arr, chunk, v, temperature, need is not None)
            total = f32_matmul(h, colsum[None, :])[:, 0] / temperature   # sum_v logits_v = h . sum_v W_v
            return lse, total if need is None else jnp.where(need, total, 0.0), top

        def chunk_stats(carry, xs):
            m, s, total, tgt = carry
            wc, bc, c = xs
            logits = project(h, wc, lw.replace(b=bc), matmul=f32).astype(jnp.float32)
            if temperature != 1.0:
                logits = logits / temperature
            ids = c * chunk + jnp.arange(chunk)
            real = ids < v
            logits_m = jnp.where(real[None], logits, -jnp.inf)
            new_m = jnp.maximum(m, jnp.max(logits_m, axis=-1))
            s = s * jnp.exp(m - new_m) + jnp.sum(jnp.exp(logits_m - new_m[:, None]), axis=-1)
            total = total + jnp.sum(jnp.where(real[None], logits, 0.0), axis=-1)
            return new_m, s, total, _target_logit(logits_m, t, c, chunk, tgt)

        @functools.partial(jax.checkpoint, policy=jax.checkpoint_policies.nothing_saveable, prevent_cse=False)
        def body(carry, xs):
            if need is None:
                return chunk_stats(carry, xs), None
            return jax.lax.cond(need, chunk_stats, lambda carry, xs: carry, carry, xs), None

        n = h.shape[0]
        init = (jnp.full((n,), -jnp.inf), jnp.zeros((n,)), jnp.zeros((n,)), jnp.full((n,), -jnp.inf))
        (m, s, total, tgt), _ = jax.lax.scan(body, init, (w, b, jnp.arange(n_chunks)))
        top = tgt >= m
        if need is not None:   # a skipped block: lse 0 (not -inf + log 0, whose gradient is nan)
            m, s = jnp.where(need, m, 0.0), jnp.where(need, s, 1.0)
        return m + jnp.log(s), total, top

    colsum = None if lora is not None else jnp.sum(head_w.astype(jnp.float32), axis=0)
    if rows is None:
        lse, total, top = scan_vocab(hidden, targets, lora)
    else:
        lse, total, top = _wanted_rows_only(scan_vocab, hidden, targets, lora, rows, row_block)
    # The target's logit from its own head row (a gather, not a [N, V] select kept for the backward),
    # through the same unmerged apply: per-row weights [N, 1, D] / adapter rows [N, 1, r].
    def rowwise(x, w):
        if w.ndim == 2:
            return f32(x, w)
        return jnp.einsum("ND,NFD->NF", x, w.astype(x.dtype), preferred_element_type=jnp.float32)

    target_lora = None if lora is None else lora.replace(b=lora.b[targets][:, None, :])
    target_logit = project(hidden, head_w[targets][:, None, :], target_lora, matmul=rowwise)[:, 0].astype(jnp.float32)
    if temperature != 1.0:
        target_logit = target_logit / temperature
    stats = TokenStats(nll=lse - target_logit, mean_nll=lse - total / v, correct=top)
    if rows is None:
        return stats
    return TokenStats(jnp.where(rows, stats.nll, 0.0), jnp.where(rows, stats.mean_nll, 0.0), stats.correct & rows)


def _target_logit(logits_m, t, c, chunk, tgt):
    """The running target logit: row i's entry of this chunk's logits where t[i] falls in chunk c."""
    local = t - c * chunk
    here = jnp.take_along_axis(logits_m, jnp.clip(local, 0, chunk - 1)[:, None], axis=1)[:, 0]
    return jnp.where((local >= 0) & (local < chunk), here, tgt)


def _lse_scan(h, w, t, need, chunk, v, temperature, use_need, grad, remat=False):
    """The vocabulary scan of a head without adapter: h [n, D], chunked W [C, chunk, D] -> (log-sum-exp
    [n], target is top [n], and with grad the log-sum-exp's gradient G = sum_v softmax_v W_v / T [n, D]).
    G accumulates like flash attention's output: each chunk adds exp(logits - running max) @ W_c, the
    sum rescaled when the max moves, and divides by the exp-sum at the end; so the forward pass holds
    what the backward needs and no logits are recomputed. need: skip every chunk when False (use_need).
    remat: each chunk rematerialised, for a caller that differentiates this scan itself."""
    n, d = h.shape

    def chunk_stats(carry, xs):
        m, s, tgt, acc = carry
        wc, c = xs
        logits = f32_matmul(h, wc)
        if temperature != 1.0:
            logits = logits / temperature
        logits_m = jnp.where((c * chunk + jnp.arange(chunk) < v)[None], logits, -jnp.inf)
        new_m = jnp.maximum(m, jnp.max(logits_m, axis=-1))
        e = jnp.exp(logits_m - new_m[:, None])
        rescale = jnp.exp(m - new_m)
        s = s * rescale + jnp.sum(e, axis=-1)
        if grad:
            acc = acc * rescale[:, None] + jnp.einsum("NV,VD->ND", e.astype(h.dtype), wc.astype(h.dtype),
                                                      preferred_element_type=jnp.float32)
        return new_m, s, _target_logit(logits_m, t, c, chunk, tgt), acc

    def body(carry, xs):
        if not use_need:
            return chunk_stats(carry, xs), None
        return jax.lax.cond(need, chunk_stats, lambda carry, xs: carry, carry, xs), None

    if remat:   # differentiated by autodiff: each chunk recomputed in the backward, O(n x chunk) held
        body = jax.checkpoint(body, policy=jax.checkpoint_policies.nothing_saveable, prevent_cse=False)

    init = (jnp.full((n,), -jnp.inf), jnp.zeros((n,)), jnp.full((n,), -jnp.inf),
            jnp.zeros((n, d) if grad else (), jnp.float32))
    (m, s, tgt, acc), _ = jax.lax.scan(body, init, (w, jnp.arange(w.shape[0])))
    top = tgt >= m
    m, s = jnp.where(need, m, 0.0), jnp.where(need, s, 1.0)   # a skipped block: lse 0, gradient 0
    lse = m + jnp.log(s)
    if not grad:
        return lse, top
    return lse, top, acc / (s[:, None] * temperature)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7))
def _frozen_head_lse(h, w, t, need, chunk, v, temperature, use_need):
    """(log-sum-exp [n], target is top [n]) of softmax(h W^T / T) over the chunked head w. Its
    gradient comes from the forward scan (_lse_scan's G): the backward is G times the cotangent, where
    autodiff of the online log-sum-exp would recompute every chunk's logits and multiply their
    cotangents by W again (a third pass over the head). When W itself is trained (full training),
    the backward is the rematerialised scan's autodiff instead."""
    return _lse_scan(h, w, t, need, chunk, v, temperature, use_need, grad=False)


def _frozen_head_lse_fwd(h, w, t, need, chunk, v, temperature, use_need):
    if w.perturbed:   # W needs its gradient: keep the rematerialised scan's own backward
        def plain(h, w):
            return _lse_scan(h, w, t.value, need.value, chunk, v, temperature, use_need, grad=False, remat=True)
        lse, vjp, top = jax.vjp(plain, h.value, w.value, has_aux=True)
        return (lse, top), (vjp, None)
    lse, top, g = _lse_scan(h.value, w.value, t.value, need.value, chunk, v, temperature, use_need, grad=True)
    return (lse, top), (None, g.astype(h.value.dtype))   # G in the hidden states' dtype


def _frozen_head_lse_bwd(chunk, v, temperature, use_need, res, cts):
    vjp, g = res
    ct = cts[0]
    if isinstance(ct, jax.custom_derivatives.SymbolicZero):
        return None, None, None, None
    if vjp is not None:
        dh, dw = vjp(ct)
        return dh, dw, None, None
    return (ct[:, None] * g.astype(jnp.float32)).astype(g.dtype), None, None, None


_frozen_head_lse.defvjp(_frozen_head_lse_fwd, _frozen_head_lse_bwd, symbolic_zeros=True)


def _wanted_rows_only(scan_vocab, hidden, targets, lora, rows, row_block):
    """scan_vocab over the rows marked in `rows` only: those rows sorted to the front, cut into at
    most MAX_ROW_BLOCKS blocks of about `row_block` rows, a block past the last wanted row skipped
    (scan_vocab's `need`, in both directions of autodiff). The blocks are a Python loop, not a scan:
    a scan's backward would stack its loop-invariant residuals (the head weight) once per block. Returns
    scan_vocab's outputs in the original row order (0 for unwanted rows)."""
    n, d = hidden.shape
    nb = min(MAX_ROW_BLOCKS, -(-n // row_block))
    rb = -(-n // nb)
    order = jnp.argsort(~rows, stable=True)                        # wanted rows first
    back = jnp.argsort(order)                                      # sorted position of each row
    count = jnp.sum(rows)
    hs = jnp.pad(hidden[order], ((0, nb * rb - n), (0, 0))).reshape(nb, rb, d)
    ts = jnp.pad(targets[order], (0, nb * rb - n)).reshape(nb, rb)
    outs = []
    for i in range(nb):
        lw = lora
        if lw is not None and lw.dropout_key is not None:   # a fresh dropout draw per block
            lw = lw.replace(dropout_key=jax.random.fold_in(lw.dropout_key, i))
        outs.append(scan_vocab(hs[i], ts[i], lw, need=i * rb < count))
    return tuple(jnp.concatenate(x)[back] for x in zip(*outs))


def _weighted_terms(stats: TokenStats, loss_mask, p_mask, kind, dp_mask, label_smoothing, reweight_cap):
    """[B, L] per-token loss terms: (nll or smoothed CE) times the kind's weight, 0 off loss_mask."""
    if kind not in LOSSES:
        raise ValueError(f"loss kind {kind!r}; choose from {LOSSES}")
    if kind == "mdlm":
        if dp_mask is None:
            raise ValueError("mdlm loss needs dp_mask (the schedule's dp/dt)")
        weight = dp_mask / p_mask
    else:
        weight = 1.0 / p_mask
    if reweight_cap is not None:
        weight = jnp.minimum(weight, reweight_cap)
    per_token = stats.nll
    if kind == "soft_ce":
        per_token = (1.0 - label_smoothing) * stats.nll + label_smoothing * stats.mean_nll
    return jnp.where(loss_mask, per_token * weight, 0.0)


def diffusion_loss(stats: TokenStats, loss_mask: jax.Array, p_mask: jax.Array, *, kind: str = "llada",
                   dp_mask: jax.Array | None = None, label_smoothing: float = 0.1,
                   answer_lengths: jax.Array | None = None, reweight_cap: float | None = None) -> jax.Array:
    """Scalar loss. stats fields and loss_mask [B, L]; p_mask [B, L] (the mask probability the
    position was noised with); dp_mask [B, L] = p'(t) for `mdlm`; answer_lengths [B] switches to the
    SFT normalisation (per-example answer length, then mean over the batch)."""
    terms = _weighted_terms(stats, loss_mask, p_mask, kind, dp_mask, label_smoothing, reweight_cap)
    b, l = loss_mask.shape
    if answer_lengths is None:
        return jnp.sum(terms) / (b * l)
    return jnp.sum(jnp.sum(terms, axis=1) / jnp.maximum(answer_lengths, 1)) / b


def block_diffusion_loss(stats: TokenStats, loss_mask: jax.Array, p_mask: jax.Array, eligible: jax.Array, *,
                         kind: str = "llada", dp_mask: jax.Array | None = None, label_smoothing: float = 0.1,
                         reweight_cap: float | None = None) -> jax.Array:
    """BD3LM's loss: the weighted terms of the masked positions (loss_mask) summed, over the number
    of eligible tokens [B, L] (real tokens in pretraining, answer tokens in SFT): BD3LM's token mean,
    where an unmasked token contributes 0 (SUBS carries it over). p_mask [B, L]: each token's block's
    mask probability (= t under the linear schedule, so llada's 1/p is BD3LM's 1/t)."""
    terms = _weighted_terms(stats, loss_mask, p_mask, kind, dp_mask, label_smoothing, reweight_cap)
    return jnp.sum(terms) / jnp.maximum(jnp.sum(eligible), 1)


def masked_accuracy(stats: TokenStats, loss_mask: jax.Array) -> jax.Array:
    return jnp.sum(stats.correct & loss_mask) / jnp.maximum(jnp.sum(loss_mask), 1)
