"""The training loop: config -> mesh, model, data, jitted step; orbax checkpoints with exact resume;
held-out evaluation; tensorboard; SIGTERM/SIGINT -> save, then exit.

A checkpoint at step N holds what N completed steps produced: the trainable tree, the optimizer
state, the data iterator position and the config. The frozen base is never copied into it (it is
restored from `model.checkpoint`); in full training everything is trainable and saved.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from jaxdiff import builder
from jaxdiff.checkpoint import workdir as wd
from jaxdiff.config import schema
from jaxdiff.data import pipeline, sources
from jaxdiff.model.flops import train_flops_per_token
from jaxdiff.parallel import make_mesh, use_mesh
from jaxdiff.train import config as cfg_lib
from jaxdiff.train import state as st
from jaxdiff.train.optim import build_optimizer, schedule
from jaxdiff.train.step import (init_opt_state, jit_train_step, loss_fn, make_train_step, step_shardings)

log = logging.getLogger("jaxdiff.train")


@dataclasses.dataclass
class Run:
    config: object
    mesh: object
    tokenizer: object
    model: object
    graphdef: object
    frozen: object
    trainable: object
    opt_state: object
    optimizer: object
    shardings: tuple
    step_fn: object               # the objective at objective.block_size
    ar_step_fn: object            # the AR-only warm-up phase (objective.ar_only_steps), or None
    eval_fn: object
    train_iter: object
    eval_ds: object
    manager: ocp.CheckpointManager
    step: int = 0
    grow_step_fns: tuple = ()     # objective.block_size_schedule: ((from step, step fn), ...) before the last size

    def step_fn_at(self, step: int):
        """The jitted step that trains step `step`: AR warm-up, then each block size of a growing
        block-diffusion schedule, then the objective at objective.block_size."""
        if step < self.config.objective.ar_only_steps:
            return self.ar_step_fn
        for start, fn in reversed(self.grow_step_fns):
            if step >= start:
                return fn
        return self.step_fn


# ----------------------------------------------------------------------------- building
def _data(c, tokenizer):
    dcfg = pipeline.DataConfig(**dict(c.data))
    pi, pc = jax.process_index(), jax.process_count()
    if c.data.kind == "sft":
        examples, report = sources.sft_examples(c.data.path)
        log.warning(report.summary(len(examples) + report.bad))
        held = [sources.is_heldout(str(i), dcfg.eval_permille) for i in range(len(examples))]
        rows = pipeline.sft_rows(examples, tokenizer, dcfg.seq_len, dcfg.answer_length)
        train = pipeline.sft_dataset([r for r, h in zip(rows, held) if not h], dcfg, train=True,
                                     process_index=pi, process_count=pc)
        evals = pipeline.sft_dataset([r for r, h in zip(rows, held) if h] or rows[:1], dcfg, train=False,
                                     process_index=pi, process_count=pc)
        return train, evals
    train_items, heldout, report = pipeline.pretrain_documents(dcfg)
    for line in report:
        log.warning(line)
    return (pipeline.pretrain_dataset(train_items, tokenizer, dcfg, train=True, process_index=pi, process_count=pc),
            pipeline.pretrain_dataset(heldout or train_items[:1], tokenizer, dcfg, train=False,
                                      process_index=pi, process_count=pc))


def build(c) -> Run:
    cfg_lib.validate(c)
    workdir = os.path.abspath(c.workdir)
    os.makedirs(workdir, exist_ok=True)
    mesh = make_mesh(dict(c.mesh))
    batch_ways = mesh.shape["data"] * mesh.shape["fsdp"] * mesh.shape["expert"]
    if c.data.batch_size % batch_ways:
        raise cfg_lib.ConfigValueError(
            f"config.data.batch_size={c.data.batch_size} is not divisible by the batch-sharded mesh axes "
            f"data x fsdp x expert = {batch_ways} (config.mesh={dict(c.mesh)}, {jax.device_count()} devices)")
    tokenizer = builder.tokenizer_for(c, workdir)
    full = c.lora.full_training
    obj = cfg_lib.objective(c)
    model = builder.build_model_from_config(c, tokenizer, mesh=mesh)
    with use_mesh(mesh):
        graphdef, frozen, trainable = st.split(model, full_training=full)
        optimizer = build_optimizer(cfg_lib.optimizer(c), trainable)
        shardings = step_shardings(mesh, frozen, trainable, optimizer)
        opt_state = init_opt_state(optimizer, trainable, shardings[2])
        step_fn = jit_train_step(make_train_step(graphdef, optimizer, obj, full_training=full), shardings=shardings)
        ar_step_fn = None
        if c.objective.ar_only_steps > 0:
            ar_obj = dataclasses.replace(obj, ar_weight=1.0, diffusion_weight=0.0, length_weight=0.0)
            ar_step_fn = jit_train_step(make_train_step(graphdef, optimizer, ar_obj, full_training=full),
                                        shardings=shardings)
        grow = []   # smaller blocks first (block_diffusion); from the last size's step on, step_fn
        for start, size in cfg_lib.block_size_schedule(c)[:-1]:
            grow_obj = dataclasses.replace(obj, block_size=size)
            grow.append((start, jit_train_step(make_train_step(graphdef, optimizer, grow_obj, full_training=full),
                                               shardings=shardings)))
        if grow:
            grow.append((cfg_lib.block_size_schedule(c)[-1][0], step_fn))
        # evaluation always at objective.block_size: the block size the model is sampled with
        eval_fn = jax.jit(lambda tr, fr, batch, key: loss_fn(tr, fr, graphdef, batch, key, 0, obj, full)[1])
    train_ds, eval_ds = _data(c, tokenizer)
    manager = wd.manager(workdir, keep=c.train.keep, asynchronous=True)
    return Run(c, mesh, tokenizer, model, graphdef, frozen, trainable, opt_state, optimizer, shardings, step_fn,
               ar_step_fn, eval_fn, iter(train_ds), eval_ds, manager, grow_step_fns=tuple(grow))


# ----------------------------------------------------------------------------- checkpoints
def save(run: Run, *, force: bool = False) -> None:
    run.manager.save(run.step, force=force, args=ocp.args.Composite(
        trainable=ocp.args.StandardSave(nnx.to_pure_dict(run.trainable)),
        opt_state=ocp.args.StandardSave(run.opt_state),
        data=ocp.args.JsonSave(run.train_iter.get_state()),
        meta=ocp.args.JsonSave({"step": run.step, "config": wd.config_json(run.config)})))


def _iterator_state_from_json(state):
    """grain's packing state holds (start, end) tuples that JSON returns as lists, and grain then
    misreads them (it resumes at a different row); put the tuples back."""
    if isinstance(state, dict):
        return {k: ({f: tuple(v) for f, v in val.items()} if k == "remainder_slices" else
                    _iterator_state_from_json(val)) for k, val in state.items()}
    return state


def _abstract(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def restore(run: Run, step: int | None = None) -> bool:
    """Restores `step` (or the newest readable checkpoint). A damaged checkpoint is reported and
    the previous one used. Returns whether anything was restored."""
    steps = sorted(run.manager.all_steps(), reverse=True)
    if step is not None:
        if step not in steps:
            raise ValueError(f"config.train.resume_step={step}: no such checkpoint (have {sorted(steps)})")
        steps = [step]
    for s in steps:
        try:
            out = run.manager.restore(s, args=ocp.args.Composite(
                trainable=ocp.args.StandardRestore(_abstract(nnx.to_pure_dict(run.trainable))),
                opt_state=ocp.args.StandardRestore(_abstract(run.opt_state)),
                data=ocp.args.JsonRestore(),
                meta=ocp.args.JsonRestore()))
        except Exception as e:  # orbax raises many types for damaged files
            log.warning("checkpoint step %d in %s is unreadable (%s: %s); trying an older one", s,
                        run.manager.directory, type(e).__name__, str(e)[:200])
            continue
        run.train_iter.set_state(_iterator_state_from_json(out["data"]))
        nnx.replace_by_pure_dict(run.trainable, out["trainable"])
        run.opt_state = out["opt_state"]
        run.step = int(out["meta"]["step"])
        return True
    if steps:
        log.warning("no readable checkpoint in %s; starting from scratch", run.manager.directory)
    return False


# ----------------------------------------------------------------------------- eval / logging
def evaluate(run: Run) -> dict:
    c = run.config
    totals, n = {}, 0
    key = jax.random.key(c.seed + 1)     # the same masks every evaluation
    batches = []
    for batch in iter(run.eval_ds):
        if len(batches) >= c.train.eval_batches or batch["tokens"].shape[0] * jax.process_count() != c.data.batch_size:
            break
        batches.append(batch)
    if jax.process_count() > 1:   # every process must run the same number of (collective) eval steps
        from jax.experimental import multihost_utils
        counts = multihost_utils.process_allgather(np.int32(len(batches)))
        batches = batches[:int(np.min(counts))]
    for i, batch in enumerate(batches):
        m = run.eval_fn(run.trainable, run.frozen, pipeline.to_global(batch, run.shardings[3]), jax.random.fold_in(key, i))
        for k, v in jax.device_get(m).items():
            totals[k] = totals.get(k, 0.0) + float(v)
        n += 1
    return {k: v / n for k, v in totals.items()} if n else {}


def summary_line(out: dict) -> str:
    """`train`'s result as one line: the step, held-out loss, (diffusion) masked-token accuracy and
    (AR) next-token accuracy, each when the run trains that head."""
    ev = out["eval"]
    acc = next((v for k, v in ev.items() if k.endswith("masked_acc")), None)
    ar_acc = next((v for k, v in ev.items() if k.endswith("ar/acc")), None)
    return (f"step {out['step']}: held-out loss {ev.get('loss', float('nan')):.4f}"
            + (f", held-out masked-token accuracy {acc:.4f}" if acc is not None else "")
            + (f", held-out next-token accuracy {ar_acc:.4f}" if ar_acc is not None else ""))


def sample_kind(c) -> str:
    """"AR" for a run that trains the autoregressive objective alone (its model is sampled left to
    right), else "diffusion"."""
    heads = schema.active_heads(c)
    return "AR" if heads["ar"] and not heads["diffusion"] and not heads["length"] else "diffusion"


def sample_text(run: Run) -> str:
    """config.sample's prompt continued by the model: the block diffusion sampler, or for an AR-only
    run greedy (temperature `sample.temperature`) left-to-right decoding of `sample.gen_length` tokens."""
    from jaxdiff.sample.ar import ar_generate
    from jaxdiff.sample.sampler import generate

    s = run.config.sample
    ids = run.tokenizer(s.prompt, add_special_tokens=False)["input_ids"]
    model = st.merge(run.graphdef, run.frozen, run.trainable, full_training=run.config.lora.full_training)
    key = jax.random.key(run.config.seed)
    eos = run.tokenizer.eos_token_id
    if sample_kind(run.config) == "AR":
        out, _ = ar_generate(model, jnp.asarray([ids], jnp.int32), max_new_tokens=s.gen_length,
                             temperature=s.temperature, key=key, stop_ids=() if eos is None else (eos,))
    else:
        out, _ = generate(model, jnp.asarray([ids], jnp.int32), gen_length=s.gen_length, block_length=s.block_length,
                          steps=s.steps, policy=s.policy, temperature=s.temperature, key=key)
    gen = [t for t in np.asarray(out[0, len(ids):]).tolist()]
    eos = run.tokenizer.eos_token_id
    gen = gen[:gen.index(eos)] if eos in gen else gen
    return s.prompt + run.tokenizer.decode(gen)


# ----------------------------------------------------------------------------- the loop
class _Stop:
    def __init__(self):
        self.requested = None
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def train(c, *, progress: bool = True) -> dict:
    """Runs (or resumes) training to config.train.steps; returns the final metrics."""
    from tensorboardX import SummaryWriter
    from tqdm import tqdm

    run = build(c)
    resumed = restore(run, None if c.train.resume_step < 0 else c.train.resume_step)
    if resumed:
        log.warning("resumed from step %d", run.step)
    writer = SummaryWriter(os.path.join(os.path.abspath(c.workdir), "tb")) if jax.process_index() == 0 else None
    lr = schedule(cfg_lib.optimizer(c))
    tokens_per_step = c.data.batch_size * c.data.seq_len
    flops_tok = train_flops_per_token(run.model.config, c.data.seq_len, full_training=c.lora.full_training)
    base_key = jax.random.key(c.seed)
    history, final, stopped, text = [], {}, None, None
    last_t, last_step = time.perf_counter(), run.step
    with _Stop() as stop, use_mesh(run.mesh), tqdm(total=c.train.steps, initial=run.step, disable=not progress,
                                                   desc="train", dynamic_ncols=True) as bar:
        while run.step < c.train.steps:
            batch = pipeline.to_global(next(run.train_iter), run.shardings[3])
            fn = run.step_fn_at(run.step)
            run.trainable, run.opt_state, metrics = fn(
                run.frozen, run.trainable, run.opt_state, batch, jax.random.fold_in(base_key, run.step), run.step)
            run.step += 1
            bar.update(1)
            if run.step % c.train.log_every == 0 or run.step == c.train.steps:
                m = {k: float(v) for k, v in jax.device_get(metrics).items()}
                now = time.perf_counter()
                dt = (now - last_t) / max(run.step - last_step, 1)
                last_t, last_step = now, run.step
                m.update(lr=float(lr(run.step - 1)), step_time=dt, tokens_per_s=tokens_per_step / dt)
                if c.train.peak_tflops > 0:
                    m["mfu"] = m["tokens_per_s"] * flops_tok / (c.train.peak_tflops * 1e12 * jax.device_count())
                history.append({"step": run.step, **m})
                bar.set_postfix(loss=f"{m['loss']:.3f}", tok_s=f"{m['tokens_per_s']:.0f}")
                if writer:
                    for k, v in m.items():
                        writer.add_scalar(f"train/{k}", v, run.step)
            if run.step % c.train.eval_every == 0 or run.step == c.train.steps:
                final = evaluate(run)
                # Every process samples: with sharded params the sampler's collectives need all of them.
                text = sample_text(run)
                if writer:
                    for k, v in final.items():
                        writer.add_scalar(f"eval/{k}", v, run.step)
                    writer.add_text("sample", "```\n" + text + "\n```", run.step)
                    writer.flush()
            if run.step % c.train.checkpoint_every == 0 or run.step == c.train.steps:
                save(run)
            if stop.requested:
                stopped = stop.requested
                log.warning("%s received: saving step %d, then exiting", stopped, run.step)
                save(run, force=True)
                break
    run.manager.wait_until_finished()
    if not final and not stopped:   # resumed at the last step: nothing ran, still report
        with use_mesh(run.mesh):
            final = evaluate(run)
            text = sample_text(run)
    if writer:
        writer.close()
    # "sample": the last evaluation's sample (None when stopped before one), "sample_kind": its sampler
    return {"step": run.step, "eval": final, "sample": text, "sample_kind": sample_kind(c), "history": history,
            "stopped": stopped, "run": run}
