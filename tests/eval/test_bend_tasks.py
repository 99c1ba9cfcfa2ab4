"""Bend tasks against the real `bend` (run-c, in the sandboxed pool): the synthetic family's
references pass and mutants fail; the hand-translated HumanEval problems pass, and a wrong body fails."""

import pytest

from jaxdiff.eval import synthetic as S
from jaxdiff.eval.bend_tasks import bend_humaneval
from jaxdiff.eval.templates import HELDOUT_TEMPLATES

from tests.eval.conftest import bend_mutants_job, needs_bend, run_checked

BEND = S.splits(language="bend")
HE = bend_humaneval()


def test_bend_family_mirrors_the_python_splits():
    py = {s: {(t.family, tuple(sorted(t.meta["constants"].items()))) for t in v} for s, v in S.splits().items()}
    for split, tasks in BEND.items():
        assert tasks and all(t.language == "bend" and t.split == split for t in tasks)
        for t in tasks:  # a held-out Bend task is held out in Python too
            assert (t.family, tuple(sorted(t.meta["constants"].items()))) in py[split]
            assert t.prompt.startswith("# ") and t.prompt.endswith(f"def {t.entry_point}({t.prompt.split('(')[-1]}")
            assert t.tests.startswith("def main():\n  return [") and t.expected_result.startswith("[")
            assert len(t.mutants) == 3
    assert {t.family for t in BEND["heldout_templates"]} <= set(HELDOUT_TEMPLATES)


def test_bend_humaneval_selection():
    assert [t.family for t in HE] == ["HumanEval/13", "HumanEval/24", "HumanEval/35", "HumanEval/42",
                                      "HumanEval/46", "HumanEval/49", "HumanEval/52", "HumanEval/53",
                                      "HumanEval/55", "HumanEval/59", "HumanEval/60", "HumanEval/63",
                                      "HumanEval/150"]
    add = next(t for t in HE if t.family == "HumanEval/53")
    assert add.expected_result == "[1, 1, 5, 12, 12]"


@needs_bend
def test_real_bend_family_references_pass_and_mutants_fail(pool):
    """Every reference as a completion is judged (prompt + reference + the hidden main), and per task
    one program runs the reference and its three mutants side by side: their values must be exactly
    what the generator predicted (u24 arithmetic), and each mutant's differ from the reference's."""
    tasks = [t for v in BEND.values() for t in v]
    jobs = [(t.job(t.reference), {"passed"}) for t in tasks + HE]
    for t in tasks:
        assert all(r != t.expected_result for r in t.meta["mutant_results"]), t.id
        jobs.append((bend_mutants_job(t, t.meta["mutant_results"]), {"passed"}))
    wrong = next(t for t in HE if t.family == "HumanEval/60")
    jobs.append((wrong.job("  if n == 0:\n    return 0\n  else:\n    return n + sum_to_n(n - 2)\n"),
                 {"failed", "error", "timeout", "memory"}))
    jobs.append((wrong.job("  return n +\n"), {"error"}))
    t = tasks[0]  # and the side-by-side job does notice a wrong prediction
    jobs.append((bend_mutants_job(t, t.meta["mutant_results"][:2] + [t.expected_result]), {"failed"}))
    assert run_checked(pool, jobs) == []


@needs_bend
def test_real_bend_mutants_one_program_each_on_a_sample(pool):
    tasks = [t for v in BEND.values() for t in v][::12]
    jobs = [(t.job(m.completion, id=f"{t.id}:{m.kind}"), {"failed"}) for t in tasks for m in t.mutants]
    assert run_checked(pool, jobs) == []


@pytest.mark.parametrize("split", list(BEND))
def test_bend_prompts_show_examples(split):
    for t in BEND[split]:
        assert 2 <= len(t.visible_examples) <= 3
        for call, value in t.visible_examples:
            assert f"# {call} == {value}\n" in t.prompt
