"""Start-up: the probe reports each primitive and the isolation level, the pool refuses untrusted
code when one is missing unless told otherwise (reduced isolation without a cgroup, unsandboxed
without bubblewrap), every result names the level it ran at, and the opt-outs still contain what
they can."""

import logging
import os
import shutil

import pytest

from jaxdiff.verify import SandboxUnavailable, VerifierPool, probe
from jaxdiff.verify.pool import ENV_ALLOW_REDUCED, ENV_CGROUP_ROOT
from jaxdiff.verify.sandbox import PRIMITIVES
from recorded_bend import recorded as R

from conftest import RECORDED_BEND, RECORDED_HVM, settle, warm_processes


def test_this_machine_has_full_isolation():
    iso = probe()
    assert iso.missing == [], iso.report()
    assert all(f"{name}" in iso.report() for name in PRIMITIVES)
    assert iso.level in ("cgroup-v1", "cgroup-v2") and f"level           {iso.level}" in iso.report()


def test_every_result_names_the_isolation_level(pool):
    res = pool.run([{"id": 0, "program": "def f(): return 1", "tests": "assert f() == 1"}, {"id": 1}])
    assert [r["status"] for r in res] == ["passed", "rejected"]
    assert {r["stats"]["isolation"] for r in res} == {pool.level} and pool.level == probe().level


def test_without_a_cgroup_the_pool_refuses_naming_the_flag(tmp_path, monkeypatch):
    # a cgroup root where no group can be made stands for a host that offers none
    with pytest.raises(SandboxUnavailable) as e:
        VerifierPool(workers=1, cgroup_root=str(tmp_path))
    msg = str(e.value)
    assert f"{tmp_path}/cgroup.controllers not found" in msg and "level           reduced" in msg
    assert "allow_reduced_isolation=True" in msg and "--allow-reduced-isolation" in msg and ENV_ALLOW_REDUCED in msg
    monkeypatch.setenv(ENV_CGROUP_ROOT, str(tmp_path))  # the same, configured through the environment
    with pytest.raises(SandboxUnavailable, match="allow_reduced_isolation=True"):
        VerifierPool(workers=1)
    monkeypatch.setenv(ENV_ALLOW_REDUCED, "1")  # and accepted through it
    with VerifierPool(workers=1, timeout_s=1.0) as p:
        assert p.level == "reduced" and p._cgroups == [None]


def test_reduced_isolation_when_accepted(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    with VerifierPool(workers=2, timeout_s=1.5, memory_mb=512, cgroup_root=str(tmp_path),
                      allow_reduced_isolation=True, bend=RECORDED_BEND, hvm=RECORDED_HVM) as p:
        assert p.level == "reduced" and "isolation level 'reduced'" in caplog.text
        before = warm_processes([p])
        res = p.run([
            {"id": 0, "program": "def f(x): return x + 1", "tests": "assert f(1) == 2"},
            {"id": 1, "program": "while True: pass", "tests": "pass"},
            {"id": 2, "program": "x = b'x' * (600 << 20)", "tests": "pass"},  # RLIMIT_AS still binds
            {"id": 3, "program": "import os\nfor _ in range(20):\n    os.fork()", "tests": "pass"},  # RLIMIT_NPROC
            {"id": 4, "program": "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\n"
                                 "def f(x): return x", "tests": "assert f(1) == 1"},
            {"id": 5, "language": "bend", "program": R.ANSWER, "expected_result": "42"},
        ])
        assert [r["status"] for r in res] == ["passed", "timeout", "memory", "error", "passed", "passed"], res
        assert all(r["stats"]["isolation"] == "reduced" and "peak_memory_mb" not in r["stats"] for r in res)
        assert settle([p], before) == (before, [])  # the detached child is gone all the same


@pytest.mark.skipif(not (shutil.which("bend") and shutil.which("hvm")), reason="bend/hvm not on PATH")
def test_real_bend_runs_at_reduced_isolation(tmp_path):
    # no memory cgroup: hvm still gets the address space it reserves up front (RLIMIT_AS)
    with VerifierPool(workers=1, timeout_s=3.0, cgroup_root=str(tmp_path), allow_reduced_isolation=True) as p:
        r = p.run([{"id": 0, "language": "bend", "program": R.SUM, "expected_result": "523776"}])[0]
    assert r["status"] == "passed" and r["stats"]["isolation"] == "reduced", r


@pytest.mark.parametrize("bwrap, words", [(None, "disabled by the caller"), ("/nonexistent/bwrap", "not found")])
def test_missing_bwrap_is_named_and_refused(bwrap, words):
    with pytest.raises(SandboxUnavailable) as e:
        VerifierPool(workers=1, bwrap=bwrap, allow_reduced_isolation=True)  # not enough without bwrap
    assert "bwrap" in str(e.value) and words in str(e.value) and "allow_unsandboxed=True" in str(e.value)


def test_opting_out_runs_with_what_there_is(caplog):
    caplog.set_level(logging.WARNING)
    with VerifierPool(workers=2, timeout_s=1.5, memory_mb=256, bwrap=None, allow_unsandboxed=True) as p:
        assert p.isolation.missing == ["bwrap"] and p.level == "unsandboxed"
        assert "WITHOUT full isolation" in caplog.text
        before = warm_processes([p])
        prog = ("import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        time.sleep(60)\n"
                "    os._exit(0)\ndef f(x): return x + 1")
        res = p.run([{"id": 0, "program": prog, "tests": "assert f(1) == 2"},
                     {"id": 1, "program": "while True: pass", "tests": "pass"},
                     {"id": 2, "program": "import sys; sys.exit(0)", "tests": "pass"},
                     {"id": 3, "program": "x = []\nwhile True: x.append(b'x' * 10**7)", "tests": "pass"}])
        assert [r["status"] for r in res] == ["passed", "timeout", "failed", "memory"], res
        # without a pid namespace the worker still finds and kills every descendant
        assert settle([p], before) == (before, [])
        scratch = p._tmp
        assert os.path.isdir(scratch)
    assert not os.path.exists(scratch)
