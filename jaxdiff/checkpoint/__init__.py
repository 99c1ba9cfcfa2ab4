"""HF safetensors <-> jaxdiff params (declarative key table, FP8 blocks), orbax checkpoints."""
from __future__ import annotations

import os

from jaxdiff.checkpoint.safetensors_io import CheckpointError


def load_params(path, *, dtype=None, shardings=None):
    """(ModelConfig, flat params) from an HF folder or a converted jaxdiff checkpoint.
    dtype: None keeps stored dtypes (FP8 + scales); "float32"/"bfloat16" casts and dequantizes FP8.
    shardings: jaxdiff key -> Sharding, to restore each array directly sharded."""
    from jaxdiff.checkpoint.convert import load_converted
    from jaxdiff.checkpoint.hf_load import load_hf_params
    from jaxdiff.checkpoint.orbax_io import is_checkpoint

    if dtype is not None:
        import numpy as np

        try:
            dtype = dtype if isinstance(dtype, str) else np.dtype(dtype).name  # np / jnp / ml_dtypes types
        except TypeError:
            dtype = repr(dtype)
        if dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype must be None, float32 or bfloat16, got {dtype}")
    path = os.fspath(path)
    if is_checkpoint(path):
        return load_converted(path, dtype=dtype, shardings=shardings)
    return load_hf_params(path, dtype=dtype, shardings=shardings)


__all__ = ["CheckpointError", "load_params"]
