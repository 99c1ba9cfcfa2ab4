"""Remasking (commit) policies as small frozen dataclasses.

At every denoising step the model predicts a token x0 for every position; a policy scores the
masked positions of the current block (float32 [B, L], higher = commit sooner) and the sampler
commits the best ones:

  fixed-count policies  commit the k highest-scoring positions, k from the step schedule (LLaDA)
  threshold policies    (`threshold` is not None) commit the best position and every other one whose
                        score is above the threshold (Fast-dLLM), so the step count adapts

Scores see `logits` (float32 [B, L, V], after classifier-free guidance), `x0` [B, L] and a key.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


def _confidence(logits, x0):
    """Probability of the chosen token x0 under softmax(logits): [B, L]."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    return jnp.exp(jnp.take_along_axis(logp, x0[..., None], axis=-1)[..., 0])


@dataclasses.dataclass(frozen=True)
class LowConfidence:
    """LLaDA: remask the low-confidence predictions; score = p(x0)."""

    threshold = None

    def score(self, logits, x0, key):
        return _confidence(logits, x0)


@dataclasses.dataclass(frozen=True)
class Random:
    """LLaDA's random remasking: uniform scores."""

    threshold = None

    def score(self, logits, x0, key):
        return jax.random.uniform(key, x0.shape)


@dataclasses.dataclass(frozen=True)
class RandomTopK:
    """Stochastic low-confidence: top-k of log p(x0) + noise * Gumbel, i.e. k positions drawn
    without replacement with probability proportional to p(x0) ** (1 / noise)."""

    noise: float = 1.0
    threshold = None

    def score(self, logits, x0, key):
        g = jax.random.gumbel(key, x0.shape)
        return jnp.log(_confidence(logits, x0) + 1e-30) + self.noise * g


@dataclasses.dataclass(frozen=True)
class Margin:
    """Top-1 minus top-2 probability (as Dream's margin confidence)."""

    threshold = None

    def score(self, logits, x0, key):
        top2 = jax.lax.top_k(jax.nn.softmax(logits, axis=-1), 2)[0]
        return top2[..., 0] - top2[..., 1]


@dataclasses.dataclass(frozen=True)
class Entropy:
    """Negative entropy of the predictive distribution (low entropy = confident)."""

    threshold = None

    def score(self, logits, x0, key):
        logp = jax.nn.log_softmax(logits, axis=-1)
        return jnp.sum(jnp.exp(logp) * logp, axis=-1)


@dataclasses.dataclass(frozen=True)
class Threshold:
    """Fast-dLLM parallel decoding: commit every masked position of the block whose confidence
    p(x0) is above `threshold`, and always the most confident one (so at least one per step).
    The comparison is strict, so threshold=1.0 commits exactly one token per step."""

    threshold: float = 0.9

    def __post_init__(self):
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"Threshold(threshold={self.threshold}): must lie in [0, 1]")

    def score(self, logits, x0, key):
        return _confidence(logits, x0)


POLICIES = {"low_confidence": LowConfidence, "random": Random, "random_topk": RandomTopK, "margin": Margin,
            "entropy": Entropy, "threshold": Threshold}


def get_policy(policy):
    """A policy object from itself or its name ("threshold" takes its default threshold; write
    "threshold:0.7" for another)."""
    if not isinstance(policy, str):
        if not hasattr(policy, "score"):
            raise TypeError(f"remasking policy {policy!r}: expected a name or an object with .score")
        return policy
    name, _, arg = policy.partition(":")
    if name not in POLICIES:
        raise ValueError(f"remasking policy {policy!r}; choose from {sorted(POLICIES)}")
    if arg:
        if name == "threshold":
            return Threshold(float(arg))
        if name == "random_topk":
            return RandomTopK(float(arg))
        raise ValueError(f"remasking policy {policy!r}: {name!r} takes no argument")
    return POLICIES[name]()
