"""The prompts RL trains on: the tasks of the configured suites that RL may check, their prompt
tokens, and P prompts per batch drawn from the seed and the batch index alone (a resumed run, or a
run with overlap on or off, draws the same prompts for the same batch). Host-side NumPy.

Skipped at load, and counted: infilling tasks (a rollout continues a prompt; it has no suffix), tasks
RL refuses (`rewards.NothingToCheck`: nothing that could fail), prompts longer than
`rl.prompt_length`, and Bend suites when `bend` / `hvm` are not on PATH.
"""
from __future__ import annotations

import dataclasses
import logging
import shutil
from collections import Counter

import numpy as np

from jaxdiff.config.schema import ConfigValueError
from jaxdiff.eval.harness import left_pad, prompt_ids
from jaxdiff.eval.suites import load_suite
from jaxdiff.eval.tasks import Task
from jaxdiff.rl.rewards import NothingToCheck, rl_job

log = logging.getLogger("jaxdiff.rl")

PAD_BUCKET = 32   # with rl.prompt_length = 0 the width is the longest prompt rounded up to this


def bend_available() -> bool:
    return shutil.which("bend") is not None and shutil.which("hvm") is not None


def load_rl_suite(name: str) -> list[Task]:
    """`load_suite`, with a bad name or file refused as the config.rl.suites value it came from."""
    try:
        return load_suite(name)
    except KeyError as e:
        raise ConfigValueError(f"config.rl.suites: {e.args[0]}") from None
    except (ValueError, OSError) as e:
        raise ConfigValueError(f"config.rl.suites: suite {name!r}: {e}") from None


@dataclasses.dataclass(frozen=True)
class TaskSet:
    """tasks[i] and its prompt tokens prompts[i]; every batch is [P, width], left-padded."""

    tasks: tuple[Task, ...]
    prompts: tuple[tuple[int, ...], ...]
    width: int
    pad_id: int
    skipped: dict

    def __len__(self) -> int:
        return len(self.tasks)

    def draw(self, seed: int, batch: int, n: int) -> np.ndarray:
        """n distinct task indices for batch `batch`: a function of (seed, batch) only."""
        return np.random.default_rng([seed, batch]).choice(len(self.tasks), size=n, replace=False)

    def prompt_batch(self, idx) -> tuple[np.ndarray, np.ndarray]:
        """(ids [n, width] int32, mask [n, width] bool) of the tasks `idx`, left-padded."""
        return left_pad([list(self.prompts[i]) for i in idx], self.pad_id, self.width, len(idx))


def suite_names(c, *, bend: bool) -> list[str]:
    names = [s.strip() for s in c.rl.suites.split(",") if s.strip()]
    extra = [s.strip() for s in c.rl.bend_suites.split(",") if s.strip()]
    if extra and not bend:
        log.warning("config.rl.bend_suites=%r: bend / hvm are not on PATH, so RL trains on Python tasks only "
                    "(cargo install hvm@2.0.22 bend-lang@0.2.38)", c.rl.bend_suites)
        extra = []
    return names + extra


def load_tasks(c, tokenizer, *, bend: bool | None = None) -> TaskSet:
    """The TaskSet of config `c` (rl.suites, rl.bend_suites, rl.prompt_format, rl.prompt_length)."""
    r = c.rl
    bend = bend_available() if bend is None else bend
    tasks, prompts, skipped = [], [], Counter()
    for name in suite_names(c, bend=bend):
        suite = load_rl_suite(name)
        for t in suite:
            if t.infill:
                skipped["infilling"] += 1
                continue
            if t.language == "bend" and not bend:
                skipped["bend without bend on PATH"] += 1
                continue
            try:
                rl_job(t, "", sanitize=False)
            except NothingToCheck:
                skipped["nothing to check"] += 1
                continue
            ids = prompt_ids(t, tokenizer, r.prompt_format)
            if r.prompt_length and len(ids) > r.prompt_length:
                skipped["prompt longer than rl.prompt_length"] += 1
                continue
            tasks.append(t)
            prompts.append(tuple(ids))
    if len(tasks) < r.prompts_per_batch:
        raise ConfigValueError(
            f"config.rl.prompts_per_batch={r.prompts_per_batch}: only {len(tasks)} usable task(s) in "
            f"config.rl.suites={r.suites!r} (skipped: {dict(skipped) or 'none'}; config.rl.prompt_length="
            f"{r.prompt_length})")
    width = r.prompt_length or -(-max(len(p) for p in prompts) // PAD_BUCKET) * PAD_BUCKET
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if skipped:
        log.warning("RL tasks: %d usable, skipped %s", len(tasks), dict(skipped))
    return TaskSet(tuple(tasks), tuple(prompts), int(width), int(pad or 0), dict(skipped))
