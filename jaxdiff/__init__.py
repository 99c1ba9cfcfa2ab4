"""jaxdiff: Qwen3 / Qwen3-Coder (dense and MoE) as masked-diffusion code models in JAX/Flax.

The top-level names are imported lazily, so `jaxdiff.verify` (host-side, no JAX) stays light."""
from __future__ import annotations

import importlib

_LAZY = {"load_model": "jaxdiff.api", "ModelConfig": "jaxdiff.model", "KVCache": "jaxdiff.model",
         "Qwen3": "jaxdiff.model"}
__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'jaxdiff' has no attribute {name!r}")
