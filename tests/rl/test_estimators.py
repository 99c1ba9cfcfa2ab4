"""The likelihood estimators against NumPy: coupled complementary masks over all 2^L masks against
its closed-form expectation, mean-field against a transcription, the settings' checks, and the
gradient through trace replay's scan / cond / remat against finite differences."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxdiff.model.lora import LoRADiffusion
from jaxdiff.rl.estimators import EstimatorSettings, coupled_given, coupled_mask, estimate, token_log_probs
from tests.rl.models import batch_of, full_logits, quick_prng, small_model  # noqa: F401

V, MASK, EOS = 16, 15, 9
A = 3


@pytest.fixture(scope="module")
def model():
    return small_model(V, MASK, EOS, head_scale=4.0, seed=2)


@pytest.fixture(scope="module")
def batch():
    """Two rows, prompts of 4 and 3 real tokens (left-padded), answers of 3 tokens; the second
    row's answer ends at its EOS, so its last token is not valid."""
    prompt = np.array([[5, 6, 7, 8], [0, 10, 11, 12]], np.int32)
    mask = np.array([[1, 1, 1, 1], [0, 1, 1, 1]], bool)
    answer = np.array([[4, 12, 7], [6, EOS, EOS]], np.int32)
    return batch_of(prompt, mask, answer, valid=[[1, 1, 1], [1, 1, 0]])


def np_logp(logits, targets, temperature=1.0):
    z = logits / temperature
    z = z - z.max(-1, keepdims=True)
    z = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return np.take_along_axis(z, targets[..., None], -1)[..., 0]


def answer_logp_np(model, b, answer_in):
    """NumPy log p(answer tokens | prompt, answer_in) at every answer position, from the plain forward."""
    x = np.concatenate([np.asarray(b.prompt_ids), answer_in], axis=1)
    valid = np.concatenate([np.asarray(b.prompt_mask), np.ones(answer_in.shape, bool)], axis=1)
    return np_logp(full_logits(model, x, padding_mask=valid)[:, -A:], np.asarray(b.tokens))


def test_coupled_over_all_masks_equals_its_expectation(model, batch):
    t = 0.3
    s = EstimatorSettings("coupled", mask_id=MASK, vocab_chunk=6)
    tokens = np.asarray(batch.tokens)
    subsets = [np.array(m, bool) for m in itertools.product([False, True], repeat=A)]
    # NumPy: log p(o_k | answer masked exactly on S), for every S
    lp = {m.tobytes(): answer_logp_np(model, batch, np.where(m, MASK, tokens)) for m in subsets}
    full = lp[np.ones(A, bool).tobytes()]

    run = jax.jit(lambda b, t, m: coupled_given(model, b, t, m, s))
    mean = 0.0
    for m in subsets:
        est, tok_mask = map(np.asarray, run(batch, jnp.float32(t), jnp.broadcast_to(jnp.asarray(m), tokens.shape)))
        np.testing.assert_array_equal(tok_mask, np.asarray(batch.valid))
        # each token scored once: under M_t where M_t masks it (weight 1/t), else under the complement
        once = np.where(m, lp[m.tobytes()] / t, lp[(~m).tobytes()] / (1 - t))
        np.testing.assert_allclose(est, 0.5 * (full + once), atol=1e-5)
        mean = mean + t ** m.sum() * (1 - t) ** (A - m.sum()) * est

    # closed form: E = 1/2 [log p(o_k | all masked) + L_k(t) + L_k(1 - t)], where
    # L_k(r) = E_{S ~ Bernoulli(r)^A} [1{k in S} / r * log p(o_k | S masked)]
    def ell(r):
        out = np.zeros_like(full)
        for m in subsets:
            out += np.where(m, r ** (m.sum() - 1) * (1 - r) ** (A - m.sum()), 0.0) * lp[m.tobytes()]
        return out

    expectation = 0.5 * (full + ell(t) + ell(1 - t))
    print("E[coupled] over the 8 masks:", mean.round(4).tolist(), "closed form:", expectation.round(4).tolist())
    np.testing.assert_allclose(mean, expectation, atol=1e-5)

    # the draws of `coupled`: t ~ U(0.2, 0.8), each answer position in M_t with probability t
    draws = [coupled_mask(jax.random.key(i), (64, 64)) for i in range(10)]
    assert all(0.2 <= float(t) <= 0.8 for t, _ in draws)
    assert max(abs(float(m.mean()) - float(t)) for t, m in draws) < 0.05


def test_mean_field_matches_numpy(model, batch):
    s = EstimatorSettings("mean_field", mask_id=MASK, temperature=0.8, prompt_mask_prob=0.5, vocab_chunk=6)
    key = jax.random.key(7)
    got, tok_mask = map(np.asarray, estimate(model, batch, key, s))
    # transcription of d1's forward_process: u ~ U(0, 1) per prompt position, the same draw
    u = np.asarray(jax.random.uniform(key, batch.prompt_ids.shape))
    prompt, pmask = np.asarray(batch.prompt_ids), np.asarray(batch.prompt_mask)
    hide = pmask & (u < 0.5)
    assert hide.any() and not hide.all()
    x = np.concatenate([np.where(hide, MASK, prompt), np.full((2, A), MASK)], axis=1)
    valid = np.concatenate([pmask, np.ones((2, A), bool)], axis=1)
    want = np_logp(full_logits(model, x, padding_mask=valid)[:, -A:], np.asarray(batch.tokens), 0.8)
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_array_equal(tok_mask, np.asarray(batch.valid))   # the token after EOS is not counted


def test_settings_refuse_bad_values():
    with pytest.raises(ValueError, match="estimator 'elbo'"):
        EstimatorSettings("elbo", mask_id=1)
    with pytest.raises(ValueError, match="shrink=0"):
        EstimatorSettings("trace_replay", mask_id=1, shrink=0)
    with pytest.raises(ValueError, match="t_range"):
        EstimatorSettings("coupled", mask_id=1, t_range=(0.0, 0.8))
    with pytest.raises(ValueError, match="block_length"):
        EstimatorSettings("mean_field", mask_id=1, attention="block")
    with pytest.raises(ValueError, match="temperature"):
        EstimatorSettings("mean_field", mask_id=1, temperature=0.0)


def test_trace_replay_gradient_matches_finite_differences(model, batch):
    """d/d(adapter) of the sum of replayed log-probabilities (a scan over step groups, each group a
    rematerialised forward under lax.cond) against central differences along a random direction."""
    b = batch.replace(step_map=jnp.asarray([[1, 0, 2], [0, 1, 1]], jnp.int32))   # row 2: two tokens at step 1
    s = EstimatorSettings("trace_replay", mask_id=MASK)
    graphdef, lora, rest = nnx.split(model, LoRADiffusion, ...)

    @jax.jit
    def value_and_grad(lora):
        def f(lora):
            logp, mask = token_log_probs(nnx.merge(graphdef, lora, rest), b, None, s)
            return jnp.sum(jnp.where(mask, logp, 0.0))
        return jax.value_and_grad(f)(lora)

    _, grad = value_and_grad(lora)
    rng = np.random.RandomState(9)
    d = jax.tree.map(lambda x: rng.randn(*x.shape).astype(np.float32), lora)
    eps = 3e-4
    shift = lambda sign: jax.tree.map(lambda x, y: np.asarray(x) + sign * eps * y, lora, d)
    fd = (float(value_and_grad(shift(1))[0]) - float(value_and_grad(shift(-1))[0])) / (2 * eps)
    analytic = sum(float(np.vdot(np.asarray(g), y)) for g, y in zip(jax.tree.leaves(grad), jax.tree.leaves(d)))
    print(f"directional derivative: analytic {analytic:.6f}, central difference {fd:.6f}")
    assert abs(analytic) > 1e-2
    assert abs(analytic - fd) < 5e-3 * abs(analytic)
