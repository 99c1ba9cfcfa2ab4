"""Verifier rewards for RL: task records + completions -> pool jobs -> reward components (host side).

    from jaxdiff.rl import rewards
    pending = rewards.submit(pool, tasks, completions)            # tasks[i] is sample i's task (P*G)
    ...                                                           # sample the next batch meanwhile
    batch = rewards.collect(pool, pending, steps, max_steps)      # RewardBatch
    batch.total, batch.metrics(), batch.records()

The tasks are the evaluation's `Task` records (the synthetic suites, HumanEval, Bend), judged as
the evaluation judges them (`verdicts.prepare` sanitises unless sanitize=False), with two changes
for RL:

* Correctness counts hidden tests only. A synthetic Python task's hidden check is split into its
  asserts, one test each (`hidden_tests`), so partial credit is the fraction of hidden asserts
  passed; the prompt's examples are never among them (the generator draws hidden inputs apart from
  the shown ones). Other tasks keep their one check (`tests_total` = 1: all or nothing), and a
  Bend task's hidden `main` yields one result, all or nothing.
* A job with nothing to check is refused (`NothingToCheck`, naming the task) before anything
  runs, instead of passing on exit 0: Python without tests and without expected output, tests
  that are blank, do not parse, or can never fail (no assert, call or raise anywhere), an empty
  expected output; Bend without an expected result or output. Bend tests holding `"` or `#}` are
  refused too: a completion could open a string or comment that they close and so swallow part of
  the hidden `main` (the verifier proves only that the file compiles to its end; docs/verify.md).

Components, per sample (jaxdiff.verify.reward's formulas and RewardConfig weights):

    correctness  C = 1 if passed, else hidden tests passed / hidden tests (partial_credit), else 0
    speed        S = clip(1 - steps / max_steps, 0, 1)        if passed, else 0
    efficiency   E = scale / (scale + cost)                    if passed, else 0
                     cost: HVM interactions (Bend), CPU ms (Python)
    total        R = w_c * C + w_s * S + w_e * E               (= jaxdiff.verify.reward.reward)

Hostile programs earn nothing because the verifier judges them apart from where they run
(docs/verify.md): tests/rl/test_reward_hacking.py shows it end to end through the real pool.
"""

from __future__ import annotations

import ast
import dataclasses
from collections import Counter
from collections.abc import Sequence

import numpy as np

from jaxdiff.eval import verdicts
from jaxdiff.eval.tasks import Task
from jaxdiff.verify import reward as R
from jaxdiff.verify.jobs import STATUSES

_CHECK_HEADER = "def check(candidate):\n"
_BEND_CLOSERS = ('"', "#}")


class NothingToCheck(ValueError):
    """A task (or job) RL refuses: a sample of it could pass without being checked."""


def hidden_tests(task: Task) -> str | list[str]:
    """The tests a sample of `task` is judged by: a synthetic Python task's hidden asserts one by one
    (each `def check(candidate)` with one assert), when its check is exactly those asserts; otherwise
    the task's own tests."""
    asserts = task.meta.get("asserts") if task.language == "python" else None
    if asserts and task.tests == _CHECK_HEADER + "".join(f"    {a}\n" for a in asserts):
        return [f"{_CHECK_HEADER}    {a}\n" for a in asserts]
    return task.tests


def rl_job(task: Task, completion: str, *, id=None, sanitize: bool = True) -> dict:
    """The verifier job for one sample; raises NothingToCheck for a task RL must not train on."""
    program = verdicts.prepare(task, completion, sanitize=sanitize).program
    job = {"id": task.id if id is None else id, "language": task.language, "program": program}
    if task.language == "python":
        job.update(tests=hidden_tests(task), entry_point=task.entry_point)
    else:
        job["expected_result"] = task.expected_result
        closer = next((c for c in _BEND_CLOSERS if c in task.tests), None)
        if closer is not None:
            raise NothingToCheck(f"task {task.id!r} is refused for RL: its hidden main holds {closer!r}, which "
                                 "could close a string or comment the completion opens and swallow part of it")
    require_checks(job, task.id)
    return job


def require_checks(job: dict, name=None) -> None:
    """Raise NothingToCheck (naming `name`, else the job's id) unless `job` checks something."""
    name = job.get("id") if name is None else name

    def refuse(why):
        raise NothingToCheck(f"task {name!r} is refused for RL: {why}")

    stdout = job.get("expected_stdout")
    if stdout is not None and not stdout.strip():
        refuse("its expected output is empty, so a program that prints nothing passes")
    if job.get("language", "python") == "bend":
        result = job.get("expected_result")
        if result is not None and not result.strip():
            refuse("its expected result is empty")
        if result is None and stdout is None:
            refuse("it has no expected result and no expected output: any program that runs would pass")
        return
    tests = job.get("tests")
    if tests is None:
        if stdout is None:
            refuse("it has no tests and no expected output: any program that exits 0 would pass")
        return
    for i, snippet in enumerate(tests if isinstance(tests, list) else [tests]):
        where = f"its test {i}" if isinstance(tests, list) else "its tests"
        if not snippet.strip():
            refuse(f"{where}: empty")
        try:
            tree = ast.parse(snippet)
        except SyntaxError as e:
            refuse(f"{where}: do not parse ({e.msg}, line {e.lineno})")
        if not any(isinstance(node, (ast.Assert, ast.Call, ast.Raise)) for node in ast.walk(tree)):
            refuse(f"{where}: can never fail (no assert, call or raise)")


@dataclasses.dataclass(frozen=True)
class RewardBatch:
    """Per-sample rewards, [N] each (float32 unless said): the weighted `total` and its components
    (unweighted; speed and efficiency 0 for failing samples), `passed` (bool), the verifier's
    `status`, `steps` and `tests_passed` / `tests_total` (int32; 0 where the result has none)."""

    total: np.ndarray
    correctness: np.ndarray
    speed: np.ndarray
    efficiency: np.ndarray
    passed: np.ndarray
    status: tuple[str, ...]
    steps: np.ndarray
    tests_passed: np.ndarray
    tests_total: np.ndarray

    def __len__(self) -> int:
        return len(self.status)

    def metrics(self) -> dict:
        """Batch means for logging (reward/<component>, pass_rate, steps) and counts per status."""
        out = {f"reward/{k}": float(getattr(self, k).mean()) for k in ("total", "correctness", "speed", "efficiency")}
        out["pass_rate"] = float(self.passed.mean())
        out["steps"] = float(self.steps.mean())
        if self.passed.any():
            out["steps_passed"] = float(self.steps[self.passed].mean())
        counts = Counter(self.status)
        out.update({f"status/{s}": counts.get(s, 0) for s in STATUSES})
        return out

    def records(self) -> list[dict]:
        """One plain dict per sample, to store with the batch."""
        return [{"reward": float(self.total[i]), "correctness": float(self.correctness[i]),
                 "speed": float(self.speed[i]), "efficiency": float(self.efficiency[i]),
                 "passed": bool(self.passed[i]), "status": self.status[i], "steps": float(self.steps[i]),
                 "tests_passed": int(self.tests_passed[i]), "tests_total": int(self.tests_total[i])}
                for i in range(len(self))]


def score(results: Sequence[dict], steps, max_steps: float, cfg: R.RewardConfig = R.RewardConfig()) -> RewardBatch:
    """Reward components of verifier `results` whose samples took `steps` [N] of `max_steps`."""
    steps = np.asarray(steps, dtype=np.float64)
    if steps.shape != (len(results),):
        raise ValueError(f"steps has shape {steps.shape}, expected ({len(results)},)")
    if max_steps <= 0:
        raise ValueError(f"max_steps must be positive, got {max_steps}")
    passed = np.array([r.get("status") == "passed" for r in results], dtype=bool)
    c = np.array([R.correctness(r, cfg.partial_credit) for r in results])
    s = np.array([R.speed(n, max_steps) if ok else 0.0 for n, ok in zip(steps, passed)])
    e = np.array([R.efficiency(r, cfg) if ok else 0.0 for r, ok in zip(results, passed)])
    total = cfg.correctness * c + cfg.speed * s + cfg.efficiency * e

    def stat(key):
        return np.array([int((r.get("stats") or {}).get(key) or 0) for r in results], dtype=np.int32)

    f32 = np.float32
    return RewardBatch(total=total.astype(f32), correctness=c.astype(f32), speed=s.astype(f32),
                       efficiency=e.astype(f32), passed=passed, status=tuple(r.get("status") for r in results),
                       steps=steps.astype(f32), tests_passed=stat("tests_passed"), tests_total=stat("tests_total"))


@dataclasses.dataclass(frozen=True)
class PendingRewards:
    """Jobs handed to the pool; `collect` turns their results into a RewardBatch."""

    ticket: object
    task_ids: tuple[str, ...]


def submit(pool, tasks: Sequence[Task], completions: Sequence[str], *, sanitize: bool = True) -> PendingRewards:
    """Queue one job per (task, completion) on `pool` (a VerifierPool) and return at once. Every job is
    built, and every refusal raised, before any is queued."""
    if len(tasks) != len(completions):
        raise ValueError(f"{len(tasks)} tasks but {len(completions)} completions")
    jobs = [rl_job(t, c, id=f"{t.id}#{i}", sanitize=sanitize) for i, (t, c) in enumerate(zip(tasks, completions))]
    if any(j["language"] == "bend" for j in jobs) and (pool.bend is None or pool.hvm is None):
        missing = "bend" if pool.bend is None else "hvm"
        raise RuntimeError(f"Bend tasks in the batch but {missing} is not on the pool's PATH "
                           "(cargo install hvm@2.0.22 bend-lang@0.2.38)")
    return PendingRewards(pool.submit(jobs), tuple(t.id for t in tasks))


def collect(pool, pending: PendingRewards, steps, max_steps: float, cfg: R.RewardConfig = R.RewardConfig(),
            timeout: float | None = None) -> RewardBatch:
    """Wait for the results and score them. A `rejected` result means the job never ran (a pool
    misconfigured for it): that is an error here, not a reward of 0."""
    results = pool.collect(pending.ticket, timeout=timeout)
    for task_id, r in zip(pending.task_ids, results):
        if r["status"] == "rejected":
            raise RuntimeError(f"the pool rejected the job of task {task_id!r}: {r['detail']}")
    return score(results, steps, max_steps, cfg)


def compute(pool, tasks: Sequence[Task], completions: Sequence[str], steps, max_steps: float,
            cfg: R.RewardConfig = R.RewardConfig(), *, sanitize: bool = True) -> RewardBatch:
    """submit + collect."""
    return collect(pool, submit(pool, tasks, completions, sanitize=sanitize), steps, max_steps, cfg)
