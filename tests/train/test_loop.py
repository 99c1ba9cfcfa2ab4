"""The training loop on the runlocal tiny config: exact resume, SIGTERM, damaged checkpoints,
tensorboard scalars, config validation. One uninterrupted 6-step run (a module fixture) is the
reference of the resume test, the run whose event files are read, and the workdir (copied) whose
newest checkpoint is damaged."""
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
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


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, tok_dir):
    """(workdir, train's result) of an uninterrupted 6-step run: eval, sample and checkpoint at 3 and 6.
    Tests read it or copy its workdir; none writes into it."""
    workdir = tmp_path_factory.mktemp("full")
    return workdir, train(_config(workdir, tok_dir, steps=6), progress=False)


def test_exact_resume_matches_uninterrupted_training(tmp_path, tok_dir, full_run):
    full = full_run[1]
    first = train(_config(tmp_path / "b", tok_dir, steps=3), progress=False)
    second = train(_config(tmp_path / "b", tok_dir, steps=6), progress=False)
    assert second["history"][0]["step"] == 4          # it resumed, it did not start over
    losses = [h["loss"] for h in first["history"] + second["history"]]
    assert losses == [h["loss"] for h in full["history"]]
    for x, y in zip(_leaves(full["run"]), _leaves(second["run"])):
        np.testing.assert_array_equal(x, y)


def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, tok_dir, full_run, caplog):
    tmp_path = tmp_path / "run"
    shutil.copytree(full_run[0], tmp_path)                # the 6-step run's workdir, checkpoints 3 and 6
    ckpts = tmp_path / "checkpoints"
    assert sorted(os.listdir(ckpts)) >= ["3", "6"]
    for f in (ckpts / "6" / "trainable").rglob("*"):
        if f.is_file() and f.stat().st_size > 0:
            f.write_bytes(b"garbage")
    out = train(_config(tmp_path, tok_dir, steps=7), progress=False)
    assert "step 6" in caplog.text and "unreadable" in caplog.text
    assert out["history"][0]["step"] == 4              # continued from step 3


def test_event_files_hold_the_scalars(full_run):
    tmp_path = full_run[0]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for t in ("train/loss", "train/diffusion/loss", "train/diffusion/masked_acc", "train/lr", "train/grad_norm",
              "train/tokens_per_s", "train/step_time", "train/mfu", "train/skipped", "eval/loss",
              "eval/diffusion/masked_acc"):
        assert t in tags, t
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3, 4, 5, 6]
    assert "sample/text_summary" in acc.Tags()["tensors"]


def test_sigterm_saves_a_restorable_checkpoint(tmp_path, tok_dir):
    # the optimizer keeps the runlocal schedule (total_steps 6, then the final lr): the step program is
    # then the one the in-process runs compiled, read from the session's compilation cache
    cmd = [sys.executable, "launch/train.py", "--config", "configs/tiny_coder.py:runlocal",
           f"--config.workdir={tmp_path}", f"--config.tokenizer.path={tok_dir}", "--config.train.steps=100000",
           "--config.train.checkpoint_every=100000", "--config.train.eval_every=100000"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    chunks = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: proc.stdout.read(1), "")), daemon=True)
    reader.start()
    # the progress bar (created inside the signal handlers' scope) reports a finished training step
    done = re.compile(r"\b([1-9][0-9]*)/100000\b")
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not done.search("".join(chunks)):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    reader.join(timeout=10)
    out = "".join(chunks)
    assert proc.returncode == 0, out[-2000:]
    assert "stopped by SIGTERM" in out
    steps = [int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit()]
    assert steps and steps[0] > 0
    c = _config(tmp_path, tok_dir, steps=steps[0] + 1, checkpoint_every=100000, eval_every=100000)
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
