"""`jaxdiff.load_model`: an HF folder, a converted checkpoint or a training workdir -> a ready model."""
from __future__ import annotations

import os

from jaxdiff import builder
from jaxdiff.checkpoint.workdir import is_workdir
from jaxdiff.model import ModelOptions, Qwen3


def load_model(path: str | os.PathLike, dtype=None, mesh=None, rules=None, *, step: int | None = None,
               options: ModelOptions | None = None) -> Qwen3:
    """Loads a Qwen3 / Qwen3-MoE model.

    path:  an HF checkpoint folder (config.json + safetensors), a `tools/convert_hf.py` output, or a
           training workdir (its saved config rebuilds the model with its heads; `step` picks a
           checkpoint, default the newest).
    dtype: None keeps the stored dtypes (an FP8 base stays FP8 + block scales, computed in bf16);
           "float32" / "bfloat16" casts floating weights and dequantizes FP8 (not for workdirs:
           their dtype is their config's).
    mesh:  a `jaxdiff.parallel.make_mesh(...)` mesh: parameters are restored directly sharded by
           their logical axes and `rules` (default rules when None).
    options: how the model computes (`jaxdiff.model.ModelOptions`: attention implementation,
           remat, MoE dispatch); default ModelOptions(mesh=mesh).
    """
    path = os.fspath(path)
    if is_workdir(path):
        if dtype is not None or options is not None or rules is not None:
            raise ValueError(f"{path} is a training workdir: dtype, options and rules come from its saved config")
        model, _, _ = builder.load_workdir(path, step, mesh=mesh)
        return model
    if step is not None:
        raise ValueError(f"{path} is a checkpoint folder, not a training workdir: it has no steps to choose")
    return builder.load_base(path, dtype=dtype, mesh=mesh, rules=rules, options=options)
