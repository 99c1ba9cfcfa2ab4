"""How a model computes, as opposed to what (ModelConfig): fixed when the model is built.

Every choice that used to be an attribute set after construction, or read from an ambient mesh,
is a field here, so a model's behaviour is visible in one frozen (hashable) value that becomes
part of its graph definition."""
from __future__ import annotations

import dataclasses

import jax


from jaxdiff.config.schema import ATTENTION_IMPLS, MOE_DISPATCH, REMAT_POLICIES

# MOE_DISPATCH: "auto": all_to_all when `mesh` has expert > 1 and the tokens divide over its batch
#   axes, else grouped on this device; "gspmd": grouped, experts sharded by GSPMD's own choices;
#   "all_to_all": expert parallelism by all-to-all in shard_map (model/expert_parallel.py).
GROUPED_IMPLS = ("ragged", "tiled")
# The training loss's all-to-all capacity factor: Switch Transformer's (Fedus et al. 2021 train at
# 1.0-1.25 and evaluate at 2.0; GShard's top-2 capacity 2T/E is 1.0 per assignment; MaxText defaults
# to dropless and drops only when given a factor). Sampling, evaluation and RL never drop.
DEFAULT_CAPACITY_FACTOR = 1.25


def default_grouped_impl() -> str:
    """Tiles everywhere but on TPU. XLA:CPU lowers ragged_dot to a dense masked product over all
    experts; on an H200 (jax 0.11.2) a 4-layer Qwen3-Coder-30B-A3B slice's train step took 1.06 s with
    ragged_dot against 0.19 s with tiles, at 2.9x the memory (docs/benchmarks.md, 2026-11-30)."""
    return "ragged" if jax.default_backend() == "tpu" else "tiled"


@dataclasses.dataclass(frozen=True)
class ModelOptions:
    """attention_impl: auto | reference | chunked | fused | cudnn | splash (attention.py; auto: cuDNN
    on CUDA GPUs and splash on TPUs for the calls they express, chunked otherwise); attention_chunk /
    attention_key_chunk: query rows / keys per tile of the chunked path; remat: activation checkpointing per decoder layer, remat_policy full (recompute all) |
    dots (keep unbatched matmul outputs: the projections); moe_dispatch: see MOE_DISPATCH; moe_capacity_factor: all_to_all
    slots per expert per device = cf * tokens * k / E in the forward passes that ask for it
    (`forward(..., moe_capacity=True)`: the training loss only), overflow dropped and counted; None =
    dropless there too; every other forward is dropless whatever it says; moe_grouped_impl: ragged |
    tiled (None = the backend's default); mesh: the device mesh expert parallelism dispatches over."""

    attention_impl: str = "auto"
    attention_chunk: int = 128
    attention_key_chunk: int = 512
    remat: bool = False
    remat_policy: str = "full"
    moe_dispatch: str = "auto"
    moe_capacity_factor: float | None = DEFAULT_CAPACITY_FACTOR
    moe_grouped_impl: str | None = None
    mesh: jax.sharding.Mesh | None = None

    def __post_init__(self):
        for name, allowed in (("attention_impl", ATTENTION_IMPLS), ("remat_policy", REMAT_POLICIES),
                              ("moe_dispatch", MOE_DISPATCH)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"ModelOptions.{name}={getattr(self, name)!r}; choose from {allowed}")
        if self.attention_chunk <= 0 or self.attention_key_chunk <= 0:
            raise ValueError(f"ModelOptions.attention_chunk={self.attention_chunk}, attention_key_chunk="
                             f"{self.attention_key_chunk}; both must be > 0")
        if self.moe_grouped_impl not in (None, *GROUPED_IMPLS):
            raise ValueError(f"ModelOptions.moe_grouped_impl={self.moe_grouped_impl!r}; choose from {GROUPED_IMPLS}")
        if self.moe_capacity_factor is not None and not self.moe_capacity_factor > 0:
            raise ValueError(f"ModelOptions.moe_capacity_factor={self.moe_capacity_factor}: must be > 0 (None = dropless)")
        if self.moe_dispatch == "all_to_all" and (self.mesh is None or self.mesh.shape["expert"] <= 1):
            raise ValueError("ModelOptions.moe_dispatch='all_to_all' needs a mesh with expert > 1")

    @property
    def grouped_impl(self) -> str:
        return self.moe_grouped_impl or default_grouped_impl()

    @property
    def checkpoint_policy(self):
        return jax.checkpoint_policies.dots_with_no_batch_dims_saveable if self.remat_policy == "dots" else None

    def replace(self, **kw) -> "ModelOptions":
        return dataclasses.replace(self, **kw)
