"""The on-policy loop (jaxdiff/rl/loop.py) on a seconds-long workdir: the RL adapter starts at zero
(ratio 1 at the first inner iteration), only the adapter changes, overlap samples batch n + 1 with
the adapter before update n and uses it as the old policy, SIGTERM saves and resume is exact, the
CLI writes its tensorboard events, bad config values are refused by name.

The model is a one-layer dense tiny coder with random weights, so its completions are noise; the
tasks are made for that: `def f(): return k` followed by an open comment, so a completion passes
when it stays in the comment (no newline, or valid code after one) and fails otherwise -- rewards
that vary inside a group, so advantages are not all dropped. Every in-process run shares one
model (built once) and one compile of the rollout and of the update; the CLI run in a subprocess
reads those compiles from a persistent compilation cache the fixture turns on for this module."""
import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from jaxdiff import builder
from jaxdiff.config import load_config_file
from jaxdiff.config.schema import ConfigValueError
from jaxdiff.parallel import make_mesh
from jaxdiff.rl import config as rl_config
from jaxdiff.rl.loop import minibatches, train_rl
from tests.workdir_fixtures import make_workdir

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DENSE = dict(num_experts=0, num_experts_per_tok=0, moe_intermediate_size=0, num_hidden_layers=1)


def _leaves(tree):
    flat = jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(tree))
    return {jax.tree_util.keystr(p): np.asarray(x) for p, x in flat}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """(sft workdir, tasks file, model, tokenizer, jax cache dir); a persistent compilation cache and
    the classic threefry PRNG (quicker to compile) while the module runs."""
    from jax.experimental.compilation_cache import compilation_cache as cc

    root = tmp_path_factory.mktemp("rl_loop")
    cache = str(root / "jax_cache")
    saved = {k: getattr(jax.config, k) for k in ("jax_compilation_cache_dir",
                                                 "jax_persistent_cache_min_compile_time_secs",
                                                 "jax_persistent_cache_min_entry_size_bytes")}
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    cc.reset_cache()
    sft = make_workdir(root / "sft", scale=1.0, init=DENSE)
    tasks = root / "tasks.jsonl"
    with open(tasks, "w") as f:
        for k in range(6):
            f.write(json.dumps({"task_id": f"comment/{k}", "prompt": f"def f():\n    return {k}\n#", "entry_point": "f",
                                "test": f"def check(candidate):\n    assert candidate() == {k}\n"}) + "\n")
    with jax.threefry_partitionable(False):
        c = config(sft, str(tasks), root / "unused")
        tok = builder.tokenizer_for(c, None)
        model = builder.build_model_from_config(c, tok, mesh=make_mesh(dict(c.mesh)))
        yield {"sft": sft, "tasks": str(tasks), "model": model, "tok": tok, "cache": cache, "root": root}
    for k, v in saved.items():
        jax.config.update(k, v)
    cc.reset_cache()


def config(sft, tasks, workdir, **rl):
    c = load_config_file(os.path.join(ROOT, "configs", "rl_tiny.py:runlocal"))
    c.model.checkpoint, c.workdir = str(sft), str(workdir)
    c.seed = 2                      # a seed whose three batches each have a group with varied rewards
    c.rl.suites, c.rl.sanitize, c.rl.prompt_length = tasks, False, 0
    c.rl.prompts_per_batch, c.rl.group_size, c.rl.batches, c.rl.mu = 2, 4, 3, 2
    c.optimizer.lr, c.optimizer.warmup_steps, c.optimizer.total_steps = 1e-2, 0, 6
    for k, v in rl.items():
        c.rl[k] = v
    return c


def run(env, name, stop_after=None, **rl):
    """train_rl on the shared model; (output, events observed after each batch). stop_after=n: a
    SIGTERM to this process once batch n is done."""
    events = []

    def observe(event):
        events.append(event)
        if event["batch"] == stop_after:
            os.kill(os.getpid(), signal.SIGTERM)

    with jax.threefry_partitionable(False):
        out = train_rl(config(env["sft"], env["tasks"], env["root"] / name, **rl), progress=False,
                       observe=observe, model=env["model"], tokenizer=env["tok"])
    return out, events


@pytest.fixture(scope="module")
def sync(env):
    return run(env, "sync", overlap=False)


@pytest.fixture(scope="module")
def overlap(env):
    return run(env, "overlap", overlap=True)


def test_adapter_starts_at_zero_and_the_first_ratio_is_one(sync):
    out, events = sync
    start = _leaves(events[0]["before"])
    assert start and all("lora_diffusion" in k for k in start)
    assert all((v == 0).all() for k, v in start.items() if k.endswith("lora_diffusion_b']"))
    assert any((v != 0).any() for k, v in start.items() if k.endswith("lora_diffusion_a']"))
    assert events[0]["advantages"].kept_samples > 0, "test set-up: no reward varies inside a group"
    assert [e["inflight"].version for e in events] == [0, 1, 2]          # without overlap: never stale
    for e in events:
        if not e["iterations"]:
            continue
        first, second = e["iterations"]
        for k in ("ratio_mean", "ratio_min", "ratio_max"):
            assert abs(first[k] - 1.0) < 1e-6, (e["batch"], first)
        assert first["old_minus_recorded"] < 1e-5                        # the replay is the sampler's record
        assert second["ratio_max"] - second["ratio_min"] > 1e-5          # the first step moved the policy
    h = out["history"][0]
    assert h["policy/first_ratio_mean"] == pytest.approx(1.0, abs=1e-6) and h["rollout/staleness"] == 0


def test_only_the_rl_adapter_changes(env, sync):
    out, events = sync
    run_ = out["run"]
    trained = _leaves(run_.trainable)
    assert any((v != 0).any() for k, v in trained.items() if k.endswith("lora_diffusion_b']"))
    # the checkpoint holds the adapter alone, and its optimizer state is the adapter's size (Adam: 2x + counts)
    n_adapter = sum(v.size for v in trained.values())
    assert sum(np.size(x) for x in jax.tree.leaves(run_.opt_state)) <= 2 * n_adapter + 8
    # rebuilt from the RL workdir as `launch/eval.py` does: the SFT model's weights bit for bit, the adapter as trained
    rl_model, _, _ = builder.load_workdir(str(env["root"] / "sync"))
    sft_model, _, _ = builder.load_workdir(env["sft"])
    base = lambda m: _leaves(nnx.state(m, nnx.Param))
    rebuilt, sft = base(rl_model), base(sft_model)
    assert rebuilt.keys() == sft.keys()
    for k in sft:
        np.testing.assert_array_equal(rebuilt[k], sft[k], err_msg=k)
    _, _, adapter = builder.split(rl_model)
    for k, v in _leaves(adapter).items():
        np.testing.assert_array_equal(v, trained[k], err_msg=k)


def test_overlap_samples_with_the_adapter_before_the_update(sync, overlap):
    (_, s_ev), (o_out, o_ev) = sync, overlap
    assert [e["inflight"].version for e in o_ev] == [0, 0, 1]            # batch n + 1 sampled before update n
    assert [h["rollout/staleness"] for h in o_out["history"]] == [0, 1, 1]
    # batch 0 is the same run either way: same prompts, samples, rewards, update
    tokens = [np.asarray(ev[0]["inflight"].batch.tokens) for ev in (s_ev, o_ev)]
    np.testing.assert_array_equal(*tokens)
    np.testing.assert_array_equal(s_ev[0]["rewards"].total, o_ev[0]["rewards"].total)
    for k, v in _leaves(s_ev[0]["after"]).items():
        np.testing.assert_array_equal(v, _leaves(o_ev[0]["after"])[k])
    # batch 1 was sampled by the adapter before update 0, and that adapter is its old policy
    sampler = _leaves(o_ev[1]["inflight"].adapter)
    for k, v in _leaves(o_ev[0]["before"]).items():
        np.testing.assert_array_equal(sampler[k], v)
    assert any((sampler[k] != v).any() for k, v in _leaves(o_ev[0]["after"]).items())
    stale = 0
    for e in o_ev:
        if not e["iterations"]:
            continue
        first = e["iterations"][0]
        assert first["old_minus_recorded"] < 1e-5                        # old log-probs = the sampler's record
        moved = any((v != _leaves(e["inflight"].adapter)[k]).any() for k, v in _leaves(e["before"]).items())
        if moved:                                                        # the adapter changed since it sampled
            assert first["ratio_max"] - first["ratio_min"] > 1e-5
            stale += 1
        else:
            assert first["ratio_min"] == pytest.approx(1.0, abs=1e-6) == first["ratio_max"]
    assert stale, "test set-up: no update on a stale batch"


def test_minibatches_cover_each_kept_row_once_and_pad_masked():
    keep = np.repeat([True, False, True, True, False], 4)                  # 5 groups of 4, 2 dropped
    whole = minibatches(keep, 0, np.random.default_rng(0))
    assert len(whole) == 1 and (whole[0][0] == np.arange(20)).all() and (whole[0][1] == keep).all()
    steps = minibatches(keep, 5, np.random.default_rng(0))
    assert [len(r) for r, _ in steps] == [5, 5, 5] and [int(k.sum()) for _, k in steps] == [5, 5, 2]
    rows = np.concatenate([r[k] for r, k in steps])
    assert sorted(rows) == list(np.flatnonzero(keep))                      # every kept row once, none dropped
    assert (rows != np.flatnonzero(keep)).any()                            # shuffled
    assert all(keep[r].all() for r, _ in steps)                            # padding copies a kept row, masked
    assert minibatches(np.zeros(8, bool), 4, np.random.default_rng(0)) == []
    assert minibatches(np.zeros(8, bool), 0, np.random.default_rng(0)) == []


def test_minibatch_steps_use_the_kept_rows_with_the_sampler_as_old_policy(env):
    """rl.minibatch_size = 8 of 4 x 4 rows (8: the test session's devices): one optimizer step per 8
    kept rows and iteration; the first step of a batch that is not stale has ratio 1, and every
    step's old log-probs are the sampler's."""
    out, events = run(env, "minibatch", overlap=False, prompts_per_batch=4, minibatch_size=8)
    stepped = 0
    for e, h in zip(events, out["history"]):
        kept = e["advantages"].kept_samples
        assert len(e["iterations"]) == 2 * -(-kept // 8) == h["policy/iterations"]   # mu = 2
        for i, it in enumerate(e["iterations"]):
            assert it["old_minus_recorded"] < 1e-5
            if i == 0:
                assert abs(it["ratio_min"] - 1) < 1e-6 and abs(it["ratio_max"] - 1) < 1e-6
        stepped += len(e["iterations"])
    assert stepped == out["run"].updates
    assert any(len(e["iterations"]) == 4 for e in events), "test set-up: no batch kept more than 8 rows"
    refused = config(env["sft"], env["tasks"], env["root"] / "unused", minibatch_size=9)
    with pytest.raises(ConfigValueError, match=r"config\.rl\.minibatch_size=9"):
        rl_config.validate(refused)


def test_sigterm_and_resume_are_exact(env, overlap):
    o_out, _ = overlap
    first, _ = run(env, "resumed", stop_after=0, overlap=True, batches=3)     # SIGTERM during batch 1
    assert first["stopped"] == "SIGTERM" and first["batch"] == 1
    second, _ = run(env, "resumed", overlap=True, batches=2)                  # resumes after batch 1
    third, ev = run(env, "resumed", overlap=True, batches=3)                  # a longer run resumes after 2
    assert [h["batch"] for h in second["history"] + third["history"]] == [2, 3]
    assert ev[0]["inflight"].version == 1                                     # still sampled one update stale
    for k, v in _leaves(o_out["run"].trainable).items():
        np.testing.assert_array_equal(_leaves(third["run"].trainable)[k], v, err_msg=k)
    keys = ("reward/total", "policy/loss", "policy/ratio_mean", "advantage/dropped_groups")
    assert [[h.get(k) for k in keys] for h in first["history"] + second["history"] + third["history"]] == \
        [[h.get(k) for k in keys] for h in o_out["history"]]
    lines = [json.loads(x) for x in open(env["root"] / "resumed" / "rl_samples.jsonl")]
    assert [r["batch"] for r in lines] == [b for b in range(3) for _ in range(8)]


def test_cli_two_batches_writes_tensorboard(env, tmp_path):
    workdir = tmp_path / "cli"
    cmd = [sys.executable, "launch/rl.py", "--config", "configs/rl_tiny.py:runlocal",
           f"--config.model.checkpoint={env['sft']}", f"--config.workdir={workdir}",
           f"--config.rl.suites={env['tasks']}", "--config.rl.sanitize=False", "--config.rl.prompt_length=0",
           "--config.rl.prompts_per_batch=2", "--config.rl.group_size=4", "--config.rl.batches=2",
           "--config.optimizer.lr=0.01", "--config.optimizer.warmup_steps=0",
           "--config.optimizer.total_steps=6"]
    # the session's 8 devices, precision and PRNG, so the compiles of the runs above are found in the cache
    environ = {**os.environ, "JAX_COMPILATION_CACHE_DIR": env["cache"],
               "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
               "JAX_DEFAULT_MATMUL_PRECISION": "highest", "JAX_THREEFRY_PARTITIONABLE": "false"}
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=environ)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "batch 2: reward" in out.stdout
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(workdir / "tb"), size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for t in ("reward/total", "reward/correctness", "reward/speed", "reward/efficiency", "rollout/pass_rate",
              "rollout/steps_used", "rollout/tokens_per_forward", "rollout/entropy", "policy/kl",
              "policy/clip_fraction", "policy/ratio_mean", "policy/ratio_min", "policy/ratio_max",
              "advantage/dropped_groups", "time/rollout_s", "time/verify_wait_s", "time/update_s",
              "time/device_idle_fraction", "time/pool_utilisation", "lr"):
        assert t in tags, t
    assert [e.step for e in acc.Scalars("reward/total")] == [1, 2]
    assert "samples/text_summary" in acc.Tags()["tensors"]
    assert sorted(int(s) for s in os.listdir(workdir / "checkpoints") if s.isdigit()) == [1, 2]


def test_shipped_configs_validate_and_bad_values_and_keys_are_named(env, tmp_path):
    def refused(match, **kw):
        c = config(env["sft"], env["tasks"], tmp_path)
        for k, v in kw.items():
            section, _, field = k.rpartition("__")
            (c[section] if section else c)[field] = v
        with pytest.raises(ConfigValueError, match=match):
            rl_config.validate(c)

    refused(r"config\.rl\.estimator='ppo'", rl__estimator="ppo")
    refused(r"config\.rl\.group_size=1", rl__group_size=1)
    refused(r"config\.rl\.policy='fastest'", rl__policy="fastest")
    refused(r"config\.rl\.steps=3", rl__steps=3, rl__gen_length=16, rl__block_length=8)
    refused(r"config\.model\.checkpoint is empty", model__checkpoint="")
    refused(r"config\.lora\.full_training", lora__full_training=True)
    for spec in ("rl_tiny.py", "rl_tiny.py:runlocal", "rl_tiny.py:speed", "rl_qwen3_coder_30b_a3b.py"):   # shipped
        c = load_config_file(os.path.join(ROOT, "configs", spec))
        c.model.checkpoint = c.model.checkpoint or "/ckpt/placeholder"
        rl_config.validate(c)
    r = subprocess.run([sys.executable, "launch/rl.py", "--config", "configs/rl_tiny.py:runlocal",
                        "--config.rl.group_sise=3"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode != 0 and "group_sise" in r.stderr
    r = subprocess.run([sys.executable, "launch/rl.py", "--config", "configs/rl_tiny.py:runlocal",
                        f"--config.model.checkpoint={env['sft']}", f"--config.workdir={tmp_path}",
                        "--config.rl.normalization=mean"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and "config.rl.normalization='mean'" in r.stderr, r.stderr[-2000:]
