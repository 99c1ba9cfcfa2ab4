"""The block sampler against a NumPy transcription of LLaDA, cache exactness, policies, EOS, batching,
length head, infill, AR decoding. Tiny random models (the sampler must work on untrained ones)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.model import build_model
from jaxdiff.model.lora import add_length_head
from jaxdiff.sample import (Entropy, LowConfidence, Margin, RandomTopK, Threshold, ar_generate, fill_span, generate,
                            get_policy, infill, scaffold_then_infill)
from jaxdiff.sample.sampler import commit_threshold, transfer_schedule
from tests.model import tiny
from tests.sample.llada_reference import llada_generate, num_transfer_tokens

MASK, EOS = 255, 3


@pytest.fixture(scope="module")
def dense():
    return build_model(tiny.dense(mask_token_id=MASK, eos_token_id=EOS), seed=1)


@pytest.fixture(scope="module")
def moe():
    return build_model(tiny.moe(mask_token_id=MASK, eos_token_id=EOS), seed=2)


def prompts(b, p, seed=0):
    return np.random.RandomState(seed).randint(4, 200, (b, p)).astype(np.int32)


def np_logits(model):
    call = tiny.jitted(model)
    return lambda x: np.asarray(call(jnp.asarray(x, jnp.int32), attention="bidirectional"))


def test_transfer_schedule_matches_llada():
    n = np.array([16, 7, 0, 5])
    masks = np.arange(16)[None] < n[:, None]          # n[b] masked positions in row b
    for steps in (1, 3, 4, 8):
        np.testing.assert_array_equal(transfer_schedule(jnp.asarray(n), steps), num_transfer_tokens(masks, steps))


@pytest.mark.parametrize("cfg_scale", [0.0, 1.5])
def test_low_confidence_matches_numpy_llada_step_for_step(dense, cfg_scale):
    x_np = prompts(2, 5)
    kw = dict(steps=8, gen_length=16, block_length=8)
    ref, ref_at = llada_generate(np_logits(dense), x_np, mask_id=MASK, cfg_scale=cfg_scale, **kw)
    out, stats, rec = generate(dense, x_np, policy="low_confidence", cfg_scale=cfg_scale, stop_at_eos=False,
                               trace=True, **kw)
    np.testing.assert_array_equal(np.asarray(out), ref)
    np.testing.assert_array_equal(np.asarray(rec), ref_at)          # the same commits at every step
    assert (stats.steps, stats.forward_passes) == (8, 8)
    assert np.bincount(ref_at[0][ref_at[0] >= 0]).tolist() == [2] * 8  # 16 tokens over 8 steps


def test_random_and_temperature_match_numpy_llada_with_pinned_keys(dense):
    """The NumPy loop gets the sampler's own draws: per block fold_in(key, block), per step
    fold_in(., step), split into (gumbel key, score key), uniforms over the block's window."""
    key = jax.random.key(7)
    x_np = prompts(2, 4, seed=3)
    kw = dict(steps=6, gen_length=12, block_length=4)

    def keys(nb, i):
        return jax.random.split(jax.random.fold_in(jax.random.fold_in(key, nb), i))

    scores = lambda nb, i: np.asarray(jax.random.uniform(keys(nb, i)[1], (2, 4)))
    gumbel = lambda nb, i: np.asarray(jax.random.uniform(keys(nb, i)[0], (2, 4, 256), minval=1e-20, maxval=1.0))
    ref, ref_at = llada_generate(np_logits(dense), x_np, mask_id=MASK, remasking="random", temperature=0.8,
                                 random_scores=scores, gumbel_uniforms=gumbel, **kw)
    out, _, rec = generate(dense, x_np, policy="random", temperature=0.8, key=key, stop_at_eos=False, trace=True, **kw)
    np.testing.assert_array_equal(np.asarray(rec), ref_at)
    np.testing.assert_array_equal(np.asarray(out), ref)


@pytest.mark.parametrize("which", ["dense", "moe"])
def test_block_cache_is_exact(which, request):
    model = request.getfixturevalue(which)
    x_np = prompts(3, 6, seed=5)
    mask = np.ones_like(x_np, bool)
    mask[0, :2] = mask[2, :4] = False          # mixed prompt lengths, left-padded
    kw = dict(gen_length=12, block_length=4, steps=12, attention="block", prompt_mask=mask, stop_at_eos=False)
    for policy in ("low_confidence", "threshold:0.02"):
        ref, s_ref = generate(model, x_np, cache="none", policy=policy, **kw)
        out, s_out = generate(model, x_np, cache="block", policy=policy, **kw)
        np.testing.assert_array_equal(np.asarray(out), np.asarray(ref))
        assert s_out.steps == s_ref.steps
        # cached: + 1 prompt pass + 1 commit pass per finished block (not the last)
        assert s_out.forward_passes == s_ref.forward_passes + 1 + 2


def test_mixed_prompt_lengths_match_single_prompts(dense):
    rows = [prompts(1, 3, seed=1)[0], prompts(1, 7, seed=2)[0], prompts(1, 5, seed=4)[0]]
    p = max(len(r) for r in rows)
    batch = np.zeros((3, p), np.int32)
    mask = np.zeros((3, p), bool)
    for i, r in enumerate(rows):
        batch[i, p - len(r):], mask[i, p - len(r):] = r, True
    kw = dict(gen_length=8, block_length=4, steps=8, stop_at_eos=False)
    out, _ = generate(dense, batch, prompt_mask=mask, **kw)
    for i, r in enumerate(rows):
        alone, _ = generate(dense, r[None], **kw)
        np.testing.assert_array_equal(np.asarray(out[i, p:]), np.asarray(alone[0, len(r):]))


def test_threshold_one_commits_one_token_per_step(dense):
    out, stats, rec = generate(dense, prompts(2, 4), gen_length=16, block_length=8, steps=4, policy=Threshold(1.0),
                               stop_at_eos=False, trace=True)
    assert stats.steps == 16 and stats.forward_passes == 16
    for row in np.asarray(rec):
        assert sorted(row[row >= 0].tolist()) == list(range(16))   # exactly one commit per step


def test_threshold_commit_rule():
    scores = jnp.asarray([[0.95, 0.2, 0.91, 0.5], [0.1, 0.3, 0.2, 0.05]])
    eligible = jnp.asarray([[True, True, True, False], [True, True, True, True]])
    got = np.asarray(commit_threshold(scores, eligible, 0.9))
    np.testing.assert_array_equal(got, [[True, False, True, False], [False, True, False, False]])


def test_policies_score_as_published():
    rng = np.random.RandomState(0)
    logits = jnp.asarray(rng.randn(2, 5, 11).astype(np.float32))
    x0 = jnp.argmax(logits, -1)
    p = np.exp(np.asarray(logits, np.float64))
    p /= p.sum(-1, keepdims=True)
    top = np.sort(p, -1)
    key = jax.random.key(3)
    np.testing.assert_allclose(LowConfidence().score(logits, x0, key), top[..., -1], rtol=1e-6)
    np.testing.assert_allclose(Margin().score(logits, x0, key), top[..., -1] - top[..., -2], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(Entropy().score(logits, x0, key), (p * np.log(p)).sum(-1), rtol=1e-5)
    g = np.asarray(jax.random.gumbel(key, (2, 5)))
    np.testing.assert_allclose(RandomTopK(0.5).score(logits, x0, key), np.log(top[..., -1]) + 0.5 * g, rtol=1e-5)
    assert get_policy("threshold:0.7") == Threshold(0.7)
    with pytest.raises(ValueError, match="remasking policy 'lowconf'"):
        get_policy("lowconf")


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_fast_dllm_caches_run_and_stay_close(dense, cache):
    """Approximate by design, but: the same forward-pass count as no cache, every position filled,
    and the first step, which runs the whole sequence in both, commits the same tokens at the same
    positions; from the second step on the cached keys go stale, so only agreement is measured."""
    x_np = prompts(2, 6, seed=9)
    kw = dict(gen_length=16, block_length=8, steps=16, stop_at_eos=False, trace=True)
    ref, s_ref, rec_ref = generate(dense, x_np, cache="none", **kw)
    out, s_out, rec_out = generate(dense, x_np, cache=cache, **kw)
    assert not (np.asarray(out) == MASK).any()
    assert s_out.forward_passes == s_ref.forward_passes == 16
    np.testing.assert_array_equal(np.asarray(out[:, :6]), x_np)
    first_ref, first_out = np.asarray(rec_ref) == 0, np.asarray(rec_out) == 0
    np.testing.assert_array_equal(first_out, first_ref)
    np.testing.assert_array_equal(np.asarray(out)[first_out], np.asarray(ref)[first_ref])
    print(f"{cache}: {np.mean(np.asarray(out) == np.asarray(ref)):.2f} of tokens equal to no cache")


def test_eos_fills_the_rest_and_stops_early(dense):
    x_np = prompts(2, 5, seed=11)
    kw = dict(gen_length=24, block_length=8, steps=24)
    free, _ = generate(dense, x_np, stop_at_eos=False, **kw)
    free = np.asarray(free)
    # make a token both rows commit in their first block the EOS token
    common = set(free[0, 5:13]) & set(free[1, 5:13])
    assert common, free[:, 5:13]
    eos = int(sorted(common)[0])
    model = build_model(tiny.dense(mask_token_id=MASK, eos_token_id=eos), seed=1)
    out, stats = generate(model, x_np, **kw)
    out = np.asarray(out)
    assert stats.blocks == 1 and stats.forward_passes == 8     # blocks 2 and 3 skipped
    for row in out:
        first = 5 + list(row[5:]).index(eos)
        assert first < 13 and (row[first:] == eos).all()
    assert stats.tokens < 24


def test_length_head_auto(dense):
    model = build_model(tiny.dense(mask_token_id=MASK, eos_token_id=EOS), seed=1)
    add_length_head(model, (8, 16, 24), hidden=16, seed=0)
    model.length_head.w2.set_value(jax.random.normal(jax.random.key(4), (3, 16)) * 3.0)
    x_np = prompts(4, 5, seed=13)
    hidden = model.forward(jnp.asarray(x_np), attention="bidirectional", logits=False).hidden
    want = np.asarray(model.length_head.length_of(jnp.argmax(model.length_head(hidden, jnp.ones((4, 5), bool)), -1)))
    assert len(set(want.tolist())) > 1, want
    out, stats = generate(model, x_np, gen_length="auto", block_length=8)
    assert stats.gen_length == want.max()
    out = np.asarray(out)
    for row, n in zip(out, want):
        assert (row[5 + n:] == EOS).all() and not (row[5:5 + n] == MASK).any()
    with pytest.raises(ValueError, match="length head"):
        generate(dense, x_np, gen_length="auto", block_length=8)


def test_infill_at_the_predicted_span_length(dense):
    """The length head reads prefix then suffix; the span gets its bucket's upper edge (capped) in
    masks and ends at the first EOS the model writes there."""
    from jaxdiff.sample import fill_predicted_span, predict_span_length

    model = build_model(tiny.dense(mask_token_id=MASK, eos_token_id=EOS), seed=1)
    add_length_head(model, (4, 8, 12), hidden=16, seed=0)
    model.length_head.w2.set_value(jax.random.normal(jax.random.key(4), (3, 16)) * 3.0)
    for seed in range(3):
        prefix, suffix = prompts(1, 5, seed=20 + seed)[0].tolist(), prompts(1, 3, seed=40 + seed)[0].tolist()
        ctx = jnp.asarray([prefix + suffix])
        hidden = model.forward(ctx, attention="bidirectional", logits=False).hidden
        want = int(model.length_head.length_of(jnp.argmax(model.length_head(hidden, jnp.ones(ctx.shape, bool)), -1))[0])
        assert predict_span_length(model, prefix, suffix) == want
        assert predict_span_length(model, prefix, suffix, max_length=5) == min(want, 5)
        span, stats = fill_predicted_span(model, prefix, suffix, eos_id=EOS, block_length=4)
        out, _ = fill_span(model, prefix, suffix, want, block_length=min(4, want))
        full = np.asarray(out)[0, 5:5 + want].tolist()
        assert stats["span_budget"] == want
        assert span == (full[:full.index(EOS)] if EOS in full else full)
        # right-padded to a bucket (one compile per bucket): padding is invisible
        assert predict_span_length(model, prefix, suffix, pad_bucket=16) == want
        padded, _ = fill_span(model, prefix, suffix, want, block_length=min(4, want), pad_bucket=16)
        assert padded.shape[1] == -(-out.shape[1] // 16) * 16 and np.asarray(padded)[0, :out.shape[1]].tolist() == np.asarray(out)[0].tolist()
        assert fill_predicted_span(model, prefix, suffix, eos_id=EOS, block_length=4, pad_bucket=16)[0] == span
    stop = full[len(full) // 2]            # a token the model writes mid-span, standing in for EOS
    span, _ = fill_predicted_span(model, prefix, suffix, eos_id=stop, block_length=4)
    assert span == full[:full.index(stop)] and len(span) < want
    with pytest.raises(ValueError, match="length head"):
        predict_span_length(dense, prefix, suffix)


def test_infill_keeps_prefix_and_suffix(dense):
    prefix, suffix = [10, 11, 12, 13], [20, 21, 22]
    out, stats = fill_span(dense, prefix, suffix, 6, block_length=4)
    row = np.asarray(out[0]).tolist()
    assert row[:4] == prefix and row[-3:] == suffix and MASK not in row
    assert stats["steps"] == 6
    # several spans anywhere: only the masks change
    x = np.asarray(prompts(2, 20, seed=6))
    x[0, 3:6] = MASK
    x[0, 12:14] = MASK
    x[1, 0:2] = MASK
    filled, _ = infill(dense, x, block_length=2)
    filled = np.asarray(filled)
    given = x != MASK
    np.testing.assert_array_equal(filled[given], x[given])
    assert not (filled == MASK).any()


def test_ar_generate_with_cache_matches_recomputed_greedy(moe):
    x_np = prompts(2, 5, seed=8)
    out, stats = ar_generate(moe, x_np, max_new_tokens=6, lora=None)
    x = x_np.copy()
    call = tiny.jitted(moe)
    for _ in range(6):
        nxt = np.asarray(call(jnp.asarray(x), attention="causal"))[:, -1].argmax(-1)
        x = np.concatenate([x, nxt[:, None]], 1)
    np.testing.assert_array_equal(np.asarray(out), x)
    assert stats.forward_passes == 7 and stats.tokens == 6


def test_scaffold_then_infill_keeps_the_scaffold(dense):
    x_np = prompts(1, 5, seed=21)[0].tolist()
    ar, _ = ar_generate(dense, [x_np], max_new_tokens=4, lora=None)
    stop = int(np.asarray(ar)[0, 7])                  # the third AR token ends the scaffold
    ids, info = scaffold_then_infill(dense, x_np, scaffold_max_tokens=10, scaffold_stop_ids=[stop],
                                     gen_length=8, block_length=4, stop_at_eos=False)
    scaffold = np.asarray(ar)[0, 5:5 + info["scaffold_tokens"]].tolist()
    assert ids[:5] == x_np and ids[5:5 + len(scaffold)] == scaffold and scaffold[-1] == stop
    assert len(ids) == 5 + len(scaffold) + 8 and MASK not in ids


def test_bad_arguments_are_named(dense):
    with pytest.raises(ValueError, match="not a multiple of block_length"):
        generate(dense, prompts(1, 3), gen_length=10, block_length=4)
    with pytest.raises(ValueError, match="steps=5"):
        generate(dense, prompts(1, 3), gen_length=8, block_length=4, steps=5)
    with pytest.raises(ValueError, match="cache='block' is exact only"):
        generate(dense, prompts(1, 3), gen_length=8, block_length=4, cache="block")
    with pytest.raises(ValueError, match="no mask token"):
        generate(build_model(tiny.dense(), seed=0), prompts(1, 3), gen_length=8, block_length=4)


@pytest.mark.parametrize("cache", ["none", "dual"])
def test_traced_row_steps_are_what_each_row_needs_alone(dense, cache):
    """With trace on, SampleStats.row_steps / row_forward_passes: a batch runs until its slowest row
    is done, each row's own count is what it takes sampled alone (the harness records these)."""
    x_np = prompts(3, 5, seed=11)
    kw = dict(gen_length=16, block_length=8, steps=16, policy="threshold:0.006", stop_at_eos=False, trace=True,
              cache=cache)
    out, stats, _ = generate(dense, x_np, **kw)
    assert len(set(stats.row_steps.tolist())) == 3, stats.row_steps      # the rows need different counts
    assert stats.row_steps.max() <= stats.steps
    for i in range(3):
        alone, st, _ = generate(dense, x_np[i:i + 1], **kw)
        np.testing.assert_array_equal(np.asarray(alone)[0], np.asarray(out)[i])
        assert (st.steps, st.forward_passes) == (stats.row_steps[i], stats.row_forward_passes[i])
        assert st.row_steps.tolist() == [st.steps]
    _, untraced = generate(dense, x_np, **{**kw, "trace": False})
    assert untraced.row_steps is None and untraced.steps == stats.steps
