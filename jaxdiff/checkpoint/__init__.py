"""HF safetensors <-> jaxdiff params (declarative key table, FP8 blocks), orbax checkpoints."""
from __future__ import annotations

import os

from jaxdiff.checkpoint.safetensors_io import CheckpointError


def load_params(path, *, dtype=None, shardings=None):
    """(ModelConfig, flat params) from an HF folder (or, later, a converted checkpoint).
    dtype: None keeps stored dtypes; "float32"/"bfloat16" casts and dequantizes FP8."""
    from jaxdiff.checkpoint.hf_load import load_hf_params

    if dtype is not None:
        dtype = {"float32": "float32", "bfloat16": "bfloat16"}.get(str(getattr(dtype, "name", dtype)), None) or str(dtype)
    return load_hf_params(os.fspath(path), dtype=dtype, shardings=shardings)


__all__ = ["CheckpointError", "load_params"]
