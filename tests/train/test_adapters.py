"""Adapters end to end, the path a new user takes: a small HF checkpoint with its tokenizer is
converted, the three LoRA heads (ar, diffusion, length) train on SFT data over the frozen base
(configs/qwen3_0_6b.py with small sizes), the loop evaluates and samples, the run resumes, and the
workdir samples with each head (the resume and the sampling CLI on the MoE base only: that
code does not depend on the kind). Asserts each head's training loss falls and the frozen base is
bit-identical to the converted checkpoint after training."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from jaxdiff.checkpoint.convert import convert_hf
from jaxdiff.data import tokenizer as tk
from tests.conftest import USER_XLA_FLAGS
from tests.hf_fixtures import make_hf_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OVERRIDES = {"model.dtype": "float32", "data.seq_len": 48, "data.batch_size": 8, "data.eval_permille": 200,
             "train.steps": 12, "train.log_every": 1, "train.eval_every": 6, "train.checkpoint_every": 6,
             "train.eval_batches": 1, "optimizer.lr": 3e-3, "optimizer.warmup_steps": 2,
             "optimizer.total_steps": 16, "length_head.edges": "4,8,16", "length_head.hidden": 16,
             "sample.prompt": "add 2 and 6", "sample.gen_length": 8, "sample.block_length": 4, "sample.steps": 8}


def _sft_lines():
    rs = np.random.RandomState(0)
    pairs = [(int(a), int(b)) for a, b in rs.randint(0, 50, (120, 2))]
    return [json.dumps({"messages": [{"role": "user", "content": f"add {a} and {b}"},
                                     {"role": "assistant", "content": f"{a + b}"}]}) for a, b in pairs]


@pytest.fixture(scope="module")
def newcomer(tmp_path_factory):
    """An SFT file and, per kind, a converted HF checkpoint carrying its tokenizer."""
    root = tmp_path_factory.mktemp("adapters")
    lines = _sft_lines()
    (root / "sft.jsonl").write_text("\n".join(lines) + "\n")
    out = {"sft": str(root / "sft.jsonl")}
    for kind in ("dense", "moe"):
        hf = make_hf_checkpoint(root, kind, seed=1)
        tk.train_bpe(lines, 300, hf)             # the tokenizer travels in the HF folder
        convert_hf(hf, str(root / f"{kind}-jd"))
        out[kind] = str(root / f"{kind}-jd")
    return out


@pytest.mark.parametrize("kind", ["dense", "moe"])
def test_heads_train_on_a_frozen_base_evaluate_sample_and_resume(newcomer, kind, tmp_path):
    workdir = tmp_path / "run"
    env = {**os.environ, "XLA_FLAGS": USER_XLA_FLAGS}   # one CPU device, as a user runs it
    args = {"checkpoint": newcomer[kind], "sft": newcomer["sft"], "workdir": str(workdir), "overrides": OVERRIDES}
    res = subprocess.run([sys.executable, "-m", "tests.train.adapters_driver", json.dumps(args)], cwd=ROOT,
                         capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert not out["full_training"] and out["heads"] == ["ar", "diffusion", "length"]
    for head, losses in out["losses"].items():
        assert len(losses) == 12 and np.mean(losses[-3:]) < np.mean(losses[:3]), f"{head} loss did not fall: {losses}"
    assert {"ar/acc", "diffusion/masked_acc", "length/acc"} <= set(out["eval"])
    # after 12 steps the frozen base is bit-identical to the base as built (the converted weights,
    # with the mask token's row set to the mean embedding)
    assert out["frozen_keys_match"] and out["differ_from_built"] == [] and out["differ_from_converted"] == []
    # the in-loop samples were written (at the evaluations of steps 6 and 12)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(workdir / "tb"), size_guidance={"tensors": 0})
    acc.Reload()
    assert [e.step for e in acc.Tensors("sample/text_summary")] == [6, 12]
    if kind == "dense":
        return   # resuming and the sampling CLI do not depend on the kind: the MoE base runs them
    # resume to step 16 as a user does, from the command line
    args = [f"--config.{k}={v}" for k, v in {**OVERRIDES, "train.steps": 16, "model.checkpoint": newcomer[kind],
                                              "data.path": newcomer["sft"], "workdir": str(workdir)}.items()]
    res = subprocess.run([sys.executable, "launch/train.py", "--config", "configs/qwen3_0_6b.py", *args], cwd=ROOT,
                         capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resumed from step 12" in res.stderr and "step 16: held-out loss" in res.stdout
    # the workdir samples with each head: AR, and diffusion with the length head choosing the length
    for extra, marker in ((["--config.mode=ar"], "heads used: ar "),
                          (["--config.mode=diffusion", "--config.auto_length=True"], "heads used: length, diffusion ")):
        res = subprocess.run([sys.executable, "launch/sample.py", "--config", "configs/sample.py",
                              f"--config.checkpoint={workdir}", "--config.prompt=add 3 and 4", "--config.gen_length=8",
                              "--config.block_length=4", "--config.steps=8", "--config.warmup=False", *extra],
                             cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
        assert res.returncode == 0, res.stderr[-3000:]
        assert marker in res.stdout and "forward passes (NFE)" in res.stdout, res.stdout
