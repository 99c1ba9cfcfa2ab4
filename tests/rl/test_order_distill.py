"""Constrained-order trajectory distillation (jaxdiff/rl/order_distill.py): the constrained rollout
keeps the example's tokens, reveals each position once on the sampler's schedule and records what
trace replay reproduces; order_temperature 0 reveals the most likely true tokens first (against a
NumPy transcription); order selection against NumPy argsort; updates raise the kept orders'
likelihood and leave the frozen base alone; a run logs, checkpoints and resumes exactly; bad config
values are refused by name.

Everything runs on one model, a one-layer dense tiny coder with random weights and a BPE of the
synthetic family (`tests/workdir_fixtures.make_workdir`), and on the shapes of one run of
`train_order_distill` (2 examples x 4 orders of 8 tokens, two blocks of 4 in 3 steps each: 2, 1, 1
tokens a step), so the rollout and the update compile once for the whole module."""
import dataclasses
import os
import shutil

import jax
import numpy as np
import pytest

from jaxdiff import builder
from jaxdiff.config import load_config_file
from jaxdiff.config.schema import ConfigValueError
from jaxdiff.parallel import make_mesh, use_mesh
from jaxdiff.rl import config as rl_config
from jaxdiff.rl.estimators import estimate
from jaxdiff.rl.order_distill import (constrained_rollout, distill_batch, row_log_likelihood, select_orders,
                                      take_rows, train_order_distill)
from jaxdiff.train import state as st
from tests.rl.models import full_logits
from tests.workdir_fixtures import make_workdir

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GEN, BLOCK, COUNTS = 8, 4, [2, 1, 1]   # per block: 3 steps revealing 2, 1, 1 positions
B, O, KEEP = 2, 4, 2


def config(sft, workdir, **rl):
    c = load_config_file(os.path.join(ROOT, "configs", "order_distill_tiny.py:runlocal"))
    c.model.checkpoint, c.workdir = str(sft), str(workdir)
    c.rl.prompts_per_batch, c.rl.n_orders, c.rl.keep_orders = B, O, KEEP      # 8 rows: the 8 test devices
    c.rl.prompt_length, c.rl.gen_length, c.rl.block_length, c.rl.steps = 96, GEN, BLOCK, 6
    c.optimizer.lr = 1e-2
    for k, v in rl.items():
        c.rl[k] = v
    return c


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """The workdir, a 2-batch run, and a run resumed from a copy of its first checkpoint (classic
    threefry while the module runs: quicker to compile)."""
    root = tmp_path_factory.mktemp("order_distill")
    sft = make_workdir(root / "sft", scale=1.0, init=dict(num_experts=0, num_experts_per_tok=0,
                                                           moe_intermediate_size=0, num_hidden_layers=1))
    with jax.threefry_partitionable(False):
        c = config(sft, root / "full")
        tok = builder.tokenizer_for(c, None)
        model = builder.build_model_from_config(c, tok, mesh=make_mesh(dict(c.mesh)))
        full = train_order_distill(config(sft, root / "full", batches=2), progress=False, model=model, tokenizer=tok)
        shutil.copytree(root / "full", root / "resumed")
        shutil.rmtree(root / "resumed" / "checkpoints" / "2")
        resumed = train_order_distill(config(sft, root / "resumed", batches=2), progress=False, model=model,
                                      tokenizer=tok)
        yield {"root": root, "sft": sft, "full": full, "resumed": resumed, "run": full["run"]}


def rollout(run, answers, order_temperature=1.0, key=0):
    """A constrained rollout of batch 0's prompts with the run's adapter, settings and compile."""
    ids, mask, _ = run.examples.batch(run.config.seed, 0, B)
    with jax.threefry_partitionable(False), use_mesh(run.mesh):
        r = constrained_rollout(st.merge(run.graphdef, run.frozen, run.trainable), ids, mask, answers,
                                jax.random.key(key), settings=run.orders, order_temperature=order_temperature)
    return r, ids, mask


def answers_with_eos(run, first_eos, seed=0):
    """[B, GEN] answers of random ordinary tokens, EOS from first_eos[b] on (GEN: none)."""
    cfg = run.orders.sampler
    rng = np.random.RandomState(seed)
    ans = rng.randint(3, 250, (B, GEN)).astype(np.int32)
    assert cfg.mask_id not in ans and cfg.eos_id not in ans
    for b, e in enumerate(first_eos):
        ans[b, e:] = cfg.eos_id
    return ans


def host(r):
    return jax.tree.map(np.asarray, r)


def test_constrained_rollout_keeps_the_example_and_replays_exactly(env):
    run = env["run"]
    for first_eos in ([GEN, 2], [5, 3]):   # no EOS / in block 0 (block 1 never runs); in block 1 / block 0's end
        ans = answers_with_eos(run, first_eos)
        r, _, _ = rollout(run, ans)
        h = host(r)
        np.testing.assert_array_equal(h.tokens, np.repeat(ans, O, axis=0))
        np.testing.assert_array_equal(h.group, np.arange(B * O) // O)
        for row in range(B * O):
            first = first_eos[row // O]
            run_blocks = min(first // BLOCK + 1, GEN // BLOCK)
            ran = np.arange(GEN) < run_blocks * BLOCK
            np.testing.assert_array_equal(h.valid[row], np.arange(GEN) <= first)
            assert (h.step_map[row][ran] >= 0).all() and (h.step_map[row][~ran] == -1).all()
            np.testing.assert_array_equal(h.committed[row][ran], ans[row // O][ran])
            for blk in range(run_blocks):   # every position of a run block once, on the sampler's schedule
                steps = h.step_map[row, blk * BLOCK:(blk + 1) * BLOCK]
                np.testing.assert_array_equal(np.bincount(steps - 3 * blk, minlength=3), COUNTS)
            assert h.steps_used[row] == 3 * run_blocks
        assert (h.logp[h.valid] < 0).all() and (h.logp[h.step_map < 0] == 0).all()
        # the orders of an example differ (drawn), while their tokens do not
        assert all(len({h.step_map[i * O + j].tobytes() for j in range(O)}) > 1 for i in range(B))

        with use_mesh(run.mesh):
            logp, mask = map(np.asarray, estimate(st.merge(run.graphdef, run.frozen, run.trainable), r, None,
                                                  run.orders.estimator))   # trace replay, shrink 1
        np.testing.assert_array_equal(mask, h.valid)
        err = np.abs(logp - h.logp)[h.valid].max()
        print(f"first EOS {first_eos}: {h.valid.sum()} tokens, max |replay - recorded| = {err:.2e}")
        assert err <= 1e-5


def test_order_temperature_zero_reveals_the_most_likely_first(env):
    run = env["run"]
    ans = answers_with_eos(run, [GEN, 6], seed=1)
    r, ids, pmask = rollout(run, ans, order_temperature=0.0, key=5)
    h = host(r)
    for j in range(1, O):   # deterministic: every order of an example is the same
        np.testing.assert_array_equal(h.step_map[j::O], h.step_map[::O])
    # NumPy transcription: per step, log p(true token) at the masked positions of the block from
    # the plain forward; the step's count of them with the largest values revealed (ties: lower position)
    model = st.merge(run.graphdef, run.frozen, run.trainable)
    mask_id, p = run.orders.sampler.mask_id, ids.shape[1]
    x = np.concatenate([ids, np.full(ans.shape, mask_id, np.int32)], axis=1)
    valid = np.concatenate([pmask, np.ones(ans.shape, bool)], axis=1)
    step_map, logp = np.full(ans.shape, -1), np.zeros(ans.shape)
    for t in range(6):
        blk, i = divmod(t, 3)
        z = full_logits(model, x, padding_mask=valid)[:, p:]
        z = z - z.max(-1, keepdims=True)
        lp = np.take_along_axis(z - np.log(np.exp(z).sum(-1, keepdims=True)), ans[..., None], -1)[..., 0]
        for b in range(B):
            masked = [k for k in range(blk * BLOCK, (blk + 1) * BLOCK) if step_map[b, k] < 0]
            for k in sorted(masked, key=lambda k: (-lp[b, k], k))[:COUNTS[i]]:
                step_map[b, k], logp[b, k], x[b, p + k] = t, lp[b, k], ans[b, k]
    np.testing.assert_array_equal(h.step_map[::O], step_map)
    np.testing.assert_allclose(h.logp[::O], logp, atol=1e-5)


def test_select_orders_matches_numpy_argsort():
    rng = np.random.RandomState(0)
    sums = rng.randint(-6, 0, (5, 4)).astype(np.float32)     # small integers: ties happen
    assert any(len(set(row)) < 4 for row in sums)
    for keep in (1, 2, 4):
        want = np.concatenate([4 * i + np.argsort(-sums[i], kind="stable")[:keep] for i in range(5)])
        np.testing.assert_array_equal(np.asarray(select_orders(sums.reshape(-1), 4, keep)), want)
    with pytest.raises(ValueError, match="keep=5"):
        select_orders(sums.reshape(-1), 4, 5)


def test_updates_on_one_batch_raise_the_kept_orders_likelihood_and_keep_the_base(env):
    """The run's own jitted update (no new compile), on one fixed batch, five times."""
    run = dataclasses.replace(env["run"])                      # a copy: the run's own state stays
    base = [np.array(x) for x in jax.tree.leaves(run.frozen)]
    ids, mask, answers = run.examples.batch(run.config.seed, 0, B)
    batch, _, _ = rollout(run, answers, key=1)
    sums = np.asarray(row_log_likelihood(batch))
    kept = take_rows(batch, select_orders(sums, O, KEEP))
    recorded = np.asarray(row_log_likelihood(kept))
    np.testing.assert_array_equal(np.sort(recorded.reshape(B, KEEP), axis=1),
                                  np.sort(sums.reshape(B, O), axis=1)[:, -KEEP:])
    history = []
    with jax.threefry_partitionable(False), use_mesh(run.mesh):
        for _ in range(5):
            history.append(distill_batch(run, 0, batch=batch)[1])
    losses = [m["loss"] for m in history]
    print("losses", np.round(losses, 4).tolist(), "log-likelihood of the kept orders, all",
          [round(history[0][k], 3) for k in ("loglik_kept", "loglik_all")])
    assert history[0]["replay_minus_recorded"] < 1e-5          # the update replays what the rollout recorded
    assert losses[0] == pytest.approx(-recorded.sum() / np.asarray(kept.valid).sum(), abs=1e-5)
    assert history[0]["loglik_kept"] >= history[0]["loglik_all"]
    # the loss is minus the kept orders' mean replayed log-probability under the adapter of the step
    assert all(b < a for a, b in zip(losses, losses[1:])) and not any(m["skipped"] for m in history)
    for x, y in zip(base, jax.tree.leaves(run.frozen)):        # the frozen base, bit for bit
        np.testing.assert_array_equal(x, np.asarray(y))


def test_a_run_logs_checkpoints_and_resumes_exactly(env):
    full, resumed = env["full"], env["resumed"]
    assert [h["batch"] for h in resumed["history"]] == [2]
    keys = ("distill/loss", "orders/loglik_kept", "orders/loglik_all", "distill/grad_norm")
    assert [resumed["history"][0][k] for k in keys] == [full["history"][1][k] for k in keys]
    for x, y in zip(jax.tree.leaves(full["run"].trainable), jax.tree.leaves(resumed["run"].trainable)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    h = full["history"]
    assert h[0]["distill/replay_minus_recorded"] < 1e-5
    assert all(x["orders/loglik_kept"] >= x["orders/loglik_all"] for x in h)
    workdir = env["root"] / "full"
    assert sorted(int(s) for s in os.listdir(workdir / "checkpoints") if s.isdigit()) == [1, 2]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(workdir / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    for tag in keys + ("distill/tokens", "distill/skipped", "orders/token_logp_kept", "lr", "time/rollout_s"):
        assert [e.step for e in acc.Scalars(tag)] == [1, 2], tag


def test_bad_values_are_refused_by_name(env, tmp_path):
    def refused(match, **kw):
        with pytest.raises(ConfigValueError, match=match):
            rl_config.validate(config(env["sft"], tmp_path, **kw))

    refused(r"config\.rl\.keep_orders=5", keep_orders=5)
    refused(r"config\.rl\.n_orders=0", n_orders=0)
    refused(r"config\.rl\.order_temperature=-1", order_temperature=-1.0)
    refused(r"config\.rl\.mode='distill'", mode="distill")
    for spec in ("order_distill_tiny.py", "order_distill_tiny.py:runlocal"):
        rl_config.validate(load_config_file(os.path.join(ROOT, "configs", spec)))
