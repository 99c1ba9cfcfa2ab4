"""ModelConfig: every HF field honoured or refused by name."""
import json

import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.model import ConfigError, ModelConfig, build_model
from tests.model import tiny

BASE = {"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "vocab_size": 100, "hidden_size": 32,
        "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "head_dim": 8, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 16,
        "rope_theta": 1e6, "rope_scaling": None, "torch_dtype": "bfloat16", "max_window_layers": 28,
        "sliding_window": None, "use_sliding_window": False, "router_aux_loss_coef": 0.001}


def test_hub_style_config_parses():
    cfg = ModelConfig.from_hf(BASE)
    assert cfg.is_moe and cfg.rope.theta == 1e6 and cfg.rope.type == "default"
    assert json.loads(cfg.hf_json) == BASE and cfg.to_hf()["rope_theta"] == 1e6


@pytest.mark.parametrize("change, field", [
    ({"attn_logit_softcapping": 30.0}, "attn_logit_softcapping"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"attention_bias": True}, "attention_bias"),
    ({"use_sliding_window": True}, "use_sliding_window"),
    ({"rope_scaling": {"rope_type": "longrope", "factor": 2.0}}, "longrope"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8, "foo": 1}}, "foo"),
    ({"model_type": "llama"}, "model_type"),
    ({"architectures": ["Qwen3ForCausalLM"]}, "architectures"),
    ({"num_key_value_heads": 3}, "num_key_value_heads"),
    ({"quantization_config": {"quant_method": "gptq", "bits": 4}}, "quantization_config"),
    ({"quantization_config": {"quant_method": "fp8", "fmt": "e5m2", "weight_block_size": [128, 128]}}, "fmt"),
    ({"mlp_only_layers": [5]}, "mlp_only_layers"),
])
def test_unsupported_fields_are_refused_by_name(change, field):
    with pytest.raises(ConfigError, match=field):
        ModelConfig.from_hf({**BASE, **change}, source="x/config.json")


def test_missing_config_file_names_the_path(tmp_path):
    with pytest.raises(ConfigError, match="no config.json"):
        ModelConfig.from_hf(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        ModelConfig.from_hf(tmp_path)


def test_config_built_in_python_round_trips_through_hf():
    cfg = tiny.moe(mlp_only_layers=(1,), fp8_block_size=(128, 128))
    again = ModelConfig.from_hf(cfg.to_hf())
    assert again == cfg


def test_bfloat16_model_tracks_float32():
    cfg = tiny.moe()
    tokens = jnp.asarray(np.random.RandomState(0).randint(0, 256, (2, 16)))
    f32 = tiny.jitted(build_model(cfg, dtype=jnp.float32, seed=2))
    bf16 = tiny.jitted(build_model(cfg, dtype=jnp.bfloat16, seed=2))
    a, b = np.asarray(f32(tokens)), np.asarray(bf16(tokens))
    assert b.dtype == np.float32
    assert np.abs(a - b).max() < 2e-2 * max(1.0, np.abs(a).max())
