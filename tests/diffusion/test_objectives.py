"""Losses and schedules against direct NumPy transcriptions of the published formulas."""
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.diffusion import corrupt, losses
from jaxdiff.model.lora import LoRAWeights, project
from jaxdiff.diffusion.schedules import SCHEDULES, Schedule, inverse_prob_weight, sample_times


def _np_log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


@pytest.fixture
def case():
    rs = np.random.RandomState(0)
    b, l, v = 3, 7, 11
    logits = rs.randn(b, l, v).astype(np.float32) * 3
    targets = rs.randint(0, v, (b, l))
    masked = rs.rand(b, l) < 0.5
    t = rs.uniform(0.05, 1, b).astype(np.float32)
    return logits, targets, masked, t


def test_llada_loss_matches_numpy(case):
    logits, targets, masked, t = case
    b, l, _ = logits.shape
    p = np.broadcast_to(t[:, None], (b, l))
    nll = -np.take_along_axis(_np_log_softmax(logits.astype(np.float64)), targets[..., None], -1)[..., 0]
    ref = np.sum(np.where(masked, nll / p, 0)) / (b * l)                  # LLaDA eq. (3)
    stats = losses.token_stats_from_logits(jnp.asarray(logits), jnp.asarray(targets))
    out = losses.diffusion_loss(stats, jnp.asarray(masked), jnp.asarray(p), kind="llada")
    np.testing.assert_allclose(float(out), ref, rtol=1e-6, atol=1e-6)
    # SFT: per-example answer length, then mean over the batch (LLaDA SFT recipe).
    ans = np.array([5, 7, 3])
    ref_sft = np.sum(np.sum(np.where(masked, nll / p, 0), 1) / ans) / b
    out_sft = losses.diffusion_loss(stats, jnp.asarray(masked), jnp.asarray(p), answer_lengths=jnp.asarray(ans))
    np.testing.assert_allclose(float(out_sft), ref_sft, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", SCHEDULES)
def test_mdlm_loss_matches_numpy(case, kind):
    logits, targets, masked, t = case
    b, l, _ = logits.shape
    sched = Schedule(kind)
    p = np.asarray(sched.mask_prob(jnp.asarray(t)), np.float64)
    dp = np.asarray(sched.mask_prob_derivative(jnp.asarray(t)), np.float64)
    nll = -np.take_along_axis(_np_log_softmax(logits.astype(np.float64)), targets[..., None], -1)[..., 0]
    # MDLM: -alpha'(t) / (1 - alpha(t)) = p'(t) / p(t) times the masked-token NLL.
    ref = np.sum(np.where(masked, nll * (dp / p)[:, None], 0)) / (b * l)
    stats = losses.token_stats_from_logits(jnp.asarray(logits), jnp.asarray(targets))
    out = losses.diffusion_loss(stats, jnp.asarray(masked), jnp.asarray(np.broadcast_to(p[:, None], (b, l))),
                                kind="mdlm", dp_mask=jnp.asarray(np.broadcast_to(dp[:, None], (b, l))))
    np.testing.assert_allclose(float(out), ref, rtol=1e-6, atol=1e-6)


def test_soft_ce_matches_numpy(case):
    logits, targets, masked, t = case
    b, l, v = logits.shape
    eps = 0.2
    logq = _np_log_softmax(logits.astype(np.float64))
    soft = np.full((b, l, v), eps / v)
    np.put_along_axis(soft, targets[..., None], 1 - eps + eps / v, -1)
    ce = -(soft * logq).sum(-1)                      # CE against the smoothed one-hot
    p = np.broadcast_to(t[:, None], (b, l))
    ref = np.sum(np.where(masked, ce / p, 0)) / (b * l)
    stats = losses.token_stats_from_logits(jnp.asarray(logits), jnp.asarray(targets))
    out = losses.diffusion_loss(stats, jnp.asarray(masked), jnp.asarray(p), kind="soft_ce", label_smoothing=eps)
    np.testing.assert_allclose(float(out), ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("chunk", [4, 11, 64])
def test_vocab_chunked_stats_equal_full_logits(chunk):
    rs = np.random.RandomState(1)
    h = rs.randn(9, 8).astype(np.float32)
    w = rs.randn(11, 8).astype(np.float32)
    targets = rs.randint(0, 11, 9)
    targets[::2] = (h @ w.T).argmax(axis=1)[::2]        # some rows right, so `correct` is not all False
    full = losses.token_stats_from_logits(jnp.asarray(h @ w.T), jnp.asarray(targets))
    assert np.asarray(full.correct).sum() >= 5
    ch = losses.token_stats_chunked(jnp.asarray(h), jnp.asarray(w), jnp.asarray(targets), chunk=chunk)
    np.testing.assert_allclose(np.asarray(ch.nll), np.asarray(full.nll), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(ch.mean_nll), np.asarray(full.mean_nll), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(ch.correct), np.asarray(full.correct))
    rows = jnp.asarray(np.arange(9) % 3 != 0)                # the loss-rows path (blocks of 4 rows)
    part = losses.token_stats_chunked(jnp.asarray(h), jnp.asarray(w), jnp.asarray(targets), chunk=chunk, rows=rows,
                                      row_block=4)
    np.testing.assert_array_equal(np.asarray(part.correct), np.asarray(full.correct) & np.asarray(rows))


def _head_case(v, n=9, d=8, r=3):
    rs = np.random.RandomState(4)
    return (jnp.asarray(rs.randn(n, d).astype(np.float32)), jnp.asarray(rs.randn(v, d).astype(np.float32)),
            jnp.asarray(rs.randn(r, d).astype(np.float32) * 0.3), jnp.asarray(rs.randn(v, r).astype(np.float32) * 0.3),
            jnp.asarray(rs.randint(0, v, n)))


def _assert_same_loss_stats_and_grads(chunked, reference, args, argnums):
    """chunked and reference (-> (loss, (nll, mean_nll, correct))) agree in value, per-token stats
    and the gradient with respect to args[argnums]; returns the chunked (loss, gradients)."""
    (v_ch, s_ch), g_ch = jax.jit(jax.value_and_grad(chunked, argnums=argnums, has_aux=True))(*args)
    (v_ref, s_ref), g_ref = jax.jit(jax.value_and_grad(reference, argnums=argnums, has_aux=True))(*args)
    np.testing.assert_allclose(float(v_ch), float(v_ref), rtol=1e-5, atol=1e-5)
    for x, y in zip(s_ch[:2], s_ref[:2]):   # nll, mean_nll
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(s_ch[2]), np.asarray(s_ref[2]))   # correct (argmax)
    for x, y in zip(g_ch, g_ref):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-5)
    return v_ch, g_ch


@pytest.mark.parametrize("chunk,temperature,rate", [(4, 1.0, 0.0), (11, 0.7, 0.25), (64, 1.3, 0.25)])
def test_vocab_chunked_stats_and_gradients_equal_full_logits_with_lora(chunk, temperature, rate):
    """Value and reverse-mode gradient (hidden, head W, adapter A and B) of the rematerialised chunk
    scan against log_softmax of the full logits through the same unmerged apply; dropout draws
    repeat exactly in the recomputation (same key, same uid)."""
    h, w, a, b, targets = _head_case(11)
    key = jax.random.key(5)
    wn, wm = jnp.linspace(0.5, 1.5, 9), jnp.linspace(-1.0, 1.0, 9)

    def lora(a, b):
        return LoRAWeights(a, b, 2.0, rate, 7, key)

    def chunked(h, w, a, b):
        s = losses.token_stats_chunked(h, w, targets, chunk=chunk, lora=lora(a, b), temperature=temperature)
        return jnp.sum(wn * s.nll) + jnp.sum(wm * s.mean_nll), (s.nll, s.mean_nll, s.correct)

    def reference(h, w, a, b):
        logits = project(h, w, lora(a, b), matmul=losses.f32_matmul) / temperature
        s = losses.token_stats_from_logits(logits, targets)
        return jnp.sum(wn * s.nll) + jnp.sum(wm * s.mean_nll), (s.nll, s.mean_nll, s.correct)

    _assert_same_loss_stats_and_grads(chunked, reference, (h, w, a, b), (0, 1, 2, 3))


@pytest.mark.parametrize("wanted", ["some", "none", "all"])
@pytest.mark.parametrize("chunk", [4, 64])
def test_vocab_stats_of_wanted_rows_only_equal_full_logits(chunk, wanted):
    """rows=: the loss's rows sorted to the front, blocks of 2 rows (5 blocks for 9 rows), blocks
    past the last wanted row skipped. Wanted rows' stats and the gradient of a loss over them equal
    the full-logits reference; the other rows read 0 / False."""
    h, w, a, b, targets = _head_case(11)
    rows = jnp.asarray({"some": [0, 1, 0, 0, 1, 1, 0, 0, 1], "none": [0] * 9, "all": [1] * 9}[wanted], bool)
    wn, wm = jnp.linspace(0.5, 1.5, 9), jnp.linspace(-1.0, 1.0, 9)

    def chunked(h, w, a, b):
        s = losses.token_stats_chunked(h, w, targets, chunk=chunk, lora=LoRAWeights(a, b, 2.0), rows=rows,
                                       row_block=2)
        return jnp.sum(wn * s.nll) + jnp.sum(wm * s.mean_nll), (s.nll, s.mean_nll, s.correct)

    def reference(h, w, a, b):
        s = losses.token_stats_from_logits(project(h, w, LoRAWeights(a, b, 2.0), matmul=losses.f32_matmul), targets)
        s = (jnp.where(rows, s.nll, 0.0), jnp.where(rows, s.mean_nll, 0.0), s.correct & rows)
        return jnp.sum(wn * s[0]) + jnp.sum(wm * s[1]), s

    v_ch, g_ch = _assert_same_loss_stats_and_grads(chunked, reference, (h, w, a, b), (0, 1, 2, 3))
    if wanted == "none":
        assert float(v_ch) == 0.0 and all(float(jnp.max(jnp.abs(g))) == 0.0 for g in g_ch)


@pytest.mark.parametrize("wanted", [None, "some", "none"])
@pytest.mark.parametrize("chunk,temperature", [(4, 1.0), (11, 0.7), (64, 1.3)])
def test_head_without_adapter_gradients_equal_full_logits(chunk, temperature, wanted):
    """A head without adapter takes the one-pass gradient (the log-sum-exp's gradient accumulated in
    the forward scan): value and gradient equal log_softmax of the full logits, for a frozen head
    (hidden only: the LoRA path) and a trained one (hidden and W: full training), on every row and
    on the loss-rows path (blocks of 2 rows, blocks past the last wanted row skipped)."""
    h, w, _, _, targets = _head_case(11)
    rows = None if wanted is None else jnp.asarray({"some": [0, 1, 0, 0, 1, 1, 0, 0, 1], "none": [0] * 9}[wanted], bool)
    keep = jnp.ones(9, bool) if rows is None else rows
    wn, wm = jnp.linspace(0.5, 1.5, 9), jnp.linspace(-1.0, 1.0, 9)

    def chunked(h, w):
        s = losses.token_stats_chunked(h, w, targets, chunk=chunk, temperature=temperature, rows=rows, row_block=2)
        return jnp.sum(wn * s.nll) + jnp.sum(wm * s.mean_nll), (s.nll, s.mean_nll, s.correct)

    def reference(h, w):
        s = losses.token_stats_from_logits(losses.f32_matmul(h, w) / temperature, targets)
        s = (jnp.where(keep, s.nll, 0.0), jnp.where(keep, s.mean_nll, 0.0), s.correct & keep)
        return jnp.sum(wn * s[0]) + jnp.sum(wm * s[1]), s

    for argnums in ((0,), (0, 1)):
        v_ch, g_ch = _assert_same_loss_stats_and_grads(chunked, reference, (h, w), argnums)
        if wanted == "none":
            assert float(v_ch) == 0.0 and all(float(jnp.max(jnp.abs(g))) == 0.0 for g in g_ch)
    # only nll's gradient asked for: mean_nll's cotangent is a symbolic zero
    g = jax.grad(lambda h: jnp.sum(wn * losses.token_stats_chunked(h, w, targets, chunk=chunk,
                                                                   temperature=temperature).nll))(h)
    g_ref = jax.grad(lambda h: jnp.sum(wn * losses.token_stats_from_logits(
        losses.f32_matmul(h, w) / temperature, targets).nll))(h)
    np.testing.assert_allclose(np.asarray(g), np.asarray(g_ref), rtol=1e-5, atol=1e-5)


def test_frozen_head_gradient_does_not_revisit_the_vocabulary():
    """With the head frozen, the gradient program multiplies by the head twice per chunk (logits and
    the softmax-weighted rows, both in the forward scan), not three times (recomputed logits and
    their cotangents' product): two [n, D] x [chunk, D] contractions in the whole jaxpr."""
    h, w, _, _, targets = _head_case(11)

    def dots(jaxpr):
        found = []
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "dot_general" and any(getattr(v.aval, "shape", ()) == (9, 4) for v in eqn.outvars + eqn.invars):
                found.append(eqn)
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                found += dots(sub)
        return found

    f = lambda h: jnp.sum(losses.token_stats_chunked(h, w, targets, chunk=4).nll)
    assert len(dots(jax.make_jaxpr(jax.grad(f))(h).jaxpr)) == 2
    g = lambda h, w: jnp.sum(losses.token_stats_chunked(h, w, targets, chunk=4).nll)
    assert len(dots(jax.make_jaxpr(jax.grad(g, argnums=(0, 1)))(h, w).jaxpr)) > 2   # W trained: autodiff's passes


def test_vocab_chunking_is_balanced_and_never_pads_a_small_vocabulary():
    assert losses.vocab_chunking(2048, 8192) == (1, 2048)        # was padded to 8192: 4x the work
    assert losses.vocab_chunking(16384, 8192) == (2, 8192)
    for v in (151_936, 151_669, 32_768, 50_000, 7):
        n, size = losses.vocab_chunking(v, 8192)
        assert size <= 8192 and n == -(-v // 8192) and 0 <= n * size - v < n, (v, n, size)


@pytest.mark.parametrize("head", ["adapter", "trained", "frozen"])
def test_vocab_chunked_backward_memory_does_not_grow_with_the_vocabulary(head):
    """XLA's temp bytes of the loss gradient at V and 4V (same chunk): O(N x chunk), not O(N x V)
    (before remat per chunk the backward kept every chunk's softmax terms: 2.7 N x V x 4 bytes),
    with an output-head adapter, a head without adapter that is trained (full training: the
    rematerialised scan) and a frozen one (the one-pass gradient)."""
    n, d, chunk = 512, 32, 512

    def temp(v):
        def f(h, w, a, b, t):
            s = losses.token_stats_chunked(h, w, t, chunk=chunk, lora=LoRAWeights(a, b, 2.0) if head == "adapter" else None)
            return jnp.sum(s.nll) + 0.1 * jnp.sum(s.mean_nll)
        args = [jax.ShapeDtypeStruct(s, dt) for s, dt in
                (((n, d), jnp.float32), ((v, d), jnp.float32), ((4, d), jnp.float32), ((v, 4), jnp.float32),
                 ((n,), jnp.int32))]
        grad = jax.jit(jax.grad(f, argnums={"adapter": (0, 2, 3), "trained": (0, 1), "frozen": (0,)}[head]))
        return grad.lower(*args).compile().memory_analysis().temp_size_in_bytes

    small, large = temp(8 * chunk), temp(32 * chunk)
    head_grad = (32 - 8) * chunk * d * 4 if head == "trained" else 0   # W's own gradient [V, D] grows with V
    assert large < small + 32 * chunk * (4 * 5 + 16) + head_grad + (1 << 16), (small, large)   # adapter grads + carries only
    assert large < 0.25 * n * 32 * chunk * 4, (large, n * 32 * chunk * 4)


@pytest.mark.parametrize("kind", SCHEDULES)
def test_schedules_hit_endpoints_and_derivative(kind):
    s = Schedule(kind)
    np.testing.assert_allclose(float(s.mask_prob(jnp.float32(0.0))), 0.0, atol=1e-6)
    np.testing.assert_allclose(float(s.mask_prob(jnp.float32(1.0))), 1.0, atol=1e-6)
    t = jnp.linspace(0.1, 0.9, 9)
    numeric = (s.mask_prob(t + 1e-3) - s.mask_prob(t - 1e-3)) / 2e-3
    np.testing.assert_allclose(np.asarray(s.mask_prob_derivative(t)), np.asarray(numeric), rtol=2e-3)
    assert np.all(np.diff(np.asarray(s.mask_prob(jnp.linspace(0, 1, 50)))) >= 0)


def test_time_sampling_range_and_antithetic_strata():
    t = np.asarray(sample_times(jax.random.key(0), 1000, eps=1e-3))
    assert t.min() > 1e-3 and t.max() <= 1.0
    ta = np.sort(np.asarray(sample_times(jax.random.key(1), 8, eps=0.0, antithetic=True)))
    # one draw per stratum of width 1/8
    np.testing.assert_array_equal(np.floor(np.clip(ta, 0, 1 - 1e-9) * 8), np.arange(8))
    np.testing.assert_allclose(np.asarray(inverse_prob_weight(jnp.array([0.01, 0.5]), 10.0)), [10.0, 2.0])


def test_corruptions_respect_maskable_and_prompt():
    rs = np.random.RandomState(2)
    tokens = jnp.asarray(rs.randint(0, 50, (64, 40)))
    plen = rs.randint(0, 30, 64)
    maskable = jnp.asarray(np.arange(40)[None] >= plen[:, None])
    p = jnp.full((64,), 0.9)
    key = jax.random.key(3)
    for span_prob in (0.0, 1.0, 0.5):
        noisy, masked = corrupt.corrupt_mask(key, tokens, p, 99, maskable, span_prob=span_prob)
        assert not np.any(np.asarray(masked) & ~np.asarray(maskable))   # prompts never noised
        np.testing.assert_array_equal(np.asarray(noisy)[~np.asarray(masked)], np.asarray(tokens)[~np.asarray(masked)])
    noisy, masked = corrupt.mask_span(key, tokens, p, 99, maskable)
    for row in np.asarray(masked):
        idx = np.flatnonzero(row)
        assert len(idx) == 0 or np.all(np.diff(idx) == 1)              # one contiguous run
    edited_tokens, edited = corrupt.edit_corrupt(key, noisy, tokens, masked, maskable, 50, 0.5)
    e = np.asarray(edited)
    assert e.any() and not np.any(e & (~np.asarray(maskable) | np.asarray(masked)))
    assert np.all(np.asarray(edited_tokens)[e] != np.asarray(tokens)[e])
    replaced = corrupt.random_replace(key, noisy, masked, 50, 0.3)
    changed = np.asarray(replaced) != np.asarray(noisy)
    assert changed.any() and not np.any(changed & ~np.asarray(masked))


def test_random_shorten_cuts_about_the_given_fraction():
    tokens = jnp.ones((4000, 16), jnp.int32)
    out, valid = corrupt.random_shorten(jax.random.key(0), tokens, jnp.ones((4000, 16), bool), prob=0.05, pad_id=0)
    cut_rows = np.any(~np.asarray(valid), axis=1)
    assert 0.03 < cut_rows.mean() < 0.07
    assert np.all(np.asarray(out)[~np.asarray(valid)] == 0)
    assert np.all(np.asarray(valid)[:, 0])   # a cut row keeps at least one token
