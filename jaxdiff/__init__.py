"""jaxdiff: Qwen3 / Qwen3-Coder (dense and MoE) as masked-diffusion code models in JAX/Flax."""
from jaxdiff.api import load_model
from jaxdiff.model import KVCache, ModelConfig, Qwen3

__all__ = ["KVCache", "ModelConfig", "Qwen3", "load_model"]
