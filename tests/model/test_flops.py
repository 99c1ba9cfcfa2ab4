"""Model FLOPs per token (`jaxdiff.model.flops`: the trainer's MFU scalar and tools/bench_train.py's
MFU column): 4 (LoRA) or 6 (full training) x the active matmul parameters, counted here from the
model's own parameter shapes (abstract, no memory), plus attention."""
import math

import pytest

from jaxdiff.model import ModelConfig, param_specs
from jaxdiff.model.flops import active_matmul_params, train_flops_per_token
from tools.bench_train import hf_config, model_flops_per_step


def _active_matmul_params(hf: dict) -> int:
    """Every weight a token is multiplied by: norms and the embedding lookup are not matmuls (a tied
    embedding is counted once, as the head), and a token meets k of the E experts."""
    specs = param_specs(ModelConfig.from_hf(hf))
    tied = hf.get("tie_word_embeddings", False)
    total = 0
    for key, spec in specs.items():
        n = math.prod(spec.shape)
        if key.endswith("norm.weight") or (key == "model.embed_tokens.weight" and not tied):
            continue
        if ".mlp.experts." in key:
            n = n * hf["num_experts_per_tok"] // hf["num_experts"]
        total += n
    return total


@pytest.mark.parametrize("shape,layers", [("qwen3-0.6b", 2), ("qwen3-30b-a3b", 1), ("bench-moe", None)])
def test_model_flops_count_each_active_parameter_four_or_six_times_per_token(shape, layers):
    hf = hf_config(shape, layers)
    cfg = ModelConfig.from_hf(hf)
    batch, seq = 2, 256
    assert active_matmul_params(cfg) == _active_matmul_params(hf)
    attention = 12 * cfg.num_hidden_layers * seq * hf["num_attention_heads"] * hf["head_dim"]
    assert train_flops_per_token(cfg, seq) == 4 * _active_matmul_params(hf) + attention
    assert train_flops_per_token(cfg, seq, full_training=True) == 6 * _active_matmul_params(hf) + attention
    assert model_flops_per_step(hf, batch, seq) == batch * seq * (4 * _active_matmul_params(hf) + attention)
    if layers:
        assert hf_config(shape)["num_hidden_layers"] > layers   # the cut applies to a copy, the real depth is kept


def test_dense_layers_of_a_moe_model_count_their_dense_mlp():
    cfg = ModelConfig.from_hf(hf_config("qwen3-30b-a3b", 2)).replace(mlp_only_layers=(0,), intermediate_size=1000)
    moe = ModelConfig.from_hf(hf_config("qwen3-30b-a3b", 2))
    d = cfg.hidden_size
    per_moe = d * cfg.num_experts + cfg.num_experts_per_tok * 3 * d * cfg.moe_intermediate_size
    assert active_matmul_params(moe) - active_matmul_params(cfg) == per_moe - 3 * d * 1000
