"""Traced rollouts: the recorded log-probabilities are the sampler's, trace replay reproduces them
exactly (shrink 1, exact caches), they are the probabilities of the trajectories (enumeration on a
tiny model), tokens after EOS are excluded, and per-row costs are what the sampler counts."""
import itertools

import jax
import numpy as np
import pytest
from scipy import stats as sstats

from jaxdiff.rl.estimators import EstimatorSettings, estimate
from jaxdiff.rl.rollout import Rollout, rollout, rollout_settings
from tests.rl.models import batch_of, full_logits, quick_prng, small_model  # noqa: F401

V, MASK, EOS = 16, 15, 9
GEN, BLOCK = 16, 8
# fixed-step decoding on bidirectional attention without a cache; threshold decoding on block
# attention with the block cache (exact); both with mixed prompt lengths and early EOS
CONFIGS = {
    "fixed_no_cache": dict(policy="low_confidence", steps=16, attention="bidirectional", cache="none"),
    "threshold_block_cache": dict(policy="threshold:0.1", attention="block", cache="block"),
}


@pytest.fixture(scope="module")
def model():
    return small_model(V, MASK, EOS, head_scale=4.0)


def prompts():
    rng = np.random.RandomState(0)
    ids = rng.randint(4, 15, (3, 6)).astype(np.int32)
    mask = np.ones_like(ids, bool)
    mask[0, :2] = mask[2, :4] = False          # 4, 6 and 2 real tokens, left-padded
    return ids, mask


@pytest.fixture(scope="module")
def rollouts(model):
    ids, mask = prompts()
    return {name: rollout(model, ids, prompt_mask=mask, group_size=4, key=jax.random.key(3), gen_length=GEN,
                          block_length=BLOCK, temperature=1.0, **kw) for name, kw in CONFIGS.items()}


def host(r: Rollout):
    return jax.tree.map(np.asarray, r)


@pytest.mark.parametrize("config", list(CONFIGS))
def test_trace_replay_reproduces_the_recorded_log_probs(model, rollouts, config):
    r = rollouts[config]
    s = rollout_settings(model, gen_length=GEN, block_length=BLOCK, temperature=1.0, **CONFIGS[config])
    assert s.lora == "diffusion"                              # sampled and scored through the adapters
    logp, mask = estimate(model, r, jax.random.key(0), EstimatorSettings.for_rollout(s, vocab_chunk=6))
    logp, mask, h = np.asarray(logp), np.asarray(mask), host(r)
    np.testing.assert_array_equal(mask, h.valid)
    err = np.abs(logp - h.logp)[h.valid]
    print(f"{config}: {h.valid.sum()} tokens, max |replay - recorded| = {err.max():.2e}, "
          f"mean recorded logp {h.logp[h.valid].mean():.3f}, steps used {h.steps_used.tolist()}")
    assert err.max() < 1e-5                                   # ratio 1 to 1e-5
    assert (logp[~h.valid] == 0).all()                        # nothing after EOS is scored
    assert np.log(1 / V) + 0.3 < h.logp[h.valid].mean() < -0.3   # sampled: neither uniform nor greedy

    # the cases the replay must get right did happen: rows that stop in the first block, rows that
    # run on, and a token after EOS committed before a valid token of its row (so in its context)
    first_eos = np.array([list(row).index(EOS) if EOS in row else GEN for row in h.tokens])
    assert (first_eos < BLOCK).any() and (first_eos >= BLOCK).any()
    seen_after_eos = [(h.step_map[b][~h.valid[b] & (h.step_map[b] >= 0)][:, None]
                       < h.step_map[b][h.valid[b]][None]).any() for b in range(len(h.valid))]
    assert any(seen_after_eos)
    assert (h.committed != h.tokens).any()                    # the EOS fill replaced committed tokens

    # tokens after the first EOS are EOS in `tokens` and excluded; everything up to it is valid
    # but a position still holding the mask token (drawn, never committed again: step -1)
    for b, e in enumerate(first_eos):
        np.testing.assert_array_equal(h.valid[b, :e + 1], h.step_map[b, :e + 1] >= 0)
        assert not h.valid[b, e + 1:].any()
        assert (h.tokens[b, :e + 1][~h.valid[b, :e + 1]] == MASK).all()
        if e < GEN:
            assert h.tokens[b, e] == EOS and (h.tokens[b, e:] == EOS).all()
            assert (h.tokens[b, :e] != EOS).all()
    np.testing.assert_array_equal(h.group, np.repeat(np.arange(3), 4))
    np.testing.assert_array_equal(h.prompt_ids, np.repeat(prompts()[0], 4, axis=0))
    if config.startswith("threshold"):
        assert (h.steps_used < np.where(first_eos < BLOCK, BLOCK, GEN)).any()   # it saved steps

    # a row's steps: in each block it ran, from the block's first step (every running row commits
    # then) to its own last commit; in a batch the sampler runs until the slowest row is done
    for b in range(len(h.valid)):
        want = 0
        for k in range(GEN // BLOCK):
            blk = h.step_map[:, k * BLOCK:(k + 1) * BLOCK]
            if (blk[b] >= 0).any():
                want += blk[b].max() - blk[blk >= 0].min() + 1
        assert h.steps_used[b] == want
    assert h.batch_steps == h.steps_used.max() if config.startswith("fixed") else h.batch_steps >= h.steps_used.max()


def test_a_row_alone_costs_what_the_sampler_counts(model):
    """One prompt, G = 1: per-row steps and forward passes equal the batch counts of the same call
    (the sampler's own accounting), for rows whose EOS skipped the last block and rows that ran to
    it. The block cache, whose count has the most terms (prompt pass, commit passes)."""
    ids, _ = prompts()
    ran = {True: False, False: False}
    for seed in range(4):
        r = host(rollout(model, ids[1:2], group_size=1, key=jax.random.key(seed), gen_length=GEN, block_length=BLOCK,
                         policy="threshold:0.1", attention="block", cache="block"))
        assert r.steps_used[0] == r.batch_steps and r.forward_passes[0] == r.batch_forward_passes
        ran[bool(r.step_map[0, BLOCK] >= 0)] = True
        print(f"steps {r.steps_used[0]}, forward passes {r.forward_passes[0]}, valid {r.valid.sum()}")
    assert ran[True] and ran[False]


# ---------------------------------------------------------------------------- enumeration
EV, EMASK, TAU = 5, 4, 0.7          # 4 tokens and the mask; answer length 3, one token per step


@pytest.fixture(scope="module")
def enum_model():
    return small_model(EV, EMASK, None, head_scale=8.0, seed=3)


def enumeration_table(model, prompt):
    """NumPy: log-probability of every answer (c0, c1, c2) in {0..4}^3 decoded left to right, one
    token per step: sum_j log softmax(logits(prompt, c_<j, masks)[j] / tau)[c_j]. The mask token
    is a choice too (the sampler can draw it; it then stays masked). Also returns every context's
    logits by prefix, for the shrink check."""
    prefixes = [()] + [(a,) for a in range(EV)] + [(a, b) for a in range(EV) for b in range(EV)]
    x = np.array([list(prompt) + list(pre) + [EMASK] * (3 - len(pre)) for pre in prefixes], np.int32)
    logits = full_logits(model, x)[:, 2:]
    logp = logits / TAU - np.log(np.exp(logits / TAU).sum(-1, keepdims=True))
    by_prefix = dict(zip(prefixes, logp))
    table = np.zeros((EV,) * 3)
    for seq in itertools.product(range(EV), repeat=3):
        table[seq] = sum(by_prefix[seq[:j]][j, seq[j]] for j in range(3))
    return table, by_prefix


def test_recorded_log_probs_are_the_trajectory_probabilities(enum_model):
    prompt = (1, 2)
    table, by_prefix = enumeration_table(enum_model, prompt)
    assert abs(np.exp(table).sum() - 1) < 1e-9
    n = 1000
    r = host(rollout(enum_model, np.array([prompt], np.int32), group_size=n, key=jax.random.key(11), gen_length=3,
                     block_length=1, steps=3, temperature=TAU))
    assert (r.step_map == np.arange(3)).all() and r.valid.all()      # the fixed order, nothing dropped
    recorded = r.logp.sum(1)
    err = np.abs(recorded - table[tuple(r.tokens.T)])
    print(f"max |recorded - enumerated| over {n} samples: {err.max():.2e}")
    assert err.max() < 1e-5

    # the sampler draws with the probabilities it records: chi-square over the 125 trajectories
    counts = np.zeros(EV ** 3)
    np.add.at(counts, np.ravel_multi_index(tuple(r.tokens.T), (EV,) * 3), 1)
    expected = n * np.exp(table).ravel()
    big = expected >= 5
    obs = np.append(counts[big], counts[~big].sum())
    exp_ = np.append(expected[big], expected[~big].sum())
    p_value = sstats.chisquare(obs, exp_).pvalue
    print(f"chi-square over {big.sum()} + 1 cells: p = {p_value:.3f}")
    assert p_value > 1e-3

    # trace replay of all 125 trajectories: they sum to 1, each equal to the enumeration
    seqs = np.array(list(itertools.product(range(EV), repeat=3)), np.int32)
    batch = batch_of(np.tile([prompt], (len(seqs), 1)), np.ones((len(seqs), 2), bool), seqs)
    s = EstimatorSettings("trace_replay", mask_id=EMASK, temperature=TAU)
    replay = np.asarray(estimate(enum_model, batch, jax.random.key(0), s)[0], np.float64)
    total = np.exp(replay.sum(1)).sum()
    print(f"sum over all 125 trajectories of exp(sum of replayed logp) = {total:.7f}")
    assert abs(total - 1) < 1e-5
    np.testing.assert_allclose(replay.sum(1), table.ravel(), atol=1e-5)

    # shrink 2 merges steps {0, 1}: tokens 0 and 1 are scored with the whole answer masked,
    # token 2 after both; each still exactly once
    s2 = EstimatorSettings("trace_replay", mask_id=EMASK, temperature=TAU, shrink=2)
    merged = np.asarray(estimate(enum_model, batch, jax.random.key(0), s2)[0], np.float64)
    want = np.stack([[by_prefix[()][0, a], by_prefix[()][1, b], by_prefix[(a, b)][2, c]] for a, b, c in seqs])
    np.testing.assert_allclose(merged, want, atol=1e-5)
