"""Evaluation: task suites, sanitising, verification through `jaxdiff.verify`, pass@k.

No JAX here (and no `jaxdiff.train`): everything in this package runs on the host.

    from jaxdiff.eval import load_suite, sft_pairs, verdicts
    train = load_suite("synthetic-train")                 # list[Task]
    pairs = sft_pairs(train)                              # [{"id", "prompt", "answer"}]
    held = load_suite("synthetic-heldout-templates")
    with verdicts.make_pool() as pool:
        samples = [verdicts.prepare(t, text) for t, text in zip(held, texts)]
        records = verdicts.evaluate(pool, held, samples)
    verdicts.summary(records, ks=(1,))

Modules: tasks (Task, TaskSource), suites (names), humaneval (HumanEval / MBPP JSONL / hub),
infill, synthetic + templates, bend_tasks, sanitize, passk, verdicts.
"""

from jaxdiff.eval.passk import pass_at_k
from jaxdiff.eval.suites import SUITES, load_suite, suite_source
from jaxdiff.eval.tasks import Mutant, Task, TaskFormatError, TaskSource, sft_conversations, sft_pairs

# (the sanitiser is `jaxdiff.eval.sanitize.sanitize`; not re-exported, so the module keeps its name)
__all__ = ["Task", "Mutant", "TaskSource", "TaskFormatError", "SUITES", "load_suite", "suite_source", "sft_pairs",
           "sft_conversations", "pass_at_k"]
