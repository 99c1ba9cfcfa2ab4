"""From an RL run's ml_collections config (`config.rl`, docs/configs.md) to the typed pieces the loop
uses; every bad value is refused with the dotted key that holds it."""
from __future__ import annotations

from jaxdiff.config import schema
from jaxdiff.config.schema import ConfigValueError
from jaxdiff.rl.estimators import EstimatorSettings
from jaxdiff.rl.objective import PolicyLossConfig
from jaxdiff.sample.policies import get_policy
from jaxdiff.sample.sampler import CACHES, SamplerSettings
from jaxdiff.train import config as train_config
from jaxdiff.verify.reward import RewardConfig


def validate(c) -> None:
    """The training schema (model, lora, optimizer, mesh, ...), config.rl's own fields, and what an RL
    run needs of the rest: a trained model to start from and one trained adapter, the diffusion head's."""
    train_config.validate(c)
    r = c.rl
    try:
        get_policy(r.policy)
    except ValueError as e:
        raise ConfigValueError(f"config.rl.policy={r.policy!r}: {e}") from None
    if r.cache not in CACHES:
        raise ConfigValueError(f"config.rl.cache={r.cache!r}: choose from {', '.join(map(repr, CACHES))}")
    if not c.model.checkpoint:
        raise ConfigValueError("config.model.checkpoint is empty: RL starts from a trained model (a full-training "
                               "workdir such as runs/sft_synthetic, or a converted / HF checkpoint folder)")
    if c.lora.full_training:
        raise ConfigValueError("config.lora.full_training must be False for RL: the model is frozen and only the "
                               "RL adapter (lora.diffusion) trains")
    if c.mask_token.trainable:
        raise ConfigValueError("config.mask_token.trainable must be False for RL: only the RL adapter trains")
    heads = schema.active_heads(c)
    others = [h for h in ("ar", "length") if heads[h]]
    if others or not heads["diffusion"]:
        raise ConfigValueError(f"config.objective: RL trains the diffusion head's adapter alone, but the objective "
                               f"turns on {others or 'no diffusion head'} (set objective.ar_weight = ar_only_steps = "
                               "length_weight = 0 and diffusion_weight > 0)")


def rollout_kwargs(c) -> dict:
    """`rl.rollout.rollout_settings` keywords (the sampler of every rollout)."""
    r = c.rl
    return dict(gen_length=r.gen_length, block_length=r.block_length, steps=None if r.steps == -1 else r.steps,
                policy=r.policy, temperature=float(r.temperature), attention=r.attention, cache=r.cache,
                lora="diffusion")


def order_kwargs(c) -> dict:
    """`rl.order_distill.order_settings` keywords (the constrained rollouts of config.rl.mode='order_distill')."""
    r = c.rl
    return dict(n_orders=r.n_orders, gen_length=r.gen_length,
                block_length=r.block_length, steps=None if r.steps == -1 else r.steps,
                temperature=float(r.temperature), attention=r.attention, lora="diffusion",
                vocab_chunk=c.objective.vocab_chunk, shrink=r.shrink)


def estimator(c, sampler: SamplerSettings) -> EstimatorSettings:
    r = c.rl
    return EstimatorSettings.for_rollout(sampler, r.estimator, vocab_chunk=c.objective.vocab_chunk, shrink=r.shrink,
                                         t_range=(float(r.t_min), float(r.t_max)),
                                         prompt_mask_prob=float(r.prompt_mask_prob))


def loss(c) -> PolicyLossConfig:
    r = c.rl
    return PolicyLossConfig(eps_low=float(r.eps_low), eps_high=float(r.eps_high), beta=float(r.beta),
                            log_ratio_clamp=float(r.log_ratio_clamp), normalization=r.normalization)


def reward(c) -> RewardConfig:
    w = c.rl.reward
    return RewardConfig(correctness=float(w.correctness), speed=float(w.speed), efficiency=float(w.efficiency),
                        partial_credit=bool(w.partial_credit), itrs_scale=float(w.itrs_scale),
                        cpu_ms_scale=float(w.cpu_ms_scale))


def with_reference(c) -> bool:
    """Whether the update scores the reference policy (the KL term, or its metric)."""
    return c.rl.beta > 0 or bool(c.rl.log_kl)


__all__ = ["ConfigValueError", "estimator", "loss", "order_kwargs", "reward", "rollout_kwargs", "validate",
           "with_reference"]
