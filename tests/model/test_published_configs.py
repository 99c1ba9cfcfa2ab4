"""The published config.json files (`jaxdiff/config/published/`) load unchanged and give their
release's numbers, round-trip through `to_hf`, and have each value jaxdiff does not implement
refused by name; a shrunk checkpoint that keeps every field of the Qwen3-Coder release converts and
matches transformers (fp32, <= 1e-4), and so does its FP8 form."""
import hashlib
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jaxdiff
from jaxdiff.checkpoint.safetensors_io import SafetensorsFolder
from jaxdiff.config import published
from jaxdiff.config.published import NAMES, SOURCES, published_config, published_text
from jaxdiff.model import ConfigError, ModelConfig, flat_params
from tests.hf_fixtures import build_hf_model, make_fp8_checkpoint
from tests.model.test_hf_parity import TOL, additive_mask
from tools import convert_hf, export_hf

CODER = "Qwen3-Coder-30B-A3B-Instruct"
CODER_FP8 = "Qwen3-Coder-30B-A3B-Instruct-FP8"

# What each release's file says (read off the mirrored files; see jaxdiff/config/published).
CODER_NUMBERS = dict(num_hidden_layers=48, hidden_size=2048, num_attention_heads=32, num_key_value_heads=4,
                     head_dim=128, intermediate_size=5472, num_experts=128, num_experts_per_tok=8,
                     moe_intermediate_size=768, norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=(),
                     vocab_size=151936, tie_word_embeddings=False, max_position_embeddings=262144,
                     rms_norm_eps=1e-6, router_aux_loss_coef=0.0, eos_token_id=151645, pad_token_id=None)
EXPECTED = {CODER: dict(CODER_NUMBERS, fp8_block_size=None),
            CODER_FP8: dict(CODER_NUMBERS, fp8_block_size=(128, 128))}


def test_every_release_has_its_expectations():
    assert set(EXPECTED) == set(NAMES)


@pytest.mark.parametrize("file", sorted(SOURCES))
def test_shipped_files_are_the_mirrored_bytes(file):
    text = published_text(file)
    assert hashlib.sha256(text.encode()).hexdigest() == SOURCES[file].sha256
    assert "\r" not in text
    src = SOURCES[file]
    assert "/" in src.repo and len(src.commit) == 40 and src.path.endswith("config.json")


def test_no_unrecorded_file_ships():
    folder = os.path.dirname(published.__file__)
    assert sorted(f for f in os.listdir(folder) if f.endswith(".json")) == sorted(SOURCES)


@pytest.mark.parametrize("name", NAMES)
def test_published_config_gives_the_release_numbers(name):
    cfg = ModelConfig.from_hf(published_config(name), source=name)
    for field, value in EXPECTED[name].items():
        assert getattr(cfg, field) == value, field
    assert cfg.rope.type == "default" and cfg.rope.theta == 1e7
    assert cfg.architecture == "Qwen3MoeForCausalLM"
    assert all(cfg.layer_is_moe(i) for i in range(cfg.num_hidden_layers))
    if cfg.fp8_block_size is not None:
        skip = set(cfg.fp8_skip_modules)
        assert "lm_head" in skip and len(skip) == 1 + 3 * cfg.num_hidden_layers
        for i in range(cfg.num_hidden_layers):
            assert {f"model.layers.{i}.{m}" for m in ("input_layernorm", "mlp.gate", "post_attention_layernorm")} <= skip
        assert not any("experts" in s or "self_attn" in s for s in skip)


def test_fp8_release_is_the_instruct_file_plus_its_quantization_config():
    a, b = published_config(CODER), published_config(CODER_FP8)
    q = b.pop("quantization_config")
    assert a == b
    assert {k: q[k] for k in ("quant_method", "fmt", "activation_scheme", "weight_block_size")} == {
        "quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": [128, 128]}


def test_published_config_is_a_fresh_copy_and_names_unknown_releases():
    published_config(CODER_FP8)["quantization_config"]["modules_to_not_convert"].clear()
    assert len(published_config(CODER_FP8)["quantization_config"]["modules_to_not_convert"]) == 145
    with pytest.raises(KeyError, match="Qwen3-Coder-30B-A3B-Instruct"):
        published_config("Qwen3-Coder-31B")


@pytest.mark.parametrize("name", NAMES)
def test_round_trip_gives_the_file_back(name):
    d = published_config(name)
    cfg = ModelConfig.from_hf(d)
    assert cfg.to_hf() == d
    assert ModelConfig.from_hf(cfg.to_hf()) == cfg
    assert json.loads(cfg.to_json()) == d


def test_the_file_itself_loads_unchanged(tmp_path):
    """As a user has it: the published bytes as config.json of a folder."""
    (tmp_path / "config.json").write_bytes(published_text(f"{CODER}.json").encode())
    cfg = ModelConfig.from_hf(tmp_path)
    assert cfg == ModelConfig.from_hf(published_config(CODER)) and cfg.to_hf() == published_config(CODER)


@pytest.mark.parametrize("change, field", [
    ({"qkv_bias": True}, "qkv_bias=true"),
    ({"use_qk_norm": False}, "use_qk_norm=false"),
    ({"shared_expert_intermediate_size": 768}, "shared_expert_intermediate_size=768"),
    ({"use_sliding_window": True}, "use_sliding_window"),
    ({"attention_bias": True}, "attention_bias"),
    ({"layer_types": ["full_attention"] * 47 + ["sliding_attention"]}, "layer_types"),
    ({"layer_types": ["full_attention"] * 47}, "layer_types"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"attention_dropout": 0.1}, "attention_dropout"),
    ({"rope_scaling": {"rope_type": "longrope", "factor": 4.0}}, "longrope"),
    ({"mlp_only_layers": [48]}, "mlp_only_layers"),
    ({"num_experts_per_tok": 129}, "num_experts_per_tok"),
    ({"num_key_value_heads": 5}, "num_key_value_heads"),
    ({"quantization_config": {"quant_method": "awq", "bits": 4}}, "quantization_config"),
    ({"shared_experts_intermediate_size": 0}, "shared_experts_intermediate_size"),   # a misspelt field
    ({"n_shared_experts": 1}, "n_shared_experts"),
])
def test_each_unimplemented_value_is_refused_by_name(change, field):
    d = {**published_config(CODER), **change}
    with pytest.raises(ConfigError, match="x/config.json") as e:
        ModelConfig.from_hf(d, source="x/config.json")
    assert field in str(e.value)


@pytest.mark.parametrize("change", [
    {"qkv_bias": None}, {"use_qk_norm": None}, {"shared_expert_intermediate_size": None},
    {"sliding_window": 4096}, {"max_window_layers": 0},           # inert: use_sliding_window is false
    {"layer_types": ["full_attention"] * 48}, {"rope_scaling": {"rope_type": "default"}},
    {"transformers_version": "5.0.0", "bos_token_id": 151643, "dtype": "bfloat16"},   # metadata
])
def test_values_that_compute_the_same_model_are_accepted(change):
    base = ModelConfig.from_hf(published_config(CODER))
    assert ModelConfig.from_hf({**published_config(CODER), **change}) == base


# ----------------------------------------------------------------------------- shrunk release
# Only sizes shrink; every other field keeps the published value (rope_theta 1e7, 262144 positions,
# qkv_bias, use_qk_norm, shared_expert_intermediate_size, norm_topk_prob, eos 151645, ...).
# head_dim 16 != hidden / heads = 8, as in the release (128 != 2048 / 32).
SHRINK = dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=8, num_key_value_heads=1, head_dim=16,
              intermediate_size=96, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32, vocab_size=512)


def shrunk(name: str) -> dict:
    d = published_config(name)
    assert SHRINK.keys() <= d.keys()
    return {**d, **SHRINK}


@pytest.fixture(scope="module")
def shrunk_release(tmp_path_factory):
    """A random-init transformers Qwen3MoeForCausalLM of the shrunk release, saved, with the shrunk
    published dict as its config.json (not transformers' re-serialisation of it)."""
    cfg = shrunk(CODER)
    path = str(tmp_path_factory.mktemp("coder") / "hf")
    build_hf_model("moe", 0, **{**cfg, "initializer_range": 0.1}).save_pretrained(path)  # 0.1: O(1) logits
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    from transformers import AutoModelForCausalLM
    hf = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager", dtype=torch.float32).eval()
    assert hf.config.rope_parameters["rope_theta"] == 1e7 and hf.config.head_dim == 16
    assert hf.config.qkv_bias is False and hf.config.use_qk_norm is True
    return path, cfg, hf


@pytest.mark.parity
@pytest.mark.parametrize("mode", ["causal", "bidirectional", "block"])
def test_shrunk_release_converts_and_matches_transformers(shrunk_release, tmp_path, mode):
    path, cfg, hf = shrunk_release
    assert convert_hf.main(["--hf_dir", path, "--out_dir", str(tmp_path / "jd"), "--quiet"]) == 0
    with open(tmp_path / "jd" / "config.json") as f:
        assert json.load(f) == cfg                       # the converted checkpoint keeps every field
    b, l, block, plen = 2, 29, 6, 7
    tokens = np.random.RandomState(0).randint(0, cfg["vocab_size"], (b, l))
    with torch.no_grad():
        mask = None if mode == "causal" else additive_mask(mode, l, b, block, plen)
        ref = hf(torch.tensor(tokens), attention_mask=mask).logits.numpy()
    assert np.abs(ref).max() > 1.0
    model = jaxdiff.load_model(str(tmp_path / "jd"))
    for impl in ("reference", "chunked"):
        model.attention_impl, model.attention_chunk = impl, 8
        out = np.asarray(model(jnp.asarray(tokens), attention=mode, block_size=block,
                               prompt_lengths=jnp.full((b,), plen)))
        assert out.dtype == np.float32 and out.shape == ref.shape
        diff = np.abs(out - ref).max()
        assert diff <= TOL, f"{impl}: max |logit diff| {diff:.2e}"


@pytest.mark.parity
def test_shrunk_fp8_release_converts_and_matches_transformers(shrunk_release, tmp_path):
    """The FP8 form: block-FP8 weights as the release stores them (here one ragged 128 x 128 block
    per 64-wide weight) under the FP8 release's config.json. Kept as FP8 it computes what its
    dequantized weights compute; dequantized and exported, transformers reads the exported folder
    (every field but quantization_config) and computes the same logits."""
    from transformers import AutoModelForCausalLM

    path, _, _ = shrunk_release
    cfg = shrunk(CODER_FP8)
    fp8_dir = make_fp8_checkpoint(path, str(tmp_path / "fp8"), block=tuple(cfg["quantization_config"]["weight_block_size"]))
    with open(os.path.join(fp8_dir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    scales = {k for k in SafetensorsFolder.open(fp8_dir).tensors if k.endswith("weight_scale_inv")}
    assert len(scales) == 2 * (4 + 3 * 8)                 # per layer: q/k/v/o and every expert's gate/up/down
    assert convert_hf.main(["--hf_dir", fp8_dir, "--out_dir", str(tmp_path / "jd"), "--quiet"]) == 0
    model = jaxdiff.load_model(str(tmp_path / "jd"))
    params = flat_params(model)
    assert model.config.fp8_block_size == (128, 128)
    assert params["model.layers.1.mlp.experts.down_proj.weight"].dtype == jnp.float8_e4m3fn
    assert params["model.layers.1.self_attn.o_proj.weight"].dtype == jnp.float8_e4m3fn
    assert params["lm_head.weight"].dtype == jnp.float32 and params["model.layers.1.mlp.gate.weight"].dtype == jnp.float32
    tokens = np.random.RandomState(1).randint(0, cfg["vocab_size"], (2, 17))
    kept = np.asarray(model(jnp.asarray(tokens)))
    np.testing.assert_allclose(kept, np.asarray(jaxdiff.load_model(fp8_dir, dtype="float32")(jnp.asarray(tokens))),
                               atol=1e-5)
    assert convert_hf.main(["--hf_dir", fp8_dir, "--out_dir", str(tmp_path / "jd32"), "--dtype", "float32",
                            "--quiet"]) == 0
    assert export_hf.main(["--ckpt_dir", str(tmp_path / "jd32"), "--out_dir", str(tmp_path / "hf32"), "--quiet"]) == 0
    with open(tmp_path / "hf32" / "config.json") as f:
        exported = json.load(f)
    # every field but quantization_config; torch_dtype says what was written
    assert exported == {**{k: v for k, v in cfg.items() if k != "quantization_config"}, "torch_dtype": "float32"}
    with torch.no_grad():
        ref = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf32"), attn_implementation="eager",
                                                   dtype=torch.float32).eval()(torch.tensor(tokens)).logits.numpy()
    out = np.asarray(jaxdiff.load_model(str(tmp_path / "jd32"))(jnp.asarray(tokens)))
    assert np.abs(ref).max() > 1.0
    assert np.abs(out - ref).max() <= TOL
