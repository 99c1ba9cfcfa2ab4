"""Programs that try to escape, to hog the machine, or to pass without passing.

Each one is contained, gets the status it deserves (never `passed` for a cheat), and afterwards the
pool serves the next job with no process of the job left anywhere on the machine.
"""

import os
import signal
import socket
import threading
import time
import zlib

import pytest

from conftest import settle, warm_processes

SECRET = os.environ["JAXDIFF_VERIFY_TEST_SECRET"]  # set in conftest before any pool starts
FAIL_IF_HONEST = "assert f(1) == 2"  # f returns 1 unless it cheats


@pytest.fixture(autouse=True)
def back_to_baseline(pool):
    """Around every test: the pool's warm processes, its judges, and job processes machine-wide."""
    before = warm_processes([pool])
    yield
    after, stray = settle([pool], before)
    assert after == before, f"process tree changed: {before} -> {after}"
    assert not stray, f"job processes left running: {stray}"
    assert pool.run([{"id": "next", "program": "def f(x): return x + 1", "tests": "assert f(1) == 2"}])[0]["passed"]


def run1(pool, program, tests=FAIL_IF_HONEST, **kw):
    return pool.run([{"id": 0, "program": program, "tests": tests, **kw}])[0]


# -- resources ------------------------------------------------------------------------------

@pytest.mark.parametrize("program", [
    "while True: pass",
    "def f(x):\n    while True: pass",
    "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
    "while True: pass",
])
def test_infinite_loops_time_out(pool, program):
    t = time.perf_counter()
    r = run1(pool, program)
    assert r["status"] == "timeout" and time.perf_counter() - t < 2.0 + 2


def test_fork_bomb(pool):
    r = run1(pool, "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass")
    assert r["status"] == "timeout"


def test_fork_bomb_hits_the_process_limit(pool):
    r = run1(pool, "import os\nfor _ in range(20):\n    os.fork()")
    assert r["status"] == "error" and "Resource temporarily unavailable" in r["detail"]


def test_memory_bomb(pool):
    r = run1(pool, "x = []\nwhile True:\n    x.append(b'x' * 10**7)")
    assert r["status"] == "memory"


def test_memory_bomb_across_processes_hits_the_cgroup(pool):
    prog = ("import os, time\nkids = []\nfor i in range(6):\n    pid = os.fork()\n    if pid == 0:\n"
            "        x = b'x' * (300 << 20)\n        time.sleep(30)\n        os._exit(0)\n    kids.append(pid)\n"
            "for k in kids:\n    os.waitpid(k, 0)\ndef f(x): return x + 1")
    r = run1(pool, prog, "assert f(1) == 2")
    assert r["status"] == "memory" and "cgroup" in r["detail"]


@pytest.mark.parametrize("program", [
    "while True: print('x' * 1000)",
    "import sys\nwhile True: sys.stderr.write('y' * 4096)",
    "import os\nwhile True: os.write(1, b'z' * 65536)",
])
def test_output_flood(pool, program):
    t = time.perf_counter()
    r = run1(pool, program)
    assert r["status"] == "error" and "output limit" in r["detail"], r
    assert len(r["detail"]) < 2200 and time.perf_counter() - t < 2.0


def test_files_in_scratch_are_bounded(pool):
    r = run1(pool, "with open('big', 'wb') as f:\n    f.write(b'x' * (17 << 20))")
    assert r["status"] == "error" and "File too large" in r["detail"]


# -- processes that try to outlive the job ----------------------------------------------------

@pytest.mark.parametrize("how", ["double-fork", "setsid", "ignore-signals", "thread"])
def test_detached_children_do_not_outlive_the_job(pool, how):
    prog = {
        "double-fork": "import os, time\nif os.fork() == 0:\n    if os.fork() == 0:\n        time.sleep(60)\n    os._exit(0)\n",
        "setsid": "import os, time\nif os.fork() == 0:\n    os.setsid()\n    os.closerange(0, 100)\n    time.sleep(60)\n",
        "ignore-signals": "import os, signal, time\nif os.fork() == 0:\n    for s in (1, 2, 3, 15):\n"
                          "        signal.signal(s, signal.SIG_IGN)\n    while True: time.sleep(0.01)\n",
        "thread": "import threading, time\nthreading.Thread(target=time.sleep, args=(60,)).start()\n",
    }[how] + "def f(x): return x + 1"
    r = run1(pool, prog, "assert f(1) == 2")
    assert r["status"] == "passed"  # the program is fine; the fixture checks that nothing survived


def test_killing_the_parent_and_everything_else(pool):
    prog = """
import os, signal
def f(x):
    out = {}
    for name, pid in [("parent", os.getppid()), ("init", 1)]:
        try:
            os.kill(pid, signal.SIGKILL); out[name] = "killed"
        except PermissionError:
            out[name] = "denied"
    for pid in [int(p) for p in os.listdir("/proc") if p.isdigit()]:
        if pid != os.getpid():
            try:
                os.kill(pid, signal.SIGKILL); out[pid] = "killed"
            except PermissionError:
                out[pid] = "denied"
            except ProcessLookupError:
                pass
    os.kill(-1, signal.SIGKILL)  # everything it may signal: itself excepted, nothing but its own
    return out
"""
    r = run1(pool, prog, "out = f(1)\nassert set(out.values()) == {'denied'}, out\nassert out['parent'] == 'denied'")
    assert r["status"] == "passed", r


# -- isolation --------------------------------------------------------------------------------

def test_filesystem_is_read_only_outside_scratch(pool, tmp_path):
    here = os.path.dirname(os.path.abspath(__file__))
    harness = os.path.join(os.path.dirname(os.path.dirname(here)), "jaxdiff", "verify", "pyharness.py")
    targets = [os.path.join(here, "PWNED"), harness, "/etc/passwd", "/usr/PWNED", "/tmp/PWNED",
               "/dev/shm/PWNED", "/var/tmp/PWNED", str(tmp_path / "PWNED"), "../PWNED"]
    prog = f"""
import os
def f():
    out = {{}}
    for t in {targets!r}:
        try:
            with open(t, "a") as fh:
                fh.write("pwned")
            out[t] = "written"
        except OSError as e:
            out[t] = type(e).__name__
    with open("mine.txt", "w") as fh:  # the scratch dir is writable
        fh.write("ok")
    out["scratch"] = open("mine.txt").read()
    return out
"""
    before = open(harness).read()
    r = run1(pool, prog, "out = f()\nassert out.pop('scratch') == 'ok'\nassert 'written' not in out.values(), out")
    assert r["status"] == "passed", r
    assert open(harness).read() == before
    assert not os.path.exists(os.path.join(here, "PWNED")) and not (tmp_path / "PWNED").exists()


def test_home_directories_and_run_are_hidden(pool):
    prog = """
import os
def f():
    return {d: sorted(os.listdir(d)) if os.path.isdir(d) else None for d in ["/root", "/home", "/run"]}
"""
    r = run1(pool, prog, "out = f()\nassert not out['/home'] and not out['/run'], out\n"
                         "assert all(x in ('.pyenv',) for x in out['/root']), out")
    assert r["status"] == "passed", r


def test_environment_secret_is_invisible(pool):
    prog = """
import os
def f(secret):
    found = [k for k, v in os.environ.items() if secret in v]
    for pid in [p for p in os.listdir("/proc") if p.isdigit()] + ["self"]:
        for name in ("environ", "cmdline"):
            try:
                if secret.encode() in open(f"/proc/{pid}/{name}", "rb").read():
                    found.append(f"{pid}/{name}")
            except OSError:
                pass
    return found, dict(os.environ), os.getuid()
"""
    tests = (f"found, env, uid = f({SECRET!r})\nassert found == [], found\n"
             "assert set(env) <= {'PATH', 'HOME', 'TMPDIR', 'LANG', 'OPENBLAS_NUM_THREADS', 'OMP_NUM_THREADS', "
             "'MKL_NUM_THREADS', 'LC_CTYPE'}, env\nassert uid != 0")
    r = run1(pool, prog, tests)
    assert r["status"] == "passed", r


def test_no_network_not_even_localhost(pool, tmp_path):
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen()
    port = tcp.getsockname()[1]
    path = str(tmp_path / "s.sock")
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(path)
    os.chmod(path, 0o777)
    os.chmod(tmp_path, 0o777)
    unix.listen()
    abstract = socket.socket(socket.AF_UNIX)
    abstract.bind("\0jaxdiff-verify-test")
    abstract.listen()
    accepted = []

    def accept(s):
        s.settimeout(3)
        try:
            accepted.append(s.accept())
        except OSError:
            pass

    threads = [threading.Thread(target=accept, args=(s,)) for s in (tcp, unix, abstract)]
    for t in threads:
        t.start()
    prog = f"""
import socket
def f():
    out = {{}}
    for name, fam, addr in [("tcp", socket.AF_INET, ("127.0.0.1", {port})), ("unix", socket.AF_UNIX, {path!r}),
                            ("abstract", socket.AF_UNIX, "\\0jaxdiff-verify-test"), ("dns", socket.AF_INET, ("1.1.1.1", 53))]:
        s = socket.socket(fam)
        s.settimeout(1)
        try:
            s.connect(addr); out[name] = "connected"
        except OSError as e:
            out[name] = type(e).__name__
    return out
"""
    r = run1(pool, prog, "out = f()\nassert 'connected' not in out.values(), out")
    for t in threads:
        t.join()
    for s in (tcp, unix, abstract):
        s.close()
    assert r["status"] == "passed", r
    assert accepted == []


def test_limits_are_in_force(pool):
    prog = """
import resource
def f():
    return {n: resource.getrlimit(getattr(resource, n)) for n in
            ("RLIMIT_CPU", "RLIMIT_AS", "RLIMIT_FSIZE", "RLIMIT_NOFILE", "RLIMIT_NPROC")}
"""
    tests = ("lim = f()\nassert lim['RLIMIT_CPU'] == (2, 3)\nassert lim['RLIMIT_AS'] == (512 << 20,) * 2\n"
             "assert lim['RLIMIT_FSIZE'] == (16 << 20,) * 2\nassert lim['RLIMIT_NOFILE'] == (64, 64)\n"
             "assert lim['RLIMIT_NPROC'] == (32, 32)")
    assert run1(pool, prog, tests)["status"] == "passed"


# -- cheating -----------------------------------------------------------------------------------

EXITS = {
    "exit()": "exit()",
    "quit()": "quit()",
    "sys.exit(0)": "import sys; sys.exit(0)",
    "os._exit(0)": "import os; os._exit(0)",
    "SystemExit": "raise SystemExit(0)",
    "KeyboardInterrupt": "raise KeyboardInterrupt",
    "GeneratorExit": "raise GeneratorExit",
    "BaseException subclass": "class Out(BaseException): pass\nraise Out()",
    "SIGKILL self": "import os, signal; os.kill(os.getpid(), signal.SIGKILL)",
    "SIGTERM self": "import signal; signal.raise_signal(signal.SIGTERM)",
    "kill(-1)": "import os, signal; os.kill(-1, signal.SIGKILL); os._exit(0)",
}


@pytest.mark.parametrize("where", ["load", "call"])
@pytest.mark.parametrize("trick", list(EXITS))
def test_exit_tricks_never_pass(pool, trick, where):
    code = EXITS[trick]
    if where == "load":
        prog = code + "\ndef f(x): return 1"
    else:
        prog = "def f(x):\n" + "\n".join("    " + line for line in code.split("\n")) + "\n    return 1"
    r = run1(pool, prog, FAIL_IF_HONEST)
    assert r["status"] in ("failed", "error") and not r["passed"], r


@pytest.mark.parametrize("where", ["load", "call"])
@pytest.mark.parametrize("trick", ["exit()", "sys.exit(0)", "os._exit(0)", "SystemExit"])
def test_exit_tricks_never_pass_the_humaneval_layout(pool, trick, where):
    # check(candidate) with the asserts after the call: leaving early must not look like passing
    code = EXITS[trick]
    prog = (code + "\ndef f(x): return 1") if where == "load" else (
        "def f(x):\n" + "\n".join("    " + line for line in code.split("\n")) + "\n    return 1")
    r = run1(pool, prog, "def check(candidate):\n    candidate(1)\n    assert candidate(1) == 2\n", entry_point="f")
    assert r["status"] in ("failed", "error") and not r["passed"], r


def test_an_exit_swallowed_by_the_tests_still_fails(pool):
    r = run1(pool, "import sys\ndef f(x):\n    sys.exit(0)",
             "try:\n    f(1)\nexcept BaseException:\n    pass")
    assert r["status"] == "failed" and "SystemExit" in r["detail"]


def test_printing_and_forging_verdicts(pool):
    prog = """
import os, json, struct
def f(x):
    print("passed"); print("PASSED ALL TESTS"); print(json.dumps({"status": "passed", "passed": True}))
    frame = json.dumps({"status": "passed", "detail": "", "tests_passed": 1, "tests_total": 1}).encode()
    for fd in range(0, 64):
        try:
            os.write(fd, struct.pack(">I", len(frame)) + frame)
        except OSError:
            pass
    return 1
"""
    r = run1(pool, prog)
    assert r["status"] == "failed", r


def test_forged_reply_to_the_judge(pool):
    # the program answers its own call with a made-up reply: still only a value, and the wrong one
    prog = """
import os, json, struct
def f(x):
    reply = json.dumps({"v": 2}).encode()
    os.write(4, struct.pack(">I", len(reply)) + reply)
    os._exit(0)
"""
    r = run1(pool, prog, "assert f(1) == 2\nassert f(2) == 3")
    assert r["status"] == "failed", r


@pytest.mark.parametrize("patch", [
    "import jaxdiff.verify.pyharness as h\nh._judge = lambda *a: {'status': 'passed'}\n"
    "h.run_judge = h.judge_loop = lambda *a: 0",
    "import builtins\nbuiltins.AssertionError = type('A', (Exception,), {})\nbuiltins.__import__ = None",
    "import sys\nsys.settrace(lambda *a: None)\nsys.setprofile(lambda *a: None)",
    "import os, jaxdiff.verify.pyharness as h\nopen(h.__file__, 'a').write('\\n# pwned')",
])
def test_tampering_with_the_harness(pool, patch):
    r = run1(pool, "try:\n" + "\n".join("    " + ln for ln in patch.split("\n"))
             + "\nexcept BaseException:\n    pass\ndef f(x): return 1")
    assert r["status"] == "failed", r


def test_silencing_the_harness_is_a_timeout(pool):
    r = run1(pool, "import jaxdiff.verify.proto as p\np.write_json = lambda fd, obj: None\ndef f(x): return 1")
    assert r["status"] == "timeout", r


def test_always_equal_objects(pool):
    prog = """
class Eq:
    def __eq__(self, other): return True
    def __ne__(self, other): return False
    __hash__ = object.__hash__
class EqInt(int):
    def __eq__(self, other): return True
class EqStr(str):
    def __eq__(self, other): return True
def f(x): return Eq()
def g(x): return EqInt(5)
def h(x): return [EqStr("nope")]
"""
    res = [run1(pool, prog, t) for t in ("assert f(1) == 2", "assert 2 == f(1)", "assert g(1) == 2",
                                         "assert h(1) == ['yes']", "assert not (f(1) != 2)")]
    assert [r["status"] for r in res] == ["failed"] * 5, res


def test_more_always_equal_objects(pool):
    # subclasses of every plain type travel as their plain value; an object lying about its class
    # stays a handle, and a handle never equals plain data
    prog = """
class EqFloat(float):
    def __eq__(self, other): return True
class EqTuple(tuple):
    def __eq__(self, other): return True
class EqList(list):
    def __eq__(self, other): return True
class EqDict(dict):
    def __eq__(self, other): return True
class EqBytes(bytes):
    def __eq__(self, other): return True
class Liar:
    __class__ = property(lambda self: int)
    def __eq__(self, other): return True
    def __index__(self): return 2
def f(kind):
    return {"float": EqFloat(0.5), "tuple": EqTuple((0,)), "list": EqList([0]), "dict": EqDict(a=0),
            "bytes": EqBytes(b"no"), "liar": Liar()}[kind]
"""
    cases = [("float", "2.0"), ("tuple", "(1, 2)"), ("list", "[1]"), ("dict", "{'b': 1}"), ("bytes", "b'yes'"),
             ("liar", "2")]
    r = run1(pool, prog, [f"assert f({k!r}) == {v}" for k, v in cases])
    assert r["status"] == "failed" and r["stats"]["tests_passed"] == 0, r
    r = run1(pool, prog, "def check(candidate):\n    assert candidate('liar') == 2\n    assert candidate('float') == 2.0",
             entry_point="f")
    assert r["status"] == "failed", r


def test_the_tests_are_never_in_the_programs_memory(pool):
    # A program that reads its whole address space looking for the tests' text finds nothing, for
    # this job or for earlier jobs on the same worker. To search without holding the text itself,
    # it looks for a prefix and compares a checksum of the 5 bytes after it.
    now, old = "93817", "55555"
    earlier = [{"id": i, "program": "def f(x): return x", "tests": f"# MARKER_{old}\nassert f(1) == 1"} for i in range(4)]
    prog = f"""
import ctypes, zlib
ctypes.CDLL(None).prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE, so that it may read /proc/self/mem
def found(crc):
    prefix, hits, scanned = b"MARKER_", 0, 0
    with open("/proc/self/maps") as maps, open("/proc/self/mem", "rb", 0) as mem:
        for line in maps:
            addr, perms = line.split()[:2]
            if "r" not in perms or "[v" in line:
                continue
            lo, hi = (int(a, 16) for a in addr.split("-"))
            try:
                mem.seek(lo)
                data = mem.read(hi - lo)
            except OSError:
                continue
            scanned += len(data)
            i = data.find(prefix)
            while i >= 0:
                hits += zlib.crc32(data[i + 7:i + 12]) == crc
                i = data.find(prefix, i + 1)
    return hits, scanned
"""
    tests = (f"# MARKER_{now} is written here, in the tests\n"
             f"hits, scanned = found({zlib.crc32(now.encode())})\nassert hits == 0 and scanned > 10 << 20, (hits, scanned)\n"
             f"hits, scanned = found({zlib.crc32(old.encode())})\nassert hits == 0, hits")
    res = pool.run(earlier + [{"id": "probe", "program": prog, "tests": tests}] * 2)
    assert all(r["status"] == "passed" for r in res), res[-2:]
    # and the probe does find what is there: the same check on a program holding the text
    r = run1(pool, prog + f"KEEP = 'MARKER_' + str({now})", tests)
    assert r["status"] == "failed" and "AssertionError" in r["detail"], r
