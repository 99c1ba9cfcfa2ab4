"""Remasking (commit) policies as small frozen dataclasses: each scores the masked positions of the
current block; the sampler commits the highest-scoring ones. Scores are float32 [B, L]."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class LowConfidence:
    """LLaDA: the probability of the predicted token."""

    def score(self, probs, x0, key):
        return jnp.take_along_axis(probs, x0[..., None], axis=-1)[..., 0]


@dataclasses.dataclass(frozen=True)
class Random:
    """LLaDA's random remasking: uniform scores."""

    def score(self, probs, x0, key):
        return jax.random.uniform(key, x0.shape)


POLICIES = {"low_confidence": LowConfidence, "random": Random}


def get_policy(policy):
    if isinstance(policy, str):
        if policy not in POLICIES:
            raise ValueError(f"remasking policy {policy!r}; choose from {sorted(POLICIES)}")
        return POLICIES[policy]()
    return policy
