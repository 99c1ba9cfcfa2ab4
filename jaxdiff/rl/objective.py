"""The clipped policy-gradient loss over per-token log-probabilities (pure JAX, jittable).

Letters: B sequences (samples), L completion positions. Inputs are per-token log-probabilities of
the sampled tokens under the current policy (`logp`, the one differentiated), the policy that
sampled them (`old_logp`) and, optionally, the reference policy (`ref_logp`: the model with the RL
adapter off), all [B, L]; `mask` [B, L] marks the tokens that count (completion tokens up to and
including EOS, of kept groups); `advantages` [B].

Per token t of sequence b (A = advantages[b], c = log_ratio_clamp):

    ratio     rho = exp(clip(logp - old_logp, -c, c))                the clamp keeps exp finite
    policy    l_pg = -min(rho * A, clip(rho, 1 - eps_low, 1 + eps_high) * A)
                                                  PPO (Schulman et al. 2017) per token, with DAPO's
                                                  decoupled eps_low / eps_high (Yu et al. 2025)
    KL (k3)   d = clip(ref_logp - logp, -c, c),  k3 = exp(d) - d - 1 >= 0
                                                  Schulman's unbiased, non-negative estimator of
                                                  KL(pi || pi_ref), as in GRPO (Shao et al. 2024)
    token     l = l_pg + beta * k3

Length normalisation, named as in verl / Tunix:

    "seq-mean-token-mean"  loss = mean over sequences with >= 1 token of (sum_t m*l / sum_t m)
                           GRPO's 1/|o_i| per sequence, then the batch mean (d1 normalises by |o|)
    "token-mean"           loss = sum_{b,t} m*l / sum_{b,t} m
                           DAPO's global token mean: every token weighs the same, long or short

Masked tokens contribute nothing to the loss, to its normaliser or to the gradient, whatever
values they hold (NaN and inf included): inputs are zeroed at masked positions before any
arithmetic. Old and reference log-probabilities are constants (stop_gradient).

Metrics (over unmasked tokens): clip_low / clip_high, the fraction of tokens whose gradient the
clip removes (A < 0 and rho < 1 - eps_low; A > 0 and rho > 1 + eps_high); ratio_mean / min / max
(of the clamped ratio; 1 when there are no tokens); kl (token mean of k3, whenever ref_logp is
given, whatever beta); entropy (token mean of `entropy` [B, L] when given); pg_loss (the policy
term under the chosen normalisation), loss and tokens.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxdiff.config.schema import NORMALIZATIONS  # the names live in the config schema


@dataclasses.dataclass(frozen=True)
class PolicyLossConfig:
    """eps_low / eps_high: clip range [1 - eps_low, 1 + eps_high] of the ratio; beta: weight of the
    k3 KL to the reference (0: none, ref_logp optional); log_ratio_clamp: |log ratio| bound before exp;
    normalization: one of NORMALIZATIONS. Hashable: pass it as a static argument to jit."""

    eps_low: float = 0.2
    eps_high: float = 0.2
    beta: float = 0.0
    log_ratio_clamp: float = 20.0
    normalization: str = "seq-mean-token-mean"

    def __post_init__(self):
        if not (0.0 <= self.eps_low < 1.0):
            raise ValueError(f"eps_low must be in [0, 1), got {self.eps_low}")
        if self.eps_high < 0.0:
            raise ValueError(f"eps_high must be >= 0, got {self.eps_high}")
        if self.beta < 0.0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")
        if self.log_ratio_clamp <= 0.0:
            raise ValueError(f"log_ratio_clamp must be positive, got {self.log_ratio_clamp}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {self.normalization!r}")


def policy_loss(logp: jax.Array, old_logp: jax.Array, advantages: jax.Array, mask: jax.Array,
                ref_logp: jax.Array | None = None, entropy: jax.Array | None = None, *,
                cfg: PolicyLossConfig = PolicyLossConfig()) -> tuple[jax.Array, dict]:
    """(scalar loss, metrics) as in the module docstring. Computes in at least float32."""
    if logp.ndim != 2:
        raise ValueError(f"logp must be [B, L], got shape {logp.shape}")
    for name, x in (("old_logp", old_logp), ("mask", mask), ("ref_logp", ref_logp), ("entropy", entropy)):
        if x is not None and x.shape != logp.shape:
            raise ValueError(f"{name} has shape {x.shape}, logp {logp.shape}")
    if advantages.shape != logp.shape[:1]:
        raise ValueError(f"advantages must be [B] = {logp.shape[:1]}, got {advantages.shape}")
    if cfg.beta > 0 and ref_logp is None:
        raise ValueError(f"beta = {cfg.beta} needs ref_logp")

    dtype = jnp.promote_types(logp.dtype, jnp.float32)
    m = mask.astype(bool)

    def valid(x):  # zero where masked, before any arithmetic (a NaN there would reach the gradient)
        return jnp.where(m, x.astype(dtype), 0)

    logp = valid(logp)
    old_logp = jax.lax.stop_gradient(valid(old_logp))
    adv = jax.lax.stop_gradient(advantages.astype(dtype))[:, None]           # [B, 1]
    c = cfg.log_ratio_clamp

    ratio = jnp.exp(jnp.clip(logp - old_logp, -c, c))                        # [B, L]
    clipped = jnp.clip(ratio, 1.0 - cfg.eps_low, 1.0 + cfg.eps_high)
    pg = -jnp.minimum(ratio * adv, clipped * adv)
    per_token = pg
    k3 = None
    if ref_logp is not None:
        d = jnp.clip(jax.lax.stop_gradient(valid(ref_logp)) - logp, -c, c)
        k3 = jnp.exp(d) - d - 1.0
        if cfg.beta > 0:
            per_token = pg + cfg.beta * k3

    counts = m.sum(axis=1).astype(dtype)                                      # [B]
    tokens = counts.sum()
    loss = _normalize(per_token, m, counts, tokens, cfg.normalization)

    def token_mean(x):
        return jnp.where(m, x, 0).sum() / jnp.maximum(tokens, 1.0)

    some = tokens > 0
    metrics = {
        "loss": loss,
        "pg_loss": _normalize(pg, m, counts, tokens, cfg.normalization),
        "tokens": tokens,
        "clip_low": token_mean(((adv < 0) & (ratio < 1.0 - cfg.eps_low)).astype(dtype)),
        "clip_high": token_mean(((adv > 0) & (ratio > 1.0 + cfg.eps_high)).astype(dtype)),
        "ratio_mean": jnp.where(some, token_mean(ratio), 1.0),
        "ratio_min": jnp.where(some, jnp.where(m, ratio, jnp.inf).min(), 1.0),
        "ratio_max": jnp.where(some, jnp.where(m, ratio, -jnp.inf).max(), 1.0),
    }
    if k3 is not None:
        metrics["kl"] = token_mean(k3)
    if entropy is not None:
        metrics["entropy"] = token_mean(jax.lax.stop_gradient(valid(entropy)))
    return loss, metrics


def _normalize(per_token, m, counts, tokens, how: str):
    summed = jnp.where(m, per_token, 0).sum(axis=1)                          # [B]
    if how == "token-mean":
        return summed.sum() / jnp.maximum(tokens, 1.0)
    has = counts > 0
    per_seq = jnp.where(has, summed / jnp.maximum(counts, 1.0), 0)
    return per_seq.sum() / jnp.maximum(has.sum().astype(per_token.dtype), 1.0)
