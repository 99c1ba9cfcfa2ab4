"""Start-up: the probe reports each primitive, the pool refuses untrusted code when one is missing
unless told otherwise, and the explicit opt-out still contains what it can."""

import logging
import os

import pytest

from jaxdiff.verify import SandboxUnavailable, VerifierPool, probe
from jaxdiff.verify.sandbox import PRIMITIVES

from conftest import settle, warm_processes


def test_this_machine_has_full_isolation():
    iso = probe()
    assert iso.missing == [], iso.report()
    assert all(f"{name}" in iso.report() for name in PRIMITIVES)


@pytest.mark.parametrize("bwrap, words", [(None, "disabled by the caller"), ("/nonexistent/bwrap", "not found")])
def test_missing_bwrap_is_named_and_refused(bwrap, words):
    with pytest.raises(SandboxUnavailable) as e:
        VerifierPool(workers=1, bwrap=bwrap)
    assert "bwrap" in str(e.value) and words in str(e.value) and "allow_unsandboxed=True" in str(e.value)


def test_opting_out_runs_with_what_there_is(caplog):
    caplog.set_level(logging.WARNING)
    with VerifierPool(workers=2, timeout_s=1.5, bwrap=None, allow_unsandboxed=True) as p:
        assert p.isolation.missing == ["bwrap"]
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
