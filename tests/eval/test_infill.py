"""Infilling tasks cut from HumanEval: spans, lengths, and through the pool every reference
passing and every stored mutant failing."""

import ast

from jaxdiff.eval.humaneval import humaneval
from jaxdiff.eval.infill import candidate_edits, infilling

from tests.eval.conftest import run_checked

SINGLE, MULTI = infilling("single"), infilling("multi")
PROBLEMS = {p.id: p for p in humaneval()}


def test_spans_cut_the_canonical_solution():
    assert len(SINGLE) >= 250 and len(MULTI) >= 100
    for t in SINGLE + MULTI:
        p = PROBLEMS[t.family]
        assert t.prompt + t.reference + t.suffix == p.prompt + p.reference
        assert t.meta["span_chars"] == len(t.reference) and t.meta["span_lines"] == t.reference.count("\n")
        assert t.reference.strip() and t.tests == p.tests and t.entry_point == p.entry_point and t.infill
    assert all(t.meta["span_lines"] == 1 for t in SINGLE)
    assert all(2 <= t.meta["span_lines"] <= 4 for t in MULTI)
    assert len({t.id for t in SINGLE + MULTI}) == len(SINGLE) + len(MULTI)


def test_deterministic():
    from jaxdiff.eval.infill import _build
    assert [t.id for t in _build("single", 0, humaneval(), True)] == [t.id for t in SINGLE]
    assert [t.id for t in _build("single", 1, humaneval(), True)] != [t.id for t in SINGLE]


def test_mutants_are_single_token_edits():
    n = sum(len(t.mutants) for t in SINGLE + MULTI)
    assert n >= 400, n
    for t in SINGLE + MULTI:
        assert len(t.mutants) <= 3
        for m in t.mutants:
            assert m.completion != t.reference and len(m.completion.splitlines()) == len(t.reference.splitlines())
            ast.parse(t.program(m.completion))
    assert candidate_edits("        if x < 10 and ok:\n")[:2] == [[1, 13, "<", "<="], [1, 15, "10", "11"]]


def test_references_pass_and_mutants_fail_in_the_pool(pool):
    jobs, seen = [], set()
    for t in SINGLE + MULTI:
        program = t.program(t.reference)
        if program not in seen:  # every span of a problem rebuilds the same canonical program
            seen.add(program)
            jobs.append((t.job(t.reference), {"passed"}))
        jobs += [(t.job(m.completion, id=f"{t.id}:{m.kind}"), {"failed", "error"}) for m in t.mutants]
    assert len(seen) == 164
    assert run_checked(pool, jobs) == []


def test_synthetic_infilling_cuts_one_line_of_each_held_out_task():
    from jaxdiff.eval.suites import load_suite
    from jaxdiff.eval.synthetic import synthetic

    tasks = load_suite("synthetic-infill")
    sources = {p.id: p for p in synthetic("heldout_constants")}
    assert len(tasks) == len(sources) == 256 and {t.meta["source"] for t in tasks} == set(sources)
    for t in tasks:
        p = sources[t.meta["source"]]
        assert t.prompt + t.reference + t.suffix == p.prompt + p.reference and t.infill
        assert "\n" not in t.reference and t.reference.strip() and not t.reference.lstrip().startswith("return")
        assert t.prompt.endswith(("return", "\n"))   # a cut where the tokenizer cuts
        assert t.tests == p.tests and t.family == p.family
        # every judged program is one the synthetic family's own pool test judges (test_synthetic:
        # each reference passes, each mutant fails): the reference's, and one mutant's per mutant
        source_mutants = {p.program(m.completion) for m in p.mutants}
        for m in t.mutants:
            assert m.completion != t.reference and "\n" not in m.completion
            assert t.program(m.completion) in source_mutants
    assert sum(len(t.mutants) for t in tasks) >= 600


def test_synthetic_infilling_references_pass_and_mutants_fail_in_the_pool(pool):
    from jaxdiff.eval.suites import load_suite

    jobs = []
    for t in load_suite("synthetic-infill")[::8]:   # every template tier, 32 tasks
        jobs.append((t.job(t.reference), {"passed"}))
        jobs += [(t.job(m.completion, id=f"{t.id}:{m.kind}:{i}"), {"failed", "error"})
                 for i, m in enumerate(t.mutants)]
    assert len(jobs) > 90
    assert run_checked(pool, jobs) == []
