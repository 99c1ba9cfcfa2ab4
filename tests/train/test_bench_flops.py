"""tools/bench_train.py's model FLOPs (its MFU column): 4 x tokens x the active matmul parameters,
counted here from the model's own parameter shapes (abstract, no memory), plus attention."""
import math

import pytest

from jaxdiff.model import ModelConfig, param_specs
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


@pytest.mark.parametrize("shape,layers", [("qwen3-0.6b", 2), ("qwen3-30b-a3b", 1)])
def test_model_flops_count_each_active_parameter_four_times_per_token(shape, layers):
    hf = hf_config(shape, layers)
    batch, seq = 2, 256
    attention = 12 * layers * seq * hf["num_attention_heads"] * hf["head_dim"]
    expected = batch * seq * (4 * _active_matmul_params(hf) + attention)
    assert model_flops_per_step(hf, batch, seq) == expected
    assert hf_config(shape)["num_hidden_layers"] > layers   # the cut applies to a copy, the real depth is kept
