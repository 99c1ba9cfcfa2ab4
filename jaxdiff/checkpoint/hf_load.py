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
# Dtypes a plain (non-FP8) weight or an FP8 block scale may be stored in.
FLOAT_STORAGE = frozenset({"float32", "bfloat16", "float16"})


def expected_specs(cfg: ModelConfig) -> dict:
    from jaxdiff.model import param_specs  # the model defines which tensors exist

    return param_specs(cfg)


def _dtype_problem(name: str, stored: np.dtype, expected: np.dtype) -> str | None:
    """Why a stored dtype cannot be what the config implies (FP8 iff the config quantizes it)."""
    if expected == fp8.E4M3:
        if stored != fp8.E4M3:
            return (f"{name}: stored as {stored.name}, but quantization_config makes this module block-FP8 "
                    "(float8_e4m3fn + weight_scale_inv)")
        return None
    if stored == fp8.E4M3 or stored.name not in FLOAT_STORAGE:
        return (f"{name}: stored as {stored.name}; expected a float tensor ({', '.join(sorted(FLOAT_STORAGE))})"
                + (", FP8 only for modules quantization_config quantizes" if stored.itemsize == 1 else ""))
    return None


def check_tensors(folder: SafetensorsFolder, cfg: ModelConfig) -> dict[str, dict[int | None, str]]:
    """Groups the folder's tensors by jaxdiff key and checks names, shapes and dtypes against the
    model the config describes. Every missing, unexpected and malformed tensor is listed in one error."""
    groups = hf_keys.group_hf_keys(folder.tensors)
    specs = expected_specs(cfg)
    missing, unexpected, bad = [], [], []
    for jd, spec in specs.items():
        stacked = hf_keys.is_stacked(jd)
        if jd not in groups:
            missing.extend(hf_keys.to_hf(jd, spec.shape[0] if stacked else None))
            continue
        parts = groups[jd]
        want = set(range(spec.shape[0])) if stacked else {None}
        if stacked:
            missing.extend(hf_keys.to_hf(jd, spec.shape[0])[e] for e in sorted(want - set(parts) - {None}))
        unexpected.extend(parts[e] for e in set(parts) - want)
        expected_shape = tuple(spec.shape[1:] if stacked else spec.shape)
        for e in sorted(set(parts) & want, key=lambda x: -1 if x is None else x):
            ref = folder.tensors[parts[e]]
            if tuple(ref.shape) != expected_shape:
                bad.append(f"{parts[e]}: shape {list(ref.shape)}, the config implies {list(expected_shape)}")
            problem = _dtype_problem(parts[e], ref.dtype, np.dtype(spec.dtype))
            if problem:
                bad.append(problem)
        if stacked and len({folder.tensors[parts[e]].dtype for e in set(parts) & want}) > 1:
            bad.append(f"{jd}: experts stored in mixed dtypes "
                       f"{sorted({folder.tensors[h].dtype.name for h in parts.values()})}")
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
        if any(k.endswith("weight_scale_inv") for k in missing + unexpected):
            msg.append("a tensor is block-FP8 iff it has a weight_scale_inv companion; which modules are "
                       "FP8 must agree with quantization_config (modules_to_not_convert, weight_block_size)")
        raise CheckpointError("\n  ".join(msg))
    return groups


def read_tensor(folder: SafetensorsFolder, parts: Mapping[int | None, str]) -> np.ndarray:
    """One jaxdiff tensor: a memory-mapped view, or the per-expert tensors stacked."""
    if None in parts:
        return folder.array(parts[None])
    return np.stack([folder.array(parts[e]) for e in sorted(parts)])


def cast_param(key: str, arr, scale_of, block: tuple[int, int] | None, target: np.dtype | None):
    """One parameter as the loader returns it. target None: the stored dtypes, except that FP8 block
    scales become float32 (lossless from bf16; the model keeps them in float32). target float32 /
    bfloat16: FP8 weights dequantized with `scale_of()`, other floating params cast; callers drop
    the scales."""
    dt = np.dtype(arr.dtype)
    if target is None:
        if key.endswith(".weight_scale_inv") and dt != np.float32:
            return np.asarray(arr).astype(np.float32) if isinstance(arr, np.ndarray) else arr.astype(np.float32)
        return arr
    if dt == fp8.E4M3:
        return fp8.dequantize(np.asarray(arr), np.asarray(scale_of()), block, target)
    if dt.name in FLOAT_STORAGE:
        return np.asarray(arr).astype(target)
    return arr


def iter_hf_params(path: str, cfg: ModelConfig | None = None, *, dtype: str | None = None
                   ) -> Iterator[tuple[str, np.ndarray]]:
    """(jaxdiff key, array) in file order. dtype None keeps the stored dtypes (FP8 + scales);
    "float32"/"bfloat16" casts floating tensors and dequantizes FP8 (scales disappear)."""
    cfg = cfg or ModelConfig.from_hf(path)
    folder = SafetensorsFolder.open(path)
    groups = check_tensors(folder, cfg)
    target = None if dtype is None else FLOAT_DTYPES[dtype]
    files = {f: i for i, f in enumerate(sorted(set(folder.weight_map.values())))}
    order = lambda k: min((files[folder.weight_map[h]], folder.tensors[h].offset) for h in groups[k].values())
    for jd in sorted(groups, key=order):
        if jd.endswith(".weight_scale_inv") and target is not None:
            continue
        scale_of = lambda: read_tensor(folder, groups[jd.replace(".weight", ".weight_scale_inv")])
        yield jd, cast_param(jd, read_tensor(folder, groups[jd]), scale_of, cfg.fp8_block_size, target)


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
