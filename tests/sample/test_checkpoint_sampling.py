"""Sampling works on any model `jaxdiff.load_model` returns: a converted checkpoint with neither a
mask token nor a tokenizer, through the Python API and the CLI."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import jaxdiff
from jaxdiff.checkpoint.convert import convert_hf
from jaxdiff.sample import generate
from jaxdiff.sample.load import load_for_sampling
from tests.hf_fixtures import make_hf_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    hf = make_hf_checkpoint(root, "moe")
    out = str(root / "jd")
    convert_hf(hf, out, progress=False)
    return out


def test_converted_checkpoint_without_tokenizer(converted):
    model = jaxdiff.load_model(converted)
    assert model.config.mask_token_id is None
    with pytest.raises(ValueError, match="no mask token"):
        generate(model, [[5, 6, 7]], gen_length=8, block_length=4)
    spare = model.config.vocab_size - 1
    out, stats = generate(model, [[5, 6, 7]], gen_length=8, block_length=4, mask_id=spare)
    assert np.asarray(out).shape == (1, 11) and stats.steps == 8
    with pytest.raises(ValueError, match="no mask token and no tokenizer"):
        load_for_sampling(converted)
    m2, tok = load_for_sampling(converted, mask_id=spare)
    assert tok is None and m2.config.mask_token_id == spare


def test_cli_with_prompt_ids(converted):
    cmd = [sys.executable, "launch/sample.py", "--config", "configs/sample.py", f"--config.checkpoint={converted}",
           "--config.prompt_ids=5,6,7", "--config.gen_length=8", "--config.block_length=4", "--config.steps=8",
           "--config.warmup=False", "--config.stop_at_eos=False"]
    out = subprocess.run(cmd + ["--config.mask_id=300"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert re.search(r"steps 8, forward passes \(NFE\) 8, tokens 8", out.stdout), out.stdout
    bad = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert bad.returncode != 0 and "mask_id" in bad.stderr
