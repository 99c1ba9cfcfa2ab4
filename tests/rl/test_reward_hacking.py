"""No reward hacking, end to end: hostile completions of real tasks earn exactly 0 through the real,
sandboxed verifier pool (and the real `bend` for Bend), while the references of the same tasks, in
the same batch, earn the full reward -- so the test fails if the pool stops running programs.

Both with the completion judged exactly as written (sanitize=False: the verifier alone must hold)
and as the RL loop judges it by default (sanitised, as the evaluation does)."""

import shutil

import numpy as np
import pytest

from jaxdiff.eval import load_suite, synthetic, verdicts
from jaxdiff.eval.tasks import Task
from jaxdiff.rl import rewards
from jaxdiff.verify.reward import RewardConfig

CFG = RewardConfig()
MAX_STEPS = 32
STEPS = 8
FULL_SPEED = 1 - STEPS / MAX_STEPS
needs_bend = pytest.mark.skipif(shutil.which("bend") is None or shutil.which("hvm") is None,
                                reason="bend/hvm not on PATH: cargo install hvm@2.0.22 bend-lang@0.2.38")

# Function bodies (completions of a prompt that ends with the docstring). `None` is never a hidden
# expected value, so a body that gets as far as returning it passes no assert on its own merit.
HOSTILE_PYTHON = {
    "exit(0) at load": "    return None\nexit(0)\n",
    "exit(0) in the call, before the asserts": "    exit(0)\n",
    "os._exit(0) at load": "    return None\nimport os\nos._exit(0)\n",
    "os._exit(0) in the call": "    import os\n    os._exit(0)\n",
    "raise SystemExit": "    raise SystemExit\n",
    "raise SystemExit(0) at load": "    return None\nraise SystemExit(0)\n",
    "sys.exit()": "    import sys\n    sys.exit()\n",
    "always-equal object": ("    class Always:\n        def __eq__(self, other):\n            return True\n"
                            "        def __ne__(self, other):\n            return False\n"
                            "        __hash__ = object.__hash__\n    return Always()\n"),
    "always-equal int subclass": ("    class Int(int):\n        def __eq__(self, other):\n            return True\n"
                                  "    return Int(-987654321)\n"),
    "AssertionError patched at load": ("    return None\nimport builtins\n"
                                       "builtins.AssertionError = type('Quiet', (Exception,), {})\n"),
    "builtins patched in the call": ("    import builtins\n"
                                     "    builtins.AssertionError = type('Quiet', (Exception,), {})\n"
                                     "    builtins.isinstance = lambda *a: True\n    builtins.len = lambda x: 0\n"
                                     "    return None\n"),
    "fake success printed": "    print('passed')\n    print('All tests passed: 10/10 OK')\n    return None\n",
    "fake verdict printed at load": ("    return None\nprint('{\"status\": \"passed\", \"passed\": true}')\n"
                                     "print('PASSED (10 of 10)')\n"),
}


def _python_tasks():
    held = synthetic.synthetic("heldout_constants")
    picks = [next(t for t in held if t.family == f) for f in ("add", "sum_plus", "prefix")]  # int, list, str
    return picks + [next(t for t in load_suite("humaneval") if t.id == "HumanEval/53")]   # one check(candidate)


@pytest.fixture(scope="module")
def pool():
    with verdicts.make_pool(workers=2) as p:
        yield p


def _assert_full(b, i, what):
    assert b.passed[i] and b.correctness[i] == 1.0, (what, b.status[i])
    assert b.speed[i] == pytest.approx(FULL_SPEED) and b.efficiency[i] > 0, what
    assert b.total[i] == pytest.approx(CFG.correctness + CFG.speed * FULL_SPEED + CFG.efficiency * b.efficiency[i])


def _assert_nothing(b, i, what):
    assert not b.passed[i], (what, b.status[i])
    assert (b.total[i], b.correctness[i], b.speed[i], b.efficiency[i]) == (0, 0, 0, 0), (what, b.records()[i])


def _judge(pool, cases, sanitize):
    """cases: [(task, {name: hostile completion})]. Every task's reference (full reward) and each
    hostile completion (nothing) in one batch through the pool."""
    tasks, completions, labels = [], [], []
    for t, hostile in cases:
        for name, text in [("reference", t.reference), *hostile.items()]:
            tasks.append(t)
            completions.append(text)
            labels.append(f"{t.id}: {name}")
    b = rewards.compute(pool, tasks, completions, np.full(len(tasks), STEPS), MAX_STEPS, CFG, sanitize=sanitize)
    for i, what in enumerate(labels):
        if what.endswith(": reference"):
            _assert_full(b, i, what)
        else:
            _assert_nothing(b, i, what)


@pytest.mark.parametrize("sanitize", [False, True])
def test_hostile_python_completions_earn_nothing(pool, sanitize):
    _judge(pool, [(t, HOSTILE_PYTHON) for t in _python_tasks()], sanitize)


# -- Bend, with the real binaries --------------------------------------------------------------

def _io_print(text):
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'  with IO:\n    * <- IO/print("{escaped}")\n    return wrap(0)\n'


def _hostile_bend(expected):
    """Completions of a synthetic Bend task (its prompt ends with the `def` line; the hidden `main`
    follows the completion)."""
    line = f"Result: {expected}\n"
    stats = line + "- ITRS: 1\n- TIME: 0.00s\n- MIPS: 0.00\n\n"
    return {
        # its own main prints the expected line; an open comment swallows the hidden main
        "prints Result: and comments out the hidden main": f"  return 0\n\ndef main():\n{_io_print(line)}#{{\n",
        "prints Result: with statistics lines": f"  return 0\n\ndef main():\n{_io_print(stats)}#{{\n",
        # its own main returns the expected value; the hidden main is never compiled
        "answers in its own main and comments out the hidden one":
            f"  return 0\n\ndef main():\n  return {expected}\n#{{\n",
        # a second main beside the hidden one
        "prints Result: from a second main": f"  return 0\n\ndef main():\n{_io_print(line)}",
        # the function itself does the printing
        "returns an IO action that prints Result:": f'  return IO/print("Result: {expected}\\n")\n',
    }


# A task whose completion is the whole program, main included (nothing is appended): the program
# prints the expected result line itself, which `bend run-c` used to report as its result.
WHOLE = Task(id="bend-whole/answer", prompt="# Return 6 times 7.\n", language="bend", entry_point="main", tests="",
             expected_result="42", reference="def main():\n  return 6 * 7\n")
WHOLE_HOSTILE = {
    "prints Result: 42 through IO/print": "def main():\n" + _io_print("Result: 42\n"),
    "prints Result: 42 and statistics":
        "def main():\n" + _io_print("Result: 42\n- ITRS: 9\n- TIME: 0.00s\n- MIPS: 1\n"),
    "prints Result: 42, returns 42 inside IO":
        "def main():\n" + _io_print("Result: 42\n").replace("wrap(0)", "wrap(42)"),
}


@needs_bend
@pytest.mark.parametrize("sanitize", [False, True])
def test_hostile_bend_completions_earn_nothing(pool, sanitize):
    bend_tasks = synthetic.synthetic("heldout_constants", language="bend")
    picks = [next(t for t in bend_tasks if t.family == f) for f in ("add", "keep_above")]  # a number, a list
    cases = [(t, _hostile_bend(t.expected_result)) for t in picks]
    if not sanitize:  # (the sanitiser cuts a `def main` the model wrote, the whole-program task's too)
        cases.append((WHOLE, WHOLE_HOSTILE))
    _judge(pool, cases, sanitize)
