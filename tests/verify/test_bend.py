"""Bend backend: the parser on bend 0.2.38 / hvm 2.0.22's recorded output, the verdict rules, and
whole jobs through the sandboxed pool (with the recorded-behaviour stand-in, and with the real
binaries when they are installed)."""

import os
import shutil
import time

import pytest

from jaxdiff.verify import VerifierPool, bend
from recorded_bend import recorded as R

from conftest import settle, warm_processes

E = "\x1b[1m\x1b[31mErrors:\x1b[0m\n"


# -- parser, on recorded strings --------------------------------------------------------------

@pytest.mark.parametrize("stdout, value", [
    ("Result: 42\n", "42"),
    ("Result: 16744448\n", "16744448"),
    ('Result: "hello"\n', '"hello"'),
    ("Result: [1, 2, 3]\n", "[1, 2, 3]"),
    ("Result: 3.000\n", "3.000"),
    ('Result: (1, (-3, (1.500, ("hello", ([1, 2, 3], (λi (i Maybe/Some/tag 7), λj j))))))\n',
     '(1, (-3, (1.500, ("hello", ([1, 2, 3], (λi (i Maybe/Some/tag 7), λj j))))))'),
])
def test_result_values(stdout, value):
    run = bend.parse_output(stdout, "", 0)
    assert run.result == value and run.printed == "" and run.stats == {}
    assert bend.verdict(run, value, None) == ("passed", "")


def test_statistics_of_run_c_and_run_rs():
    run = bend.parse_output("Result: 523776\n- ITRS: 79828\n- TIME: 0.01s\n- MIPS: 13.55\n\n", "", 0)
    assert run.result == "523776"
    assert run.stats == {"itrs": 79828, "time_s": 0.01, "mips": 13.55}


def test_hvm_prints_statistics_without_a_trailing_blank_line():
    run = bend.parse_output("Result: ((@Foo a) a)\n- ITRS: 2\n- TIME: 0.00s\n- MIPS: 0.00", "", 0)
    assert run.result == "((@Foo a) a)" and run.stats == {"itrs": 2, "time_s": 0.0, "mips": 0.0}


def test_io_output_comes_before_the_result():
    run = bend.parse_output("hello\nResult: λa (a IO/Done/tag IO/MAGIC 7)\n", "", 0)
    assert run.printed == "hello" and run.result == "λa (a IO/Done/tag IO/MAGIC 7)"
    assert bend.verdict(run, None, "hello\n")[0] == "passed"
    assert bend.verdict(run, None, "bye")[0] == "failed"


def test_dash_p_puts_the_term_on_the_next_line():
    run = bend.parse_output("Result:\n(Foo 1 2)\n- ITRS: 5\n- TIME: 0.00s\n- MIPS: 0.00\n\n", "", 0)
    assert run.result == "(Foo 1 2)" and run.stats["itrs"] == 5


@pytest.mark.parametrize("stderr, code, words", [
    (E + "\x1b[1mIn main.bend :\x1b[0m\n\x1b[31m- expected:\x1b[0m ':'\n\x1b[31m- detected:\x1b[0m\n 1 | def main()\n", 1,
     "- expected: ':'"),
    (E + "\x1b[1mIn definition '\x1b[0mmain\x1b[1m':\x1b[0m\n  Unbound variable 'x'.\n", 1, "Unbound variable 'x'"),
    (E + "File has no 'main' definition.\n", 1, "no 'main' definition"),
    (E + "The file 'x.bend' was not found.\n", 1, "was not found"),
    (E + "HVM output had no result (An error likely occurred)\n", 1, "had no result"),
    ("thread 'main' panicked at src/run.rs:10:5:\nattempt to divide by zero\n" + E
     + "HVM output had no result (An error likely occurred)\n", 1, "attempt to divide by zero"),
    ("error: unexpected argument '-x' found\n\nUsage: bend run-c [OPTIONS] <PATH>\n", 2, "unexpected argument"),
    ("thread 'main' panicked at src/ast.rs:12:3:\nPARSE_ERROR\n", 101, "PARSE_ERROR"),
])
def test_failures_are_errors_with_clean_diagnostics(stderr, code, words):
    run = bend.parse_output("", stderr, code)
    status, detail = bend.verdict(run, None, None)
    assert status == "error" and words in detail and "\x1b" not in detail


def test_exit_code_is_never_trusted_alone():
    # run-cu, out of GPU memory: exit 0 and a Result line, but not a result
    assert bend.verdict(bend.parse_output("Result: <Invalid>\n", "", 0), None, None)[0] == "error"
    # a Result line next to diagnostics on stderr (bend ignores hvm's exit status)
    run = bend.parse_output("Result: 1\n", E + "HVM output had no result (An error likely occurred)\n", 0)
    assert bend.verdict(run, "1", None)[0] == "error"
    # exit 0 with no Result line at all
    assert bend.verdict(bend.parse_output("", "", 0), None, None)[0] == "error"
    # a Result line with a failing exit code
    assert bend.verdict(bend.parse_output("Result: 1\n", "", 1), "1", None)[0] == "error"


def test_wrong_result_fails():
    run = bend.parse_output("Result: 41\n", "", 0)
    assert bend.verdict(run, "42", None) == ("failed", "wrong result: expected '42', got '41'")


def test_ansi_stripping():
    assert bend.strip_ansi("\x1b[1m\x1b[31mErrors:\x1b[0m x\x1b[2K") == "Errors: x"


def test_commands():
    assert bend.command("run-c", "/b/bend", None) == ["/b/bend", "run-c", "-s", "main.bend"]
    gen = bend.command("hvm-run-c", "/b/bend", "/b/hvm")
    assert gen == ["gen-hvm", ["/b/bend", "gen-hvm", "main.bend"], "/b/hvm", "run-c", "main.hvm"]
    with pytest.raises(FileNotFoundError, match="cargo install hvm@2.0.22 bend-lang@0.2.38"):
        bend.command("run-c", None, None)
    with pytest.raises(ValueError):
        bend.command("run-js", "/b/bend", None)


# -- whole jobs through the sandbox, bend/hvm replaced by the recorded-behaviour stand-in -----

def _job(i, program, **kw):
    return {"id": i, "language": "bend", "program": program, **kw}


def test_recorded_runs_through_the_pool(bend_pool):
    res = bend_pool.run([
        _job(0, R.SUM, expected_result="523776"),
        _job(1, R.ANSWER, expected_result="41"),
        _job(2, R.SYNTAX),
        _job(3, R.ANSWER, runtime="run-cu"),
        _job(4, R.STRING, expected_result='"hello"', runtime="hvm-run-c"),
        _job(5, R.DIV_ZERO),
    ])
    assert [r["status"] for r in res] == ["passed", "failed", "error", "error", "passed", "error"]
    assert res[0]["stats"]["itrs"] == 79828 and res[0]["stats"]["mips"] == 13.55
    assert "expected: ':'" in res[2]["detail"] and "\x1b" not in res[2]["detail"]
    assert "<Invalid>" in res[3]["detail"]
    assert res[4]["stats"]["itrs"] == 2


def test_each_job_gets_its_own_directory(bend_pool):
    # the stand-in, like bend, fails if .out.hvm of another run is in its directory
    res = bend_pool.run([_job(i, R.ANSWER, expected_result="42") for i in range(20)])
    assert all(r["status"] == "passed" for r in res), res


def test_a_runaway_hvm_child_is_killed(bend_pool):
    before = warm_processes([bend_pool])
    t = time.perf_counter()
    r = bend_pool.run([_job(0, R.LOOP)])[0]
    assert r["status"] == "timeout" and time.perf_counter() - t < 2.0 + 3
    assert bend_pool.run([_job(1, R.ANSWER, expected_result="42")])[0]["status"] == "passed"
    assert settle([bend_pool], before) == (before, [])


def test_bend_jobs_are_rejected_without_bend():
    with VerifierPool(workers=1, bend=None, hvm=None) as p:
        r = p.run([_job(0, R.ANSWER)])[0]
    assert r["status"] == "rejected" and "cargo install hvm@2.0.22 bend-lang@0.2.38" in r["detail"]


# -- the real binaries ------------------------------------------------------------------------

REAL = shutil.which("bend")
needs_bend = pytest.mark.skipif(REAL is None, reason="bend not on PATH: cargo install hvm@2.0.22 bend-lang@0.2.38")


@pytest.fixture(scope="module")
def real_pool():
    with VerifierPool(workers=2, timeout_s=5.0, memory_mb=1024) as p:
        yield p


@needs_bend
@pytest.mark.parametrize("runtime", ["run-rs", "run-c"])
def test_real_bend(real_pool, runtime):
    res = real_pool.run([
        _job(0, R.ANSWER, expected_result="42", runtime=runtime),
        _job(1, R.WRAP, expected_result="16744448", runtime=runtime),
        _job(2, R.STRING, expected_result='"hello"', runtime=runtime),
        _job(3, R.SYNTAX, runtime=runtime),
        _job(4, R.UNBOUND, runtime=runtime),
        _job(5, R.NO_MAIN, runtime=runtime),
        _job(6, R.ANSWER, expected_result="41", runtime=runtime),
    ])
    assert [r["status"] for r in res] == ["passed", "passed", "passed", "error", "error", "error", "failed"], res
    assert res[0]["stats"]["itrs"] > 0 and "mips" in res[0]["stats"]
    assert "Unbound variable 'x'" in res[4]["detail"]


@needs_bend
def test_real_bend_runaway_is_contained(real_pool):
    before = warm_processes([real_pool])
    assert real_pool.run([_job(0, R.LOOP)])[0]["status"] in ("timeout", "memory")
    assert settle([real_pool], before) == (before, [])


@needs_bend
@pytest.mark.skipif(shutil.which("hvm") is None, reason="hvm not on PATH: cargo install hvm@2.0.22 bend-lang@0.2.38")
def test_real_hvm_on_generated_net(real_pool):
    r = real_pool.run([_job(0, R.SUM, runtime="hvm-run-c")])[0]
    assert r["status"] == "passed" and r["stats"]["itrs"] > 0, r
