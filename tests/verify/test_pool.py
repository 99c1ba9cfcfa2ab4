"""The pool's contract: ordering, sync and async use, a bounded queue, one result per job, survival."""

import os
import signal
import threading
import time

import pytest

from jaxdiff.verify import VerifierPool

OK = {"program": "def f(x): return x + 1", "tests": "assert f(1) == 2"}
SLOW = {"program": "import time\ntime.sleep(0.4)\ndef f(x): return x", "tests": "assert f(1) == 1"}


def test_results_come_back_in_submission_order(pool):
    jobs = [{"id": i, "program": f"import time\ntime.sleep({0.05 * (i % 3)})\ndef f(): return {i}",
             "tests": f"assert f() == {i}"} for i in range(12)]
    res = pool.run(jobs)
    assert [r["id"] for r in res] == list(range(12))
    assert all(r["status"] == "passed" for r in res)


def test_submit_returns_at_once_and_collect_waits(pool):
    t = time.perf_counter()
    ticket = pool.submit([dict(SLOW, id=i) for i in range(4)])
    assert time.perf_counter() - t < 0.2
    other = pool.submit([dict(OK, id="x")])
    res = pool.collect(ticket)
    assert [r["id"] for r in res] == [0, 1, 2, 3] and all(r["passed"] for r in res)
    assert pool.collect(other)[0]["passed"]


def test_collect_timeout(pool):
    ticket = pool.submit([dict(SLOW, id=0)])
    with pytest.raises(TimeoutError):
        pool.collect(ticket, timeout=0.05)
    assert pool.collect(ticket)[0]["passed"]


def test_imap_streams_in_order(pool):
    got = [r["id"] for r in pool.imap((dict(OK, id=i) for i in range(40)), window=5)]
    assert got == list(range(40))


def test_bad_jobs_are_rejected_in_place(pool):
    res = pool.run([dict(OK, id=0), {"id": 1}, "nope", dict(OK, id=3), {"id": 4, "program": "", "x": 1}])
    assert [r["status"] for r in res] == ["passed", "rejected", "rejected", "passed", "rejected"]
    assert [r["id"] for r in res] == [0, 1, None, 3, 4]
    assert "missing field 'program'" in res[1]["detail"]


def test_bounded_queue_applies_back_pressure():
    with VerifierPool(workers=1, timeout_s=2, queue_size=1) as p:
        done = threading.Event()

        def feed():
            p.submit([dict(SLOW, id=i) for i in range(4)])
            done.set()

        t = threading.Thread(target=feed)
        t.start()
        assert not done.wait(0.3)  # 1 running + 1 queued: the third submit waits for room
        t.join(5)
        assert done.is_set()


def test_a_dead_worker_is_replaced(pool):
    ticket = pool.submit([{"id": "victim", "program": "import time\ntime.sleep(1.5)", "tests": "pass"}])
    time.sleep(0.3)
    for pid in pool.worker_pids:  # kill the sandboxes from outside, as a crash would
        os.kill(pid, signal.SIGKILL)
    r = pool.collect(ticket)[0]
    assert r["status"] == "error" and "worker" in r["detail"]
    res = pool.run([dict(OK, id=i) for i in range(6)])  # the idle one died too: resent, not lost
    assert all(x["passed"] for x in res), res


def test_python_modes(pool):
    res = pool.run([
        {"id": "stdout", "program": "print(sum(map(int, input().split())))", "stdin": "2 3\n", "expected_stdout": "5"},
        {"id": "stdout-wrong", "program": "print(6)", "expected_stdout": "5"},
        {"id": "stdout-exit0", "program": "print(5)\nraise SystemExit(0)", "expected_stdout": "5\n"},
        {"id": "stdout-exit1", "program": "print(5)\nimport sys; sys.exit(1)", "expected_stdout": "5"},
        {"id": "program", "program": "x = 1"},
        {"id": "program-crash", "program": "1/0"},
        {"id": "syntax", "program": "def f(:", "tests": "pass"},
        {"id": "main-guard", "program": "def f(): return 1\nif __name__ == '__main__':\n    raise SystemExit(3)",
         "tests": "assert f() == 1"},
    ])
    assert [r["status"] for r in res] == ["passed", "failed", "passed", "failed", "passed", "error", "error", "passed"]
    assert "ZeroDivisionError" in res[5]["detail"] and "SyntaxError" in res[6]["detail"]


def test_tests_semantics(pool):
    prog = """
import numpy as np
class Stack:
    def __init__(self): self.items = []
    def push(self, x): self.items.append(x)
    def pop(self): return self.items.pop()
    def __len__(self): return len(self.items)
def gen(n): return (i * i for i in range(n))
def checked(x):
    if x < 0: raise ValueError("negative")
    return np.int64(x) * 2
def helper(s): return s[::-1]
def rev(s): return helper(s)
TABLE = {"a": (1, 2.5, None)}
"""
    tests = [
        "s = Stack(); s.push(1); s.push(2); assert len(s) == 2 and s.pop() == 2",
        "assert list(gen(4)) == [0, 1, 4, 9]",
        "assert checked(3) == 6 and type(checked(3)) is int",
        "try:\n    checked(-1)\nexcept ValueError as e:\n    assert 'negative' in str(e)\nelse:\n    assert False",
        "assert rev(helper('abc')) == 'abc' and TABLE['a'][1] == 2.5",
        "assert checked(1) == 3",
        "assert 10 ** 5000 == (lambda: 10 ** 5000)()",
    ]
    r = pool.run([{"id": 0, "program": prog, "tests": tests}])[0]
    assert r["status"] == "failed" and r["stats"]["tests_passed"] == 6 and r["stats"]["tests_total"] == 7
    assert "tests[5]" in r["detail"]


def test_humaneval_layout_needs_the_entry_point(pool):
    r = pool.run([{"id": 0, "program": "def g(): pass", "tests": "def check(c): c()", "entry_point": "f"}])[0]
    assert r["status"] == "failed" and "does not define 'f'" in r["detail"]


def test_stats(pool):
    r = pool.run([{"id": 0, "program": "x = b'x' * (50 << 20)\nprint('hi')", "tests": "pass"}])[0]
    assert r["passed"] and r["stats"]["cpu_ms"] > 0 and r["stats"]["peak_memory_mb"] >= 49
    assert r["stats"]["output_bytes"] == 3 and r["wall_ms"] > 0
