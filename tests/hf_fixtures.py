"""Tiny but real HF checkpoints, built with transformers (random init + save_pretrained).

Weights are drawn with a larger initializer range than HF's default and norm weights perturbed, so
logits are O(1) and parity tests compare numbers that matter.
"""
from __future__ import annotations

import json
import os
import shutil

import numpy as np

from jaxdiff.checkpoint import fp8
from jaxdiff.checkpoint.safetensors_io import INDEX, SafetensorsFolder, write_file

DENSE = dict(vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=16, initializer_range=0.1)
MOE = dict(vocab_size=320, hidden_size=64, intermediate_size=96, moe_intermediate_size=32, num_hidden_layers=3,
           num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_experts=8, num_experts_per_tok=2,
           initializer_range=0.1)


def build_hf_model(kind: str = "dense", seed: int = 0, **overrides):
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM, Qwen3MoeConfig, Qwen3MoeForCausalLM

    torch.manual_seed(seed)
    if kind == "dense":
        model = Qwen3ForCausalLM(Qwen3Config(**{**DENSE, **overrides}))
    elif kind == "moe":
        model = Qwen3MoeForCausalLM(Qwen3MoeConfig(**{**MOE, **overrides}))
    else:
        raise ValueError(kind)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.2)
    return model.eval()


def make_hf_checkpoint(root, kind: str = "dense", *, name: str | None = None, seed: int = 0,
                       max_shard_size: str | None = None, torch_dtype=None, **overrides) -> str:
    """Saves a random-init Qwen3 / Qwen3-MoE under root/name and returns the folder."""
    model = build_hf_model(kind, seed, **overrides)
    if torch_dtype is not None:
        model = model.to(torch_dtype)
    path = os.path.join(os.fspath(root), name or f"hf_{kind}_{seed}")
    kw = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(path, **kw)
    return path


FP8_SKIP = ("lm_head", "embed_tokens", "norm", "mlp.gate.")


def make_fp8_checkpoint(src_dir: str, out_dir: str, block=(128, 128), scale_dtype=np.float32) -> str:
    """The FP8 release format: every Linear weight except lm_head / router / norms / embeddings as
    e4m3 + `weight_scale_inv` per block (float32 as in the hub releases, or bfloat16); the file
    layout of the source is kept."""
    src = SafetensorsFolder.open(src_dir)
    os.makedirs(out_dir, exist_ok=True)
    by_file: dict[str, dict[str, np.ndarray]] = {}
    for name in src.tensors:
        arr = np.asarray(src.array(name), np.float32)
        fname = src.weight_map[name]
        if name.endswith(".weight") and arr.ndim == 2 and not any(s in name for s in FP8_SKIP):
            q, s = fp8.quantize(arr, block, scale_dtype)
            by_file.setdefault(fname, {})[name] = q
            by_file[fname][name.replace(".weight", ".weight_scale_inv")] = s
        else:
            by_file.setdefault(fname, {})[name] = np.asarray(src.array(name))
    weight_map, total = {}, 0
    for fname, tensors in by_file.items():
        total += write_file(os.path.join(out_dir, fname), tensors, {"format": "pt"})
        weight_map.update({k: fname for k in tensors})
    if os.path.exists(os.path.join(src_dir, INDEX)):
        with open(os.path.join(out_dir, INDEX), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    with open(os.path.join(src_dir, "config.json")) as f:
        cfg = json.load(f)
    cfg["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                  "weight_block_size": list(block),
                                  "modules_to_not_convert": ["lm_head", "mlp.gate"]}
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    for extra in ("generation_config.json",):
        if os.path.exists(os.path.join(src_dir, extra)):
            shutil.copy(os.path.join(src_dir, extra), out_dir)
    return out_dir
