"""Frozen model configuration for Qwen3 (dense) and Qwen3-MoE, with `from_hf` / `to_hf`.

Every field of a Hugging Face `config.json` is either honoured, recorded as harmless metadata, or
refused with an error that names it: a converted model must compute what the checkpoint's authors
computed, or not load at all.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

ARCHITECTURES = {
    "qwen3": "Qwen3ForCausalLM",
    "qwen3_moe": "Qwen3MoeForCausalLM",
}

# Fields that describe the file or the PyTorch runtime, not the function the model computes.
_METADATA_FIELDS = frozenset({
    "architectures", "model_type", "transformers_version", "torch_dtype", "dtype", "initializer_range",
    "use_cache", "bos_token_id", "eos_token_id", "pad_token_id", "output_router_logits",
    "output_hidden_states", "output_attentions", "return_dict", "id2label", "label2id", "_name_or_path",
    "problem_type", "chunk_size_feed_forward", "is_encoder_decoder", "tokenizer_class",
    "router_aux_loss_coef", "torchscript", "use_return_dict", "tf_legacy_loss",
    "pruned_heads", "add_cross_attention", "task_specific_params", "finetuning_task",
    "prefix", "sep_token_id", "decoder_start_token_id", "use_bfloat16", "tie_encoder_decoder",
    "is_decoder", "cross_attention_hidden_size", "_attn_implementation_autoset",
})
# Fields the model honours (read below).
_MODEL_FIELDS = frozenset({
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings", "rms_norm_eps",
    "tie_word_embeddings", "rope_theta", "rope_scaling", "rope_parameters", "attention_bias",
    "attention_dropout", "use_sliding_window", "layer_types",
    "decoder_sparse_step", "moe_intermediate_size", "num_experts_per_tok", "num_experts",
    "num_local_experts", "norm_topk_prob", "mlp_only_layers", "quantization_config",
    # jaxdiff's own additions, written back into config.json of converted checkpoints.
    "jaxdiff_mask_token_id",
})
# Read by transformers only when use_sliding_window is true (Qwen3Config: layers from
# max_window_layers on use a `sliding_window`-wide window; Qwen3MoeConfig sets sliding_window to
# None unless use_sliding_window), which is refused, so any value here computes the same model.
_SLIDING_WINDOW_FIELDS = frozenset({"sliding_window", "max_window_layers"})
# Fields that state a property of the Qwen3 architecture: Qwen's own training configs write them
# (the published Qwen3-Coder config.json carries all three) and transformers' Qwen3 classes do not
# read them, because the property is fixed: q/k/v projections without bias, RMSNorm on queries and
# keys, no shared expert. Accepted with that value (or null); any other value asks for a model
# neither jaxdiff nor transformers builds, so it is refused by name.
_IMPLIED_FIELDS = {
    "qkv_bias": (False, "biases on the q/k/v projections (Qwen3 has none)"),
    "use_qk_norm": (True, "attention without RMSNorm on queries and keys (Qwen3 always has it)"),
    "shared_expert_intermediate_size": (0, "a shared expert (Qwen3-MoE has none)"),
}
SUPPORTED_ROPE_TYPES = ("default", "linear", "yarn")
_ROPE_KEYS = frozenset({"rope_type", "type", "rope_theta", "factor", "original_max_position_embeddings",
                        "beta_fast", "beta_slow", "attention_factor", "truncate", "mscale", "mscale_all_dim"})
_FP8_KEYS = frozenset({"quant_method", "fmt", "activation_scheme", "weight_block_size",
                       "modules_to_not_convert", "ignored_layers"})


class ConfigError(ValueError):
    """A config.json that jaxdiff cannot honour; the message names the file and field."""


@dataclasses.dataclass(frozen=True)
class RopeConfig:
    theta: float = 10000.0
    type: str = "default"
    factor: float = 1.0
    original_max_position_embeddings: int | None = None
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    attention_factor: float | None = None
    mscale: float | None = None
    mscale_all_dim: float | None = None
    truncate: bool = True


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shape and numerics of a Qwen3 / Qwen3-MoE decoder. `num_experts == 0` means dense."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 32768
    rope: RopeConfig = RopeConfig()
    # Mixture of experts (Qwen3-MoE).
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    norm_topk_prob: bool = False
    decoder_sparse_step: int = 1
    mlp_only_layers: tuple[int, ...] = ()
    router_aux_loss_coef: float = 0.0
    # Block-FP8 weights (e4m3 + one float32 `weight_scale_inv` per block); None = plain weights.
    fp8_block_size: tuple[int, int] | None = None
    fp8_skip_modules: tuple[str, ...] = ()
    # Token ids. jaxdiff adds a mask token for diffusion; None until one is assigned.
    mask_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    # The config.json this came from, verbatim, so export writes back what was read.
    hf_json: str = dataclasses.field(default="", compare=False, repr=False)

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    def layer_is_moe(self, i: int) -> bool:
        return (self.is_moe and i not in self.mlp_only_layers
                and (i + 1) % self.decoder_sparse_step == 0)

    @property
    def architecture(self) -> str:
        return ARCHITECTURES["qwen3_moe" if self.is_moe else "qwen3"]

    def replace(self, **kw) -> "ModelConfig":
        return dataclasses.replace(self, **kw)

    # ---------------------------------------------------------------- HF conversion
    @classmethod
    def from_hf(cls, hf: dict[str, Any] | str | os.PathLike, *, source: str | None = None) -> "ModelConfig":
        """Builds a config from an HF config dict, a config.json path, or a checkpoint folder."""
        if not isinstance(hf, dict):
            path = os.fspath(hf)
            if os.path.isdir(path):
                path = os.path.join(path, "config.json")
            source = source or path
            try:
                with open(path) as f:
                    hf = json.load(f)
            except FileNotFoundError:
                raise ConfigError(f"{path}: no config.json (is this a Hugging Face checkpoint folder?)") from None
            except json.JSONDecodeError as e:
                raise ConfigError(f"{path}: not valid JSON ({e})") from None
        where = source or "config"
        return _parse_hf(hf, where)

    def to_hf(self) -> dict[str, Any]:
        """The HF config dict. For a converted checkpoint this is the original file's content."""
        if self.hf_json:
            d = json.loads(self.hf_json)
        else:
            d = _build_hf(self)
        if self.mask_token_id is not None:
            d["jaxdiff_mask_token_id"] = self.mask_token_id
        if self.fp8_block_size is None:
            d.pop("quantization_config", None)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_hf(), indent=2, sort_keys=True)


def _need(hf: dict, key: str, where: str):
    if key not in hf or hf[key] is None:
        raise ConfigError(f"{where}: required field '{key}' is missing")
    return hf[key]


def _parse_rope(hf: dict, where: str) -> RopeConfig:
    params = hf.get("rope_parameters") or {}
    legacy = hf.get("rope_scaling") or {}
    if params and legacy:
        raise ConfigError(f"{where}: both 'rope_parameters' and 'rope_scaling' are set; keep one")
    params = dict(params or legacy)
    unknown = set(params) - _ROPE_KEYS
    if unknown:
        raise ConfigError(f"{where}: unsupported rope field(s) {sorted(unknown)} in "
                          f"'{'rope_parameters' if hf.get('rope_parameters') else 'rope_scaling'}'")
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ConfigError(f"{where}: rope type '{rope_type}' is not supported "
                          f"(supported: {', '.join(SUPPORTED_ROPE_TYPES)})")
    theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    factor = float(params.get("factor", 1.0) or 1.0)
    omp = params.get("original_max_position_embeddings")
    if rope_type == "yarn" and omp is None:
        raise ConfigError(f"{where}: yarn rope needs 'original_max_position_embeddings'")
    return RopeConfig(
        theta=float(theta), type=rope_type, factor=factor, original_max_position_embeddings=omp,
        beta_fast=float(params.get("beta_fast") or 32.0), beta_slow=float(params.get("beta_slow") or 1.0),
        attention_factor=params.get("attention_factor"), mscale=params.get("mscale"),
        mscale_all_dim=params.get("mscale_all_dim"), truncate=bool(params.get("truncate", True)))


def _parse_fp8(q: dict | None, where: str) -> tuple[tuple[int, int] | None, tuple[str, ...]]:
    if not q:
        return None, ()
    unknown = set(q) - _FP8_KEYS
    if unknown:
        raise ConfigError(f"{where}: unsupported field(s) {sorted(unknown)} in 'quantization_config'")
    if q.get("quant_method") != "fp8":
        raise ConfigError(f"{where}: quantization_config.quant_method={q.get('quant_method')!r} is not "
                          "supported (only block 'fp8')")
    if q.get("fmt", "e4m3") != "e4m3":
        raise ConfigError(f"{where}: quantization_config.fmt={q.get('fmt')!r} is not supported (only 'e4m3')")
    if q.get("activation_scheme", "dynamic") != "dynamic":
        raise ConfigError(f"{where}: quantization_config.activation_scheme={q.get('activation_scheme')!r} "
                          "is not supported (only 'dynamic': weights only)")
    block = q.get("weight_block_size")
    if not (isinstance(block, (list, tuple)) and len(block) == 2 and all(int(b) > 0 for b in block)):
        raise ConfigError(f"{where}: quantization_config.weight_block_size must be [rows, cols], got {block!r}")
    skip = tuple(q.get("modules_to_not_convert") or q.get("ignored_layers") or ())
    return (int(block[0]), int(block[1])), skip


def _parse_hf(hf: dict, where: str) -> ModelConfig:
    model_type = hf.get("model_type")
    if model_type not in ARCHITECTURES:
        raise ConfigError(f"{where}: model_type={model_type!r} is not supported "
                          f"(supported: {', '.join(sorted(ARCHITECTURES))})")
    archs = hf.get("architectures") or [ARCHITECTURES[model_type]]
    if archs != [ARCHITECTURES[model_type]]:
        raise ConfigError(f"{where}: architectures={archs!r} is not supported for model_type "
                          f"{model_type!r} (expected ['{ARCHITECTURES[model_type]}'])")
    unknown = sorted(set(hf) - _METADATA_FIELDS - _MODEL_FIELDS - _SLIDING_WINDOW_FIELDS - set(_IMPLIED_FIELDS))
    if unknown:
        raise ConfigError(f"{where}: unsupported config field(s) {unknown}")
    for key, (implied, asks_for) in _IMPLIED_FIELDS.items():
        if hf.get(key) is not None and hf[key] != implied:
            raise ConfigError(f"{where}: {key}={json.dumps(hf[key])} is not supported: it asks for {asks_for}, "
                              f"which jaxdiff does not implement (supported: {key}={json.dumps(implied)} or null)")
    act = hf.get("hidden_act", "silu")
    if act != "silu":
        raise ConfigError(f"{where}: hidden_act={act!r} is not supported (only 'silu')")
    if hf.get("attention_bias"):
        raise ConfigError(f"{where}: attention_bias=true is not supported (Qwen3 releases have none)")
    if float(hf.get("attention_dropout") or 0.0) != 0.0:
        raise ConfigError(f"{where}: attention_dropout={hf['attention_dropout']} is not supported (only 0)")
    if hf.get("use_sliding_window"):
        raise ConfigError(f"{where}: use_sliding_window=true is not supported")
    n_heads = int(_need(hf, "num_attention_heads", where))
    hidden = int(_need(hf, "hidden_size", where))
    head_dim = int(hf.get("head_dim") or hidden // n_heads)
    kv = int(hf.get("num_key_value_heads") or n_heads)
    if n_heads % kv:
        raise ConfigError(f"{where}: num_attention_heads={n_heads} is not a multiple of num_key_value_heads={kv}")
    n_layers = int(_need(hf, "num_hidden_layers", where))
    layer_types = hf.get("layer_types")
    if layer_types is not None:
        if len(layer_types) != n_layers:
            raise ConfigError(f"{where}: layer_types has {len(layer_types)} entries for num_hidden_layers={n_layers}")
        if any(t != "full_attention" for t in layer_types):
            raise ConfigError(f"{where}: layer_types other than 'full_attention' are not supported "
                              f"(got {sorted(set(layer_types) - {'full_attention'})})")
    fp8_block, fp8_skip = _parse_fp8(hf.get("quantization_config"), where)
    moe = {}
    if model_type == "qwen3_moe":
        n_exp = int(hf.get("num_experts") or hf.get("num_local_experts") or 0)
        if n_exp <= 0:
            raise ConfigError(f"{where}: qwen3_moe needs num_experts > 0")
        top_k = int(_need(hf, "num_experts_per_tok", where))
        if not 0 < top_k <= n_exp:
            raise ConfigError(f"{where}: num_experts_per_tok={top_k} must be in 1..num_experts={n_exp}")
        step = int(hf.get("decoder_sparse_step", 1) or 1)
        mlp_only = tuple(sorted(int(i) for i in (hf.get("mlp_only_layers") or ())))
        bad = [i for i in mlp_only if not 0 <= i < n_layers]
        if bad:
            raise ConfigError(f"{where}: mlp_only_layers {bad} outside 0..{n_layers - 1}")
        moe = dict(num_experts=n_exp, num_experts_per_tok=top_k,
                   moe_intermediate_size=int(_need(hf, "moe_intermediate_size", where)),
                   norm_topk_prob=bool(hf.get("norm_topk_prob", False)), decoder_sparse_step=step,
                   mlp_only_layers=mlp_only, router_aux_loss_coef=float(hf.get("router_aux_loss_coef") or 0.0))
    eos = hf.get("eos_token_id")
    if isinstance(eos, list):
        eos = eos[0] if eos else None
    return ModelConfig(
        vocab_size=int(_need(hf, "vocab_size", where)), hidden_size=hidden,
        intermediate_size=int(hf.get("intermediate_size") or 0), num_hidden_layers=n_layers,
        num_attention_heads=n_heads, num_key_value_heads=kv, head_dim=head_dim,
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)), tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        max_position_embeddings=int(hf.get("max_position_embeddings", 32768)), rope=_parse_rope(hf, where),
        fp8_block_size=fp8_block, fp8_skip_modules=fp8_skip, mask_token_id=hf.get("jaxdiff_mask_token_id"),
        eos_token_id=eos, pad_token_id=hf.get("pad_token_id"), hf_json=json.dumps(hf), **moe)


def _build_hf(c: ModelConfig) -> dict[str, Any]:
    """HF config for a config built in Python (e.g. a from-scratch tiny model)."""
    rope: dict[str, Any] = {"rope_type": c.rope.type, "rope_theta": c.rope.theta}
    if c.rope.type != "default":
        rope["factor"] = c.rope.factor
    if c.rope.type == "yarn":
        rope.update(original_max_position_embeddings=c.rope.original_max_position_embeddings,
                    beta_fast=c.rope.beta_fast, beta_slow=c.rope.beta_slow)
        for k in ("attention_factor", "mscale", "mscale_all_dim"):
            if getattr(c.rope, k) is not None:
                rope[k] = getattr(c.rope, k)
    d: dict[str, Any] = {
        "architectures": [c.architecture], "model_type": "qwen3_moe" if c.is_moe else "qwen3",
        "vocab_size": c.vocab_size, "hidden_size": c.hidden_size, "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_hidden_layers, "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_key_value_heads, "head_dim": c.head_dim, "hidden_act": "silu",
        "max_position_embeddings": c.max_position_embeddings, "rms_norm_eps": c.rms_norm_eps,
        "tie_word_embeddings": c.tie_word_embeddings, "rope_parameters": rope, "attention_bias": False,
        "eos_token_id": c.eos_token_id, "pad_token_id": c.pad_token_id,
    }
    if c.is_moe:
        d.update(num_experts=c.num_experts, num_experts_per_tok=c.num_experts_per_tok,
                 moe_intermediate_size=c.moe_intermediate_size, norm_topk_prob=c.norm_topk_prob,
                 decoder_sparse_step=c.decoder_sparse_step, mlp_only_layers=list(c.mlp_only_layers),
                 router_aux_loss_coef=c.router_aux_loss_coef)
    if c.fp8_block_size is not None:
        d["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                    "weight_block_size": list(c.fp8_block_size),
                                    "modules_to_not_convert": list(c.fp8_skip_modules)}
    return d
