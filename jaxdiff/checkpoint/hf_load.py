"""HF folder -> flat jaxdiff params, tensor by tensor from memory-mapped shards."""
from __future__ import annotations

import os
from collections.abc import Iterator, Mapping

import ml_dtypes
import numpy as np

from jaxdiff.checkpoint import fp8, hf_keys
from jaxdiff.checkpoint.safetensors_io import CheckpointError, SafetensorsFolder
from jaxdiff.model.config import ModelConfig

FLOAT_DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16)}


def expected_specs(cfg: ModelConfig) -> dict:
    from jaxdiff.model import param_specs  # the model defines which tensors exist

    return param_specs(cfg)


def check_tensors(folder: SafetensorsFolder, cfg: ModelConfig) -> dict[str, dict[int | None, str]]:
    """Groups the folder's tensors by jaxdiff key and checks names and shapes against the model.
    Every missing and unexpected tensor is listed in one error."""
    groups = hf_keys.group_hf_keys(folder.tensors)
    specs = expected_specs(cfg)
    missing, unexpected, bad = [], [], []
    for jd, spec in specs.items():
        if jd not in groups:
            missing.extend(hf_keys.to_hf(jd, spec.shape[0] if hf_keys.is_stacked(jd) else None))
            continue
        parts = groups[jd]
        if hf_keys.is_stacked(jd):
            want = set(range(spec.shape[0]))
            missing.extend(hf_keys.to_hf(jd, spec.shape[0])[e] for e in sorted(want - set(parts)))
            unexpected.extend(parts[e] for e in sorted(set(parts) - want))
            shape_of = lambda e: (spec.shape[0], *folder.tensors[parts[e]].shape)
        else:
            shape_of = lambda e: folder.tensors[parts[e]].shape
        for e in sorted(set(parts) & (set(range(spec.shape[0])) if hf_keys.is_stacked(jd) else {None}),
                        key=lambda x: -1 if x is None else x):
            if tuple(shape_of(e)) != tuple(spec.shape):
                bad.append(f"{parts[e]}: shape {list(folder.tensors[parts[e]].shape)}, the config implies "
                           f"{list(spec.shape[1:] if hf_keys.is_stacked(jd) else spec.shape)}")
    for jd, parts in groups.items():
        if jd not in specs:
            unexpected.extend(parts.values())
    if missing or unexpected or bad:
        msg = [f"{folder.path}: tensors do not match {cfg.architecture} as configured in config.json"]
        if missing:
            msg.append(f"missing {len(missing)}: {', '.join(sorted(missing))}")
        if unexpected:
            msg.append(f"unexpected {len(unexpected)}: {', '.join(sorted(unexpected))}")
        msg.extend(bad)
        raise CheckpointError("\n  ".join(msg))
    return groups


def read_tensor(folder: SafetensorsFolder, parts: Mapping[int | None, str]) -> np.ndarray:
    """One jaxdiff tensor: a memory-mapped view, or the per-expert tensors stacked."""
    if None in parts:
        return folder.array(parts[None])
    return np.stack([folder.array(parts[e]) for e in sorted(parts)])


def iter_hf_params(path: str, cfg: ModelConfig | None = None, *, dtype: str | None = None
                   ) -> Iterator[tuple[str, np.ndarray]]:
    """(jaxdiff key, array) in file order. dtype None keeps the stored dtypes (FP8 + scales);
    "float32"/"bfloat16" casts floating tensors and dequantizes FP8 (scales disappear)."""
    cfg = cfg or ModelConfig.from_hf(path)
    folder = SafetensorsFolder.open(path)
    groups = check_tensors(folder, cfg)
    target = None if dtype is None else FLOAT_DTYPES[dtype]
    for jd in sorted(groups, key=lambda k: min(folder.tensors[h].offset for h in groups[k].values())):
        if jd.endswith(".weight_scale_inv") and target is not None:
            continue
        arr = read_tensor(folder, groups[jd])
        if target is not None:
            if arr.dtype == fp8.E4M3:
                scale = read_tensor(folder, groups[jd.replace(".weight", ".weight_scale_inv")])
                arr = fp8.dequantize(arr, scale, cfg.fp8_block_size, target)
            elif arr.dtype.kind == "f" or arr.dtype == FLOAT_DTYPES["bfloat16"]:
                arr = arr.astype(target)
        yield jd, arr


def load_hf_params(path: str, *, dtype: str | None = None, shardings=None
                   ) -> tuple[ModelConfig, dict[str, object]]:
    import jax

    path = os.fspath(path)
    cfg = ModelConfig.from_hf(path)
    out = {}
    for key, arr in iter_hf_params(path, cfg, dtype=dtype):
        if shardings is not None:
            out[key] = jax.device_put(np.ascontiguousarray(arr), shardings[key])
        else:
            out[key] = np.ascontiguousarray(arr)
    if dtype is not None:
        cfg = cfg.replace(fp8_block_size=None)
    return cfg, out
