"""Qwen3 / Qwen3-MoE in Flax NNX. Parameters are addressed by flat "jaxdiff keys": the HF key, with
per-expert weights stacked on a leading E axis (`model.layers.{i}.mlp.experts.gate_proj.weight`)."""
from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxdiff.model.attention import IMPLEMENTATIONS, MODES, Visibility, attend
from jaxdiff.model.config import ConfigError, ModelConfig, RopeConfig
from jaxdiff.model.kv_cache import KVCache
from jaxdiff.model.lora import ActiveHead
from jaxdiff.model.options import ModelOptions
from jaxdiff.model.transformer import ForwardOutput, OutputHead, Qwen3

__all__ = ["ActiveHead", "ConfigError", "ForwardOutput", "IMPLEMENTATIONS", "KVCache", "MODES", "ModelConfig",
           "ModelOptions", "OutputHead", "Qwen3", "RopeConfig", "Visibility", "attend", "build_model",
           "abstract_model", "param_specs",
           "param_axes", "param_shardings", "place", "flat_params", "set_params"]


def _key(path) -> str:
    return ".".join(str(getattr(p, "key", p)) for p in path)


def build_model(cfg: ModelConfig, *, dtype=jnp.float32, seed: int = 0, options: ModelOptions = ModelOptions()) -> Qwen3:
    """A randomly initialised model (for from-scratch training and tests)."""
    return Qwen3(cfg, dtype=dtype, options=options, rngs=nnx.Rngs(params=seed))


def abstract_model(cfg: ModelConfig, *, dtype=jnp.float32, options: ModelOptions = ModelOptions()) -> Qwen3:
    """The model with ShapeDtypeStruct leaves: no memory, no compute."""
    return nnx.eval_shape(lambda: Qwen3(cfg, dtype=dtype, options=options, rngs=nnx.Rngs(params=0)))


def _variables(model: nnx.Module, filter_=nnx.Param):
    return {_key(path): var for path, var in nnx.to_flat_state(nnx.state(model, filter_))}


def param_specs(cfg: ModelConfig, dtype=jnp.float32) -> dict[str, jax.ShapeDtypeStruct]:
    """jaxdiff key -> shape/dtype of every base parameter (FP8 weights stay float8_e4m3fn)."""
    return {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in _variables(abstract_model(cfg, dtype=dtype)).items()}


def param_axes(cfg: ModelConfig) -> dict[str, tuple[str | None, ...]]:
    """jaxdiff key -> logical axis names of every base parameter."""
    return {k: v.get_metadata()["axes"] for k, v in _variables(abstract_model(cfg)).items()}


def flat_params(model: nnx.Module) -> dict[str, jax.Array]:
    """jaxdiff key -> array of every base parameter."""
    return {k: v[...] for k, v in _variables(model).items()}


def param_shardings(model_or_cfg, mesh, rules=None) -> dict[str, jax.sharding.NamedSharding]:
    """jaxdiff key -> NamedSharding from each parameter's logical axes and the rules."""
    from jaxdiff.parallel import named_sharding

    model = abstract_model(model_or_cfg) if isinstance(model_or_cfg, ModelConfig) else model_or_cfg
    return {k: named_sharding(v.get_metadata()["axes"], v.shape, mesh, rules) for k, v in _variables(model).items()}


def place(model: nnx.Module, mesh, rules=None) -> None:
    """Moves every variable (base parameters and adapters) onto `mesh` with the sharding its
    logical axes and the rules give (in place)."""
    from jaxdiff.parallel import named_sharding

    for var in _variables(model, nnx.Variable).values():
        axes = var.get_metadata().get("axes")
        if axes is not None:
            var.set_value(jax.device_put(var[...], named_sharding(axes, var.shape, mesh, rules)))


def set_params(model: nnx.Module, params: Mapping[str, jax.Array | np.ndarray], *, source: str = "params",
               cast: bool = True) -> None:
    """Fills the model's base parameters from a flat dict. Missing and unexpected keys are listed
    together; a shape mismatch names the key. Floating params are cast to the model dtype unless
    they are FP8 weights or their scales (kept as stored)."""
    variables = _variables(model)
    missing = sorted(set(variables) - set(params))
    unexpected = sorted(set(params) - set(variables))
    if missing or unexpected:
        msg = [f"{source}: parameters do not match the model ({model.config.architecture})"]
        if missing:
            msg.append(f"missing {len(missing)}: {', '.join(missing)}")
        if unexpected:
            msg.append(f"unexpected {len(unexpected)}: {', '.join(unexpected)}")
        raise ValueError("\n  ".join(msg))
    for k, var in variables.items():
        value = params[k]
        if tuple(value.shape) != tuple(var.shape):
            raise ValueError(f"{source}: '{k}' has shape {tuple(value.shape)}, the model expects {tuple(var.shape)}")
        target = var.dtype
        if cast and value.dtype != target:
            if target == jnp.float8_e4m3fn or k.endswith("weight_scale_inv"):
                raise ValueError(f"{source}: '{k}' is {value.dtype}, the model expects {target}")
            value = value.astype(target)
        var.set_value(jnp.asarray(value) if isinstance(value, np.ndarray) else value)
