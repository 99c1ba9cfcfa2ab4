"""Time sampling and mask schedules of masked diffusion (pure functions, explicit keys).

A schedule maps diffusion time t in (0, 1] to the probability p(t) that a token is masked; the
signal level is alpha(t) = 1 - p(t). At t -> 0 nothing is masked, at t = 1 everything is.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from jaxdiff.config.schema import SCHEDULES  # the names live in the config schema


@dataclasses.dataclass(frozen=True)
class Schedule:
    """p(t) and its derivative. `power` uses p = t**exponent; `sigmoid` rescales
    sigmoid(scale * (t - 0.5)) to hit 0 at t = 0 and 1 at t = 1."""

    kind: str = "linear"
    exponent: float = 2.0
    scale: float = 10.0

    def __post_init__(self):
        if self.kind not in SCHEDULES:
            raise ValueError(f"schedule kind {self.kind!r}; choose from {SCHEDULES}")

    def mask_prob(self, t: jax.Array) -> jax.Array:
        if self.kind == "linear":
            return t
        if self.kind == "cosine":
            return 1.0 - jnp.cos(0.5 * math.pi * t)
        if self.kind == "power":
            return t ** self.exponent
        lo, hi = jax.nn.sigmoid(-0.5 * self.scale), jax.nn.sigmoid(0.5 * self.scale)
        return (jax.nn.sigmoid(self.scale * (t - 0.5)) - lo) / (hi - lo)

    def mask_prob_derivative(self, t: jax.Array) -> jax.Array:
        """dp/dt (= -d alpha/dt), used by the MDLM weight."""
        if self.kind == "linear":
            return jnp.ones_like(t)
        if self.kind == "cosine":
            return 0.5 * math.pi * jnp.sin(0.5 * math.pi * t)
        if self.kind == "power":
            return self.exponent * t ** (self.exponent - 1.0)
        lo, hi = jax.nn.sigmoid(-0.5 * self.scale), jax.nn.sigmoid(0.5 * self.scale)
        s = jax.nn.sigmoid(self.scale * (t - 0.5))
        return self.scale * s * (1.0 - s) / (hi - lo)


def sample_times(key: jax.Array, batch: int, *, eps: float = 1e-3, t_max: float = 1.0,
                 antithetic: bool = False) -> jax.Array:
    """t [B] in (eps, t_max]. `antithetic` spreads one uniform draw over B evenly spaced strata
    (low-discrepancy sampling, as in MDLM/VDM), which lowers the loss variance per batch."""
    if antithetic:
        u = (jax.random.uniform(key, ()) + jnp.arange(batch) / batch) % 1.0
    else:
        u = jax.random.uniform(key, (batch,))
    return eps + (t_max - eps) * (1.0 - u)  # 1 - u lies in (0, 1]


def sample_block_times(key: jax.Array, batch: int, n_blocks: int, *, t_min: float = 1e-3, t_max: float = 1.0,
                       antithetic: bool = True) -> jax.Array:
    """Block diffusion (BD3LM `_sample_t`): one t per (row, block), uniform on [t_min, t_max) (BD3LM's
    clipped range; 1e-3, 1 unclipped). `antithetic`: the B * n_blocks draws are stratified, draw i
    (row-major) falling in the i-th of B * n_blocks equal strata of [0, 1)."""
    u = jax.random.uniform(key, (batch, n_blocks))
    if antithetic:
        n = batch * n_blocks
        u = (u / n + jnp.arange(n).reshape(batch, n_blocks) / n) % 1.0
    return t_min + (t_max - t_min) * u


def clamp_mask_prob(p: jax.Array, min_masking_rate: float = 0.0) -> jax.Array:
    """Lower-bounds the mask probability (so no example is trained at ~zero noise)."""
    return jnp.maximum(p, min_masking_rate)


def inverse_prob_weight(p: jax.Array, reweight_cap: float | None = None) -> jax.Array:
    """1 / p, optionally capped: bounds the weight of nearly-clean examples."""
    w = 1.0 / p
    return w if reweight_cap is None else jnp.minimum(w, reweight_cap)
