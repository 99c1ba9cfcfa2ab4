"""Expert parallelism by all-to-all in shard_map: the full train step (loss, gradients of every
LoRA head, the updated trainable tree) on 8 fake CPU devices equals the single-device step, in
three layouts, with the all-to-all actually in the compiled program (dropless); the dropless
dispatch equals the dense reference with either grouped kernel; the capacity dispatch drops exactly
the assignments past capacity and counts them; only the training loss's forward asks for capacity."""
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
    m2 = _model(**MODEL, options=ModelOptions(mesh=mesh, moe_capacity_factor=None))   # parity: dropless
    _randomize_b(m2)
    with use_mesh(mesh):
        place(m2, mesh)
        (t2, m2_metrics), hlo2 = _step(m2, batch, key, mesh)
    assert "all-to-all" in hlo2, "the expert-parallel dispatch did not reach the compiled program"
    assert float(m2_metrics["moe/dropped_frac"]) == 0.0
    for k in ("loss", "diffusion/loss", "ar/loss", "length/loss", "moe/aux_loss", "moe/z_loss", "grad_norm"):
        np.testing.assert_allclose(float(m2_metrics[k]), float(m1_metrics[k]), rtol=1e-5, err_msg=k)
    flat1, flat2 = nnx.to_flat_state(t1), nnx.to_flat_state(t2)
    for (p1, v1), (p2, v2) in zip(flat1, flat2):
        assert p1 == p2
        np.testing.assert_allclose(np.asarray(v2), np.asarray(v1), atol=1e-5, err_msg=str(p1))


def _experts(rng, d, f, e):
    gw, uw = (jnp.asarray(rng.randn(e, f, d).astype(np.float32) * 0.3) for _ in range(2))
    return gw, uw, jnp.asarray(rng.randn(e, d, f).astype(np.float32) * 0.3)


@pytest.mark.parametrize("impl", ["tiled", "ragged"])
def test_dropless_dispatch_matches_the_dense_reference(impl):
    rng = np.random.RandomState(0)
    t, d, f, e, k = 64, 16, 24, 8, 3
    x = jnp.asarray(rng.randn(t, d).astype(np.float32))
    router = jnp.asarray(rng.randn(e, d).astype(np.float32))
    gw, uw, dw = _experts(rng, d, f, e)
    ref = dense_reference_moe(x, router, gw, uw, dw, k, True)
    mesh = make_mesh({"data": 2, "expert": 4})   # L = 2 local experts < k: a token sends a device <= 2 rows
    with use_mesh(mesh):
        y, _, dropped = jax.jit(lambda *a: expert_parallel_moe(*a, mesh=mesh, top_k=k, norm_topk_prob=True,
                                                              impl=impl))(x, router, (gw, None), (uw, None), (dw, None))
    np.testing.assert_allclose(np.asarray(y), np.asarray(ref), atol=1e-5)
    assert int(dropped) == 0


def test_capacity_dispatch_drops_exactly_the_assignments_past_capacity():
    rng = np.random.RandomState(1)
    t, d, f, e, k = 64, 16, 24, 8, 2
    x = jnp.asarray(rng.randn(t, d).astype(np.float32))
    router = jnp.asarray(rng.randn(e, d).astype(np.float32))
    gw, uw, dw = _experts(rng, d, f, e)
    mesh = make_mesh({"data": 2, "expert": 4})   # 8 devices over the batch axes: 8 local tokens each
    assert capacity(8, k, e, 0.5) == 1            # C = ceil(0.5 * 8 * 2 / 8) = 1 slot per expert per device
    with use_mesh(mesh):
        y, logits, dropped = jax.jit(lambda *a: expert_parallel_moe(
            *a, mesh=mesh, top_k=k, norm_topk_prob=True, capacity_factor=0.5))(
            x, router, (gw, None), (uw, None), (dw, None))
    # NumPy: per device, the first assignment (token order, then rank) to each expert is kept
    probs = np.asarray(jax.nn.softmax(logits, axis=-1))
    chosen = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    w = np.take_along_axis(probs, chosen, 1)
    w = w / w.sum(1, keepdims=True)
    xs, g, u, dn = (np.asarray(a, np.float64) for a in (x, gw, uw, dw))
    want, n_dropped = np.zeros((t, d)), 0
    for dev in range(8):
        seen = set()
        for tok in range(dev * 8, dev * 8 + 8):
            for j in range(k):
                ex = chosen[tok, j]
                if ex in seen:
                    n_dropped += 1
                    continue
                seen.add(ex)
                h = xs[tok] @ g[ex].T
                want[tok] += w[tok, j] * ((h / (1 + np.exp(-h)) * (xs[tok] @ u[ex].T)) @ dn[ex].T)
    assert int(dropped) == n_dropped > 0
    np.testing.assert_allclose(np.asarray(y), want, atol=1e-5)


def test_forward_is_dropless_unless_the_training_loss_asks_for_capacity():
    """Default options carry a capacity factor: a plain forward (sampling, eval, RL) on 8 devices
    still equals one device exactly; only `moe_capacity=True` (the train loss) drops and counts."""
    tokens = jnp.asarray(np.random.RandomState(2).randint(0, 250, (8, 16)))
    ref = tiny.jitted(build_model(tiny.moe(num_experts=8), seed=4))(tokens, attention="bidirectional")
    mesh = make_mesh({"expert": 8})
    m = build_model(tiny.moe(num_experts=8), seed=4, options=ModelOptions(mesh=mesh, moe_capacity_factor=0.5))
    with use_mesh(mesh):
        place(m, mesh)
        graphdef, state = nnx.split(m)
        def fwd(state, t, capacity):
            out = nnx.merge(graphdef, state).forward(t, attention="bidirectional", moe_capacity=capacity)
            return out.logits, out.moe_dropped

        fwd = jax.jit(fwd, static_argnums=2)
        (plain, n_plain), (capped, n_capped) = fwd(state, tokens, False), fwd(state, tokens, True)
    np.testing.assert_allclose(np.asarray(plain), np.asarray(ref), atol=1e-5)
    assert int(n_plain) == 0
    assert int(n_capped) > 0
    assert not np.allclose(np.asarray(capped), np.asarray(ref), atol=1e-3)


def test_all_to_all_needs_an_expert_axis():
    with pytest.raises(ValueError, match="needs a mesh with expert > 1"):
        build_model(tiny.moe(), seed=0, options=ModelOptions(moe_dispatch="all_to_all"))
