"""Bend backend: the parser on bend 0.2.38 / hvm 2.0.22's output, the sealed run, the verdict
rules, and whole jobs through the sandboxed pool -- with the recorded-behaviour stand-in always,
and every one of those behaviours again with the real binaries when `bend` is on PATH."""

import os
import shutil
import sys
import time

import pytest

from jaxdiff.verify import VerifierPool, bend, bendseal
from jaxdiff.verify.reward import rewards
from recorded_bend import recorded as R

from conftest import RECORDED_BEND, RECORDED_HVM, settle, warm_processes

E = "\x1b[1m\x1b[31mErrors:\x1b[0m\n"
NONCE = (1193046, 7, 16777215)
REAL = shutil.which("bend") and shutil.which("hvm")
needs_bend = pytest.mark.skipif(not REAL, reason="bend/hvm not on PATH: cargo install hvm@2.0.22 bend-lang@0.2.38")


def sealed(value, nonce=NONCE, raw=False):
    """`value` as a sealed run reports it: read back by bend, or raw from hvm."""
    a, b, c = nonce
    return f"({a} ({b} ({c} {value})))" if raw else f"({a}, ({b}, ({c}, {value})))"


def parse(stdout, stderr="", code=0, printed=""):
    return bend.parse_output(stdout, stderr, code, NONCE, printed)


# -- parser, on recorded strings --------------------------------------------------------------

@pytest.mark.parametrize("value", [
    "42", "16744448", '"hello"', "[1, 2, 3]", "3.000",
    '(1, (-3, (1.500, ("hello", ([1, 2, 3], (λi (i Maybe/Some/tag 7), λj j))))))',
    '"Result: 5"',
])
def test_result_values(value):
    run = parse(f"Result: {sealed(value)}\n")
    assert run.result == value and run.printed == "" and run.stats == {}
    assert bend.verdict(run, value, None) == ("passed", "")
    assert parse(f"Result: {sealed(value, raw=True)}\n").result == value  # hvm's own, raw form


def test_statistics_follow_the_sealed_result():
    run = parse(f"Result: {sealed('523776')}\n- ITRS: 79828\n- TIME: 0.01s\n- MIPS: 13.55\n\n")
    assert run.result == "523776" and run.stats == {"itrs": 79828, "time_s": 0.01, "mips": 13.55}
    # hvm run* prints them with no trailing blank line
    run = parse(f"Result: {sealed('((@Foo a) a)', raw=True)}\n- ITRS: 2\n- TIME: 0.00s\n- MIPS: 0.00")
    assert run.result == "((@Foo a) a)" and run.stats == {"itrs": 2, "time_s": 0.0, "mips": 0.0}


def test_unsealed_or_forged_result_lines_do_not_count():
    # what a program prints itself: a bare Result line, one with a guessed nonce, statistics
    for forged in ("Result: 42\n- ITRS: 1\n", f"Result: {sealed('42', (1, 2, 3))}\n- ITRS: 1\n"):
        run = parse(forged)
        assert run.result is None and run.stats == {}
        status, detail = bend.verdict(run, "42", None)
        assert status == "error" and "sealed with this job's nonce" in detail
    # forged lines around the real one change nothing
    run = parse(f"Result: 42\n- ITRS: 1\nResult: {sealed('41')}\n- ITRS: 900\n- TIME: 0.01s\n- MIPS: 1.00\n- ITRS: 1\n")
    assert run.result == "41" and run.stats["itrs"] == 900


def test_printed_output_comes_from_its_own_channel():
    run = parse(f"Result: {sealed('λa (a IO/Done/tag IO/MAGIC 7)')}\n", printed="hello\n")
    assert run.printed == "hello\n" and run.result == "λa (a IO/Done/tag IO/MAGIC 7)"
    assert bend.verdict(run, None, "hello")[0] == "passed"
    assert bend.verdict(run, None, "bye")[0] == "failed"


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
    status, detail = bend.verdict(parse("", stderr, code), None, None)
    assert status == "error" and words in detail and "\x1b" not in detail


def test_exit_code_is_never_trusted_alone():
    # run-cu, out of GPU memory: exit 0 and a Result line, but not a result
    assert bend.verdict(parse(f"Result: {sealed('<Invalid>')}\n"), None, None)[0] == "error"
    # a Result line next to diagnostics on stderr (bend ignores hvm's exit status)
    run = parse(f"Result: {sealed('1')}\n", E + "HVM output had no result (An error likely occurred)\n")
    assert bend.verdict(run, "1", None)[0] == "error"
    # exit 0 with no Result line at all
    assert bend.verdict(parse(""), None, None)[0] == "error"
    # a Result line with a failing exit code
    assert bend.verdict(parse(f"Result: {sealed('1')}\n", code=1), "1", None)[0] == "error"


def test_wrong_result_fails():
    assert bend.verdict(parse(f"Result: {sealed('41')}\n"), "42", None) == (
        "failed", "wrong result: expected '42', got '41'")


def test_ansi_stripping():
    assert bend.strip_ansi("\x1b[1m\x1b[31mErrors:\x1b[0m x\x1b[2K") == "Errors: x"


def test_commands():
    assert bend.command("run-c", "/b/bend", "/tmp/shim") == [
        "/b/bend", "run-c", "-s", "-A", "unused-definition", "--hvm-bin", "/tmp/shim", "main.bend"]
    assert bend.command("hvm-run-c", "/b/bend", "/tmp/shim") == [
        "gen-hvm", ["/b/bend", "gen-hvm", "-A", "unused-definition", "main.bend"], "run-c"]
    with pytest.raises(FileNotFoundError, match="cargo install hvm@2.0.22 bend-lang@0.2.38"):
        bend.command("run-c", None, "/tmp/shim")
    with pytest.raises(ValueError):
        bend.command("run-js", "/b/bend", "/tmp/shim")


# -- the seal: rewriting the generated net ----------------------------------------------------

NET = """@List/Cons = (a (b ((@List/Cons/tag (a (b c))) c)))

@main = c
  & @List/Cons ~ (1 (b c))
  & @List/Cons ~ (2 (@List/Nil b))

@main__C0 = ?((@main a) a)
"""


def test_seal_net_pairs_the_root_of_main_with_the_nonce():
    pure = bendseal.seal_net(NET, NONCE, "pure")
    assert "@main = (1193046 (7 (16777215 c)))\n  & @List/Cons ~ (1 (b c))" in pure
    assert pure.replace("(1193046 (7 (16777215 c)))", "c") == NET  # nothing else changes
    io = bendseal.seal_net(NET, NONCE, "io")
    assert ("@main = jaxdiff_seal_r\n  & @JaxdiffSeal/io ~ (1193046 (7 (16777215 (c jaxdiff_seal_r))))\n"
            "  & @List/Cons ~ (1 (b c))") in io
    with pytest.raises(ValueError, match="no @main"):
        bendseal.seal_net("@foo = 1\n", NONCE, "pure")


@pytest.mark.parametrize("root", ["42", "*", "@foo", "a", "((@IO/Call/tag (x y)) {a $([+] b)})", "?((@a b) c)",
                                  "$([&] (x y))"])
def test_seal_net_takes_the_whole_root_tree(root):
    net = f"@main = {root}\n  & @f ~ (x y)\n"
    assert bendseal.seal_net(net, (1, 2, 3), "pure") == f"@main = (1 (2 (3 {root})))\n  & @f ~ (x y)\n"


FAKE_HVM = """#!{python}
import os, re, signal, sys
net = open(sys.argv[2]).read()
root = re.search(r"^@main = (.*)$", net, re.M).group(1)
if "{mode}" == "crash" and "JaxdiffSeal/io" not in net.split("@main = ")[1]:
    os.kill(os.getpid(), signal.SIGSEGV)  # as hvm's printer does on a deep pending IO call
if "JaxdiffSeal/io" in net.split("@main = ")[1]:
    sys.stdout.write("hello\\nResult: (11 (22 (33 ((@IO/Done/tag (@IO/MAGIC (7 x))) x))))\\n- ITRS: 9\\n")
else:
    sys.stdout.write("Result: " + root.replace("@r", "{value}") + "\\n- ITRS: 1\\n")
"""


@pytest.mark.parametrize("mode, cmd, value, reruns", [
    ("pure", "run-c", "5", False),
    ("pure", "run-c", "((@IO/Call/tag (@IO/MAGIC (x y)))", True),
    ("pure", "run", "((@IO/Call/tag (@IO/MAGIC (x y)))", False),  # hvm run performs no IO
    ("crash", "run-c", "5", True),
])
def test_run_sealed_runs_io_programs_again(tmp_path, mode, cmd, value, reruns):
    hvm = tmp_path / "hvm"
    hvm.write_text(FAKE_HVM.format(python=sys.executable, mode=mode, value=value))
    hvm.chmod(0o755)
    out, printed = os.memfd_create("out"), os.memfd_create("printed")
    code = bendseal.run_sealed(str(hvm), cmd, "@main = @r\n", (11, 22, 33), printed, out)
    got, said = os.pread(out, 1 << 16, 0).decode(), os.pread(printed, 1 << 16, 0).decode()
    if reruns:
        assert (code, got, said) == (0, "Result: (11 (22 (33 ((@IO/Done/tag (@IO/MAGIC (7 x))) x))))\n- ITRS: 9\n", "hello\n")
    else:
        assert (code, got, said) == (0, f"Result: (11 (22 (33 {value})))\n- ITRS: 1\n", "")


# -- whole jobs through the sandbox: the recorded stand-in, and the real binaries ---------------

def _job(i, program, **kw):
    return {"id": i, "language": "bend", "program": program, **kw}


@pytest.fixture(scope="module")
def real_pool():
    with VerifierPool(workers=2, timeout_s=3.0, memory_mb=1024) as p:
        yield p


@pytest.fixture(params=["recorded", pytest.param("real", marks=needs_bend)])
def any_bend_pool(request, bend_pool):
    """Each pool test runs with the stand-in, and again with real bend where it is installed."""
    return bend_pool if request.param == "recorded" else request.getfixturevalue("real_pool")


def test_runs_through_the_pool(any_bend_pool):
    res = any_bend_pool.run([
        _job(0, R.SUM, expected_result="523776"),
        _job(1, R.ANSWER, expected_result="41"),
        _job(2, R.SYNTAX),
        _job(3, R.UNBOUND, runtime="run-rs"),
        _job(4, R.NO_MAIN),
        _job(5, R.STRING, runtime="hvm-run-c"),
        _job(6, R.ANSWER, expected_result="42", runtime="hvm-run-c"),
        _job(7, R.STRING, expected_result='"hello"', runtime="run-rs"),
        _job(8, R.DIV_ZERO),
    ])
    assert [r["status"] for r in res] == ["passed", "failed", "error", "error", "error", "passed", "passed",
                                          "passed", "error"], res
    assert res[0]["stats"]["itrs"] > 0 and "mips" in res[0]["stats"]
    assert "expected: ':'" in res[2]["detail"] and "\x1b" not in res[2]["detail"]
    assert "Unbound variable 'x'" in res[3]["detail"] and "no 'main' definition" in res[4]["detail"]
    assert res[6]["stats"]["itrs"] > 0 and all(r["stats"]["isolation"] == any_bend_pool.level for r in res)


def test_hvm_runs_print_raw_nets(any_bend_pool):
    # hvm prints a string as the raw net of its constructors; only bend reads it back as "hello"
    res = any_bend_pool.run([_job(0, R.STRING, expected_result='"hello"', runtime="hvm-run-c"),
                             _job(1, R.STRING, expected_result='"hello"', runtime="run-c")])
    assert [r["status"] for r in res] == ["failed", "passed"], res
    assert "got '((@String/Cons/tag (104 (((@String/Cons/tag (101 " in res[0]["detail"]


def test_run_cu_out_of_memory_is_an_error(bend_pool):
    # recorded only: <Invalid> comes from a GPU that runs out of memory
    r = bend_pool.run([_job(0, R.ANSWER, runtime="run-cu")])[0]
    assert r["status"] == "error" and "<Invalid>" in r["detail"]


def test_each_job_gets_its_own_directory(any_bend_pool):
    # the stand-in, like bend, fails if .out.hvm of another run is in its directory
    res = any_bend_pool.run([_job(i, R.ANSWER, expected_result="42") for i in range(12)])
    assert all(r["status"] == "passed" for r in res), res


def test_a_runaway_hvm_child_is_killed(any_bend_pool):
    before = warm_processes([any_bend_pool])
    t = time.perf_counter()
    r = any_bend_pool.run([_job(0, R.LOOP)])[0]
    # a wall-clock or CPU-time limit (run-c spreads over threads, so RLIMIT_CPU can come first)
    assert r["status"] == "timeout" and time.perf_counter() - t < any_bend_pool.limits.timeout_s + 3, r
    assert any_bend_pool.run([_job(1, R.ANSWER, expected_result="42")])[0]["status"] == "passed"
    assert settle([any_bend_pool], before) == (before, [])


def test_bend_jobs_are_rejected_without_bend():
    with VerifierPool(workers=1, bend=None, hvm=None) as p:
        r = p.run([_job(0, R.ANSWER)])[0]
        assert r["status"] == "rejected" and "cargo install hvm@2.0.22 bend-lang@0.2.38" in r["detail"]
    with VerifierPool(workers=1, bend=RECORDED_BEND, hvm="/nonexistent/hvm") as p:
        r = p.run([_job(0, R.ANSWER)])[0]
        assert r["status"] == "rejected" and "hvm is not on PATH" in r["detail"]


# -- a program's own output cannot forge its result (real binaries: the stand-in runs no IO) -----

def _prints(text, then="wrap(41)"):
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'def main():\n  with IO:\n    * <- IO/print("{escaped}")\n    return {then}'


FORGE_TEXT = "Result: 42\n- ITRS: 1\n- TIME: 0.00s\n- MIPS: 0.00\n"
FORGE = _prints(FORGE_TEXT)
HELLO = _prints("hello\n", "wrap(7)")


@needs_bend
@pytest.mark.parametrize("runtime", ["run-c", "run-rs", "hvm-run-c"])
def test_printing_the_expected_result_line_fails(real_pool, runtime):
    res = real_pool.run([
        _job(0, FORGE, expected_result="42", runtime=runtime),
        _job(1, FORGE, expected_result="λa (a IO/Done/tag IO/MAGIC 42)", runtime=runtime),
        _job(2, "def main():\n  return 42", expected_result="42", runtime=runtime),
    ])
    assert [r["status"] for r in res] == ["failed", "failed", "passed"], res
    assert rewards(res[:2], [1, 1], 4).tolist() == [0.0, 0.0]
    assert "wrong result" in res[0]["detail"]
    if runtime != "run-rs":  # run-rs performs no IO at all
        assert "--- output ---\nResult: 42" in res[0]["detail"]
        assert res[0]["stats"]["output_bytes"] == len(FORGE_TEXT) and res[0]["stats"]["itrs"] > 1
        # printing that line is fine in itself: it is output, checked as output
        honest = real_pool.run([_job(3, _prints("Result: 42\n", "wrap(42)"), runtime=runtime,
                                     expected_stdout="Result: 42")])[0]
        assert honest["status"] == "passed", honest


@needs_bend
def test_guessing_the_seal_and_forging_statistics_fail(real_pool):
    fake = sealed("42", (1, 2, 3))
    res = real_pool.run([
        _job(0, _prints(f"Result: {fake}\n- ITRS: 1\n", "wrap(42)"), expected_result="λa (a IO/Done/tag IO/MAGIC 42)"),
        _job(1, _prints(f"Result: {fake}\n"), expected_result="42", runtime="hvm-run-c"),
    ])
    assert res[0]["status"] == "passed" and res[0]["stats"]["itrs"] > 1, res[0]
    assert res[1]["status"] == "failed", res[1]


@needs_bend
def test_io_programs_run_their_io_and_keep_their_output(real_pool):
    res = real_pool.run([
        _job(0, HELLO, expected_stdout="hello"),
        _job(1, HELLO, expected_result="λa (a IO/Done/tag IO/MAGIC 7)", expected_stdout="hello\n"),
        _job(2, HELLO, expected_stdout="bye"),
        _job(3, _prints("Result: 5\n", "wrap(5)"), expected_stdout="Result: 5"),  # honest, if odd
        _job(4, _prints("no newline"), expected_stdout="no newline", runtime="hvm-run-c"),
        _job(5, 'def main():\n  return "Result: 5"', expected_result='"Result: 5"'),
    ])
    assert [r["status"] for r in res] == ["passed", "passed", "failed", "passed", "passed", "passed"], res
    assert res[0]["stats"]["output_bytes"] == 6
    assert "wrong output: expected 'bye', got 'hello\\n'" in res[2]["detail"]


# -- a program cannot swallow what follows it (a task's hidden main) ----------------------------

def test_end_mark_is_fresh_and_must_be_compiled():
    a, b = bendseal.new_end_mark(), bendseal.new_end_mark()
    assert a != b and a.startswith(bendseal.END_PREFIX) and len(a) == len(bendseal.END_PREFIX) + 16
    assert bendseal.end_source(a) == f"\n\ndef {a}():\n  return 0\n"
    assert bendseal.has_end(f"@main = 1\n\n@{a} = 0\n", a)
    assert not bendseal.has_end(f"@main = 1\n\n@{b} = 0\n", a)
    assert not bendseal.has_end(f"@main = @{a}\n", a)  # a reference is not the definition
    with pytest.raises(ValueError, match="not an end mark"):
        bendseal.has_end("@main = 1\n", "main")


# The hidden main a task appends after the completion, and a completion that answers in a main of
# its own and opens a block comment that bend lets run to the end of the file. Before the end mark
# this passed under run-c and run-rs: the task's main, and with it the test, was never compiled.
# (numbers only: hvm-run-c prints raw nets)
HIDDEN_MAIN = "\n\ndef main():\n  return f(1) * 10 + f(2)\n"
SWALLOWING = "def f(x):\n  return 0\n\ndef main():\n  return 23\n#{\n" + HIDDEN_MAIN


@needs_bend
@pytest.mark.parametrize("runtime", ["run-c", "run-rs", "hvm-run-c"])
def test_a_program_that_comments_out_the_rest_of_the_file_fails(real_pool, runtime):
    res = real_pool.run([
        _job(0, SWALLOWING, expected_result="23", runtime=runtime),
        _job(1, SWALLOWING.replace("#{\n", "#{ closed #}\n").replace("def main():\n  return 23\n", ""),
             expected_result="23", runtime=runtime),
        _job(2, "def f(x):\n  return x + 1\n#{ a comment\nover lines #}" + HIDDEN_MAIN, expected_result="23",
             runtime=runtime),
    ])
    assert [r["status"] for r in res] == ["error", "failed", "passed"], res
    assert "swallowed the code after it" in res[0]["detail"], res[0]
    assert rewards(res[:2], [1, 1], 4).tolist() == [0.0, 0.0]
