"""VerifierPool: N warm sandboxed workers, a bounded queue, results in submission order.

    with VerifierPool(workers=2, timeout_s=5) as pool:
        results = pool.run(jobs)                 # synchronous
        ticket = pool.submit(next_jobs)          # asynchronous: returns at once (unless the queue is full)
        ...                                      # generate the next batch meanwhile
        results = pool.collect(ticket)

Every job gets exactly one result, whatever it does; a worker that dies is replaced. The pool
refuses to start when an isolation primitive is missing, naming it: without a cgroup (v1 or v2) it
runs only with `allow_reduced_isolation=True`, without bubblewrap or private uids only with
`allow_unsandboxed=True`. Every result's stats["isolation"] names the level it ran at.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
import queue
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

from jaxdiff.verify import jobs as J
from jaxdiff.verify import bend as bend_backend
from jaxdiff.verify import cgroups, proto, sandbox

log = logging.getLogger(__name__)

_PUBLIC = ("language", "program", "stdin", "runtime")
_SECRET = ("tests", "entry_point", "expected_stdout", "expected_result")
_GRACE_S = 10.0  # beyond the job timeout, before the pool declares a worker hung
ENV_ALLOW_REDUCED = "JAXDIFF_VERIFY_ALLOW_REDUCED_ISOLATION"
ENV_CGROUP_ROOT = "JAXDIFF_VERIFY_CGROUP_ROOT"


@dataclasses.dataclass(frozen=True)
class Ticket:
    """Handle for jobs submitted together; `collect` returns their results in order."""

    seqs: tuple


class VerifierPool:
    def __init__(self, workers: int = 2, timeout_s: float = 10.0, memory_mb: int = 1024, *,
                 fsize_mb: int = 16, nofile: int = 64, nproc: int = 32, queue_size: int = 4096,
                 allow_reduced_isolation: bool = False, allow_unsandboxed: bool = False,
                 cgroup_root: str | None = None, bwrap: str | None = "bwrap",
                 bend: str | None = "bend", hvm: str | None = "hvm"):
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self.limits = J.Limits(timeout_s=timeout_s, memory_mb=memory_mb, fsize_mb=fsize_mb, nofile=nofile, nproc=nproc)
        allow_reduced_isolation = allow_reduced_isolation or os.environ.get(ENV_ALLOW_REDUCED, "") not in ("", "0")
        self.isolation = sandbox.probe(bwrap, cgroup_root or os.environ.get(ENV_CGROUP_ROOT) or None)
        self._v2 = None  # cgroup v2: prepared (this process moved into a leaf group) only if the pool may start
        if self.isolation.level != "unsandboxed" or allow_unsandboxed:
            self._v2 = self._prepare_v2()
        level = self.isolation.level
        if level == "unsandboxed" and not allow_unsandboxed:
            raise sandbox.SandboxUnavailable(
                "refusing to run untrusted code: isolation primitive(s) missing: " + ", ".join(self.isolation.missing)
                + "\n" + self.isolation.report()
                + "\nInstall what is missing, or pass allow_unsandboxed=True (command line: --allow-unsandboxed) "
                "to run with what there is.")
        if level == "reduced" and not (allow_reduced_isolation or allow_unsandboxed):
            raise sandbox.SandboxUnavailable(
                "refusing to run untrusted code without cgroup limits: isolation primitive(s) missing: "
                + ", ".join(self.isolation.missing) + "\n" + self.isolation.report()
                + "\nDelegate a cgroup v2 subtree to this process, or name one with cgroup_root= (--cgroup-root; "
                "docs/verify.md), "
                "or accept the reduced isolation level (bubblewrap, private uids, rlimits; no cgroup memory or "
                f"process-count limit) with allow_reduced_isolation=True (command line: --allow-reduced-isolation; "
                f"environment: {ENV_ALLOW_REDUCED}=1).")
        if level in ("reduced", "unsandboxed"):
            log.warning("VerifierPool runs at isolation level %r, WITHOUT full isolation; missing: %s\n%s", level,
                        ", ".join(self.isolation.missing), self.isolation.report())
        self.level = level
        self.bend = _which(bend)
        self.hvm = _which(hvm)
        if workers > 32:
            raise ValueError("at most 32 workers per pool")
        self._slot = _take_slot()
        self._uid_base = None
        if not self.isolation.problems.get("uid separation"):
            # private uids: 64 per pool, from the process id and the pool's slot in this process,
            # so no two live pools on a machine share one (uids need no /etc/passwd entry)
            self._uid_base = 1_000_000 + ((os.getpid() % 4_194_304) * _SLOTS + self._slot) * 64
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._results: dict = {}
        self._done = threading.Condition()
        self._seq = itertools.count()
        self._closed = False
        self._threads = []
        self._workers: list = [None] * workers
        self._cgroups: list = [None] * workers
        self._tmp = None
        if not self.isolation.bwrap:  # scratch dirs go in the host's /tmp; traversable by job uids
            self._tmp = tempfile.mkdtemp(prefix="jaxdiff-verify-")
            os.chmod(self._tmp, 0o711)
        self._started = threading.Barrier(workers + 1)
        self._start_errors: list = []
        for i in range(workers):
            t = threading.Thread(target=self._serve, args=(i,), name=f"verifier-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        self._started.wait()
        if self._start_errors:
            self.close()
            raise RuntimeError(f"verifier workers failed to start: {self._start_errors[0]}")

    def _prepare_v2(self):
        """cgroup v2: enable the controllers in the delegated subtree once, before any worker starts;
        if that fails, the pool has no cgroup (the level says so)."""
        plan = self.isolation.cgroups
        if plan is None or plan.version != "v2" or not plan.dirs:
            return None
        tree = cgroups.V2Tree(next(iter(plan.dirs.values())))
        try:
            tree.prepare(list(plan.dirs))
        except cgroups.CgroupError as e:
            problems = {c: str(e) for c in plan.dirs}
            self.isolation = dataclasses.replace(
                self.isolation, problems={**self.isolation.problems, **{f"cgroup {c}": w for c, w in problems.items()}},
                cgroups=dataclasses.replace(plan, dirs={}, problems={**plan.problems, **problems}))
            return None
        return tree

    # -- public API ------------------------------------------------------------------------------

    def run(self, jobs) -> list[dict]:
        """Run jobs; their results, in the same order."""
        return self.collect(self.submit(jobs))

    def submit(self, jobs) -> Ticket:
        """Queue jobs and return at once (blocks only while the bounded queue is full)."""
        return Ticket(tuple(self._submit_one(job) for job in jobs))

    def collect(self, ticket: Ticket, timeout: float | None = None) -> list[dict]:
        """Wait for a ticket's results, in submission order."""
        end = None if timeout is None else time.monotonic() + timeout
        out = []
        for seq in ticket.seqs:
            out.append(self._take(seq, end))
        return out

    def imap(self, jobs, window: int | None = None):
        """Yield results in input order while jobs stream in; at most `window` jobs in flight."""
        window = window or max(4 * len(self._workers), 16)
        pending = []
        for job in jobs:
            pending.append(self._submit_one(job))
            if len(pending) >= window:
                yield self._take(pending.pop(0), None)
        for seq in pending:
            yield self._take(seq, None)

    def close(self):
        if self._closed:
            return
        self._closed = True
        for _ in self._threads:
            self._queue.put(None)
        for t in self._threads:
            t.join(timeout=self.limits.timeout_s + _GRACE_S + 5)
        for cg in self._cgroups:
            if cg is not None:
                cg.remove()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
        _free_slot(self._slot)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def worker_pids(self) -> list[int]:
        """pids (in this namespace) of the processes that make up the warm workers."""
        return [w.pid for w in self._workers if w is not None]

    # -- internals -------------------------------------------------------------------------------

    def _submit_one(self, job) -> int:
        if self._closed:
            raise RuntimeError("pool is closed")
        seq = next(self._seq)
        try:
            if isinstance(job, J.JobError):
                raise job
            checked = J.validate(job, self.limits)
            if checked["language"] == "bend" and self.bend is None:
                raise J.JobError(f"bend is not on PATH ({bend_backend.INSTALL_HINT})")
            if checked["language"] == "bend" and self.hvm is None:
                raise J.JobError(f"hvm is not on PATH ({bend_backend.INSTALL_HINT})")
        except J.JobError as e:
            self._store(seq, J.result(J.job_id(job), "rejected", str(e), detail_chars=self.limits.detail_chars))
            return seq
        self._queue.put((seq, checked))
        return seq

    def _store(self, seq, res):
        res["stats"]["isolation"] = self.level
        with self._done:
            self._results[seq] = res
            self._done.notify_all()

    def _take(self, seq, end):
        with self._done:
            while seq not in self._results:
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"result {seq} not ready")
                self._done.wait(left)
            return self._results.pop(seq)

    def _serve(self, i: int):
        """Thread i: owns worker i for the pool's lifetime (spawns it, feeds it, replaces it)."""
        try:
            proc = self._spawn(i)
        except Exception as e:
            self._start_errors.append(e)
            proc = None
        self._started.wait()
        if proc is None:
            return
        while True:
            item = self._queue.get()
            if item is None:
                break
            seq, job = item
            try:
                if proc is None:
                    proc = self._spawn(i)
                res, proc = self._run_on(i, proc, job)
            except Exception as e:  # never lose a job: it gets an error, the next one a new worker
                log.exception("verifier thread %d", i)
                res = J.result(job.get("id"), "error", f"pool error: {type(e).__name__}: {e}")
                _stop(proc)
                proc = None
            self._store(seq, res)
        _stop(proc)
        self._workers[i] = None

    def _run_on(self, i, proc, job):
        public = {k: job[k] for k in _PUBLIC if k in job}
        if job["language"] == "python":
            public["mode"] = "tests" if "tests" in job else ("stdout" if "expected_stdout" in job else "program")
        secret = json.dumps({k: job[k] for k in _SECRET if k in job}).encode()
        t0 = time.perf_counter()
        try:
            try:
                proto.write_json(proc.stdin_fd, public)
            except OSError:  # it died while idle (killed from outside, say): not this job's doing
                _stop(proc)
                proc = self._spawn(i)
                proto.write_json(proc.stdin_fd, public)
            proto.write_frame(proc.stdin_fd, secret)
            reply = _read_reply(proc.stdout_fd, self.limits.timeout_s + _GRACE_S)
        except (OSError, EOFError, proto.ProtocolError) as e:
            reply = None
            why = f"{type(e).__name__}: {e}"
        else:
            why = "no reply"
        wall = (time.perf_counter() - t0) * 1000
        if reply is None or reply.get("fatal"):
            detail = reply["detail"] if reply else f"the worker died or hung while running this job ({why}); restarted it"
            _stop(proc)
            proc = self._spawn(i)
            return J.result(job.get("id"), "error", detail, wall, detail_chars=self.limits.detail_chars), proc
        return J.result(job.get("id"), reply["status"], reply.get("detail", ""), reply.get("wall_ms", wall),
                        reply.get("stats"), detail_chars=self.limits.detail_chars), proc

    def _spawn(self, i):
        lim = self.limits
        cfg = {"limits": {**dataclasses.asdict(lim), "cpu_s": lim.cpu_s},
               "sandboxed": self.isolation.bwrap is not None,
               "bend": self.bend, "hvm": self.hvm, "path": _job_path(self.bend, self.hvm)}
        if self._uid_base is not None:
            cfg["uids"] = [self._uid_base + 2 * i, self._uid_base + 2 * i + 1]
        if self.isolation.bwrap:
            cfg["scratch"] = "/tmp/job"  # the sandbox's own /tmp
            cfg["hvm_shim"] = "/tmp/jaxdiff-hvm-shim"
        else:  # the host's /tmp: a private corner per worker
            cfg["scratch"] = os.path.join(self._tmp, f"w{i}")
            cfg["hvm_shim"] = os.path.join(self._tmp, f"w{i}-hvm-shim")
        plan = self.isolation.cgroups
        if self._cgroups[i] is None and plan is not None and plan.dirs:
            name = f"jaxdiff-verify-{os.getpid()}-{self._slot}-w{i}"
            memory_mb = lim.memory_mb if "memory" in plan.dirs else None
            nproc = lim.nproc if "pids" in plan.dirs else None
            self._cgroups[i] = (cgroups.V1Group(plan.dirs, name, memory_mb, nproc) if plan.version == "v1"
                                else self._v2.group(name, memory_mb, nproc))
        cg = self._cgroups[i]
        bind_rw, launcher = [], []
        if cg is not None:
            cfg.update(cg.worker_config())
            bind_rw = list(cg.dirs.values())
            launcher = cg.launcher()
        import jaxdiff

        root = os.path.dirname(os.path.dirname(os.path.abspath(jaxdiff.__file__)))
        boot = f"import sys; sys.path.insert(0, {root!r}); from jaxdiff.verify.worker import main; main()"
        argv = [sys.executable, "-I", "-c", boot, json.dumps(cfg)]
        if self.isolation.bwrap:
            keep = sandbox.needed_paths() + [os.path.dirname(p) for p in (self.bend, self.hvm) if p]
            argv = sandbox.bwrap_argv(self.isolation.bwrap, keep, bind_rw) + argv
        argv = launcher + argv  # cgroup v2: the worker's sandbox starts inside its group
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=sandbox.clean_env(),
                                start_new_session=True, cwd="/")
        proc.stdin_fd = proc.stdin.fileno()
        proc.stdout_fd = proc.stdout.fileno()
        hello = _read_reply(proc.stdout_fd, 60)
        if not hello or not hello.get("ready"):
            _stop(proc)
            raise RuntimeError(f"worker {i} did not start (command: {' '.join(argv[:5])} ...)")
        self._workers[i] = proc
        return proc


_SLOTS = 4
_slots_used: set = set()
_slots_lock = threading.Lock()


def _take_slot() -> int:
    with _slots_lock:
        free = [s for s in range(_SLOTS) if s not in _slots_used]
        if not free:
            raise RuntimeError(f"at most {_SLOTS} pools may be open at once in one process")
        _slots_used.add(free[0])
        return free[0]


def _free_slot(slot: int):
    with _slots_lock:
        _slots_used.discard(slot)


def _which(name):
    if not name:
        return None
    path = shutil.which(name)
    return os.path.realpath(path) if path else None


def _job_path(*binaries):
    dirs = [os.path.dirname(p) for p in binaries if p]
    return ":".join(dict.fromkeys(dirs + sandbox.SAFE_PATH.split(":")))


def _read_reply(fd, timeout):
    r, _, _ = select.select([fd], [], [], timeout)
    if not r:
        return None
    return proto.read_json(fd)


def _stop(proc):
    if proc is None:
        return
    try:
        proc.stdin.close()
    except OSError:
        pass
    try:
        proc.wait(timeout=2)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    proc.stdout.close()
