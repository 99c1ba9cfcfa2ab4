"""Expert parallelism by all-to-all in shard_map: the full train step (loss, gradients of every
LoRA head, the updated trainable tree) on 8 fake CPU devices equals the single-device step, in
three layouts, with the all-to-all actually in the compiled program; capacity drops are counted."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxdiff.model import ModelOptions, build_model, place
from jaxdiff.model.expert_parallel import capacity, expert_parallel_moe
from jaxdiff.model.moe import dense_reference_moe
from jaxdiff.parallel import make_mesh, use_mesh
from jaxdiff.train import state as st
from jaxdiff.train.optim import OptimConfig, build_optimizer
from jaxdiff.train.step import ObjectiveConfig, make_train_step
from tests.model import tiny
from tests.train.test_step import _batch, _model, _randomize_b

LAYOUTS = [{"expert": 8}, {"fsdp": 2, "expert": 4}, {"data": 2, "expert": 2, "tensor": 2}]
# one MoE layer: the dispatch, the router losses and every head's gradients do not depend on depth
MODEL = dict(seed=5, num_experts=8, num_hidden_layers=1)


def _step(model, batch, key, mesh=None):
    obj = ObjectiveConfig(ar_weight=0.5, diffusion_weight=1.0, length_weight=0.3, sft=True, vocab_chunk=96,
                          router_aux_coef=0.01, router_z_coef=0.001)
    g, frozen, trainable = st.split(model)
    opt = build_optimizer(OptimConfig(name="adamw", lr=1e-3), trainable)
    step = jax.jit(make_train_step(g, opt, obj))
    opt_state = opt.init(trainable)
    args = (frozen, trainable, opt_state, batch, key, 0)
    hlo = step.lower(*args).compile().as_text()
    new_trainable, _, metrics = step(*args)
    return jax.device_get((new_trainable, metrics)), hlo


@pytest.fixture(scope="module")
def single_device():
    """The single-device step every layout is compared with (computed once): batch, key, result."""
    batch, key = _batch(b=8), jax.random.key(3)
    m1 = _model(**MODEL)
    _randomize_b(m1)
    (t1, m1_metrics), hlo1 = _step(m1, batch, key)
    assert "all-to-all" not in hlo1
    return batch, key, t1, m1_metrics


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda l: "x".join(f"{k}{v}" for k, v in l.items()))
def test_train_step_with_all_to_all_equals_single_device(layout, single_device):
    batch, key, t1, m1_metrics = single_device
    mesh = make_mesh(layout)
    m2 = _model(**MODEL, options=ModelOptions(mesh=mesh))
    _randomize_b(m2)
    with use_mesh(mesh):
        place(m2, mesh)
        (t2, m2_metrics), hlo2 = _step(m2, batch, key, mesh)
    assert "all-to-all" in hlo2, "the expert-parallel dispatch did not reach the compiled program"
    assert float(m2_metrics["moe/dropped_frac"]) == 0.0     # dropless by default
    for k in ("loss", "diffusion/loss", "ar/loss", "length/loss", "moe/aux_loss", "moe/z_loss", "grad_norm"):
        np.testing.assert_allclose(float(m2_metrics[k]), float(m1_metrics[k]), rtol=1e-5, err_msg=k)
    flat1, flat2 = nnx.to_flat_state(t1), nnx.to_flat_state(t2)
    for (p1, v1), (p2, v2) in zip(flat1, flat2):
        assert p1 == p2
        np.testing.assert_allclose(np.asarray(v2), np.asarray(v1), atol=1e-5, err_msg=str(p1))


def test_dispatch_matches_the_dense_reference_and_counts_drops():
    rng = np.random.RandomState(0)
    t, d, f, e, k = 64, 16, 24, 8, 2
    x = jnp.asarray(rng.randn(t, d).astype(np.float32))
    router = jnp.asarray(rng.randn(e, d).astype(np.float32))
    gw, uw = (jnp.asarray(rng.randn(e, f, d).astype(np.float32) * 0.3) for _ in range(2))
    dw = jnp.asarray(rng.randn(e, d, f).astype(np.float32) * 0.3)
    ref = dense_reference_moe(x, router, gw, uw, dw, k, True)
    mesh = make_mesh({"data": 2, "expert": 4})
    with use_mesh(mesh):
        y, logits, dropped = jax.jit(lambda *a: expert_parallel_moe(*a, mesh=mesh, top_k=k, norm_topk_prob=True))(
            x, router, (gw, None), (uw, None), (dw, None))
    np.testing.assert_allclose(np.asarray(y), np.asarray(ref), atol=1e-5)
    assert int(dropped) == 0
    # capacity factor 0.5: C = ceil(0.5 * 8 * 2 / 8) = 1 slot per expert per device (8 local tokens)
    assert capacity(8, k, e, 0.5) == 1
    with use_mesh(mesh):
        y2, _, dropped2 = expert_parallel_moe(x, router, (gw, None), (uw, None), (dw, None), mesh=mesh, top_k=k, norm_topk_prob=True,
                                              capacity_factor=0.5)
    # NumPy count: per device (8 tokens each), assignments past the first to each expert are dropped
    chosen = np.argsort(-np.asarray(logits), axis=1)[:, :k]
    want = sum(int(np.maximum(np.bincount(chosen[i * 8:(i + 1) * 8].ravel(), minlength=e) - 1, 0).sum())
               for i in range(8))
    assert int(dropped2) == want > 0
    assert not np.allclose(np.asarray(y2), np.asarray(ref), atol=1e-5)   # dropped assignments are missing


def test_all_to_all_needs_an_expert_axis():
    with pytest.raises(ValueError, match="needs a mesh with expert > 1"):
        build_model(tiny.moe(), seed=0, options=ModelOptions(moe_dispatch="all_to_all"))
