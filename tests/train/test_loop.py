"""The training loop on the runlocal tiny config: exact resume, SIGTERM, damaged checkpoints,
tensorboard scalars, config validation."""
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from flax import nnx

from configs import tiny_coder
from jaxdiff.data import sources
from jaxdiff.data import tokenizer as tk
from jaxdiff.train.config import ConfigValueError
from jaxdiff.train.loop import train

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tok"))
    tk.train_bpe((sources.read_file(p) for p in sources.code_files()[::40]), 512, path)
    return path


def _config(workdir, tok_dir, **train_kw):
    c = tiny_coder.get_config("runlocal")
    c.workdir = str(workdir)
    c.tokenizer.path = tok_dir
    c.train.log_every = 1
    c.train.peak_tflops = 0.05
    for k, v in train_kw.items():
        setattr(c.train, k, v)
    return c


def _leaves(run):
    return [np.asarray(x) for x in jax.tree.leaves(nnx.to_pure_dict(run.trainable))]


def test_exact_resume_matches_uninterrupted_training(tmp_path, tok_dir):
    full = train(_config(tmp_path / "a", tok_dir, steps=6), progress=False)
    first = train(_config(tmp_path / "b", tok_dir, steps=3), progress=False)
    second = train(_config(tmp_path / "b", tok_dir, steps=6), progress=False)
    assert second["history"][0]["step"] == 4          # it resumed, it did not start over
    losses = [h["loss"] for h in first["history"] + second["history"]]
    assert losses == [h["loss"] for h in full["history"]]
    for x, y in zip(_leaves(full["run"]), _leaves(second["run"])):
        np.testing.assert_array_equal(x, y)


def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, tok_dir, caplog):
    train(_config(tmp_path, tok_dir, steps=6), progress=False)
    ckpts = tmp_path / "checkpoints"
    assert sorted(os.listdir(ckpts)) >= ["3", "6"]
    for f in (ckpts / "6" / "trainable").rglob("*"):
        if f.is_file() and f.stat().st_size > 0:
            f.write_bytes(b"garbage")
    out = train(_config(tmp_path, tok_dir, steps=7), progress=False)
    assert "step 6" in caplog.text and "unreadable" in caplog.text
    assert out["history"][0]["step"] == 4              # continued from step 3


def test_event_files_hold_the_scalars(tmp_path, tok_dir):
    train(_config(tmp_path, tok_dir, steps=3), progress=False)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for t in ("train/loss", "train/diffusion/loss", "train/diffusion/masked_acc", "train/lr", "train/grad_norm",
              "train/tokens_per_s", "train/step_time", "train/mfu", "train/skipped", "eval/loss",
              "eval/diffusion/masked_acc"):
        assert t in tags, t
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3]
    assert "sample/text_summary" in acc.Tags()["tensors"]


def test_sigterm_saves_a_restorable_checkpoint(tmp_path, tok_dir):
    cmd = [sys.executable, "launch/train.py", "--config", "configs/tiny_coder.py:runlocal",
           f"--config.workdir={tmp_path}", f"--config.tokenizer.path={tok_dir}", "--config.train.steps=100000",
           "--config.train.checkpoint_every=100000", "--config.train.eval_every=100000",
           "--config.optimizer.total_steps=100000"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and not list((tmp_path / "tb").glob("*")) if (tmp_path / "tb").exists() else True:
        time.sleep(0.5)
        if time.time() > deadline or proc.poll() is not None:
            break
    time.sleep(5)                                       # well into training
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-2000:]
    assert "stopped by SIGTERM" in out
    steps = [int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit()]
    assert steps and steps[0] > 0
    c = _config(tmp_path, tok_dir, steps=steps[0] + 1, checkpoint_every=100000, eval_every=100000)
    c.optimizer.total_steps = 100000
    resumed = train(c, progress=False)
    assert resumed["history"][0]["step"] == steps[0] + 1


def test_bad_config_values_and_keys_are_named(tmp_path, tok_dir):
    c = _config(tmp_path, tok_dir)
    c.objective.loss = "l2"
    with pytest.raises(ConfigValueError, match="config.objective.loss='l2'"):
        train(c, progress=False)
    c = _config(tmp_path, tok_dir)
    c.data.batch_size = 0
    with pytest.raises(ConfigValueError, match="config.data.batch_size"):
        train(c, progress=False)
    r = subprocess.run([sys.executable, "launch/train.py", "--config", "configs/tiny_coder.py:runlocal",
                        "--config.train.stepz=3"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode != 0 and "stepz" in r.stderr
