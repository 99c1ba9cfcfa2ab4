"""The train state: a model split into a frozen base and a trainable tree (`builder.split`), merged
back for a forward pass, and the shardings of both."""
from __future__ import annotations

import jax
from flax import nnx

from jaxdiff.builder import split
from jaxdiff.parallel import named_sharding

__all__ = ["merge", "split", "state_shardings"]


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
