"""The on-policy loop: traced rollouts -> verifier rewards -> group advantages -> mu jitted updates of
a fresh diffusion-head adapter over the frozen model; the pool verifies batch n while the device
samples batch n + 1.

    from jaxdiff.rl.loop import train_rl
    out = train_rl(config)        # configs/rl_tiny.py's fields; what launch/rl.py calls

The model: `model.checkpoint` (a full-training workdir, e.g. the SFT run, or a checkpoint folder),
frozen, with a new `lora.diffusion` adapter whose B is zero, so the first policy is the SFT model.
The reference policy is the same model with the adapter off (lora=None): no second model. Only the
adapter is trainable and only it has optimizer state (`builder.split`, `train.optim`).

Per batch n (P = rl.prompts_per_batch prompts drawn from seed and n, G = rl.group_size samples each):
  launch    rollout (jitted; temperature rl.temperature) -> answers decoded up to EOS -> jobs queued
            on the VerifierPool (returns at once); the batch keeps the adapter that sampled it
  collect   wait for the verdicts -> reward components (rewards.score) -> group advantages
  learn     mu iterations of the jitted update (update.py): current, old (the sampling adapter)
            and reference log-probabilities with the iteration's key, the clipped loss, optax; one
            optimizer step over the whole batch, or (rl.minibatch_size = M) over its kept rows M at a time

Overlap (rl.overlap): batch n + 1 is launched with the adapter *before* update n, right after batch n
was queued, so the device samples while the pool verifies; batch n + 1 is then one update stale and
its old policy is that earlier adapter (the first batch after a start is not stale). Without
overlap, batch n + 1 is sampled after update n (staleness 0) and device and pool take turns.

Keys: rollout n uses fold_in(fold_in(key(seed), n), 0), inner iteration i fold_in(..., i + 1): the
same with overlap on or off, before or after a resume.

Checkpoints (`<workdir>/checkpoints/<batches done>/`): the adapter, the optimizer state, `sampler`
(the adapter that samples the next batch: with overlap the one before the last update) and meta
(batch count, sampler version, update count, config). A resume re-samples the next batch with that
adapter and key, so it continues exactly as an uninterrupted run. `launch/eval.py
--config.checkpoint=<workdir>` evaluates the RL model (the saved config rebuilds it).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from jaxdiff import builder
from jaxdiff.checkpoint import workdir as wd
from jaxdiff.eval.harness import answer_tokens
from jaxdiff.eval.verdicts import make_pool
from jaxdiff.parallel import make_mesh, use_mesh
from jaxdiff.rl import config as rl_config
from jaxdiff.rl import rewards
from jaxdiff.rl.advantages import Advantages, group_advantages
from jaxdiff.rl.report import batch_metrics, sample_records, samples_text
from jaxdiff.rl.prompts import TaskSet, load_tasks
from jaxdiff.rl.rollout import Rollout, rollout, rollout_settings
from jaxdiff.rl.update import jit_update, update_shardings
from jaxdiff.train import config as train_config
from jaxdiff.train import state as st
from jaxdiff.train.loop import _Stop
from jaxdiff.train.optim import build_optimizer, schedule
from jaxdiff.train.step import init_opt_state, step_shardings

log = logging.getLogger("jaxdiff.rl")

ITEMS = ("trainable", "opt_state", "sampler", "meta")
SAMPLES_FILE = "rl_samples.jsonl"


@dataclasses.dataclass
class RLRun:
    config: object
    mesh: object
    tokenizer: object
    tasks: TaskSet
    graphdef: object
    frozen: object
    trainable: object              # the RL adapter (nnx.State of lora_diffusion_* leaves)
    opt_state: object
    optimizer: object
    opt_sharding: object
    sampler_settings: object       # the rollout's SamplerSettings
    manager: ocp.CheckpointManager
    batch: int = 0                 # batches done
    updates: int = 0               # optimizer steps taken (a batch whose groups all dropped takes none)
    sampler: object = None         # the adapter that samples batch `batch`
    sampler_version: int = 0       # the batch count at which `sampler` was the current adapter

    @property
    def rows(self) -> int:
        return self.config.rl.prompts_per_batch * self.config.rl.group_size


@dataclasses.dataclass
class InFlight:
    """A sampled batch on its way through the pool, with the adapter that sampled it."""

    index: int
    version: int
    adapter: object
    batch: Rollout
    tasks: list
    texts: list
    pending: rewards.PendingRewards
    rollout_s: float
    host_s: float


# ----------------------------------------------------------------------------- building
def build(c, *, model=None, tokenizer=None) -> RLRun:
    """The run of config `c`, before any checkpoint is restored. model / tokenizer: the model
    `builder.build_model_from_config(c, tokenizer, mesh=make_mesh(c.mesh))` returns (its adapter
    untrained), to skip building it again (a benchmark, tests); it is not modified."""
    rl_config.validate(c)
    r = c.rl
    if r.mode != "policy_gradient":
        raise rl_config.ConfigValueError(f"config.rl.mode={r.mode!r}: train_rl runs 'policy_gradient' (launch/rl.py "
                                         "runs 'order_distill' with rl.order_distill.train_order_distill)")
    mesh, model, tokenizer = prepare(c, r.prompts_per_batch * r.group_size,
                                     "config.rl.prompts_per_batch x config.rl.group_size", model, tokenizer)
    ways = mesh.shape["data"] * mesh.shape["fsdp"] * mesh.shape["expert"]
    if r.minibatch_size % ways:
        raise rl_config.ConfigValueError(
            f"config.rl.minibatch_size = {r.minibatch_size} rows is not divisible by the batch-sharded mesh axes "
            f"data x fsdp x expert = {ways} (config.mesh={dict(c.mesh)})")
    try:
        settings = rollout_settings(model, **rl_config.rollout_kwargs(c))
    except ValueError as e:
        raise rl_config.ConfigValueError(f"config.rl (the rollout sampler): {e}") from None
    tasks = load_tasks(c, tokenizer)
    state = adapter_state(c, mesh, model)
    return RLRun(c, mesh, tokenizer, tasks, sampler_settings=settings, manager=checkpoint_manager(c),
                 sampler=state["trainable"], **state)


def prepare(c, rows: int, rows_from: str, model=None, tokenizer=None):
    """(mesh, model, tokenizer) of an RL-family run whose batches have `rows` rows (`rows_from`
    names the config fields they come from: they must divide over the batch-sharded mesh axes).
    The workdir is made; the model is built unless given (with its tokenizer)."""
    if jax.process_count() > 1:
        raise NotImplementedError("launch/rl.py runs in one process (every device of one host); multi-host RL "
                                  "is not built yet")
    os.makedirs(os.path.abspath(c.workdir), exist_ok=True)
    mesh = make_mesh(dict(c.mesh))
    ways = mesh.shape["data"] * mesh.shape["fsdp"] * mesh.shape["expert"]
    if rows % ways:
        raise rl_config.ConfigValueError(
            f"{rows_from} = {rows} rows is not divisible by the batch-sharded mesh axes data x fsdp x expert = {ways} "
            f"(config.mesh={dict(c.mesh)}, {jax.device_count()} devices)")
    if (model is None) != (tokenizer is None):
        raise ValueError("build: pass both model and tokenizer, or neither")
    if model is None:
        tokenizer = builder.tokenizer_for(c, os.path.abspath(c.workdir))
        model = builder.build_model_from_config(c, tokenizer, mesh=mesh)
    return mesh, model, tokenizer


def adapter_state(c, mesh, model) -> dict:
    """The model split into the frozen tree and the trainable adapter, with the adapter's optimizer
    and its state (RLRun's fields of the same names)."""
    with use_mesh(mesh):
        graphdef, frozen, trainable = st.split(model)
        optimizer = build_optimizer(train_config.optimizer(c), trainable)
        opt_sharding = step_shardings(mesh, frozen, trainable, optimizer)[2]
        opt_state = init_opt_state(optimizer, trainable, opt_sharding)
    return dict(graphdef=graphdef, frozen=frozen, trainable=trainable, opt_state=opt_state, optimizer=optimizer,
                opt_sharding=opt_sharding)


def checkpoint_manager(c) -> ocp.CheckpointManager:
    return wd.manager(os.path.abspath(c.workdir), items=ITEMS, keep=c.rl.keep, asynchronous=True)


def update_fn(run: RLRun, batch):
    """(the jitted update for batches shaped like `batch`, its shardings); update.py; one compile per process."""
    c = run.config
    shardings = update_shardings(run.mesh, run.frozen, run.trainable, run.optimizer, batch)
    fn = jit_update(run.graphdef, train_config.optimizer(c), rl_config.estimator(c, run.sampler_settings),
                    rl_config.loss(c), with_ref=rl_config.with_reference(c), shardings=shardings)
    return fn, shardings


# ----------------------------------------------------------------------------- checkpoints
def save(run: RLRun, *, force: bool = False) -> None:
    meta = {"step": run.batch, "batch": run.batch, "updates": run.updates, "sampler_version": run.sampler_version,
            "config": wd.config_json(run.config)}
    run.manager.save(run.batch, force=force, args=ocp.args.Composite(
        trainable=ocp.args.StandardSave(nnx.to_pure_dict(run.trainable)),
        opt_state=ocp.args.StandardSave(run.opt_state),
        sampler=ocp.args.StandardSave(nnx.to_pure_dict(run.sampler)),
        meta=ocp.args.JsonSave(meta)))


def _abstract(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def restore(run: RLRun, batch: int | None = None) -> bool:
    """Restores the checkpoint after `batch` batches (or the newest readable one; a damaged one is
    reported and the previous one used). Returns whether anything was restored."""
    found = sorted(run.manager.all_steps(), reverse=True)
    if batch is not None:
        if batch not in found:
            raise rl_config.ConfigValueError(f"config.rl.resume_batch={batch}: no such checkpoint "
                                             f"(have {sorted(found)})")
        found = [batch]
    pure = nnx.to_pure_dict(run.trainable)
    for s in found:
        try:
            out = run.manager.restore(s, args=ocp.args.Composite(
                trainable=ocp.args.StandardRestore(_abstract(pure)),
                opt_state=ocp.args.StandardRestore(_abstract(run.opt_state)),
                sampler=ocp.args.StandardRestore(_abstract(pure)),
                meta=ocp.args.JsonRestore()))
        except Exception as e:  # orbax raises many types for damaged files
            log.warning("checkpoint %d in %s is unreadable (%s: %s); trying an older one", s, run.manager.directory,
                        type(e).__name__, str(e)[:200])
            continue
        trainable, sampler = (jax.tree.map(lambda x: x, run.trainable) for _ in range(2))   # new States
        nnx.replace_by_pure_dict(trainable, out["trainable"])
        nnx.replace_by_pure_dict(sampler, out["sampler"])
        run.trainable, run.sampler, run.opt_state = trainable, sampler, out["opt_state"]
        meta = out["meta"]
        run.batch, run.updates = int(meta["batch"]), int(meta["updates"])
        run.sampler_version = int(meta["sampler_version"])
        return True
    if found:
        log.warning("no readable checkpoint in %s; starting from the SFT model", run.manager.directory)
    return False


# ----------------------------------------------------------------------------- one batch
def batch_key(run: RLRun, n: int, i: int):
    """Rollout n's key (i = 0) and its inner iteration i - 1's (i >= 1)."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(run.config.seed), n), i)


def launch(run: RLRun, pool, n: int, adapter, version: int) -> InFlight:
    """Samples batch n with `adapter` (blocking on the device) and queues its jobs on the pool."""
    r = run.config.rl
    t0 = time.perf_counter()
    idx = run.tasks.draw(run.config.seed, n, r.prompts_per_batch)
    ids, mask = run.tasks.prompt_batch(idx)
    model = st.merge(run.graphdef, run.frozen, adapter)
    t1 = time.perf_counter()
    s = run.sampler_settings
    batch = rollout(model, ids, prompt_mask=mask, group_size=r.group_size, key=batch_key(run, n, 0),
                    **rl_config.rollout_kwargs(run.config))
    tokens = np.asarray(batch.tokens)                                   # waits for the device
    t2 = time.perf_counter()
    texts = [run.tokenizer.decode(answer_tokens(row, s.eos_id), skip_special_tokens=True) for row in tokens]
    tasks = [run.tasks.tasks[i] for i in idx for _ in range(r.group_size)]
    pending = rewards.submit(pool, tasks, texts, sanitize=r.sanitize)
    t3 = time.perf_counter()
    return InFlight(n, version, adapter, batch, tasks, texts, pending, rollout_s=t2 - t1, host_s=(t1 - t0) + (t3 - t2))


def collect(run: RLRun, pool, inflight: InFlight):
    """(RewardBatch, the verifier's results, seconds waited). As `rewards.collect`, keeping the results
    (their details and worker time are logged)."""
    t0 = time.perf_counter()
    results = pool.collect(inflight.pending.ticket)
    waited = time.perf_counter() - t0
    for task_id, res in zip(inflight.pending.task_ids, results):
        if res["status"] == "rejected":
            raise RuntimeError(f"the pool rejected the job of task {task_id!r}: {res['detail']}")
    steps = np.asarray(inflight.batch.steps_used)
    return rewards.score(results, steps, run.sampler_settings.steps, rl_config.reward(run.config)), results, waited


def minibatches(keep: np.ndarray, size: int, rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    """(row indices, keep flags) of each optimizer step of one inner iteration over a batch whose
    rows `keep` marks. size 0: one step over every row as sampled (a dropped group's rows ride along,
    masked). size M: the kept rows, shuffled by `rng`, M per step; the last step is filled up to M
    with copies of its first row marked keep=False, which count nowhere (objective.py), so every
    step has one shape and the update compiles once. No kept row: no step."""
    if size == 0:
        return [(np.arange(keep.size), keep)] if keep.any() else []
    kept = rng.permutation(np.flatnonzero(keep))
    steps = []
    for lo in range(0, kept.size, size):
        rows = kept[lo:lo + size]
        flags = np.ones(size, bool)
        flags[rows.size:] = False
        steps.append((np.concatenate([rows, np.full(size - rows.size, rows[0])]), flags))
    return steps


def learn(run: RLRun, inflight: InFlight, adv: Advantages) -> list[dict]:
    """mu iterations over the batch (none when every group was dropped), each one optimizer step per
    minibatch (`minibatches`, rl.minibatch_size); the metrics of each step. Step j of iteration i uses
    the key fold_in(batch_key(n, i + 1), j) when rl.minibatch_size is set, batch_key(n, i + 1) when not."""
    r = run.config.rl
    if adv.kept_samples == 0:
        return []
    whole = r.minibatch_size == 0
    shape = inflight.batch if whole else jax.tree.map(lambda x: x[:r.minibatch_size] if x.ndim else x, inflight.batch)
    fn, shardings = update_fn(run, shape)                  # every step of the batch has this shape: one lookup
    if whole:                                              # rows over the batch-sharded axes, placed once
        placed = jax.device_put((inflight.batch, adv.values, adv.keep), (shardings[3], shardings[4], shardings[4]))
    steps_done = []
    for i in range(r.mu):
        key = batch_key(run, inflight.index, i + 1)
        rng = np.random.default_rng([run.config.seed, inflight.index, i])
        for j, (rows, keep) in enumerate(minibatches(adv.keep, r.minibatch_size, rng)):
            if whole:
                part, values, keep, step_key = *placed, key
            else:
                part = jax.device_put(jax.tree.map(lambda x: x[rows] if x.ndim else x, inflight.batch), shardings[3])
                values, keep = jax.device_put((adv.values[rows], keep), shardings[4])
                step_key = jax.random.fold_in(key, j)
            run.trainable, run.opt_state, m = fn(run.frozen, run.trainable, run.opt_state, inflight.adapter, part,
                                                 values, keep, step_key)
            steps_done.append({k: float(v) for k, v in jax.device_get(m).items()})
            run.updates += 1
    return steps_done


# ----------------------------------------------------------------------------- the loop
def _trim_samples(path: str, done: int) -> None:
    """Keep the sample lines of the batches a resumed run has done (later ones will be redone)."""
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as f:
        keep = [line for line in f if line.strip() and json.loads(line)["batch"] < done]
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(keep)


def train_rl(c, *, progress: bool = True, observe=None, model=None, tokenizer=None) -> dict:
    """Runs (or resumes) RL to config.rl.batches. Returns {"batch", "history", "stopped", "run"};
    history holds one dict of metrics per batch. observe(event) is called after each batch with its
    InFlight, RewardBatch, Advantages, per-iteration metrics and the adapter before and after.
    model / tokenizer: as `build`'s."""
    from tensorboardX import SummaryWriter
    from tqdm import tqdm

    run = build(c, model=model, tokenizer=tokenizer)
    r = c.rl
    if restore(run, None if r.resume_batch < 0 else r.resume_batch):
        log.warning("resumed after batch %d (the next batch is sampled by the adapter of batch %d)", run.batch,
                    run.sampler_version)
    workdir = os.path.abspath(c.workdir)
    samples_path = os.path.join(workdir, SAMPLES_FILE)
    _trim_samples(samples_path, run.batch)
    writer = SummaryWriter(os.path.join(workdir, "tb"))
    lr = schedule(train_config.optimizer(c))
    history, stopped, inflight = [], None, None
    with _Stop() as stop, use_mesh(run.mesh), make_pool(workers=r.workers, timeout_s=r.timeout_s,
                                                        memory_mb=r.memory_mb) as pool, \
            tqdm(total=r.batches, initial=run.batch, disable=not progress, desc="rl", dynamic_ncols=True) as bar:
        while run.batch < r.batches:
            n, t0 = run.batch, time.perf_counter()
            launched = []
            if inflight is None:
                inflight = launch(run, pool, n, run.sampler, run.sampler_version)
                launched.append(inflight)
            before = run.trainable
            nxt = None
            if r.overlap and n + 1 < r.batches:
                nxt = launch(run, pool, n + 1, before, n)
                launched.append(nxt)
            rb, results, waited = collect(run, pool, inflight)
            adv = group_advantages(rb.total, r.group_size, baseline=r.baseline, scale=r.scale)
            t_update = time.perf_counter()
            iterations = learn(run, inflight, adv)
            update_s = time.perf_counter() - t_update
            run.batch = n + 1
            run.sampler, run.sampler_version = (before, n) if r.overlap else (run.trainable, n + 1)
            timing = {"rollout_s": sum(x.rollout_s for x in launched), "host_s": sum(x.host_s for x in launched),
                      "verify_wait_s": waited, "update_s": update_s, "batch_s": time.perf_counter() - t0}
            m = batch_metrics(inflight, rb, results, adv, iterations, timing, workers=r.workers)
            m["lr"] = float(lr(max(run.updates - 1, 0)))
            history.append({"batch": run.batch, **m})
            with open(samples_path, "a", encoding="utf-8") as f:
                for rec in sample_records(inflight, rb, results):
                    f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            if run.batch % r.log_every == 0 or run.batch == r.batches:
                for k, v in m.items():
                    writer.add_scalar(k, v, run.batch)
                if r.log_samples:
                    writer.add_text("samples", samples_text(inflight, rb, results, r.log_samples), run.batch)
                writer.flush()
            if observe is not None:
                observe({"batch": n, "inflight": inflight, "rewards": rb, "advantages": adv, "iterations": iterations,
                         "before": before, "after": run.trainable})
            bar.update(1)
            bar.set_postfix(reward=f"{m['reward/total']:.3f}", passed=f"{m['rollout/pass_rate']:.2f}")
            due = run.batch % r.checkpoint_every == 0 or run.batch == r.batches
            if due:
                save(run)
            inflight = nxt
            if stop.requested:
                stopped = stop.requested
                log.warning("%s received: saving after batch %d, then exiting", stopped, run.batch)
                if not due:
                    save(run, force=True)
                break
    run.manager.wait_until_finished()
    writer.close()
    return {"batch": run.batch, "history": history, "stopped": stopped, "run": run}
