"""Optimizers with parameter groups from path rules, built in one place.

Group rules (first match wins) label every *trainable* leaf by its dotted path; frozen base weights
are not in the trainable tree at all, so they have no optimizer state. In full training (a model
trained from scratch, e.g. the tiny default) every parameter is trainable and falls in `base`.
"""
from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
import optax

from jaxdiff.config.schema import DECAYS, OPTIMIZERS  # the names live in the config schema

# (regex on the dotted path, group). One table for every run.
GROUP_RULES: tuple[tuple[str, str], ...] = (
    (r"(^|\.)length_head\.", "length"),
    (r"(^|\.)lora_length_", "length"),
    (r"(^|\.)lora_(ar|diffusion)_", "lora"),
    (r"(^|\.)mask_vector$", "lora"),
    (r".*", "base"),
)
# Leaves that never get weight decay: norms, biases, vectors, the mask embedding.
NO_DECAY = re.compile(r"(norm\.|mask_vector$|bias$)")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    name: str = "adamw"
    lr: float = 1e-4
    warmup_steps: int = 100
    total_steps: int = 10_000
    decay: str = "cosine"
    end_lr_ratio: float = 0.1
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.0
    clip_norm: float | None = 1.0
    grad_accum: int = 1
    # Learning-rate multiplier per group, e.g. {"length": 10.0}.
    lr_mult: tuple[tuple[str, float], ...] = ()

    def __post_init__(self):
        if self.name not in OPTIMIZERS:
            raise ValueError(f"optimizer name {self.name!r}; choose from {OPTIMIZERS}")
        if self.decay not in DECAYS:
            raise ValueError(f"optimizer decay {self.decay!r}; choose from {DECAYS}")
        if self.grad_accum < 1:
            raise ValueError("optimizer grad_accum must be >= 1")


def path_str(path) -> str:
    parts = []
    for p in path:
        if isinstance(p, jax.tree_util.GetAttrKey) and p.name == "value":
            continue
        parts.append(str(getattr(p, "key", getattr(p, "idx", getattr(p, "name", p)))))
    return ".".join(parts)


def group_of(path: str) -> str:
    for pattern, group in GROUP_RULES:
        if re.search(pattern, path):
            return group
    raise AssertionError("GROUP_RULES ends with a catch-all")


def group_labels(params):
    return jax.tree_util.tree_map_with_path(lambda p, _: group_of(path_str(p)), params)


def schedule(cfg: OptimConfig, mult: float = 1.0) -> optax.Schedule:
    peak = cfg.lr * mult
    decay_steps = max(cfg.total_steps - cfg.warmup_steps, 1)
    if cfg.decay == "cosine":
        after = optax.cosine_decay_schedule(peak, decay_steps, alpha=cfg.end_lr_ratio)
    elif cfg.decay == "linear":
        after = optax.linear_schedule(peak, peak * cfg.end_lr_ratio, decay_steps)
    else:
        after = optax.constant_schedule(peak)
    warm = optax.linear_schedule(0.0, peak, max(cfg.warmup_steps, 1))
    return optax.join_schedules([warm, after], [cfg.warmup_steps])


def _base(cfg: OptimConfig, lr, decay_mask) -> optax.GradientTransformation:
    if cfg.name == "adamw":
        return optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay, mask=decay_mask)
    if cfg.name == "lion":
        return optax.lion(lr, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay, mask=decay_mask)
    return optax.chain(optax.adafactor(lr), optax.add_decayed_weights(cfg.weight_decay, decay_mask))


def build_optimizer(cfg: OptimConfig, params) -> optax.GradientTransformation:
    """The full transformation for the trainable tree `params` (used for its labels only)."""
    labels = group_labels(params)
    groups = sorted(set(jax.tree.leaves(labels)))
    mults = dict(cfg.lr_mult)
    unknown = set(mults) - {g for _, g in GROUP_RULES}
    if unknown:
        raise ValueError(f"optimizer lr_mult names unknown group(s) {sorted(unknown)}")

    def decay_mask(tree):
        return jax.tree_util.tree_map_with_path(
            lambda p, x: x.ndim >= 2 and not NO_DECAY.search(path_str(p)), tree)

    tx = optax.multi_transform({g: _base(cfg, schedule(cfg, mults.get(g, 1.0)), decay_mask) for g in groups},
                               labels)
    if cfg.clip_norm:
        tx = optax.chain(optax.clip_by_global_norm(cfg.clip_norm), tx)
    if cfg.grad_accum > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=cfg.grad_accum)
    return tx


def apply_if_finite(optimizer: optax.GradientTransformation, loss, grads, opt_state, params):
    """One optimizer step, skipped (params and state kept) when the loss or the gradient norm is not
    finite. -> (params, opt_state, {"grad_norm", "skipped"})."""
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, new_opt = optimizer.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)  # noqa: E731
    return keep(new_params, params), keep(new_opt, opt_state), {"grad_norm": grad_norm,
                                                                "skipped": (~finite).astype(jnp.int32)}


def tree_bytes(tree) -> int:
    return sum(int(x.size) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree) if hasattr(x, "dtype"))
