"""From an ml_collections config to the typed pieces the trainer uses; every bad value is refused
with the dotted key that holds it."""
from __future__ import annotations

from jaxdiff.diffusion.losses import LOSSES
from jaxdiff.diffusion.schedules import SCHEDULES, Schedule
from jaxdiff.model.attention import IMPLEMENTATIONS
from jaxdiff.model.lora import HEADS, LoRASpec
from jaxdiff.model.moe import DISPATCH
from jaxdiff.sample.policies import get_policy
from jaxdiff.train.optim import DECAYS, OPTIMIZERS, OptimConfig
from jaxdiff.train.step import ObjectiveConfig

CHOICES = {
    "model.attention_impl": IMPLEMENTATIONS, "model.dtype": ("", "float32", "bfloat16"),
    "model.remat_policy": ("full", "dots"), "model.moe_dispatch": DISPATCH,
    "objective.schedule": SCHEDULES, "objective.loss": LOSSES, "objective.attention": ("bidirectional", "block"),
    "optimizer.name": OPTIMIZERS, "optimizer.decay": DECAYS, "data.kind": ("code", "text", "sft"),
}
POSITIVE = ("data.seq_len", "data.batch_size", "train.steps", "train.log_every", "train.eval_every",
            "train.eval_batches", "train.checkpoint_every", "train.keep", "optimizer.total_steps",
            "optimizer.grad_accum", "objective.block_size", "objective.vocab_chunk", "sample.gen_length",
            "sample.block_length", "sample.steps", "tokenizer.vocab_size")


class ConfigValueError(ValueError):
    pass


def _get(c, dotted):
    for part in dotted.split("."):
        c = c[part]
    return c


def validate(c) -> None:
    for key, allowed in CHOICES.items():
        if _get(c, key) not in allowed:
            raise ConfigValueError(f"config.{key}={_get(c, key)!r}: choose from {', '.join(map(repr, allowed))}")
    for key in POSITIVE:
        if _get(c, key) <= 0:
            raise ConfigValueError(f"config.{key}={_get(c, key)!r}: must be > 0")
    if not 0 <= c.data.eval_permille < 1000:
        raise ConfigValueError(f"config.data.eval_permille={c.data.eval_permille}: must be in 0..999")
    if c.model.moe_capacity_factor < 0:
        raise ConfigValueError(f"config.model.moe_capacity_factor={c.model.moe_capacity_factor}: must be >= 0 (0 = dropless)")
    if c.optimizer.lr <= 0:
        raise ConfigValueError(f"config.optimizer.lr={c.optimizer.lr}: must be > 0")
    try:
        get_policy(c.sample.policy)
    except ValueError as e:
        raise ConfigValueError(f"config.sample.policy: {e}") from None
    if c.sample.gen_length % c.sample.block_length:
        raise ConfigValueError("config.sample.gen_length must be a multiple of config.sample.block_length")
    if c.objective.sft != (c.data.kind == "sft"):
        raise ConfigValueError("config.objective.sft must be True exactly when config.data.kind == 'sft'")
    if not c.model.checkpoint and not c.lora.full_training:
        raise ConfigValueError("config.lora.full_training must be True when config.model.checkpoint is empty "
                               "(a from-scratch model has no pretrained base to freeze)")
    if c.objective.length_weight and not c.objective.sft:
        raise ConfigValueError("config.objective.length_weight needs SFT data (prompt/answer pairs)")
    for h in HEADS:
        if _get(c, f"lora.{h}.rank") <= 0:
            raise ConfigValueError(f"config.lora.{h}.rank must be > 0")


def objective(c) -> ObjectiveConfig:
    o = c.objective
    return ObjectiveConfig(
        schedule=Schedule(o.schedule, exponent=o.schedule_exponent), time_eps=o.time_eps, antithetic=o.antithetic,
        min_masking_rate=o.min_masking_rate, reweight_cap=o.reweight_cap or None, loss=o.loss,
        label_smoothing=o.label_smoothing, span_prob=o.span_prob, random_replace=o.random_replace,
        shorten_prob=o.shorten_prob, stage2_step=None if o.stage2_step < 0 else o.stage2_step,
        edit_fraction=o.edit_fraction, edit_weight=o.edit_weight, attention=o.attention, block_size=o.block_size,
        sft=o.sft, ar_weight=o.ar_weight, diffusion_weight=o.diffusion_weight, length_weight=o.length_weight,
        vocab_chunk=o.vocab_chunk, router_aux_coef=None if o.router_aux_coef < 0 else o.router_aux_coef,
        router_z_coef=o.router_z_coef)


def optimizer(c) -> OptimConfig:
    return OptimConfig(**dict(c.optimizer))


def lora_spec(c, head: str) -> LoRASpec:
    h = c.lora[head]
    return LoRASpec(rank=h.rank, alpha=h.alpha, dropout=h.dropout,
                    targets=tuple(t.strip() for t in h.targets.split(",") if t.strip()))


def length_edges(c) -> tuple[int, ...]:
    try:
        edges = tuple(int(x) for x in c.length_head.edges.split(","))
    except ValueError:
        raise ConfigValueError(f"config.length_head.edges={c.length_head.edges!r}: comma-separated integers") from None
    if list(edges) != sorted(set(edges)):
        raise ConfigValueError("config.length_head.edges must be strictly increasing")
    return edges
