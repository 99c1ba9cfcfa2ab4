"""Optimizer groups from path rules, the three optimizers, schedules, clipping, accumulation."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxdiff.model import build_model
from jaxdiff.model.lora import HEADS, LoRASpec, add_length_head, add_lora
from jaxdiff.train import state as st
from jaxdiff.train.optim import OPTIMIZERS, OptimConfig, build_optimizer, group_labels, path_str, schedule
from tests.model import tiny


def _trainable(full=False):
    m = build_model(tiny.dense())
    for h in HEADS:
        add_lora(m, h, LoRASpec(rank=2))
    add_length_head(m, (8, 16), hidden=8)
    return st.split(m, full_training=full)[2]


def test_group_rules_label_each_head():
    labels = {path_str(p): v for p, v in jax.tree_util.tree_leaves_with_path(group_labels(_trainable()))}
    assert labels["length_head.w1"] == "length"
    assert labels["model.layers.0.self_attn.q_proj.lora_length_a"] == "length"
    assert labels["model.layers.0.self_attn.q_proj.lora_ar_b"] == "lora"
    assert set(labels.values()) == {"length", "lora"}
    full = {path_str(p): v for p, v in jax.tree_util.tree_leaves_with_path(group_labels(_trainable(full=True)))}
    assert full["model.embed_tokens.weight"] == "base"


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_each_optimizer_updates_with_weight_decay_groups(name):
    params = _trainable(full=True)
    opt = build_optimizer(OptimConfig(name=name, lr=1e-2, warmup_steps=0, weight_decay=0.1), params)
    state = opt.init(params)
    grads = jax.tree.map(jnp.zeros_like, params)  # zero gradient: only weight decay moves weights
    updates, _ = jax.jit(opt.update)(grads, state, params)   # one program, not each op per leaf shape
    flat = {path_str(p): u for p, u in jax.tree_util.tree_leaves_with_path(updates)}
    assert np.all(np.asarray(flat["model.layers.0.input_layernorm.weight"]) == 0)   # norms: no decay
    assert np.any(np.asarray(flat["model.layers.0.mlp.up_proj.weight"]) != 0)       # matrices decay


def test_warmup_then_cosine_schedule_and_lr_multiplier():
    cfg = OptimConfig(lr=1.0, warmup_steps=10, total_steps=110, decay="cosine", end_lr_ratio=0.1)
    s = schedule(cfg)
    assert float(s(0)) == 0.0 and abs(float(s(10)) - 1.0) < 1e-6 and abs(float(s(110)) - 0.1) < 1e-6
    assert abs(float(schedule(cfg, 10.0)(10)) - 10.0) < 1e-5
    with pytest.raises(ValueError, match="unknown group"):
        build_optimizer(OptimConfig(lr_mult=(("heads", 2.0),)), _trainable())


def test_gradient_accumulation_applies_every_k_steps():
    params = _trainable()
    opt = build_optimizer(OptimConfig(lr=1e-2, warmup_steps=0, grad_accum=3, clip_norm=None), params)
    state = opt.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    p = params
    moved = []
    for _ in range(6):
        updates, state = opt.update(grads, state, p)
        new = optax.apply_updates(p, updates)
        moved.append(any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(p))))
        p = new
    assert moved == [False, False, True, False, False, True]


def test_bad_optimizer_config_is_named():
    with pytest.raises(ValueError, match="sgdw"):
        OptimConfig(name="sgdw")
    with pytest.raises(ValueError, match="decay"):
        OptimConfig(decay="step")
