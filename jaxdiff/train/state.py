"""Splitting a model into a frozen base and a trainable tree, and their shardings."""
from __future__ import annotations

import jax
from flax import nnx

from jaxdiff.model.lora import FROZEN, TRAINABLE
from jaxdiff.parallel import named_sharding


def split(model: nnx.Module, *, full_training: bool = False):
    """-> (graphdef, frozen, trainable). LoRA training: the base (nnx.Param) is frozen and only
    adapters, the length head and a trained mask row are trainable. Full training: everything is
    trainable and `frozen` is empty."""
    if full_training:
        graphdef, trainable, frozen = nnx.split(model, nnx.Any(FROZEN, TRAINABLE), ...)
    else:
        graphdef, frozen, trainable, rest = nnx.split(model, FROZEN, TRAINABLE, ...)
        if jax.tree.leaves(rest):
            raise ValueError("model has state that is neither frozen base nor trainable: "
                             f"{list(nnx.to_flat_state(rest))[:5]}")
    return graphdef, frozen, trainable


def merge(graphdef, frozen, trainable, *, full_training: bool = False):
    if full_training:
        return nnx.merge(graphdef, trainable, frozen)
    return nnx.merge(graphdef, frozen, trainable, nnx.State({}))


def state_shardings(state, mesh, rules=None):
    """The state's structure with a NamedSharding in place of each variable (a valid `jax.jit`
    sharding prefix), from each variable's logical `axes` metadata."""
    def one(var):
        axes = var.get_metadata().get("axes") or (None,) * len(var.shape)
        return named_sharding(axes, var.shape, mesh, rules)

    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))
