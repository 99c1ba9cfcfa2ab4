"""The jitted masked-diffusion train step over three LoRA heads on a frozen base.

    train_step(frozen, trainable, opt_state, batch, key) -> (trainable, opt_state, metrics)

batch: tokens [B, L] int32, valid [B, L] bool (real tokens), prompt_lengths [B] int32 (0 when
there is no prompt). Per head (weights from the objective config; a zero weight skips the head):
  diffusion  kind "masked": corrupt (mask / spans / random replace / stage-2 edits), bidirectional
             or block attention with the diffusion adapters, masked loss (llada | mdlm | soft_ce)
             kind "block_diffusion" (BD3LM): one t per block, x0 ⊕ xt in one pass (a noisy block
             sees itself and the clean blocks before it), loss on the noisy copy weighted 1/t
  ar         causal attention with the ar adapters, next-token CE on answer tokens
  length     bidirectional pass over the prompt with the length adapters, mean-pool, CE on the
             answer-length bucket
A step whose loss or gradient is not finite is skipped: parameters and optimizer state stay.
Every pass here is a training-loss forward, so it runs with `moe_capacity=True`: an expert-parallel
MoE dispatch is capacity-bounded and logs the share it dropped (moe/dropped_frac, and
ar/ / length/moe_dropped_frac for those passes); sampling, evaluation and RL stay dropless.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from jaxdiff.diffusion import corrupt, losses
from jaxdiff.config.schema import OBJECTIVES
from jaxdiff.diffusion.schedules import Schedule, clamp_mask_prob, sample_block_times, sample_times
from jaxdiff.model import moe as moe_lib
from jaxdiff.model.lora import ActiveHead
from jaxdiff.model.transformer import token_positions, visibility_ranks
from jaxdiff.train import state as state_lib
from jaxdiff.train.optim import OptimConfig, apply_if_finite, build_optimizer


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
    kind: str = "masked"               # masked | block_diffusion
    schedule: Schedule = Schedule("linear")
    time_eps: float = 1e-3             # t ∈ (time_eps, time_max] (block_diffusion: [time_eps, time_max))
    time_max: float = 1.0
    antithetic: bool = True
    min_masking_rate: float = 0.0
    reweight_cap: float | None = None
    loss: str = "llada"
    label_smoothing: float = 0.1
    span_prob: float = 0.0
    random_replace: float = 0.0
    shorten_prob: float = 0.0          # LLaDA uses 0.01 in pretraining
    stage2_step: int | None = None     # Seed-Diffusion: edits from this step on
    edit_fraction: float = 0.1
    edit_weight: float = 1.0
    attention: str = "bidirectional"   # masked diffusion head: bidirectional | block
    block_size: int = 32               # block attention and block_diffusion
    sft: bool = False                  # prompts never noised; loss normalised by answer length
    ar_weight: float = 0.0
    diffusion_weight: float = 1.0
    length_weight: float = 0.0
    vocab_chunk: int = 8192             # [tokens, chunk] float32 logits at a time
    router_aux_coef: float | None = None  # MoE load-balancing loss weight (None: the model config's
                                          # router_aux_loss_coef, as the HF checkpoint sets it)
    router_z_coef: float = 0.0            # MoE router z-loss weight (ST-MoE; 1e-3 is typical)

    def __post_init__(self):
        if self.kind not in OBJECTIVES:
            raise ValueError(f"objective kind {self.kind!r}; choose from {OBJECTIVES}")
        if self.kind == "block_diffusion" and (self.span_prob > 0 or self.stage2_step is not None):
            raise ValueError("block_diffusion noises each block i.i.d.: span_prob and stage2_step are masked-only")
        if self.loss not in losses.LOSSES:
            raise ValueError(f"objective loss {self.loss!r}; choose from {losses.LOSSES}")
        if self.attention not in ("bidirectional", "block"):
            raise ValueError(f"objective attention {self.attention!r}; choose bidirectional or block")


def _stats(model, hidden, targets, chunk, head, dropout_key, rows):
    """TokenStats [B, L] of the output head on the positions in `rows` [B, L] (the loss's tokens;
    elsewhere 0 / False): the head's vocabulary is only scanned for those (token_stats_chunked)."""
    b, l, d = hidden.shape
    out = model.output_head(hidden.dtype, ActiveHead(head, dropout_key))
    s = losses.token_stats_chunked(hidden.reshape(b * l, d), out.weight, targets.reshape(-1), chunk=chunk,
                                   lora=out.lora, rows=rows.reshape(-1))
    return losses.TokenStats(*(x.reshape(b, l) for x in (s.nll, s.mean_nll, s.correct)))


def diffusion_head(model, batch, key, step, obj: ObjectiveConfig, dropout_key=None):
    tokens, valid, plen = batch["tokens"], batch["valid"], batch["prompt_lengths"]
    cfg = model.config
    if cfg.mask_token_id is None:
        raise ValueError("the model has no mask token: call jaxdiff.model.mask_token.add_mask_token first")
    k_t, k_shorten, k_mask, k_replace, k_edit = jax.random.split(key, 5)
    b, l = tokens.shape
    tokens, valid, maskable = _shorten(k_shorten, tokens, valid, plen, obj, cfg)
    t = sample_times(k_t, b, eps=obj.time_eps, t_max=obj.time_max, antithetic=obj.antithetic)
    p = clamp_mask_prob(obj.schedule.mask_prob(t), obj.min_masking_rate)
    noisy, masked = corrupt.corrupt_mask(k_mask, tokens, p, cfg.mask_token_id, maskable, span_prob=obj.span_prob)
    if obj.random_replace > 0:
        noisy = corrupt.random_replace(k_replace, noisy, masked, cfg.vocab_size, obj.random_replace)
    edited = jnp.zeros_like(masked)
    if obj.stage2_step is not None:
        noisy_e, edited_e = corrupt.edit_corrupt(k_edit, noisy, tokens, masked, maskable, cfg.vocab_size,
                                                 obj.edit_fraction)
        stage2 = corrupt.stage_for_step(step, obj.stage2_step) == 2
        noisy, edited = jnp.where(stage2, noisy_e, noisy), edited_e & stage2
    out = model.forward(noisy, lora="diffusion", lora_dropout_key=dropout_key, attention=obj.attention,
                        block_size=obj.block_size, prompt_lengths=plen, padding_mask=valid, logits=False,
                        moe_capacity=True)
    stats = _stats(model, out.hidden, tokens, obj.vocab_chunk, "diffusion", dropout_key, masked | edited)
    p_tok = jnp.broadcast_to(p[:, None], (b, l))
    dp_tok = jnp.broadcast_to(obj.schedule.mask_prob_derivative(t)[:, None], (b, l))
    answer = jnp.sum(maskable, axis=1) if obj.sft else None
    loss = losses.diffusion_loss(stats, masked, p_tok, kind=obj.loss, dp_mask=dp_tok,
                                 label_smoothing=obj.label_smoothing, answer_lengths=answer,
                                 reweight_cap=obj.reweight_cap)
    if obj.stage2_step is not None:
        loss = loss + obj.edit_weight * jnp.sum(jnp.where(edited, stats.nll, 0.0)) / (b * l)
    metrics = {"diffusion/loss": loss, "diffusion/masked_acc": losses.masked_accuracy(stats, masked),
               "diffusion/mask_rate": jnp.sum(masked) / jnp.maximum(jnp.sum(maskable), 1)}
    return loss + _router_terms(model, out, valid, obj, metrics), metrics


def _shorten(key, tokens, valid, plen, obj: ObjectiveConfig, cfg):
    """LLaDA's random shortening (pretraining rows only) -> (tokens, valid, maskable): the positions
    that may be noised are the real tokens after the prompt."""
    if obj.shorten_prob > 0 and not obj.sft:
        pad = cfg.pad_token_id if cfg.pad_token_id is not None else (cfg.eos_token_id or 0)
        tokens, valid = corrupt.random_shorten(key, tokens, valid, prob=obj.shorten_prob, pad_id=pad)
    maskable = valid & (jnp.arange(tokens.shape[1])[None] >= plen[:, None])
    return tokens, valid, maskable


def block_ids(valid, plen, block_size: int) -> jax.Array:
    """[B, L] block index of each token, as the model's block rule and the sampler align blocks: the
    prompt is block 0, the answer (everything in pretraining rows) blocks 1, 2, ... of block_size."""
    return visibility_ranks("block", token_positions(valid), block_size=block_size, prompt_lengths=plen)


def block_diffusion_noise(key, tokens, valid, plen, maskable, obj: ObjectiveConfig, mask_id: int, vocab_size: int):
    """BD3LM's forward process: one t per block (`sample_block_times`), every maskable token of the
    block masked with probability p(t) (= t, linear schedule). -> (xt [B, L], masked [B, L], t [B, L]:
    each token's block's t). Draws: key -> split(key, 3) = (times, masks, random replacement)."""
    k_t, k_mask, k_replace = jax.random.split(key, 3)
    b, l = tokens.shape
    n_blocks = -(-l // obj.block_size)   # answer blocks a row of length l can hold
    t_blocks = sample_block_times(k_t, b, n_blocks, t_min=obj.time_eps, t_max=obj.time_max,
                                  antithetic=obj.antithetic)
    answer_block = jnp.maximum(block_ids(valid, plen, obj.block_size) - 1, 0)   # the prompt (block 0) is clean
    t = jnp.take_along_axis(t_blocks, jnp.minimum(answer_block, n_blocks - 1), axis=1)
    p = clamp_mask_prob(obj.schedule.mask_prob(t), obj.min_masking_rate)
    noisy, masked = corrupt.mask_iid(k_mask, tokens, p, mask_id, maskable)
    if obj.random_replace > 0:
        noisy = corrupt.random_replace(k_replace, noisy, masked, vocab_size, obj.random_replace)
    return noisy, masked, t


def block_diffusion_head(model, batch, key, step, obj: ObjectiveConfig, dropout_key=None):
    """The BD3LM objective: x0 ⊕ xt through the diffusion adapters in one pass (attention
    "block_diffusion"), the loss on the noisy copy's masked tokens weighted by the schedule's 1/p
    (1/t), averaged over the maskable tokens (BD3LM's token mean, also for SFT rows). Draws:
    key -> split(key) = (shortening key, `block_diffusion_noise` key)."""
    del step   # no step-dependent corruption (stage-2 edits are masked-diffusion only)
    tokens, valid, plen = batch["tokens"], batch["valid"], batch["prompt_lengths"]
    cfg = model.config
    if cfg.mask_token_id is None:
        raise ValueError("the model has no mask token: call jaxdiff.model.mask_token.add_mask_token first")
    k_shorten, k_noise = jax.random.split(key)
    b, l = tokens.shape
    tokens, valid, maskable = _shorten(k_shorten, tokens, valid, plen, obj, cfg)
    noisy, masked, t = block_diffusion_noise(k_noise, tokens, valid, plen, maskable, obj, cfg.mask_token_id,
                                             cfg.vocab_size)
    both = jnp.concatenate([valid, valid], axis=1)
    out = model.forward(jnp.concatenate([tokens, noisy], axis=1), lora="diffusion", lora_dropout_key=dropout_key,
                        attention="block_diffusion", block_size=obj.block_size, prompt_lengths=plen,
                        padding_mask=both, logits=False, moe_capacity=True)
    stats = _stats(model, out.hidden[:, l:], tokens, obj.vocab_chunk, "diffusion", dropout_key, masked)
    p = clamp_mask_prob(obj.schedule.mask_prob(t), obj.min_masking_rate)
    loss = losses.block_diffusion_loss(stats, masked, p, maskable, kind=obj.loss,
                                       dp_mask=obj.schedule.mask_prob_derivative(t),
                                       label_smoothing=obj.label_smoothing, reweight_cap=obj.reweight_cap)
    metrics = {"diffusion/loss": loss, "diffusion/masked_acc": losses.masked_accuracy(stats, masked),
               "diffusion/mask_rate": jnp.sum(masked) / jnp.maximum(jnp.sum(maskable), 1)}
    return loss + _router_terms(model, out, both, obj, metrics), metrics


def _router_terms(model, out, valid, obj: ObjectiveConfig, metrics: dict):
    """MoE router losses of one forward pass, weighted; both are logged (as moe/*) on MoE models."""
    if not out.router_logits:
        return 0.0
    cfg = model.config
    aux = moe_lib.load_balancing_loss(out.router_logits, cfg.num_experts_per_tok, valid)
    z = moe_lib.router_z_loss(out.router_logits, valid)
    metrics.update({"moe/aux_loss": aux, "moe/z_loss": z})
    _log_dropped(model, out, metrics, "moe/dropped_frac")
    coef = cfg.router_aux_loss_coef if obj.router_aux_coef is None else obj.router_aux_coef
    return coef * aux + obj.router_z_coef * z


def _log_dropped(model, out, metrics: dict, name: str):
    """The share of token-expert assignments a pass dropped (the all-to-all dispatch's capacity)."""
    if out.moe_dropped is not None:
        slots = sum(r.shape[0] for r in out.router_logits) * model.config.num_experts_per_tok
        metrics[name] = out.moe_dropped / slots


def ar_head(model, batch, obj: ObjectiveConfig, dropout_key=None):
    tokens, valid, plen = batch["tokens"], batch["valid"], batch["prompt_lengths"]
    out = model.forward(tokens, lora="ar", lora_dropout_key=dropout_key, attention="causal",
                        padding_mask=valid, logits=False, moe_capacity=True)
    pos = jnp.arange(1, tokens.shape[1])[None]
    target_mask = valid[:, 1:] & valid[:, :-1] & (pos >= plen[:, None])
    stats = _stats(model, out.hidden[:, :-1], tokens[:, 1:], obj.vocab_chunk, "ar", dropout_key, target_mask)
    loss = jnp.sum(jnp.where(target_mask, stats.nll, 0.0)) / jnp.maximum(jnp.sum(target_mask), 1)
    metrics = {"ar/loss": loss, "ar/acc": losses.masked_accuracy(stats, target_mask)}
    if obj.diffusion_weight:   # the diffusion pass already weighs (and logs) the router losses
        _log_dropped(model, out, metrics, "ar/moe_dropped_frac")
        return loss, metrics
    return loss + _router_terms(model, out, valid, obj, metrics), metrics


def answer_lengths(tokens, valid, plen, eos_id):
    """[B] tokens the sampler must generate: the answer up to and including its first EOS (an SFT
    answer padded with EOS to a fixed window counts once), all of it when it has no EOS."""
    pos = jnp.arange(tokens.shape[1])[None]
    answer = valid & (pos >= plen[:, None])
    full = jnp.sum(answer, axis=1)
    if eos_id is None:
        return full
    is_eos = answer & (tokens == eos_id)
    first = jnp.argmax(is_eos, axis=1)
    return jnp.where(jnp.any(is_eos, axis=1), first - plen + 1, full)


def length_head(model, batch, dropout_key=None):
    tokens, valid, plen = batch["tokens"], batch["valid"], batch["prompt_lengths"]
    pos = jnp.arange(tokens.shape[1])[None]
    prompt = valid & (pos < plen[:, None])
    out = model.forward(tokens, lora="length", lora_dropout_key=dropout_key, attention="bidirectional",
                        padding_mask=prompt, logits=False, moe_capacity=True)
    logits = model.length_head(out.hidden, prompt)
    target = model.length_head.bucket(answer_lengths(tokens, valid, plen, model.config.eos_token_id))
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), target[:, None], axis=1)[:, 0]
    loss = jnp.mean(nll)
    metrics = {"length/loss": loss, "length/acc": jnp.mean(jnp.argmax(logits, -1) == target)}
    _log_dropped(model, out, metrics, "length/moe_dropped_frac")
    return loss, metrics


def loss_fn(trainable, frozen, graphdef, batch, key, step, obj: ObjectiveConfig, full_training: bool):
    model = state_lib.merge(graphdef, frozen, trainable, full_training=full_training)
    k_diff, k_drop = jax.random.split(key)
    total, metrics = 0.0, {}
    if obj.diffusion_weight:
        head = block_diffusion_head if obj.kind == "block_diffusion" else diffusion_head
        loss, m = head(model, batch, k_diff, step, obj, jax.random.fold_in(k_drop, 0))
        total, metrics = total + obj.diffusion_weight * loss, {**metrics, **m}
    if obj.ar_weight:
        loss, m = ar_head(model, batch, obj, jax.random.fold_in(k_drop, 1))
        total, metrics = total + obj.ar_weight * loss, {**metrics, **m}
    if obj.length_weight:
        loss, m = length_head(model, batch, jax.random.fold_in(k_drop, 2))
        total, metrics = total + obj.length_weight * loss, {**metrics, **m}
    metrics["loss"] = total
    return total, metrics


def make_train_step(graphdef, optimizer: optax.GradientTransformation, obj: ObjectiveConfig, *,
                    full_training: bool = False):
    """The un-jitted step; `jit_train_step` adds shardings and donation."""

    def train_step(frozen, trainable, opt_state, batch, key, step):
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            trainable, frozen, graphdef, batch, key, step, obj, full_training)
        new_trainable, new_opt, guard = apply_if_finite(optimizer, loss, grads, opt_state, trainable)
        return new_trainable, new_opt, {**metrics, **guard}

    return train_step


def step_shardings(mesh, frozen, trainable, optimizer, rules=None):
    """(frozen, trainable, optimizer state, batch) shardings from the logical rules. Optimizer
    moments follow their parameter; counters are replicated."""
    from jax.sharding import NamedSharding, PartitionSpec as P

    from jaxdiff.parallel import logical_to_spec

    rep = NamedSharding(mesh, P())
    f_sh = state_lib.state_shardings(frozen, mesh, rules)
    t_sh = state_lib.state_shardings(trainable, mesh, rules)
    o_sh = _opt_state_shardings(jax.eval_shape(optimizer.init, trainable), trainable, t_sh, rep)
    batch_axis = lambda nd: NamedSharding(mesh, logical_to_spec(("batch",) + (None,) * (nd - 1), None, mesh, rules))
    b_sh = {"tokens": batch_axis(2), "valid": batch_axis(2), "prompt_lengths": batch_axis(1)}
    return f_sh, t_sh, o_sh, b_sh


def _names(path) -> tuple:
    return tuple(getattr(p, "key", getattr(p, "idx", None)) for p in path
                 if isinstance(p, (jax.tree_util.DictKey, jax.tree_util.SequenceKey)))


def _opt_state_shardings(abstract_opt, trainable, t_sh, replicated):
    """A moment (mu, nu, ...) of a parameter ends with that parameter's key path and has its shape:
    give it the parameter's sharding; every other leaf (counts, factored stats) is replicated."""
    by_path = {}
    for (path, leaf), sh in zip(jax.tree_util.tree_leaves_with_path(trainable), jax.tree.leaves(t_sh)):
        by_path[_names(path)] = (leaf.shape, sh)

    def one(path, leaf):
        names = _names(path)
        for n in range(len(names), 0, -1):
            hit = by_path.get(names[-n:])
            if hit is not None and hit[0] == leaf.shape:
                return hit[1]
        return replicated

    return jax.tree_util.tree_map_with_path(one, abstract_opt)


def init_opt_state(optimizer, trainable, opt_sharding=None):
    """Optimizer state, created directly with its sharding when one is given."""
    return jax.jit(optimizer.init, out_shardings=opt_sharding)(trainable)


def jit_train_step(train_step, *, shardings=None):
    """jax.jit with explicit in/out shardings (`step_shardings(...)`, when given) and donation of
    the trainable state and optimizer state."""
    if shardings is None:
        return jax.jit(train_step, donate_argnums=(1, 2))
    f_sh, t_sh, o_sh, b_sh = shardings
    rep = jax.sharding.NamedSharding(next(iter(jax.tree.leaves(b_sh))).mesh, jax.sharding.PartitionSpec())
    return jax.jit(train_step, in_shardings=(f_sh, t_sh, o_sh, b_sh, rep, rep),
                   out_shardings=(t_sh, o_sh, rep), donate_argnums=(1, 2))


__all__ = ["ObjectiveConfig", "OptimConfig", "build_optimizer", "init_opt_state", "jit_train_step",
           "make_train_step", "step_shardings"]
