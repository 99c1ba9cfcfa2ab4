"""Constrained-order trajectory distillation (Seed Diffusion): for training examples, sample several
generation orders of the *known* answer with the model, keep the orders the model finds most
likely, and fine-tune the diffusion head's adapter on those trajectories (docs/rl.md).

Letters: B examples, O = n_orders orders per example, N = B * O rows (the orders of example i are
rows i*O .. i*O + O - 1), P prompt width (left-padded), A answer length (gen_length).

A constrained rollout runs the block sampler's schedule with the tokens fixed to the example's
answer: blocks left to right, each with steps * block_length / gen_length steps and the sampler's
per-step counts (`sample.transfer_schedule`). At each step one forward of the whole sequence (the
answer revealed so far, masks elsewhere; no cache) gives, at every still-masked position of the
current block, log p_k = log_softmax(logits / temperature)[true token] in float32, through the
chunked output head the estimators use (`estimators.answer_log_probs`). The positions revealed are
the count's top positions of log p_k / order_temperature + Gumbel noise: a draw without replacement
with probability proportional to p_k ** (1 / order_temperature); order_temperature 0 reveals the
most confident first (ties: the lower position). order_temperature is an argument of the jitted
call, not a static setting, so one compile serves every value. The record is a `Rollout` whose
tokens are the answer, so trace replay (shrink 1) scores each token in the context it was revealed
in and reproduces the recorded log-probabilities.

As the sampler stops at EOS, a row's blocks after the block of its answer's first EOS are never
run (step -1, committed = EOS); the positions after the EOS inside that block are revealed (in
context for the block's later steps) but not valid. Answers come padded with EOS to gen_length
(`load_examples`, as SFT pads them), so `valid` is the answer up to and including its first EOS.

The update keeps, per example, the `keep` orders with the largest total log-likelihood (the sum of
the recorded log-probabilities over valid tokens) and takes one optax step on the adapter against
loss = -(sum of the trace-replayed log-probabilities of the kept rows' valid tokens) / (their count).
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import os
import time
from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxdiff.config.schema import ConfigValueError
from jaxdiff.data.pipeline import sft_rows
from jaxdiff.eval.harness import prompt_ids
from jaxdiff.eval.tasks import sft_conversations, sft_pairs
from jaxdiff.parallel import use_mesh
from jaxdiff.rl import config as rl_config
from jaxdiff.rl.estimators import EstimatorSettings, answer_log_probs, trace_replay
from jaxdiff.rl.loop import RLRun, adapter_state, batch_key, checkpoint_manager, prepare, restore, save
from jaxdiff.rl.prompts import PAD_BUCKET, TaskSet, bend_available, load_rl_suite, suite_names
from jaxdiff.rl.rollout import Rollout, rollout_settings
from jaxdiff.rl.update import update_shardings
from jaxdiff.sample.sampler import SamplerSettings, as_batch, commit_top, transfer_schedule
from jaxdiff.train import config as train_config
from jaxdiff.train import state as st
from jaxdiff.train.loop import _Stop
from jaxdiff.train.optim import OptimConfig, apply_if_finite, build_optimizer, schedule

log = logging.getLogger("jaxdiff.rl")


# ----------------------------------------------------------------------------- constrained rollouts
@dataclasses.dataclass(frozen=True)
class OrderSettings:
    """Static settings of constrained rollouts and their update (one compile per value).

    sampler: the shapes (gen_length, block_length, steps), temperature, mask and EOS tokens,
      attention and LoRA head, as `rollout_settings` checks them (cache none; its policy is unused:
      the order is chosen here). n_orders: O. vocab_chunk: output-head rows per chunk.
    shrink: the update's trace replay steps per forward (1: the exact contexts)."""

    sampler: SamplerSettings
    n_orders: int
    vocab_chunk: int = 8192
    shrink: int = 1

    @property
    def estimator(self) -> EstimatorSettings:
        return EstimatorSettings.for_rollout(self.sampler, "trace_replay", vocab_chunk=self.vocab_chunk,
                                             shrink=self.shrink)

    @property
    def steps_per_block(self) -> int:
        """Steps a block runs: the sampler's steps per block, at most one per position (the sampler's
        loop ends once the block is full)."""
        s = self.sampler
        return min(s.steps // (s.gen_length // s.block_length), s.block_length)


def order_settings(model, *, n_orders: int, gen_length: int, block_length: int, steps: int | None = None,
                   temperature: float = 1.0, attention: str = "bidirectional", lora: str | None = "diffusion",
                   mask_id: int | None = None, vocab_chunk: int = 8192, shrink: int = 1) -> OrderSettings:
    """Checked `OrderSettings` (the sampler's rules for the shapes; temperature > 0)."""
    if n_orders < 1:
        raise ValueError(f"n_orders={n_orders} must be >= 1")
    s = rollout_settings(model, gen_length=gen_length, block_length=block_length, steps=steps,
                         temperature=temperature, attention=attention, cache="none", lora=lora, mask_id=mask_id)
    if s.attention not in ("bidirectional", "block"):
        raise ValueError(f"attention={s.attention!r}: constrained rollouts replay with 'bidirectional' or 'block'")
    o = OrderSettings(s, int(n_orders), int(vocab_chunk), int(shrink))
    o.estimator   # noqa: B018 (checks shrink and the rest)
    return o


def trace_constrained(model, prompt_ids, prompt_mask, answer, key, order_temperature, o: OrderSettings) -> Rollout:
    """The traced body of `constrained_rollout` (call inside jit): prompt_ids / prompt_mask [B, P],
    answer [B, A] (EOS-padded), order_temperature [] float32 -> a Rollout of B * n_orders rows whose
    tokens are the answers."""
    s, est = o.sampler, o.estimator
    b, _ = prompt_ids.shape
    a, bl = s.gen_length, s.block_length
    n = b * o.n_orders
    ids = jnp.repeat(prompt_ids, o.n_orders, axis=0)
    mask = jnp.repeat(prompt_mask.astype(bool), o.n_orders, axis=0)
    ans = jnp.repeat(answer.astype(jnp.int32), o.n_orders, axis=0)
    col = jnp.arange(a)[None]
    if s.eos_id is None:
        first, tokens = jnp.full((n,), a), ans
    else:
        first = jnp.min(jnp.where(ans == s.eos_id, col, a), axis=1)
        tokens = jnp.where(col > first[:, None], s.eos_id, ans)
    n_blocks = a // bl
    row_blocks = jnp.where(first < a, first // bl + 1, n_blocks)      # the blocks the sampler runs for the row
    per = o.steps_per_block
    counts = transfer_schedule(jnp.full((1,), bl, jnp.int32), s.steps // n_blocks)[0]   # the sampler's schedule
    tau = jnp.asarray(order_temperature, jnp.float32)
    graphdef, state = nnx.split(model)

    def body(carry, t):
        step_map, logp = carry
        blk, i = t // per, t % per
        eligible = (col // bl == blk) & (blk < row_blocks[:, None]) & (step_map < 0)
        answer_in = jnp.where(step_map >= 0, ans, s.mask_id)
        lp = jax.lax.cond(jnp.any(eligible),
                          lambda: answer_log_probs(nnx.merge(graphdef, state), ids, mask, answer_in, ans, est),
                          lambda: jnp.zeros((n, a), jnp.float32))
        noise = jax.random.gumbel(jax.random.fold_in(key, t), (n, a))
        scores = jnp.where(tau > 0, lp / jnp.where(tau > 0, tau, 1.0) + noise, lp)
        reveal = commit_top(scores, eligible, jnp.full((n,), counts[i]))
        return (jnp.where(reveal, t, step_map), jnp.where(reveal, lp, logp)), None

    init = (jnp.full((n, a), -1, jnp.int32), jnp.zeros((n, a), jnp.float32))
    (step_map, logp), _ = jax.lax.scan(body, init, jnp.arange(n_blocks * per))
    steps_used = (row_blocks * per).astype(jnp.int32)
    return Rollout(prompt_ids=ids, prompt_mask=mask, group=jnp.arange(n, dtype=jnp.int32) // o.n_orders,
                   tokens=tokens, committed=jnp.where(step_map >= 0, ans, tokens), step_map=step_map,
                   logp=logp, valid=(col <= first[:, None]) & (step_map >= 0), steps_used=steps_used,
                   forward_passes=steps_used, batch_steps=jnp.max(steps_used),
                   batch_forward_passes=jnp.max(steps_used))


@functools.partial(jax.jit, static_argnames=("graphdef", "settings"))
def _constrained_jit(graphdef, state, prompt_ids, prompt_mask, answer, key, order_temperature, settings):
    return trace_constrained(nnx.merge(graphdef, state), prompt_ids, prompt_mask, answer, key, order_temperature,
                             settings)


def constrained_rollout(model, prompt_ids, prompt_mask, answer, key, *, order_temperature: float = 1.0,
                        settings: OrderSettings | None = None, **kw) -> Rollout:
    """n_orders orders of each example's answer (jitted). prompt_ids / prompt_mask [B, P] (left-padded;
    mask None: all real), answer [B, gen_length] int32 padded with EOS. order_temperature >= 0: the
    Gumbel-top-k temperature over log p(true token) (0: most confident first). settings:
    `order_settings(model, **kw)` (n_orders, gen_length, block_length, steps, temperature, attention,
    lora, mask_id, vocab_chunk) unless given."""
    if not order_temperature >= 0:
        raise ValueError(f"order_temperature={order_temperature} must be >= 0")
    o = order_settings(model, **kw) if settings is None else settings
    prompt_ids = as_batch(prompt_ids, "prompt_ids")
    prompt_mask = jnp.ones(prompt_ids.shape, bool) if prompt_mask is None else jnp.asarray(prompt_mask, bool)
    answer = as_batch(answer, "answer")
    if prompt_mask.shape != prompt_ids.shape:
        raise ValueError(f"prompt_mask shape {prompt_mask.shape} != prompt_ids shape {prompt_ids.shape}")
    if answer.shape != (prompt_ids.shape[0], o.sampler.gen_length):
        raise ValueError(f"answer shape {answer.shape}: expected [{prompt_ids.shape[0]}, gen_length="
                         f"{o.sampler.gen_length}] (pad with EOS)")
    graphdef, state = nnx.split(model)
    tau = jnp.float32(order_temperature)
    return _constrained_jit(graphdef, state, prompt_ids, prompt_mask, answer, key, tau, o)


# ----------------------------------------------------------------------------- selection and the update
def row_log_likelihood(batch: Rollout) -> jax.Array:
    """[N] float32: each order's total log-likelihood, the recorded log-probabilities summed over its
    valid tokens."""
    return jnp.sum(jnp.where(batch.valid, batch.logp, 0.0), axis=1)


def select_orders(logp_sums, n_orders: int, keep: int) -> jax.Array:
    """logp_sums [B * n_orders] -> the rows to keep [B * keep] int32: per example, its `keep` most
    likely orders, most likely first (ties: the lower row)."""
    if not 1 <= keep <= n_orders:
        raise ValueError(f"keep={keep}: must be in 1..n_orders={n_orders}")
    sums = jnp.asarray(logp_sums).reshape(-1, n_orders)
    best = jnp.argsort(-sums, axis=1, stable=True)[:, :keep]
    return (best + n_orders * jnp.arange(sums.shape[0])[:, None]).reshape(-1).astype(jnp.int32)


def take_rows(batch: Rollout, rows) -> Rollout:
    """The rollout's rows `rows` (per-batch scalars kept)."""
    return jax.tree.map(lambda x: x[rows] if x.ndim else x, batch)


def make_update(graphdef, optim: OptimConfig, o: OrderSettings, keep: int):
    """update(frozen, adapter, opt_state, batch) -> (adapter, opt_state, metrics): select the kept
    orders of the constrained rollout `batch` [N rows], one optax step on the loss (module
    docstring), skipped when the loss or gradient norm is not finite. Metrics: loss, tokens (the kept
    valid tokens), grad_norm, skipped, loglik_all / loglik_kept (mean total log-likelihood of an
    order, all or kept), token_logp_all / token_logp_kept (per valid token) and replay_minus_recorded
    (max |replayed - recorded log-prob| of the kept tokens under the adapter before the step; ~1e-7
    with shrink 1 when that adapter sampled the orders)."""
    est = o.estimator

    def update(frozen, adapter, opt_state, batch):
        optimizer = build_optimizer(optim, adapter)
        sums = row_log_likelihood(batch)
        rows = select_orders(sums, o.n_orders, keep)
        kept = take_rows(batch, rows)
        count = jnp.sum(kept.valid)

        def loss_fn(a):
            logp, valid = trace_replay(st.merge(graphdef, frozen, a), kept, None, est)
            return -jnp.sum(jnp.where(valid, logp, 0.0)) / jnp.maximum(count, 1), logp

        (loss, logp), grads = jax.value_and_grad(loss_fn, has_aux=True)(adapter)
        new_adapter, new_opt, guard = apply_if_finite(optimizer, loss, grads, opt_state, adapter)
        tokens_all = jnp.maximum(jnp.sum(batch.valid), 1)
        metrics = {"loss": loss, "tokens": count, **guard,
                   "loglik_all": jnp.mean(sums), "loglik_kept": jnp.mean(sums[rows]),
                   "token_logp_all": jnp.sum(sums) / tokens_all,
                   "token_logp_kept": jnp.sum(sums[rows]) / jnp.maximum(count, 1),
                   "replay_minus_recorded": jnp.max(jnp.where(kept.valid, jnp.abs(logp - kept.logp), 0.0))}
        return new_adapter, new_opt, metrics

    return update


_JITTED: dict = {}


def jit_update(graphdef, optim: OptimConfig, o: OrderSettings, keep: int, *, shardings):
    """`make_update` under jax.jit with `update.update_shardings`' shardings; the optimizer state is
    donated. One jitted function per model, settings and shardings in a process."""
    leaves, treedef = jax.tree.flatten(shardings)
    key = (graphdef, optim, o, keep, treedef, tuple(leaves))
    if key not in _JITTED:
        f_sh, t_sh, o_sh, b_sh, _, rep = shardings
        _JITTED[key] = jax.jit(make_update(graphdef, optim, o, keep), in_shardings=(f_sh, t_sh, o_sh, b_sh),
                               out_shardings=(t_sh, o_sh, rep), donate_argnums=(2,))
    return _JITTED[key]


# ----------------------------------------------------------------------------- examples
@dataclasses.dataclass(frozen=True)
class Examples:
    """Training examples: the prompts as a TaskSet (draws and left-padded batches as RL's) and each
    task's answer tokens answers[i] [gen_length] int32 (the SFT row's answer, EOS-padded)."""

    tasks: TaskSet
    answers: np.ndarray

    def batch(self, seed: int, n: int, size: int):
        """(ids [size, width], mask, answers [size, gen_length]) of batch n: a function of (seed, n)."""
        idx = self.tasks.draw(seed, n, size)
        ids, mask = self.tasks.prompt_batch(idx)
        return ids, mask, self.answers[idx]


def load_examples(c, tokenizer) -> Examples:
    """The examples of config.rl.suites (+ bend_suites when bend is on PATH): every task with a
    reference answer, tokenized as the SFT trainer does (`data.pipeline.sft_rows` over
    `eval.tasks.sft_pairs`, or `sft_conversations` for rl.prompt_format='chat': the answer, EOS,
    EOS padding to rl.gen_length). Skipped and counted: infilling tasks, tasks without a reference,
    prompts longer than rl.prompt_length, answers (with their EOS) longer than rl.gen_length."""
    r = c.rl
    a = r.gen_length
    tasks, prompts, answers, skipped = [], [], [], Counter()
    for name in suite_names(c, bend=bend_available()):
        suite = load_rl_suite(name)
        for t in suite:
            if t.infill:
                skipped["infilling"] += 1
                continue
            if t.reference is None:
                skipped["no reference answer"] += 1
                continue
            plen = len(prompt_ids(t, tokenizer, r.prompt_format))
            if r.prompt_length and plen > r.prompt_length:
                skipped["prompt longer than rl.prompt_length"] += 1
                continue
            example = sft_conversations([t])[0]["messages"] if r.prompt_format == "chat" else sft_pairs([t])[0]
            # room for the prompt and one answer token more than gen_length, so a longer answer shows
            row = sft_rows([example], tokenizer, seq_len=plen + a + 1, answer_length=a)[0]
            length = int(row["valid"].sum())
            tokens = row["tokens"][:length]
            if int(row["prompt_lengths"]) != plen:
                raise ValueError(f"task {t.id!r}: the SFT row's prompt is not the prompt's tokens")
            if length - plen > a:
                skipped["answer longer than rl.gen_length"] += 1
                continue
            tasks.append(t)
            prompts.append(tuple(int(x) for x in tokens[:plen]))
            answers.append(tokens[plen:])
    if len(tasks) < r.prompts_per_batch:
        raise ConfigValueError(
            f"config.rl.prompts_per_batch={r.prompts_per_batch}: only {len(tasks)} usable example(s) in "
            f"config.rl.suites={r.suites!r} (skipped: {dict(skipped) or 'none'}; config.rl.prompt_length="
            f"{r.prompt_length}, config.rl.gen_length={a})")
    width = r.prompt_length or -(-max(len(p) for p in prompts) // PAD_BUCKET) * PAD_BUCKET
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if skipped:
        log.warning("order distillation examples: %d usable, skipped %s", len(tasks), dict(skipped))
    task_set = TaskSet(tuple(tasks), tuple(prompts), int(width), int(pad or 0), dict(skipped))
    return Examples(task_set, np.stack(answers).astype(np.int32))


# ----------------------------------------------------------------------------- the loop
@dataclasses.dataclass
class DistillRun(RLRun):
    """An RL run (the frozen model, the adapter, its optimizer and checkpoints, as `rl.loop`) whose
    batches are constrained rollouts of `examples`. `sampler` is always the current adapter."""

    examples: Examples | None = None
    orders: OrderSettings | None = None

    @property
    def rows(self) -> int:
        return self.config.rl.prompts_per_batch * self.config.rl.n_orders


def build(c, *, model=None, tokenizer=None) -> DistillRun:
    """The run of config `c` (rl.mode='order_distill'), before any checkpoint is restored; model /
    tokenizer as `rl.loop.build`'s."""
    rl_config.validate(c)
    r = c.rl
    if r.mode != "order_distill":
        raise ConfigValueError(f"config.rl.mode={r.mode!r}: train_order_distill runs 'order_distill'")
    mesh, model, tokenizer = prepare(c, r.prompts_per_batch * r.n_orders,
                                     "config.rl.prompts_per_batch x config.rl.n_orders", model, tokenizer)
    try:
        orders = order_settings(model, **rl_config.order_kwargs(c))
    except ValueError as e:
        raise ConfigValueError(f"config.rl (the constrained rollouts): {e}") from None
    examples = load_examples(c, tokenizer)
    state = adapter_state(c, mesh, model)
    return DistillRun(c, mesh, tokenizer, examples.tasks, sampler_settings=orders.sampler,
                      manager=checkpoint_manager(c), sampler=state["trainable"], examples=examples, orders=orders,
                      **state)


def distill_batch(run: DistillRun, n: int, batch: Rollout | None = None) -> tuple[Rollout, dict]:
    """Batch n: its constrained rollout with the current adapter and key `batch_key(n, 0)` (unless
    `batch` is given), then one update; (the rollout, the update's metrics as floats)."""
    r = run.config.rl
    t0 = time.perf_counter()
    if batch is None:
        ids, mask, answers = run.examples.batch(run.config.seed, n, r.prompts_per_batch)
        model = st.merge(run.graphdef, run.frozen, run.trainable)
        batch = constrained_rollout(model, ids, mask, answers, batch_key(run, n, 0), settings=run.orders,
                                    order_temperature=float(r.order_temperature))
        jax.block_until_ready(batch)
    t1 = time.perf_counter()
    shardings = update_shardings(run.mesh, run.frozen, run.trainable, run.optimizer, batch)
    fn = jit_update(run.graphdef, train_config.optimizer(run.config), run.orders, r.keep_orders,
                    shardings=shardings)
    batch = jax.device_put(batch, shardings[3])                         # rows over the batch-sharded axes
    run.trainable, run.opt_state, m = fn(run.frozen, run.trainable, run.opt_state, batch)
    m = {k: float(v) for k, v in jax.device_get(m).items()}
    run.updates += 1
    return batch, {**m, "rollout_s": t1 - t0, "update_s": time.perf_counter() - t1}


def train_order_distill(c, *, progress: bool = True, observe=None, model=None, tokenizer=None) -> dict:
    """Runs (or resumes) order distillation to config.rl.batches. Returns {"batch", "history",
    "stopped", "run"}; history holds one dict of metrics per batch (its tensorboard scalars).
    observe(event) is called after each batch with the batch index, its rollout, metrics and the
    adapter before and after. model / tokenizer: as `rl.loop.build`'s."""
    from tensorboardX import SummaryWriter
    from tqdm import tqdm

    run = build(c, model=model, tokenizer=tokenizer)
    r = c.rl
    if restore(run, None if r.resume_batch < 0 else r.resume_batch):
        log.warning("resumed after batch %d", run.batch)
    writer = SummaryWriter(os.path.join(os.path.abspath(c.workdir), "tb"))
    lr = schedule(train_config.optimizer(c))
    history, stopped = [], None
    with _Stop() as stop, use_mesh(run.mesh), \
            tqdm(total=r.batches, initial=run.batch, disable=not progress, desc="order distill",
                 dynamic_ncols=True) as bar:
        while run.batch < r.batches:
            n, t0 = run.batch, time.perf_counter()
            before = run.trainable
            batch, m = distill_batch(run, n)
            run.batch = n + 1
            run.sampler, run.sampler_version = run.trainable, run.batch
            h = {"distill/loss": m["loss"], "distill/grad_norm": m["grad_norm"], "distill/skipped": m["skipped"],
                 "distill/tokens": m["tokens"], "distill/replay_minus_recorded": m["replay_minus_recorded"],
                 "orders/loglik_all": m["loglik_all"], "orders/loglik_kept": m["loglik_kept"],
                 "orders/token_logp_all": m["token_logp_all"], "orders/token_logp_kept": m["token_logp_kept"],
                 "lr": float(lr(run.updates - 1)), "time/rollout_s": m["rollout_s"],
                 "time/update_s": m["update_s"], "time/batch_s": time.perf_counter() - t0}
            history.append({"batch": run.batch, **h})
            if run.batch % r.log_every == 0 or run.batch == r.batches:
                for k, v in h.items():
                    writer.add_scalar(k, v, run.batch)
                writer.flush()
            if observe is not None:
                observe({"batch": n, "rollout": batch, "metrics": h, "before": before, "after": run.trainable})
            bar.update(1)
            bar.set_postfix(loss=f"{h['distill/loss']:.3f}", kept=f"{h['orders/loglik_kept']:.2f}")
            due = run.batch % r.checkpoint_every == 0 or run.batch == r.batches
            if due:
                save(run)
            if stop.requested:
                stopped = stop.requested
                log.warning("%s received: saving after batch %d, then exiting", stopped, run.batch)
                if not due:
                    save(run, force=True)
                break
    run.manager.wait_until_finished()
    writer.close()
    return {"batch": run.batch, "history": history, "stopped": stopped, "run": run}
