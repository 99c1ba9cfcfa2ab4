"""From an ml_collections config to the typed pieces the trainer uses; every bad value is refused
with the dotted key that holds it (the schema itself lives in jaxdiff.config)."""
from __future__ import annotations

from jaxdiff.builder import lora_spec
from jaxdiff.config import schema
from jaxdiff.config.schema import ConfigValueError, length_edges
from jaxdiff.diffusion.schedules import Schedule
from jaxdiff.sample.policies import get_policy
from jaxdiff.train.optim import OptimConfig
from jaxdiff.train.step import ObjectiveConfig

__all__ = ["ConfigValueError", "block_size_schedule", "length_edges", "lora_spec", "objective", "optimizer",
           "validate"]


def validate(c) -> None:
    schema.validate(c)
    try:
        get_policy(c.sample.policy)
    except ValueError as e:
        raise ConfigValueError(f"config.sample.policy: {e}") from None


def objective(c) -> ObjectiveConfig:
    o = c.objective
    return ObjectiveConfig(
        kind=o.kind, schedule=Schedule(o.schedule, exponent=o.schedule_exponent), time_eps=o.time_eps,
        time_max=o.time_max, antithetic=o.antithetic,
        min_masking_rate=o.min_masking_rate, reweight_cap=o.reweight_cap or None, loss=o.loss,
        label_smoothing=o.label_smoothing, span_prob=o.span_prob, random_replace=o.random_replace,
        shorten_prob=o.shorten_prob, stage2_step=None if o.stage2_step < 0 else o.stage2_step,
        edit_fraction=o.edit_fraction, edit_weight=o.edit_weight, attention=o.attention, block_size=o.block_size,
        sft=o.sft, ar_weight=o.ar_weight, diffusion_weight=o.diffusion_weight, length_weight=o.length_weight,
        vocab_chunk=o.vocab_chunk, router_aux_coef=None if o.router_aux_coef < 0 else o.router_aux_coef,
        router_z_coef=o.router_z_coef)


def block_size_schedule(c) -> tuple[tuple[int, int], ...]:
    """((from step, block size), ...) of a growing block-diffusion schedule; () without one."""
    if c.objective.kind != "block_diffusion":
        return ()
    return schema.block_size_schedule(c.objective)


def optimizer(c) -> OptimConfig:
    return OptimConfig(**dict(c.optimizer))
