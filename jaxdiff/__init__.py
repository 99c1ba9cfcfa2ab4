"""jaxdiff: Qwen3 / Qwen3-Coder (dense and MoE) as masked-diffusion code models in JAX/Flax."""
