"""Sampling the trained tiny coder (the README's main job, trained once per session): threshold
decoding saves forward passes where the model is confident, and the sampling CLI as a user runs it.

Measured on the 2-core CI machine (2026-11-24), gen_length 64, block_length 16, no cache:
fixed-step low_confidence takes 64 forward passes per prompt; threshold 0.3 took 59, 57, 41, 52 on
the four prompts below, with output identical to fixed-step on prompts 0, 1 and 3 (the model is
sure of its newlines and `import` lines there) and different on prompt 2. The test asks for fewer
passes on every prompt, fewer in total by at least 10%, and identical output with fewer passes on
at least two prompts.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

from jaxdiff.sample import generate
from jaxdiff.sample.load import load_for_sampling

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROMPTS = ["def fibonacci(n):\n", "import os\nimport sys\n", "class Foo:\n    def __init__(self):\n        self.",
           "    for i in range(10):\n        print(i)\n"]


@pytest.fixture(scope="module")
def tiny(trained_tiny_coder):
    return load_for_sampling(trained_tiny_coder[0])


@pytest.mark.slow
def test_threshold_saves_forward_passes_where_the_model_is_confident(tiny):
    model, tok = tiny
    fixed_total = thr_total = 0
    same_and_fewer = []
    for i, text in enumerate(PROMPTS):
        ids = [tok(text, add_special_tokens=False)["input_ids"]]
        kw = dict(gen_length=64, block_length=16, stop_at_eos=False)
        fixed, s_fixed = generate(model, ids, steps=64, **kw)
        thr, s_thr = generate(model, ids, steps=64, policy="threshold:0.3", **kw)
        one, s_one = generate(model, ids, steps=64, policy="threshold:1.0", **kw)
        print(f"prompt {i}: fixed {s_fixed.forward_passes} passes, threshold 0.3 {s_thr.forward_passes}, "
              f"same output {bool((np.asarray(fixed) == np.asarray(thr)).all())}")
        assert s_fixed.forward_passes == 64 and s_one.forward_passes == 64   # 1.0: one token per step
        np.testing.assert_array_equal(np.asarray(one), np.asarray(fixed))   # ... committed in the same order
        assert s_thr.forward_passes < 64
        fixed_total += s_fixed.forward_passes
        thr_total += s_thr.forward_passes
        if (np.asarray(fixed) == np.asarray(thr)).all():
            same_and_fewer.append(i)
    assert thr_total <= 0.9 * fixed_total, (thr_total, fixed_total)
    assert len(same_and_fewer) >= 2, same_and_fewer


@pytest.mark.slow
def test_sample_cli_streams_blocks_and_reports_speed(trained_tiny_coder):
    workdir = trained_tiny_coder[0]
    out = subprocess.run([sys.executable, "launch/sample.py", "--config", "configs/sample.py",
                          f"--config.checkpoint={workdir}", "--config.prompt=def fibonacci(n):\n",
                          "--config.block_length=16", "--config.policy=threshold:0.3", "--config.cache=dual"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("def fibonacci(n):\n")
    assert "forward passes (NFE)" in out.stdout and "tokens per forward" in out.stdout and "tokens/s" in out.stdout
    bad = subprocess.run([sys.executable, "launch/sample.py", "--config", "configs/sample.py",
                          f"--config.checkpoint={workdir}", "--config.polcy=threshold"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert bad.returncode != 0 and "polcy" in bad.stderr
