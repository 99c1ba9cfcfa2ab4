"""One LoRA head of a model as a PEFT adapter folder (`export_peft`), or merged into a full HF folder
(`export_merged`).

jaxdiff keeps adapters in PEFT's own orientation — A [.., r, in], B [.., out, r], y = x W^T +
scale (x A^T) B^T — so `lora_A.weight` / `lora_B.weight` are the arrays as they are, no transpose.
PEFT's scale is lora_alpha / r (use_rslora false), so `lora_alpha = scale * r`.

    adapter_model.safetensors (float32)
      base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight          [r, in]
      base_model.model.model.layers.{i}.self_attn.q_proj.lora_B.weight          [out, r]
      base_model.model.lm_head.lora_A.weight                                    [r, D]
      base_model.model.model.layers.{i}.mlp.experts.{e}.gate_proj.lora_A.weight [r, D]  (per expert, as vLLM loads)
      base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta  [1, D]  (<|mask|> row, diffusion)

The `<|mask|>` row ships with the diffusion head, always (`trainable_token_indices: {"embed_tokens":
[id]}`): when it was trained it is the `MaskEmbedding` variable; when not, it is still not the base
checkpoint's row — `add_mask_token` wrote the mean embedding into jaxdiff's frozen table — and every
masked position reads it. PEFT's `trainable_tokens_delta` holds the row's values, not a difference.
The ar head never sees `<|mask|>` (it trains and decodes on clean text), so its adapter is plain
LoRA, which vLLM also loads (vLLM refuses any tensor that is not lora_A / lora_B).
"""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
from flax import nnx

from jaxdiff.checkpoint import hf_keys
from jaxdiff.checkpoint.convert import EXTRA_FILES, export_hf
from jaxdiff.checkpoint.orbax_io import is_checkpoint
from jaxdiff.checkpoint.safetensors_io import INDEX, CheckpointError, SafetensorsFolder, write_file
from jaxdiff.model.config import ModelConfig
from jaxdiff.model.lora import Adapted

PEFT_HEADS = ("ar", "diffusion")   # the length head is a classifier, not an adapter PEFT can express
MASKED_HEADS = ("diffusion",)       # heads whose inputs hold <|mask|>: their adapter carries its row
PREFIX = "base_model.model."
EMBED = "model.embed_tokens"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def _adapted(model) -> list[tuple[str, Adapted]]:
    """(jaxdiff module path, module) of every projection that can carry an adapter."""
    return [(".".join(str(p) for p in path), m) for path, m in nnx.iter_graph(model) if isinstance(m, Adapted)]


def _hf_modules(path: str, module: Adapted) -> list[str]:
    """The HF module name(s) of a jaxdiff projection: one per expert for stacked experts."""
    jd = f"{path}.weight"
    n = module.weight.shape[0] if hf_keys.is_stacked(jd) else None
    return [name.removesuffix(".weight") for name in hf_keys.to_hf(jd, n)]


def head_settings(model, head: str) -> tuple[list[tuple[str, Adapted]], float, float, int]:
    """(adapted (path, module) pairs, scale, dropout, rank) of `head`; raises if the model has no
    such adapters or they disagree (one LoRASpec per head, so they never do when built by jaxdiff)."""
    if head not in PEFT_HEADS:
        raise CheckpointError(f"--head {head!r}: choose from {PEFT_HEADS}")
    mods, settings = [], set()
    for path, m in _adapted(model):
        for h, scale, rate, _ in m.lora_settings:
            if h == head:
                mods.append((path, m))
                settings.add((scale, rate, getattr(m, f"lora_{head}_a").shape[-2]))
    if not mods:
        have = [h for h in getattr(model, "lora_heads", ()) if h in PEFT_HEADS]
        raise CheckpointError(f"--head {head!r}: the model has no {head} adapters (it has: {have or 'none'})")
    if len(settings) != 1:
        raise CheckpointError(f"--head {head!r}: adapters differ in (scale, dropout, rank): {sorted(settings)}")
    scale, rate, rank = settings.pop()
    return mods, scale, rate, rank


def mask_row(model) -> tuple[int, np.ndarray] | None:
    """(id, float32 row [D]) of the `<|mask|>` embedding jaxdiff computes with, or None."""
    tid = model.config.mask_token_id
    if tid is None:
        return None
    emb = model.model.embed_tokens
    row = emb.mask_vector[...] if hasattr(emb, "mask_vector") else emb.weight[...][tid]
    return int(tid), np.asarray(row, np.float32)


def _by_short_name(pairs) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for path, m in pairs:
        for name in _hf_modules(path, m):
            out.setdefault(name.rsplit(".", 1)[-1], set()).add(name)
    return out


def _target_modules(model, mods) -> list[str]:
    """PEFT target names: a short name (`q_proj`) when every projection so named is adapted, else
    the full HF module names of those that are (PEFT matches a short name as a name suffix)."""
    every, adapted = _by_short_name(_adapted(model)), _by_short_name(mods)
    out = []
    for short, names in sorted(adapted.items()):
        out += [short] if names == every[short] else sorted(names, key=_natural)
    return out


def _natural(name: str):
    return [int(p) if p.isdigit() else p for p in name.split(".")]


def _adapters(model, head: str):
    """(HF module name, A [r, in], B [out, r]) of each adapter of `head`, float32, experts one by one."""
    mods, _, _, _ = head_settings(model, head)
    for path, m in mods:
        a = np.asarray(getattr(m, f"lora_{head}_a")[...], np.float32)   # [.., r, in]
        b = np.asarray(getattr(m, f"lora_{head}_b")[...], np.float32)   # [.., out, r]
        for e, name in enumerate(_hf_modules(path, m)):
            yield (name, a[e], b[e]) if a.ndim == 3 else (name, a, b)


def adapter_tensors(model, head: str) -> dict[str, np.ndarray]:
    """PEFT's state dict of `head` (float32, PEFT's key names, one adapter per expert) and, for the
    diffusion head, the `<|mask|>` row. No transpose: jaxdiff's A and B already have PEFT's orientation."""
    out = {}
    for name, a, b in _adapters(model, head):
        out[f"{PREFIX}{name}.lora_A.weight"] = a
        out[f"{PREFIX}{name}.lora_B.weight"] = b
    row = mask_row(model) if head in MASKED_HEADS else None
    if row is not None:
        out[f"{PREFIX}{EMBED}.token_adapter.trainable_tokens_delta"] = row[1][None, :]
    return dict(sorted(out.items(), key=lambda kv: _natural(kv[0])))


def adapter_config(model, head: str, base_path: str | None) -> dict:
    mods, scale, rate, rank = head_settings(model, head)
    alpha = scale * rank
    row = mask_row(model) if head in MASKED_HEADS else None
    return {
        "peft_type": "LORA", "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_path,
        "r": rank, "lora_alpha": int(alpha) if float(alpha).is_integer() else alpha,
        "lora_dropout": rate, "target_modules": _target_modules(model, mods),
        "bias": "none", "fan_in_fan_out": False, "use_rslora": False, "use_dora": False,
        "modules_to_save": None, "init_lora_weights": True, "inference_mode": True,
        "trainable_token_indices": None if row is None else {"embed_tokens": [row[0]]},
    }


def _claim(out_dir: str, overwrite: bool) -> tuple[str, str]:
    out_dir = os.path.abspath(os.fspath(out_dir))
    if os.path.exists(out_dir) and not overwrite:
        raise CheckpointError(f"--out_dir {out_dir}: already exists (pass --overwrite to replace it)")
    tmp = f"{out_dir}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    return out_dir, tmp


def _publish(tmp: str, out_dir: str) -> None:
    if os.path.exists(out_dir):
        shutil.rmtree(out_dir)
    os.rename(tmp, out_dir)


def export_peft(model, head: str, base_path: str | None, out_dir: str, *, overwrite: bool = False,
                tokenizer=None) -> dict:
    """Writes `head` as a PEFT adapter folder (adapter_config.json + adapter_model.safetensors) for
    the HF model at `base_path` (a folder or hub id, recorded as base_model_name_or_path), plus `tokenizer`'s files if
    given (jaxdiff's tokenizer knows `<|mask|>`). Written to a temporary folder, renamed when complete."""
    if base_path is not None and os.path.exists(base_path):   # a local folder; a hub id stays as given
        base_path = os.path.abspath(base_path)
    config = adapter_config(model, head, None if base_path is None else os.fspath(base_path))
    tensors = adapter_tensors(model, head)
    out_dir, tmp = _claim(out_dir, overwrite)
    try:
        os.makedirs(tmp)
        write_file(os.path.join(tmp, ADAPTER_WEIGHTS), tensors, {"format": "pt"})
        with open(os.path.join(tmp, ADAPTER_CONFIG), "w") as f:
            json.dump(config, f, indent=2)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        _publish(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"out_dir": out_dir, "tensors": len(tensors), "target_modules": config["target_modules"]}


def export_merged(model, head: str, base_path: str, out_dir: str, *, overwrite: bool = False,
                  tokenizer=None) -> dict:
    """A full HF folder of the base at `base_path` (an HF folder or a converted checkpoint) with
    `head` merged, W + scale B A computed in float32 and stored in each tensor's source dtype, and
    the `<|mask|>` row jaxdiff computes with written into `model.embed_tokens.weight`. File layout,
    tensor names, dtypes and config are the source's; tokenizer files the source's, or `tokenizer`'s."""
    base_path = os.fspath(base_path)
    if not os.path.isdir(base_path):
        raise CheckpointError(f"{base_path}: no such base checkpoint folder")
    if ModelConfig.from_hf(base_path).fp8_block_size is not None:
        raise CheckpointError(f"--merge: {base_path} is block-FP8; merging would requantize the adapters away "
                              "(convert the base with --dtype bfloat16 and train on that, or export the adapter)")
    _, scale, _, _ = head_settings(model, head)
    # HF weight name -> (A, B); each W + scale B A is formed only when its file is written.
    factors = {f"{name}.weight": (a, b) for name, a, b in _adapters(model, head)}
    row = mask_row(model)
    out_dir, tmp = _claim(out_dir, overwrite)
    try:
        if is_checkpoint(base_path):   # the HF folder export_hf writes, then its touched files rewritten
            export_hf(base_path, tmp, progress=False)
            src = tmp
        else:
            src = base_path
            os.makedirs(tmp)
            for extra in ("config.json", INDEX, *EXTRA_FILES):
                if os.path.exists(os.path.join(src, extra)):
                    shutil.copy2(os.path.join(src, extra), tmp)
        folder = SafetensorsFolder.open(src)
        missing = sorted(set(factors) - set(folder.tensors))
        if missing:
            raise CheckpointError(f"{base_path}: the base has no tensor(s) {missing[:3]} that the adapters sit on")
        touched = {folder.weight_map[n] for n in factors} | {folder.weight_map[f"{EMBED}.weight"]}
        for fname in sorted(set(folder.weight_map.values())):
            dst = os.path.join(tmp, fname)
            if fname in touched:
                _rewrite(folder, fname, dst, lambda n, w: _merge(n, w, factors, scale, row))
            elif src != tmp:
                shutil.copy2(os.path.join(src, fname), dst)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        _publish(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"out_dir": out_dir, "merged": len(factors), "files": len(touched)}


def _merge(name: str, arr: np.ndarray, factors, scale: float, row) -> np.ndarray:
    """The tensor `name` of the merged model: W + scale B A (float32, back in W's dtype), the
    embedding with jaxdiff's `<|mask|>` row, anything else as stored."""
    if name in factors:
        a, b = factors[name]
        return (arr.astype(np.float32) + scale * (b @ a)).astype(arr.dtype)
    if name == f"{EMBED}.weight" and row is not None:
        out = np.array(arr)
        out[row[0]] = row[1].astype(arr.dtype)
        return out
    return arr


def _rewrite(folder: SafetensorsFolder, fname: str, dst: str, merge) -> None:
    """Writes one file of `folder` to `dst` with `merge(name, array)` of each tensor (same order,
    names, dtypes). One file's merged tensors are resident at a time."""
    names = sorted((n for n, f in folder.weight_map.items() if f == fname), key=lambda n: folder.tensors[n].offset)
    tensors = {n: merge(n, folder.array(n)) for n in names}
    write_file(dst + ".new", tensors, {"format": "pt"})
    os.replace(dst + ".new", dst)
