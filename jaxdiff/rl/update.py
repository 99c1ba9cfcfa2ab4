"""The jitted policy update of the RL adapter over the frozen model, sharded like the train step.

    update(frozen, adapter, opt_state, old, batch, advantages, keep, key) -> (adapter, opt_state, metrics)

One inner iteration on a `Rollout` batch [N rows]: the estimator's per-token log-probabilities of
the sampled answers under the current adapter (the one differentiated), under `old` (the adapter
that sampled the batch; no gradient) and, when asked, under the reference (the same model with the
adapter off, `lora=None`; no gradient), all three with the iteration's key, so they share the
masks; then `policy_loss` and one optax step on the adapter. `advantages` [N] float32 and `keep`
[N] bool come from `group_advantages` (a dropped group's tokens leave the loss and its normaliser).
A step whose loss or gradient norm is not finite is skipped (adapter and optimizer state stay), as
in the train step.

Metrics: the loss's (loss, pg_loss, clip_low / clip_high, ratio_mean / min / max, kl, tokens), the
gradient norm, `skipped`, and for trace replay `old_minus_recorded`: max |old log-prob - the
sampler's recorded log-prob| over the batch's valid tokens, ~1e-7 when the old adapter is the one
that sampled (shrink 1, an exact cache): the check that the old policy is the sampling policy.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec

from jaxdiff.parallel import logical_to_spec
from jaxdiff.rl.estimators import EstimatorSettings, token_log_probs
from jaxdiff.rl.objective import PolicyLossConfig, policy_loss
from jaxdiff.train import state as st
from jaxdiff.train.optim import OptimConfig, apply_if_finite, build_optimizer
from jaxdiff.train.step import step_shardings


def make_update(graphdef, optim: OptimConfig, est: EstimatorSettings, loss_cfg: PolicyLossConfig, *,
                with_ref: bool):
    """The un-jitted update (see the module docstring); `jit_update` adds shardings and donation. The
    optimizer is `build_optimizer(optim, adapter)`, as the optimizer state was made."""
    ref_est = dataclasses.replace(est, lora=None)

    def log_probs(frozen, adapter, batch, key, s):
        return token_log_probs(st.merge(graphdef, frozen, adapter), batch, key, s)

    def update(frozen, adapter, opt_state, old, batch, advantages, keep, key):
        optimizer = build_optimizer(optim, adapter)
        old_logp, valid = log_probs(frozen, old, batch, key, est)
        old_logp = jax.lax.stop_gradient(old_logp)
        mask = valid & keep[:, None]
        ref_logp = None
        if with_ref:
            ref_logp = jax.lax.stop_gradient(log_probs(frozen, adapter, batch, key, ref_est)[0])

        def loss_fn(a):
            logp, _ = log_probs(frozen, a, batch, key, est)
            return policy_loss(logp, old_logp, advantages, mask, ref_logp, cfg=loss_cfg)

        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(adapter)
        new_adapter, new_opt, guard = apply_if_finite(optimizer, loss, grads, opt_state, adapter)
        metrics = {**metrics, **guard}
        if est.estimator == "trace_replay":
            metrics["old_minus_recorded"] = jnp.max(jnp.where(valid, jnp.abs(old_logp - batch.logp), 0.0))
        return new_adapter, new_opt, metrics

    return update


def update_shardings(mesh, frozen, adapter, optimizer: optax.GradientTransformation, batch, rules=None):
    """(frozen, adapter, optimizer state, batch, per-row, replicated) shardings: the train step's for
    the states, rows of the batch over the batch-sharded mesh axes."""
    f_sh, t_sh, o_sh, _ = step_shardings(mesh, frozen, adapter, optimizer, rules)
    rep = NamedSharding(mesh, PartitionSpec())

    def rows(nd):
        return NamedSharding(mesh, logical_to_spec(("batch",) + (None,) * (nd - 1), None, mesh, rules))

    b_sh = jax.tree.map(lambda x: rows(x.ndim) if x.ndim else rep, batch)
    return f_sh, t_sh, o_sh, b_sh, rows(1), rep


_JITTED: dict = {}


def jit_update(graphdef, optim: OptimConfig, est: EstimatorSettings, loss_cfg: PolicyLossConfig, *, with_ref: bool,
               shardings):
    """`make_update` under jax.jit with explicit shardings (`update_shardings`); the optimizer state is
    donated. The adapter is not: the adapter that sampled an in-flight batch is a later update's `old`
    and must stay alive. One jitted function per distinct model, settings and shardings in a process,
    so runs that share them (a resumed run, the benchmark's overlap on / off) compile once."""
    leaves, treedef = jax.tree.flatten(shardings)
    key = (graphdef, optim, est, loss_cfg, with_ref, treedef, tuple(leaves))
    if key not in _JITTED:
        f_sh, t_sh, o_sh, b_sh, row, rep = shardings
        _JITTED[key] = jax.jit(make_update(graphdef, optim, est, loss_cfg, with_ref=with_ref),
                               in_shardings=(f_sh, t_sh, o_sh, t_sh, b_sh, row, row, rep),
                               out_shardings=(t_sh, o_sh, rep), donate_argnums=(2,))
    return _JITTED[key]
