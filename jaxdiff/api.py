"""`jaxdiff.load_model`: an HF folder or a converted checkpoint -> a ready model."""
from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np

from jaxdiff import model as model_lib
from jaxdiff.parallel import use_mesh


def _model_dtype(params) -> jnp.dtype:
    """Activation dtype: the dtype of the stored floating weights (bf16 for an FP8 base)."""
    dt = np.dtype(params["model.embed_tokens.weight"].dtype)
    return jnp.bfloat16 if dt.itemsize == 1 else jnp.dtype(dt)


def load_model(path: str | os.PathLike, dtype=None, mesh=None, rules=None) -> model_lib.Qwen3:
    """Loads a Qwen3 / Qwen3-MoE model.

    path:  an HF checkpoint folder (config.json + safetensors) or a `tools/convert_hf.py` output.
    dtype: None keeps the stored dtypes (an FP8 base stays FP8 + block scales, computed in bf16);
           "float32" / "bfloat16" casts floating weights and dequantizes FP8.
    mesh:  a `jaxdiff.parallel.make_mesh(...)` mesh: parameters are restored directly sharded by
           their logical axes and `rules` (default rules when None).
    """
    from jaxdiff.checkpoint import load_params  # import here: checkpoint imports the model package

    from jaxdiff.checkpoint import CheckpointError

    path = os.fspath(path)
    if not os.path.isdir(path):
        raise CheckpointError(f"{path}: no such checkpoint folder")
    cfg = model_lib.ModelConfig.from_hf(path)
    if dtype is not None:
        dtype = jnp.dtype(dtype)
        if dtype not in (jnp.float32, jnp.bfloat16):
            raise ValueError(f"load_model: dtype must be None, float32 or bfloat16, got {dtype}")
        cfg = cfg.replace(fp8_block_size=None)
    shardings = None
    if mesh is not None:
        shardings = model_lib.param_shardings(cfg, mesh, rules)
    cfg, params = load_params(path, dtype=dtype, shardings=shardings)
    compute = dtype if dtype is not None else _model_dtype(params)
    with use_mesh(mesh, rules):
        m = model_lib.abstract_model(cfg, dtype=compute)
        model_lib.set_params(m, params, source=path)
    m.mesh, m.rules = mesh, rules
    return m
