"""The train step: LoRA heads on a frozen base, optimizer state, sharded equality, overfitting."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxdiff.model import ModelOptions, build_model, place
from jaxdiff.model.lora import HEADS, LoRASpec, add_length_head, add_lora
from jaxdiff.model.mask_token import add_mask_token
from jaxdiff.parallel import make_mesh, use_mesh
from jaxdiff.train import state as st
from jaxdiff.train.optim import OptimConfig, build_optimizer, tree_bytes
from jaxdiff.train.step import (ObjectiveConfig, init_opt_state, jit_train_step, loss_fn, make_train_step,
                                 step_shardings)
from tests.model import tiny

EXPERT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", r"experts\.(gate|up|down)_proj")


def _model(seed=0, targets=EXPERT_TARGETS, options=ModelOptions(), **cfg_kw):
    m = build_model(tiny.moe(**cfg_kw), seed=seed, options=options)
    add_mask_token(m, mask_token_id=255)
    for h in HEADS:
        add_lora(m, h, LoRASpec(rank=4, alpha=8, targets=targets), seed=seed + 1)
    add_length_head(m, (8, 16, 24, 32), hidden=16)
    return m


def _batch(b=4, l=32, seed=0):
    rs = np.random.RandomState(seed)
    valid = np.ones((b, l), bool)
    valid[0, -5:] = False
    return {"tokens": jnp.asarray(rs.randint(0, 250, (b, l)), jnp.int32), "valid": jnp.asarray(valid),
            "prompt_lengths": jnp.asarray(rs.randint(4, 12, b), jnp.int32)}


def _randomize_b(model):
    """Non-zero B so adapters matter (B = 0 at init makes every adapter a no-op)."""
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Any(*[t for t in __import__(
            "jaxdiff.model.lora", fromlist=["HEAD_TYPES"]).HEAD_TYPES.values()]))):
        if str(path[-1]).endswith("_b"):
            var.set_value(jax.random.normal(jax.random.key(len(path)), var.shape) * 0.1)


def test_zero_b_adapters_reproduce_the_base_exactly():
    base = build_model(tiny.moe(), seed=3)
    tokens = jnp.asarray(np.random.RandomState(0).randint(0, 256, (2, 12)))
    ref = np.asarray(base(tokens, attention="bidirectional"))
    for h in HEADS:
        add_lora(base, h, LoRASpec(rank=4, targets=EXPERT_TARGETS))
    for h in (None, *HEADS):
        out = base.forward(tokens, lora=h, attention="bidirectional").logits
        np.testing.assert_array_equal(np.asarray(out), ref)


def test_frozen_is_bitwise_unchanged_and_only_the_trained_head_moves():
    m = _model()
    g, frozen, trainable = st.split(m)
    frozen_before = jax.tree.map(np.array, frozen)
    train_before = {k: np.array(v[...]) for k, v in nnx.to_flat_state(trainable)}
    opt = build_optimizer(OptimConfig(lr=1e-2, warmup_steps=1), trainable)
    step = jit_train_step(make_train_step(g, opt, ObjectiveConfig(diffusion_weight=1.0)))
    opt_state = opt.init(trainable)
    for i in range(3):
        trainable, opt_state, metrics = step(frozen, trainable, opt_state, _batch(seed=i), jax.random.key(i), i)
    assert int(metrics["skipped"]) == 0
    jax.tree.map(np.testing.assert_array_equal, frozen_before, jax.tree.map(np.array, frozen))
    moved = {k for k, v in nnx.to_flat_state(trainable) if not np.array_equal(np.asarray(v[...]), train_before[k])}
    keys = lambda s: {k for k in train_before if s in ".".join(map(str, k))}
    assert moved, "nothing trained"
    assert moved <= keys("lora_diffusion"), f"non-diffusion leaves moved: {sorted(moved - keys('lora_diffusion'))[:3]}"
    assert any("experts" in ".".join(map(str, k)) for k in moved)  # per-expert adapters train too


def test_optimizer_state_is_about_twice_the_trainable_bytes():
    m = _model()
    _, frozen, trainable = st.split(m)
    opt = build_optimizer(OptimConfig(name="adamw"), trainable)
    ratio = tree_bytes(opt.init(trainable)) / tree_bytes(trainable)
    assert 1.99 < ratio < 2.01, ratio
    assert tree_bytes(opt.init(trainable)) < tree_bytes(frozen)


SHARDED_OBJ = ObjectiveConfig(ar_weight=0.5, diffusion_weight=1.0, length_weight=0.3, sft=True, vocab_chunk=96)
SHARDED_MODEL = dict(seed=4, num_hidden_layers=1)   # one MoE layer: sharding does not depend on depth


def _sharded_grads_of(model, batch, key):
    g, frozen, trainable = st.split(model)
    f = jax.jit(jax.value_and_grad(lambda t, fr, b, k: loss_fn(t, fr, g, b, k, 0, SHARDED_OBJ, False)[0]))
    return f(trainable, frozen, batch, key)


@pytest.fixture(scope="module")
def single_device_grads():
    """The single-device loss and gradients every layout is compared with (computed once)."""
    batch, key = _batch(b=8), jax.random.key(7)
    m1 = _model(**SHARDED_MODEL)
    _randomize_b(m1)
    return batch, key, _sharded_grads_of(m1, batch, key)


@pytest.mark.parametrize("layout", [{"data": 2, "fsdp": 2, "expert": 2}, {"fsdp": 2, "tensor": 2, "expert": 2}],
                         ids=["data2xfsdp2xexpert2", "fsdp2xtensor2xexpert2"])
def test_sharded_loss_and_grads_equal_single_device(layout, single_device_grads):
    batch, key, (loss1, grads1) = single_device_grads
    mesh = make_mesh(layout)
    m2 = _model(**SHARDED_MODEL)
    _randomize_b(m2)
    with use_mesh(mesh):
        place(m2, mesh)
        loss2, grads2 = _sharded_grads_of(m2, batch, key)
    np.testing.assert_allclose(float(loss2), float(loss1), rtol=1e-5, atol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5), grads2, grads1)


def test_sharded_jitted_step_runs_with_explicit_shardings():
    mesh = make_mesh({"data": 2, "expert": 4})
    m = _model()
    with use_mesh(mesh):
        place(m, mesh)
        g, frozen, trainable = st.split(m)
        opt = build_optimizer(OptimConfig(), trainable)
        shardings = step_shardings(mesh, frozen, trainable, opt)
        opt_state = init_opt_state(opt, trainable, shardings[2])
        step = jit_train_step(make_train_step(g, opt, ObjectiveConfig()), shardings=shardings)
        batch = jax.device_put(_batch(b=8), shardings[3])
        trainable, opt_state, metrics = step(frozen, trainable, opt_state, batch, jax.random.key(0), 0)
    assert np.isfinite(float(metrics["loss"]))
    lora_b = nnx.to_flat_state(trainable)
    expert_b = [v for k, v in lora_b if "experts" in ".".join(map(str, k))][0]
    assert len(expert_b.sharding.device_set) == 8


def test_non_finite_step_is_skipped():
    m = _model()
    g, frozen, trainable = st.split(m)
    leaf = nnx.to_flat_state(trainable)[0][1]
    leaf.set_value(leaf[...].at[0].set(jnp.nan))
    before = jax.tree.map(np.array, trainable)
    opt = build_optimizer(OptimConfig(), trainable)
    step = jit_train_step(make_train_step(g, opt, ObjectiveConfig(length_weight=1.0, sft=True)))
    trainable, _, metrics = step(frozen, trainable, opt.init(trainable), _batch(), jax.random.key(0), 0)
    assert int(metrics["skipped"]) == 1
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), trainable, before)


@pytest.mark.parametrize("remat", [False, True])
def test_full_training_overfits_a_small_batch(remat):
    m = build_model(tiny.dense(num_hidden_layers=2, hidden_size=64), seed=0, options=ModelOptions(remat=remat))
    add_mask_token(m, mask_token_id=255)
    g, frozen, trainable = st.split(m, full_training=True)
    opt = build_optimizer(OptimConfig(lr=3e-3, warmup_steps=20, total_steps=300, clip_norm=1.0), trainable)
    obj = ObjectiveConfig(antithetic=True)
    step = jit_train_step(make_train_step(g, opt, obj, full_training=True))
    opt_state = opt.init(trainable)
    batch = _batch(b=4, l=24)
    eval_key = jax.random.key(123)
    eval_loss = jax.jit(lambda t: loss_fn(t, frozen, g, batch, eval_key, 0, obj, True)[0])
    first = float(eval_loss(trainable))
    for i in range(300):
        trainable, opt_state, _ = step(frozen, trainable, opt_state, batch, jax.random.fold_in(jax.random.key(1), i), i)
    last = float(eval_loss(trainable))
    assert last < 0.1 * first, (first, last)


def test_step_on_a_frozen_fp8_base_with_bf16_activations():
    import ml_dtypes
    from jaxdiff.model import set_params, flat_params
    cfg = tiny.moe(fp8_block_size=(128, 128))
    m = build_model(cfg, dtype=jnp.bfloat16, seed=0)
    rs = np.random.RandomState(0)
    params = {k: (np.asarray(rs.randn(*v.shape) * 0.05).astype(ml_dtypes.float8_e4m3fn)
                  if v.dtype == jnp.float8_e4m3fn else np.asarray(v)) for k, v in flat_params(m).items()}
    set_params(m, params)
    add_mask_token(m, mask_token_id=255)
    add_lora(m, "diffusion", LoRASpec(rank=4, targets=EXPERT_TARGETS))
    g, frozen, trainable = st.split(m)
    fp8_leaves = [x for x in jax.tree.leaves(frozen) if x.dtype == jnp.float8_e4m3fn]
    assert len(fp8_leaves) >= 4 * cfg.num_hidden_layers
    before = jax.tree.map(np.array, frozen)
    opt = build_optimizer(OptimConfig(lr=1e-2, warmup_steps=0), trainable)
    step = jit_train_step(make_train_step(g, opt, ObjectiveConfig()))
    opt_state = opt.init(trainable)
    losses = []
    for i in range(3):
        trainable, opt_state, metrics = step(frozen, trainable, opt_state, _batch(), jax.random.key(i), i)
        losses.append(float(metrics["loss"]))
    assert all(np.isfinite(losses)) and int(metrics["skipped"]) == 0
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a).view(np.uint8), b.view(np.uint8)),
                 frozen, before)


@pytest.mark.parametrize("policy", [None, "dots"])
def test_lora_step_with_remat_on_a_frozen_base(policy):
    """Remat over layers whose base variables are frozen (traced by the jit, not the grad): the
    30B config's setting. nnx.remat used to refuse it ("different trace level")."""
    options = ModelOptions(remat=True, remat_policy=policy or "full")
    m = build_model(tiny.dense(num_hidden_layers=2, hidden_size=64), seed=0, options=options)
    add_mask_token(m, mask_token_id=255)
    add_lora(m, "diffusion", LoRASpec(rank=4))
    g, frozen, trainable = st.split(m)
    opt = build_optimizer(OptimConfig(lr=1e-2, warmup_steps=0), trainable)
    step = jit_train_step(make_train_step(g, opt, ObjectiveConfig()))
    new, _, metrics = step(frozen, trainable, opt.init(trainable), _batch(), jax.random.key(0), 0)
    assert int(metrics["skipped"]) == 0 and np.isfinite(float(metrics["loss"]))
    moved = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(trainable))]
    assert any(moved)


def test_router_losses_match_transformers_and_numpy():
    """jaxdiff's load-balancing loss is transformers' Qwen3-MoE `load_balancing_loss_func` (with
    and without padding); the z-loss is a NumPy transcription of ST-MoE's."""
    import torch
    from transformers.models.qwen3_moe.modeling_qwen3_moe import load_balancing_loss_func

    from jaxdiff.model import moe
    rng = np.random.RandomState(0)
    b, l, e, k, layers = 2, 5, 8, 2, 3
    logits = [rng.randn(b * l, e).astype(np.float32) * 2 for _ in range(layers)]
    valid = np.ones((b, l), bool)
    valid[0, :2] = False
    for mask in (None, valid):
        ref = load_balancing_loss_func(tuple(torch.tensor(x) for x in logits), e, k,
                                       None if mask is None else torch.tensor(mask.astype(np.int64)))
        got = moe.load_balancing_loss(tuple(jnp.asarray(x) for x in logits), k,
                                      None if mask is None else jnp.asarray(mask))
        np.testing.assert_allclose(float(got), float(ref), rtol=1e-5)
    z = np.concatenate(logits)
    lse = np.log(np.exp(z).sum(-1))
    w = np.tile(valid.reshape(-1), layers)
    np.testing.assert_allclose(float(moe.router_z_loss(tuple(map(jnp.asarray, logits)), jnp.asarray(valid))),
                               (lse ** 2)[w].mean(), rtol=1e-5)


def test_length_target_counts_an_eos_padded_answer_to_its_first_eos():
    from jaxdiff.train.step import answer_lengths

    eos = 9
    tokens = jnp.asarray([[1, 2, 3, 4, 9, 9, 9, 0],     # prompt 2, answer "3 4 EOS" padded with EOS
                          [1, 2, 3, 4, 5, 6, 0, 0],     # prompt 3, answer without EOS: all 3 valid
                          [1, 9, 3, 9, 0, 0, 0, 0]])    # an EOS inside the prompt does not count
    valid = jnp.asarray([[1, 1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 0, 0, 0, 0]], bool)
    plen = jnp.asarray([2, 3, 2])
    np.testing.assert_array_equal(answer_lengths(tokens, valid, plen, eos), [3, 3, 2])
    np.testing.assert_array_equal(answer_lengths(tokens, valid, plen, None), [5, 3, 2])
