"""Helpers of the RL tests: tiny random models (one layer, a small vocabulary, an output head scaled
so that sampling at temperature 1 is neither uniform nor greedy, and a diffusion LoRA head with
random non-zero B on attention and on lm_head, so every log-probability goes through adapters),
their plain forward's logits as a reference, hand-built rollouts, and a quicker PRNG for compiling."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxdiff.model import build_model
from jaxdiff.model.lora import LoRASpec, add_lora
from jaxdiff.rl.rollout import Rollout
from tests.model import tiny


def small_model(vocab: int, mask_id: int, eos_id: int | None, *, head_scale: float, seed: int = 1):
    def make():
        model = build_model(tiny.dense(vocab_size=vocab, mask_token_id=mask_id, eos_token_id=eos_id,
                                       num_hidden_layers=1), seed=seed)
        add_lora(model, "diffusion", LoRASpec(rank=4, alpha=8.0, targets=("q_proj", "k_proj", "v_proj", "o_proj",
                                                                           "lm_head")), seed=seed)
        return model

    # the shapes from the real constructors, the values from NumPy (eager JAX initialisers would
    # compile one by one: seconds on CPU)
    model = nnx.eval_shape(make)
    rng = np.random.RandomState(seed)
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Variable)):
        name = ".".join(str(getattr(p, "key", p)) for p in path)
        if "norm" in name:
            value = np.ones(var.shape)
        elif name.endswith("_a"):                       # LoRA A as add_lora draws it
            bound = var.shape[-1] ** -0.5
            value = rng.uniform(-bound, bound, var.shape)
        elif name.endswith("_b"):                       # LoRA B not zero: the adapters matter
            value = 0.05 * rng.randn(*var.shape)
        else:
            value = 0.02 * rng.randn(*var.shape) * (head_scale if name.startswith("lm_head") else 1.0)
        var.set_value(jnp.asarray(value, var.dtype))
    return model


def full_logits(model, tokens, *, padding_mask=None, lora="diffusion"):
    """The plain forward's float32 logits [B, L, V] (bidirectional, through model.head), jitted:
    the reference the estimators' chunked path is checked against."""
    graphdef, state = nnx.split(model)
    mask = jnp.ones(tokens.shape, bool) if padding_mask is None else jnp.asarray(padding_mask, bool)
    return np.asarray(_logits_jit(graphdef, state, jnp.asarray(tokens, jnp.int32), mask, lora), np.float64)


@functools.partial(jax.jit, static_argnames=("graphdef", "lora"))
def _logits_jit(graphdef, state, tokens, padding_mask, lora):
    return nnx.merge(graphdef, state)(tokens, attention="bidirectional", padding_mask=padding_mask, lora=lora)


def batch_of(prompt_ids, prompt_mask, tokens, step_map=None, valid=None):
    """A Rollout built by hand (answers chosen by the test, not sampled): step_map defaults to left to
    right, one token per step; valid to all. (NumPy, then arrays: eager JAX ops compile one by one.)"""
    tokens = np.asarray(tokens, np.int32)
    n, a = tokens.shape
    step_map = np.tile(np.arange(a, dtype=np.int32), (n, 1)) if step_map is None else np.asarray(step_map, np.int32)
    valid = np.ones((n, a), bool) if valid is None else np.asarray(valid, bool)
    steps = step_map.max(axis=1) + 1
    return jax.tree.map(jnp.asarray, Rollout(
        prompt_ids=np.asarray(prompt_ids, np.int32), prompt_mask=np.asarray(prompt_mask, bool),
        group=np.arange(n, dtype=np.int32), tokens=tokens, committed=tokens, step_map=step_map,
        logp=np.zeros((n, a), np.float32), valid=valid, steps_used=steps, forward_passes=steps,
        batch_steps=np.int32(steps.max()), batch_forward_passes=np.int32(steps.max())))


@pytest.fixture(scope="module", autouse=True)
def quick_prng():
    """Threefry's partitionable form (JAX's default) takes seconds to compile per draw on CPU; the
    tests here do not depend on which stream the keys give, so they run the classic form."""
    with jax.threefry_partitionable(False):
        yield
