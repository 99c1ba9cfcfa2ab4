"""Shared pools for the verifier tests: real sandbox (bubblewrap, cgroups, private uids) or bust.

The pools start once per session (about half a second each) and must survive every test, which is
itself part of what the suite checks.
"""

import os
import time

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


def _is_worker(proc) -> bool:
    cmd = proc.cmdline() if proc is not None else []
    return bool(cmd) and "bwrap" not in os.path.basename(cmd[0]) and "jaxdiff.verify.worker" in " ".join(cmd)


def warm_processes(pools) -> list:
    """pids of the processes that make up the pools at rest: per worker, bubblewrap, its init and
    the worker itself. What runs below a worker (its judge, a job) is not counted here."""
    out = []
    for proc in descendants():
        try:
            parent = proc.parent()
            if parent is None or not (_is_worker(parent) and not _is_worker(parent.parent())):
                out.append(proc.pid)
        except psutil.NoSuchProcess:
            pass
    return sorted(out)


def below_workers(pools) -> list:
    """(pid, worker pid, uid) of every process whose parent is a worker: at rest, its judge only."""
    out = []
    for proc in descendants():
        try:
            parent = proc.parent()
            if parent is not None and _is_worker(parent) and not _is_worker(parent.parent()):
                out.append((proc.pid, parent.pid, proc.uids().real))
        except psutil.NoSuchProcess:
            pass
    return out


def job_uid_processes(p: VerifierPool) -> list:
    """Processes anywhere on the machine running as one of the pool's job (candidate) uids."""
    cand = {p._uid_base + 2 * i for i in range(32)}
    out = []
    for proc in psutil.process_iter(["uids"]):
        uids = proc.info["uids"]
        if uids and uids.real in cand:
            out.append(proc)
    return out


def settle(pools, before, timeout=5.0):
    """Wait until the pools' warm processes are `before` again, no job process is left anywhere, and
    all that runs below a worker is its judge (one forked at the end of a job is briefly still root);
    return (warm pids, stray processes)."""
    deadline = time.time() + timeout
    while True:
        after = warm_processes(pools)
        stray = [x for p in pools for x in job_uid_processes(p)]
        below = below_workers(pools)
        stray += [pid for pid, _, uid in below if uid == 0]  # not (yet) a judge
        parents = [ppid for _, ppid, _ in below]
        stray += [pid for pid, ppid, _ in below if parents.count(ppid) > 1]  # more than the judge
        if (after == before and not stray) or time.time() > deadline:
            return after, stray
        time.sleep(0.05)
