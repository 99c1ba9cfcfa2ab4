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


def hf_tensors(model) -> dict:
    """The model's base parameters under their HF names (experts unstacked), as NumPy arrays: what
    `transformers` `load_state_dict` takes (e.g. to run the same weights in PyTorch)."""
    import numpy as np

    from jaxdiff.checkpoint import hf_keys
    from jaxdiff.model import flat_params

    out = {}
    for jd, arr in flat_params(model).items():
        arr = np.asarray(arr)
        names = hf_keys.to_hf(jd, arr.shape[0] if hf_keys.is_stacked(jd) else None)
        for e, name in enumerate(names):
            out[name] = arr[e] if hf_keys.is_stacked(jd) else arr
    return out


__all__ = ["CheckpointError", "hf_tensors", "load_params"]
