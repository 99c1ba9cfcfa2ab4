"""Shared pools for the verifier tests: real sandbox (bubblewrap, cgroups, private uids) or bust.

The pools start once per session (about half a second each) and must survive every test, which is
itself part of what the suite checks.
"""

import os

import psutil
import pytest

from jaxdiff.verify import VerifierPool

HERE = os.path.dirname(os.path.abspath(__file__))
# A secret in the environment of the process that starts the pools: no job may ever see it.
os.environ["JAXDIFF_VERIFY_TEST_SECRET"] = "s3cret-" + os.urandom(8).hex()
RECORDED_BEND = os.path.join(HERE, "recorded_bend", "bend")
RECORDED_HVM = os.path.join(HERE, "recorded_bend", "hvm")


@pytest.fixture(scope="session")
def pool():
    """The pool most tests share: 2 workers, full isolation (start-up fails if any is missing)."""
    with VerifierPool(workers=2, timeout_s=2.0, memory_mb=512) as p:
        yield p


@pytest.fixture(scope="session")
def bend_pool():
    """A pool whose `bend`/`hvm` are the recorded-behaviour stand-ins (see recorded_bend/bend)."""
    with VerifierPool(workers=2, timeout_s=2.0, memory_mb=512, bend=RECORDED_BEND, hvm=RECORDED_HVM) as p:
        yield p


def descendants() -> list:
    """Processes below this test process (workers, their sandboxes, anything a job left)."""
    return psutil.Process().children(recursive=True)


def warm_processes(pools) -> list:
    """pids of the processes below us that make up the pools at rest: bubblewrap, its init and the
    worker per sandbox. Judges (their own uid) are left out: one is replaced after a timeout."""
    judge_uids = {p._uid_base + 2 * i + 1 for p in pools for i in range(32)}
    out = []
    for proc in descendants():
        try:
            if proc.uids().real not in judge_uids:
                out.append(proc.pid)
        except psutil.NoSuchProcess:
            pass
    return sorted(out)


def job_uid_processes(p: VerifierPool) -> list:
    """Processes anywhere on the machine running as one of the pool's job (candidate) uids."""
    cand = {p._uid_base + 2 * i for i in range(32)}
    out = []
    for proc in psutil.process_iter(["uids"]):
        uids = proc.info["uids"]
        if uids and uids.real in cand:
            out.append(proc)
    return out
