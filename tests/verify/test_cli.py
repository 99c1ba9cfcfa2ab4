"""python -m jaxdiff.verify: streaming JSONL in, JSONL out, bad lines rejected by line number."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _cli(*args):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "jaxdiff.verify", *args], capture_output=True, text=True,
                          env=env, timeout=120)


def test_cli_end_to_end(tmp_path):
    jobs = tmp_path / "jobs.jsonl"
    out = tmp_path / "results.jsonl"
    lines = [
        json.dumps({"id": "ok", "program": "def f(x): return x + 1", "tests": "assert f(1) == 2"}),
        "{not json",
        "",
        json.dumps({"id": "wrong", "program": "def f(x): return x", "tests": "assert f(1) == 2"}),
        json.dumps({"id": "nofield"}),
        json.dumps({"id": "loop", "program": "while True: pass", "tests": "pass"}),
        json.dumps([1, 2]),
        json.dumps({"id": "io", "program": "print(input()[::-1])", "stdin": "abc", "expected_stdout": "cba"}),
    ]
    jobs.write_text("\n".join(lines) + "\n")
    r = _cli("--input", str(jobs), "--output", str(out), "--workers", "2", "--timeout", "1")
    assert r.returncode == 0, r.stderr
    res = [json.loads(line) for line in out.read_text().splitlines()]
    assert [x["status"] for x in res] == ["passed", "rejected", "failed", "rejected", "timeout", "rejected", "passed"]
    assert [x["id"] for x in res] == ["ok", None, "wrong", "nofield", "loop", None, "io"]
    assert res[1]["detail"].startswith("line 2: invalid JSON")
    assert res[3]["detail"].startswith("line 5: missing field 'program'")
    assert res[5]["detail"].startswith("line 7: a job must be a JSON object")
    assert f"{jobs}:2: rejected: invalid JSON" in r.stderr and f"{jobs}:5: rejected" in r.stderr
    assert "7 jobs in" in r.stdout and "jobs/s" in r.stdout
    assert "passed 2, failed 1, timeout 1, rejected 3" in r.stdout


def test_cli_refuses_without_sandbox_primitive(tmp_path):
    # bubblewrap hidden from PATH: the CLI says which primitive is missing and runs nothing
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"id": 1, "program": "x = 1"}) + "\n")
    env = dict(os.environ, PATH="/nonexistent", PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable, "-m", "jaxdiff.verify", "--input", str(jobs), "--output",
                        str(tmp_path / "out.jsonl")], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 2 and "bwrap" in r.stderr and "MISSING" in r.stderr
    assert not (tmp_path / "out.jsonl").exists()


def test_cli_reduced_isolation_is_opt_in(tmp_path):
    jobs = tmp_path / "jobs.jsonl"
    out = tmp_path / "out.jsonl"
    jobs.write_text(json.dumps({"id": 1, "program": "def f(): return 1", "tests": "assert f() == 1"}) + "\n")
    nowhere = tmp_path / "no-cgroup"  # no group can be made there
    nowhere.mkdir()
    r = _cli("--input", str(jobs), "--output", str(out), "--workers", "1", "--cgroup-root", str(nowhere))
    assert r.returncode == 2 and "--allow-reduced-isolation" in r.stderr and not out.exists()
    r = _cli("--input", str(jobs), "--output", str(out), "--workers", "1", "--cgroup-root", str(nowhere),
             "--allow-reduced-isolation", "--no-progress")
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    assert res["status"] == "passed" and res["stats"]["isolation"] == "reduced"


def test_no_jax_anywhere_in_verify():
    code = ("import sys, jaxdiff.verify, jaxdiff.verify.reward, jaxdiff.verify.worker, jaxdiff.verify.__main__\n"
            "assert not [m for m in sys.modules if m == 'jax' or m.startswith('jax.')], 'jax imported'")
    env = dict(os.environ, PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
