"""RL rewards: jobs from the evaluation's task records with hidden tests only, refusals of jobs that
check nothing, components against jaxdiff.verify.reward, and partial credit through the real pool
against an in-process count of the hidden asserts a program passes."""

import ast
import shutil

import numpy as np
import pytest

from jaxdiff.eval import SUITES, load_suite, synthetic, verdicts
from jaxdiff.eval.tasks import Task
from jaxdiff.rl import rewards
from jaxdiff.verify.reward import RewardConfig
from jaxdiff.verify.reward import rewards as plain_rewards

needs_bend = pytest.mark.skipif(shutil.which("bend") is None or shutil.which("hvm") is None,
                                reason="bend/hvm not on PATH: cargo install hvm@2.0.22 bend-lang@0.2.38")
HELD = synthetic.synthetic("heldout_constants")
# one task per template, so every kind of input (int, two ints, str, list) is covered
TASKS = list({t.family: t for t in reversed(HELD)}.values())


@pytest.fixture(scope="module")
def pool():
    with verdicts.make_pool(workers=2) as p:
        yield p


def test_hidden_tests_are_the_hidden_asserts_one_by_one():
    for t in TASKS:
        tests = rewards.hidden_tests(t)
        assert isinstance(tests, list) and len(tests) == t.meta["hidden_inputs"] == len(t.meta["asserts"])
        assert all(x.count("assert ") == 1 and x.startswith("def check(candidate):\n") for x in tests)
        # the prompt's examples are never among them
        shown = {call.split("(", 1)[1] for call, _ in t.visible_examples}
        hidden = {a.split("candidate(", 1)[1].rsplit(") == ", 1)[0] + ")" for a in t.meta["asserts"]}
        assert not shown & hidden
    he = load_suite("humaneval")[0]
    assert rewards.hidden_tests(he) == he.tests                # no split form: the one check
    job = rewards.rl_job(he, he.reference)
    assert job["tests"] == he.tests and job["entry_point"] == he.entry_point
    bend = synthetic.synthetic("heldout_constants", language="bend")[0]
    job = rewards.rl_job(bend, bend.reference)
    assert job == {"id": bend.id, "language": "bend", "program": bend.program(bend.reference),
                   "expected_result": bend.expected_result}


def test_every_built_in_suite_is_accepted():
    for name in SUITES:
        tasks = load_suite(name)
        assert tasks, name
        for t in tasks:
            rewards.rl_job(t, t.reference or "", sanitize=False)


def _task(**kw):
    base = dict(id="t/1", prompt="def f(x):\n", language="python", entry_point="f",
                tests="def check(candidate):\n    assert candidate(1) == 2\n")
    return Task(**{**base, **kw})


@pytest.mark.parametrize("task, message", [
    (_task(tests=""), "its tests: empty"),
    (_task(tests="# nothing here\n"), "can never fail"),
    (_task(tests="def check(candidate):\n    pass\n"), "can never fail"),
    (_task(tests="def check(candidate):\n    return candidate\n"), "can never fail"),
    (_task(tests="def check(candidate:\n"), "do not parse"),
    (_task(language="bend", tests="def main():\n  return f(1)\n", expected_result=" "), "expected result is empty"),
    (_task(language="bend", tests='def main():\n  return f("a")\n', expected_result="1"), "holds '\"'"),
    (_task(language="bend", tests="def main():\n  return f(1) #}\n", expected_result="1"), "holds '#}'"),
])
def test_tasks_that_check_nothing_are_refused(task, message):
    with pytest.raises(rewards.NothingToCheck, match=message) as e:
        rewards.rl_job(task, "    return x + 1\n")
    assert "task 't/1' is refused for RL" in str(e.value)


@pytest.mark.parametrize("job, message", [
    ({"program": "print(1)"}, "no tests and no expected output: any program that exits 0 would pass"),
    ({"program": "print(1)", "expected_stdout": "\n"}, "expected output is empty"),
    ({"program": "x", "tests": ["assert f(1) == 2", "  "]}, "its test 1: empty"),
    ({"language": "bend", "program": "def main():\n  return 1\n"}, "no expected result and no expected output"),
])
def test_jobs_that_check_nothing_are_refused(job, message):
    with pytest.raises(rewards.NothingToCheck, match=message):
        rewards.require_checks({"id": "job/7", **job})
    rewards.require_checks({"program": "print(1)", "expected_stdout": "1"})  # output is something to check
    rewards.require_checks({"language": "bend", "program": "x", "expected_stdout": "hi"})


def test_refusal_comes_before_anything_is_queued(pool):
    with pytest.raises(rewards.NothingToCheck, match="task 't/1'"):
        rewards.submit(pool, [TASKS[0], _task(tests="")], [TASKS[0].reference, "    return 2\n"])


PASS_PY = {"status": "passed", "stats": {"cpu_ms": 100.0, "tests_passed": 3, "tests_total": 3}}
FAIL_PARTIAL = {"status": "failed", "stats": {"cpu_ms": 5.0, "tests_passed": 1, "tests_total": 4}}
PASS_BEND = {"status": "passed", "stats": {"itrs": 3_000_000, "cpu_ms": 9.0}}
TIMEOUT = {"status": "timeout", "stats": {}}


def test_components_by_hand_and_as_jaxdiff_verify_reward():
    results = [PASS_PY, FAIL_PARTIAL, PASS_BEND, TIMEOUT]
    steps = [16, 1, 32, 64]
    for cfg in (RewardConfig(), RewardConfig(correctness=2.0, speed=0.1, efficiency=1.0, partial_credit=False)):
        b = rewards.score(results, steps, 64, cfg)
        np.testing.assert_allclose(b.total, plain_rewards(results, steps, 64, cfg), rtol=1e-6)
    b = rewards.score(results, steps, 64)
    np.testing.assert_allclose(b.correctness, [1, 0.25, 1, 0])
    np.testing.assert_allclose(b.speed, [0.75, 0, 0.5, 0])          # 1 - 16/64; failing: 0 whatever the steps
    np.testing.assert_allclose(b.efficiency, [0.5, 0, 0.25, 0])     # 100/(100+100); 1e6/(1e6+3e6) (itrs)
    np.testing.assert_allclose(b.total, [1 + 0.375 + 0.1, 0.25, 1 + 0.25 + 0.05, 0], rtol=1e-6)
    assert b.passed.tolist() == [True, False, True, False] and b.status == ("passed", "failed", "passed", "timeout")
    assert b.tests_passed.tolist() == [3, 1, 0, 0] and b.tests_total.tolist() == [3, 4, 0, 0]
    m = b.metrics()
    assert m["reward/correctness"] == pytest.approx(0.5625) and m["pass_rate"] == 0.5
    assert m["steps_passed"] == 24 and m["status/passed"] == 2 and m["status/memory"] == 0
    assert b.records()[1] == {"reward": 0.25, "correctness": 0.25, "speed": 0.0, "efficiency": 0.0,
                              "passed": False, "status": "failed", "steps": 1.0, "tests_passed": 1, "tests_total": 4}
    with pytest.raises(ValueError, match="steps has shape"):
        rewards.score(results, [1, 2], 64)


def _hidden_passed(task, completion):
    """How many hidden asserts the program passes, run here (trusted, generated code)."""
    ns: dict = {}
    exec(task.program(completion), ns)
    passed = 0
    for a in task.meta["asserts"]:
        try:
            exec(a, {"candidate": ns[task.entry_point]})
            passed += 1
        except Exception:
            pass
    return passed


def _shown_only(task):
    """A body that answers the prompt's examples from a table and nothing else."""
    table = {}
    for call, value in task.visible_examples:
        args = ast.literal_eval("(" + call.split("(", 1)[1].rsplit(")", 1)[0] + ",)")
        table[repr(args)] = ast.literal_eval(value)
    return f"    return {table!r}.get(repr(tuple(locals().values())))\n"


def test_partial_credit_counts_hidden_asserts_only(pool):
    tasks, completions, want = [], [], []
    for t in TASKS:
        for m in t.mutants:
            tasks.append(t)
            completions.append(m.completion)
            want.append(_hidden_passed(t, m.completion) / t.meta["hidden_inputs"])
        tasks.append(t)
        completions.append(_shown_only(t))
        want.append(0.0)
        assert _hidden_passed(t, completions[-1]) == 0
    b = rewards.compute(pool, tasks, completions, np.full(len(tasks), 4), 16)
    assert not b.passed.any() and set(b.status) == {"failed"}, b.status
    np.testing.assert_allclose(b.correctness, want, rtol=1e-6)
    assert 0 < float(np.mean(want)) < 1                          # partial credit does occur
    np.testing.assert_array_equal(b.total, b.correctness)       # failing: no speed, no efficiency
    # and what the prompt shows really is answered by the table: the examples are all it gets right
    for t in TASKS:
        ns: dict = {}
        exec(t.program(_shown_only(t)), ns)
        assert all(repr(eval(call, ns)) == value for call, value in t.visible_examples)


def test_references_pass_with_speed_and_efficiency(pool):
    steps = np.arange(len(TASKS)) % 16
    b = rewards.compute(pool, TASKS, [t.reference for t in TASKS], steps, 16)
    assert b.passed.all() and (b.correctness == 1).all() and (b.tests_passed == b.tests_total).all()
    np.testing.assert_allclose(b.speed, 1 - steps / 16, rtol=1e-6)
    assert ((b.efficiency > 0) & (b.efficiency <= 1)).all()      # from the program's CPU time
    np.testing.assert_allclose(b.total, 1 + 0.5 * b.speed + 0.2 * b.efficiency, rtol=1e-6)


@needs_bend
def test_bend_rewards_through_the_real_pool(pool):
    tasks = synthetic.synthetic("heldout_constants", language="bend")[:3] + load_suite("bend-humaneval")[:1]
    completions = [t.reference for t in tasks] + [t.mutants[0].completion for t in tasks[:3]]
    b = rewards.compute(pool, tasks + tasks[:3], completions, [2] * 7, 8)
    assert b.passed.tolist() == [True] * 4 + [False] * 3, b.status
    assert (b.correctness[:4] == 1).all() and (b.total[4:] == 0).all()   # Bend: all or nothing
    # efficiency from HVM interactions: 1e6 / (1e6 + itrs), close to 1 for programs this small
    assert ((b.efficiency[:4] > 0.99) & (b.efficiency[:4] < 1)).all()
    np.testing.assert_allclose(b.total[:4], 1 + 0.5 * 0.75 + 0.2 * b.efficiency[:4], rtol=1e-6)


def test_bend_tasks_need_bend_on_the_pool():
    with verdicts.make_pool(workers=1, bend=None, hvm=None) as p:
        bend = synthetic.synthetic("heldout_constants", language="bend")[0]
        with pytest.raises(RuntimeError, match="bend is not on the pool's PATH"):
            rewards.submit(p, [bend], [bend.reference])
