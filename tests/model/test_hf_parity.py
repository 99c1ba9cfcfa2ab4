"""Whole-model float32 logits vs transformers' Qwen3ForCausalLM / Qwen3MoeForCausalLM (<= 1e-4),
in all three attention modes, over several tiny configs. transformers gets the matching 4-D
additive mask (built here from each mode's definition, independently of jaxdiff's code)."""
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jaxdiff
from jaxdiff.model import ModelOptions
from tests.hf_fixtures import make_hf_checkpoint

pytestmark = pytest.mark.parity
TOL = 1e-4

CONFIGS = {
    "dense-tied-gqa2-theta1e6": ("dense", dict(tie_word_embeddings=True, rope_parameters={"rope_type": "default", "rope_theta": 1e6})),
    "dense-untied-mqa-yarn": ("dense", dict(num_attention_heads=8, num_key_value_heads=1, head_dim=8,
                                            rope_parameters={"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0,
                                                             "original_max_position_embeddings": 16})),
    "dense-linear-rope-mha": ("dense", dict(num_key_value_heads=4, rope_parameters={"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0})),
    "moe-norm-topk": ("moe", dict(norm_topk_prob=True)),
    "moe-sparse-step2-mlp-only-sharded": ("moe", dict(norm_topk_prob=False, decoder_sparse_step=2, mlp_only_layers=[0],
                                                       num_hidden_layers=4)),
}


def additive_mask(mode, length, batch, block, prompt_len):
    i = np.arange(length)
    if mode == "bidirectional":
        allowed = np.ones((length, length), bool)
    else:  # block: the prompt is block 0; a token sees its own block and every earlier one
        blk = np.where(i < prompt_len, 0, 1 + (i - prompt_len) // block)
        allowed = blk[None, :] <= blk[:, None]
    return torch.tensor(np.broadcast_to(np.where(allowed, 0.0, np.finfo(np.float32).min), (batch, 1, length, length)).copy())


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def checkpoint(request, tmp_path_factory):
    kind, kw = CONFIGS[request.param]
    shard = "40KB" if "sharded" in request.param else None
    path = make_hf_checkpoint(tmp_path_factory.mktemp(request.param), kind, max_shard_size=shard, **kw)
    from transformers import AutoModelForCausalLM
    hf = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager", dtype=torch.float32).eval()
    return path, hf


@pytest.mark.parametrize("mode", ["causal", "bidirectional", "block"])
def test_logits_match_transformers(checkpoint, mode):
    path, hf = checkpoint
    b, l, block, plen = 2, 29, 6, 7
    tokens = np.random.RandomState(0).randint(0, 320, (b, l))
    with torch.no_grad():
        mask = None if mode == "causal" else additive_mask(mode, l, b, block, plen)
        ref = hf(torch.tensor(tokens), attention_mask=mask).logits.numpy()
    assert np.abs(ref).max() > 1.0  # logits large enough for the tolerance to mean something
    for impl in ("reference", "chunked"):
        model = jaxdiff.load_model(path, options=ModelOptions(attention_impl=impl, attention_chunk=8))
        out = np.asarray(model(jnp.asarray(tokens), attention=mode, block_size=block,
                               prompt_lengths=jnp.full((b,), plen)))
        assert out.dtype == np.float32 and out.shape == ref.shape
        diff = np.abs(out - ref).max()
        assert diff <= TOL, f"{impl}: max |logit diff| {diff:.2e}"


def test_left_padded_causal_batch_matches_transformers(checkpoint):
    path, hf = checkpoint
    tokens = np.random.RandomState(1).randint(0, 320, (2, 16))
    mask = np.ones((2, 16), np.int64)
    mask[1, :5] = 0
    pos = np.maximum(np.cumsum(mask, 1) - 1, 0)
    with torch.no_grad():
        ref = hf(torch.tensor(tokens), attention_mask=torch.tensor(mask), position_ids=torch.tensor(pos)).logits.numpy()
    out = np.asarray(jaxdiff.load_model(path)(jnp.asarray(tokens), padding_mask=jnp.asarray(mask.astype(bool))))
    real = mask.astype(bool)
    assert np.abs(out[real] - ref[real]).max() <= TOL


def test_compare_hf_tool_passes_and_fails(checkpoint, capsys, tmp_path):
    import sys
    sys.path.insert(0, "tools")
    import compare_hf
    path, _ = checkpoint
    assert compare_hf.main(["--hf_dir", path, "--attention", "block", "--length", "24"]) == 0
    assert "OK" in capsys.readouterr().out
    assert compare_hf.main(["--hf_dir", path, "--tol", "0"]) == 1   # exact equality is not expected
