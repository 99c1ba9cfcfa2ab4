"""The warm worker: lives inside its sandbox, forks one fresh process tree per job, kills it after.

Started by the pool as `python -I -c <bootstrap> <config json>`; talks to the pool over two pipe
descriptors (requests, replies). Per job the pool writes a *public* frame (program, stdin, how to
run it) and a *secret* frame (tests, expected output). The worker forks the candidate from the
public part before it reads the secret one, so the program never has the tests in its memory.
The secret bytes go straight into a buffer that the worker wipes once the judge has forked.

Never print from the worker: descriptors 0 and 1 are /dev/null once start-up is over.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import resource
import secrets
import select
import signal
import socket
import sys
import time

from jaxdiff.verify import bend as bend_backend
from jaxdiff.verify import bendseal, cgroups, proto, pyharness

_PR_SET_CHILD_SUBREAPER = 36
_OUTPUT_CAP = 1 << 16
JUDGE_JOBS = 1000
# Imported once here so that jobs, forked from this process, do not each read them from disk.
_PRELOAD = ("math", "re", "collections", "itertools", "functools", "heapq", "bisect", "string", "random",
            "typing", "copy", "json", "hashlib", "fractions", "decimal", "statistics", "operator",
            "dataclasses", "subprocess", "threading", "numbers", "array", "enum", "datetime")


class Worker:
    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.limits = cfg["limits"]
        self.sandboxed = cfg["sandboxed"]
        self.uids = cfg.get("uids")  # [candidate uid, judge uid] or None
        self.scratch = cfg["scratch"]  # private per job: made before it, deleted after it
        self.oom_file, self.oom_keys = cfg.get("oom_file"), cfg.get("oom_keys", ())
        self.usage_file = cfg.get("usage_file")
        self.peak_fd = None  # memory.peak (v2) / memory.max_usage_in_bytes (v1), reset before each job
        if cfg.get("peak_file"):
            try:  # memory.peak is read-only before Linux 6.12: a peak of the group's life is no job's
                self.peak_fd = os.open(cfg["peak_file"], os.O_RDWR | os.O_CLOEXEC)
                self.peak_reset = cfg["peak_reset"].encode()
            except OSError:
                pass
        self.secret = bytearray(1 << 16)
        self.judge = None  # (pid, socket) of the warm judge
        self.judge_jobs = 0
        self.in_fd = os.dup(0)
        self.out_fd = os.dup(1)
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)
        os.close(devnull)
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
        # cgroup v1: join the jobs' groups once, here: moving every job process in would cost
        # milliseconds per job; forked jobs inherit the group for free. (cgroup v2: the sandbox was
        # started inside the group.) The worker shields itself from the OOM killer (and jobs
        # volunteer at 1000) so that a memory bomb is what gets killed.
        for f in cfg.get("cgroup_join", ()):
            with open(f, "w") as fh:
                fh.write(str(os.getpid()))
        try:  # some kernels refuse negative values (EIO on this project's VMs); jobs still go first at 1000
            with open("/proc/self/oom_score_adj", "w") as fh:
                fh.write("-1000")
        except OSError:
            pass
        self.shim = cfg.get("hvm_shim")
        if cfg.get("bend") and self.shim:
            _write_shim(self.shim)
        sys.set_int_max_str_digits(0)
        for name in _PRELOAD:
            __import__(name)
        gc.collect()
        gc.freeze()

    # -- main loop -------------------------------------------------------------------------------

    def serve(self):
        self._judge()
        proto.write_json(self.out_fd, {"ready": True, "pid": os.getpid(), "sandboxed": self.sandboxed})
        while True:
            job = proto.read_json(self.in_fd)
            if job is None:
                return
            secret_len = proto.read_frame_len(self.in_fd)
            if secret_len is None:
                return
            try:
                reply = self.run_job(job, secret_len)
            except Exception as e:  # a bug of ours; the pool keeps going with this worker restarted
                reply = {"status": "error", "detail": f"worker error: {type(e).__name__}: {e}", "stats": {},
                         "wall_ms": 0.0, "fatal": True}
            proto.write_json(self.out_fd, reply)
            if reply.get("fatal"):
                return

    def read_secret(self, n: int) -> memoryview:
        if n > len(self.secret):
            self.secret = bytearray(max(n, 2 * len(self.secret)))
        proto.read_exact_into(self.in_fd, self.secret, n)
        return memoryview(self.secret)[:n]

    def wipe_secret(self, n: int):
        self.secret[:n] = bytes(n)

    # -- one job ---------------------------------------------------------------------------------

    def run_job(self, job: dict, secret_len: int) -> dict:
        os.mkdir(self.scratch, 0o700)
        if self.uids:
            os.chown(self.scratch, self.uids[0], self.uids[0])
        out_fd = os.memfd_create("stdout")
        err_fd = os.memfd_create("stderr")
        in_fd = os.memfd_create("stdin")
        os.write(in_fd, job.get("stdin", "").encode("utf-8", "surrogatepass"))
        os.lseek(in_fd, 0, os.SEEK_SET)
        oom_before = self._oom_kills()
        base_usage = self._usage()
        self._reset_peak()
        t0 = time.perf_counter()
        deadline = t0 + self.limits["timeout_s"]
        if job["language"] == "python":
            outcome = self._python(job, secret_len, in_fd, out_fd, err_fd, deadline)
        else:
            outcome = self._bend(job, secret_len, in_fd, out_fd, err_fd, deadline)
        wall_ms = (time.perf_counter() - t0) * 1000
        children = self._kill_and_reap()
        stdout = _read_capped(out_fd)
        stderr = _read_capped(err_fd)
        for fd in (out_fd, err_fd, in_fd):
            os.close(fd)
        _rmtree(self.scratch)
        self._judge()  # ready for the next job (a no-op unless it was dropped or is due)
        status, detail, stats = outcome["finish"](children, stdout, stderr)
        cand = children.get(outcome["cand_pid"])
        if cand is not None:
            stats["cpu_ms"] = round((cand[1].ru_utime + cand[1].ru_stime) * 1000, 3)
            stats["max_rss_kb"] = cand[1].ru_maxrss
        stats.setdefault("output_bytes", len(stdout[0]) if stdout[1] is None else stdout[1])
        peak = self._peak()
        if peak is not None:  # above what the worker itself held when the job started
            stats["peak_memory_mb"] = round(max(0, peak - base_usage) / 2**20, 2)
        # order matters: a wall-clock kill or an OOM kill explains whatever the job said afterwards
        if self._oom_kills() > oom_before:  # a limit was hit, whatever the tests said
            status, detail = "memory", f"memory limit of {self.limits['memory_mb']} MB reached (killed by the cgroup)"
        elif outcome.get("timed_out"):
            status, detail = "timeout", f"wall time limit of {self.limits['timeout_s']} s reached"
        elif cand is not None and status != "passed":
            sig = os.WTERMSIG(cand[0]) if os.WIFSIGNALED(cand[0]) else None
            if sig == signal.SIGXCPU or (sig == signal.SIGKILL and stats.get("cpu_ms", 0) >= 1000 * self.limits["cpu_s"]):
                status, detail = "timeout", f"CPU time limit of {self.limits['cpu_s']} s reached"
            elif sig == signal.SIGXFSZ:
                status, detail = "error", f"file size limit of {self.limits['fsize_mb']} MB reached"
        for name, captured in (("stdout", stdout), ("stderr", stderr)):
            if status != "passed" and captured[1] is not None and captured[1] >= self.limits["fsize_mb"] << 20:
                detail = f"{name} reached the {self.limits['fsize_mb']} MB output limit; {detail}"
        return {"status": status, "detail": detail, "stats": stats, "wall_ms": wall_ms}

    def _python(self, job, secret_len, in_fd, out_fd, err_fd, deadline):
        mode = job["mode"]
        req_r, req_w = os.pipe()
        resp_r, resp_w = os.pipe()
        cand = self._fork_job(
            self.uids[0] if self.uids else None, {0: in_fd, 1: out_fd, 2: err_fd, 3: req_r, 4: resp_w},
            lambda: pyharness.run_candidate(job["program"], mode, 3, 4), candidate=True)
        os.close(req_r)
        os.close(resp_w)
        secret = self.read_secret(secret_len)
        if mode == "tests":
            judge = self._judge()
            self.judge_jobs += 1
            try:
                socket.send_fds(judge[1], [b"j"], [req_w, resp_r])
                proto.write_frame(judge[1].fileno(), secret)
            except OSError:
                judge = None  # it died (a previous timeout); the verdict check below reports it
            finally:
                self.wipe_secret(secret_len)
                os.close(req_w)
                os.close(resp_r)
            ready = judge is not None and _wait_readable(judge[1].fileno(), deadline)
            verdict = _read_report(judge[1].fileno()) if ready else None
            if verdict is None:
                self._drop_judge()  # busy, dead or out of step: never reuse it

            def finish(children, stdout, stderr):
                if verdict is None:
                    return "error", "the test harness ended without a verdict" + _tail(stderr), {}
                stats = {k: verdict[k] for k in ("tests_passed", "tests_total") if k in verdict}
                detail = verdict.get("detail", "")
                if verdict["status"] != "passed":
                    detail += _tail(stdout, "output") + _tail(stderr, "stderr")
                return verdict["status"], detail, stats

            return {"cand_pid": cand, "timed_out": not ready and judge is not None, "finish": finish}

        expected = json.loads(bytes(secret)).get("expected_stdout")
        self.wipe_secret(secret_len)
        os.close(req_w)
        ready = _wait_exit(cand, deadline)

        def finish(children, stdout, stderr):
            end = _read_report(resp_r) if ready else None
            os.close(resp_r)
            status_word = children.get(cand, (0,))[0]
            if end is None or os.WIFSIGNALED(status_word):
                how = f"killed by signal {os.WTERMSIG(status_word)}" if os.WIFSIGNALED(status_word) else "os._exit or a crash"
                return "error", f"the program ended without finishing ({how})" + _tail(stderr), {}
            if end.get("end") == "exception":
                exc = list(end.get("exc") or ["?", "", "error"]) + ["", "", ""]
                status = "memory" if exc[2] == "memory" else "error"
                return status, f"the program raised {exc[0]}: {exc[1]} [{end.get('tb', '')}]" + _tail(stderr), {}
            if end.get("end") == "exit" and end.get("code") not in (0, None):
                return "failed", f"the program exited with code {end.get('code')!r}" + _tail(stderr), {}
            if mode == "program":
                return "passed", "", {}
            got = stdout[0].decode("utf-8", "replace")
            if stdout[1] is None and _norm(got) == _norm(expected):
                return "passed", "", {}
            return "failed", f"wrong output: expected {_clip(expected)!r}, got {_clip(got)!r}", {}

        return {"cand_pid": cand, "timed_out": not ready, "finish": finish}

    def _judge(self):
        """The warm judge process (pid, socket). Forked at start-up and, between jobs, whenever it
        was dropped; only ever from a worker whose secret buffer is wiped. Recycled every
        JUDGE_JOBS jobs so that whatever test code leaves behind cannot pile up."""
        if self.judge is not None and self.judge_jobs >= JUDGE_JOBS:
            self._drop_judge()
        if self.judge is None:
            mine, theirs = socket.socketpair()
            devnull = os.open(os.devnull, os.O_RDWR)
            pid = self._fork_job(self.uids[1] if self.uids else None,
                                 {0: devnull, 1: devnull, 2: devnull, 3: theirs.fileno()},
                                 lambda: pyharness.judge_loop(3), candidate=False)
            os.close(devnull)
            theirs.close()
            self.judge, self.judge_jobs = (pid, mine), 0
        return self.judge

    def _drop_judge(self):
        if self.judge is None:
            return
        pid, sock = self.judge
        self.judge = None
        sock.close()
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass

    def _bend(self, job, secret_len, in_fd, out_fd, err_fd, deadline):
        """A Bend job, sealed (bendseal.py): the nonce goes down a pipe that the job's shim empties
        before the program runs; what the program prints comes back on its own descriptor."""
        argv = bend_backend.command(job["runtime"], self.cfg["bend"], self.shim)
        nonce = [secrets.randbelow(1 << 24) for _ in range(3)]
        end = bendseal.new_end_mark()
        ctrl_r, ctrl_w = os.pipe()
        os.write(ctrl_w, json.dumps({"nonce": nonce, "hvm": self.cfg["hvm"], "end": end}).encode())
        os.close(ctrl_w)
        printed_fd = os.memfd_create("printed")
        cand = self._fork_job(self.uids[0] if self.uids else None,
                              {0: in_fd, 1: out_fd, 2: err_fd, bendseal.CONTROL_FD: ctrl_r, bendseal.PRINTED_FD: printed_fd},
                              lambda: _run_bend(job["program"], end, argv), candidate=True, bend=True)
        os.close(ctrl_r)
        secret = json.loads(bytes(self.read_secret(secret_len)))
        self.wipe_secret(secret_len)
        ready = _wait_exit(cand, deadline)

        def finish(children, stdout, stderr):
            printed = _read_capped(printed_fd)
            os.close(printed_fd)
            status_word = children.get(cand, (0,))[0]
            code = os.WEXITSTATUS(status_word) if os.WIFEXITED(status_word) else -os.WTERMSIG(status_word)
            run = bend_backend.parse_output(stdout[0].decode("utf-8", "replace"), stderr[0].decode("utf-8", "replace"),
                                            code, nonce, printed[0].decode("utf-8", "replace"))
            status, detail = bend_backend.verdict(run, secret.get("expected_result"), secret.get("expected_stdout"))
            if status != "passed" and f"hvm was killed by signal {int(signal.SIGXCPU)}" in run.errors:
                # bend only says "HVM output had no result"; the seal saw hvm die at RLIMIT_CPU
                status, detail = "timeout", f"CPU time limit of {self.limits['cpu_s']} s reached (by hvm)"
            size = len(printed[0]) if printed[1] is None else printed[1]
            if status != "passed":
                if size >= self.limits["fsize_mb"] << 20:
                    detail = f"the program's output reached the {self.limits['fsize_mb']} MB output limit; {detail}"
                detail += _tail(printed, "output")
            return status, detail, {**run.stats, "output_bytes": size}

        return {"cand_pid": cand, "timed_out": not ready, "finish": finish}

    # -- processes -------------------------------------------------------------------------------

    def _fork_job(self, uid, fds: dict, body, candidate: bool, bend: bool = False) -> int:
        """Fork a job process: own session, cgroup (candidate only), rlimits, scratch dir, the given
        descriptors and no others, a private uid, an empty environment; then run `body`."""
        pid = os.fork()
        if pid:
            return pid
        code = 70
        try:
            os.setsid()
            with open("/proc/self/oom_score_adj", "w") as fh:
                fh.write("1000" if candidate else "0")
            os.chdir(self.scratch if candidate else "/")
            _arrange_fds(fds)  # before RLIMIT_NOFILE: it parks descriptors at high numbers
            self._set_rlimits(candidate, bend)
            if uid is not None:
                os.setgroups([])
                os.setresgid(uid, uid, uid)
                os.setresuid(uid, uid, uid)
            os.environ.clear()
            home = self.scratch if candidate else "/"
            os.environ.update({"PATH": self.cfg["path"], "HOME": home, "TMPDIR": home, "LANG": "C.UTF-8",
                               "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
            sys.argv = ["program"]
            if candidate:
                sys.path[0:0] = [self.scratch]
            code = body() or 0
        except BaseException as e:  # our set-up failed: say why on the job's stderr
            code = 71
            try:
                os.write(2, f"job set-up failed: {type(e).__name__}: {e}\n".encode())
            except BaseException:
                pass
        finally:
            os._exit(code)

    def _set_rlimits(self, candidate: bool, bend: bool):
        lim = self.limits
        mem = lim["memory_mb"] << 20
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if candidate:
            resource.setrlimit(resource.RLIMIT_CPU, (lim["cpu_s"], lim["cpu_s"] + 1))
        else:
            # the judge lives across jobs, so a CPU-time limit would add up; the wall clock bounds it
            mem = max(mem, 2048 << 20)  # trusted test code: keep it from failing before the program
        # HVM reserves its whole heap as address space up front: bound Bend jobs by the memory cgroup
        # instead, and without one let the address space hold that reservation on top of memory_mb
        if bend and not self.cfg.get("has_memory_cgroup"):
            mem += bend_backend.HVM_ADDRESS_SPACE_MB << 20
        if not (bend and self.cfg.get("has_memory_cgroup")):
            resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        resource.setrlimit(resource.RLIMIT_FSIZE, ((lim["fsize_mb"] << 20),) * 2)
        resource.setrlimit(resource.RLIMIT_NOFILE, (lim["nofile"], lim["nofile"]))
        if self.uids:  # RLIMIT_NPROC counts per uid; without a private uid it would count the user's
            resource.setrlimit(resource.RLIMIT_NPROC, (lim["nproc"], lim["nproc"]))

    def _kill_and_reap(self) -> dict:
        """SIGKILL every process of the job and reap them all; {pid: (wait status, rusage)}.

        Every process a job starts is a descendant of this worker (it is a child subreaper, so
        orphans come back to it, daemonised or not). Kill them all but the idle judge, reap, look
        again, until none is left; rlimits and pids.max bound how many a fork bomb can add meanwhile.
        """
        keep = {self.judge[0]} if self.judge else set()
        reaped = {}
        while True:
            victims = _descendants() - keep
            for pid in victims:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            got = False
            while True:
                try:
                    pid, status, usage = os.wait4(-1, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid == 0:
                    break
                if pid in keep:  # the judge died on its own (a test killed it, say): fork anew next time
                    self.judge = None
                    keep = set()
                reaped[pid] = (status, usage)
                got = True
            if not victims:  # zombies count as descendants, so this means: all gone and reaped
                return reaped
            if not got:
                time.sleep(0.0002)

    def _oom_kills(self) -> int:
        """OOM events of the memory cgroup so far (v1 oom_kill; v2 oom + oom_kill of memory.events)."""
        if not self.oom_file:
            return 0
        counters = cgroups.read_counters(self.oom_file)
        return sum(counters.get(key, 0) for key in self.oom_keys)

    def _usage(self) -> int:
        if not self.usage_file:
            return 0
        with open(self.usage_file) as f:
            return int(f.read())

    def _reset_peak(self):
        if self.peak_fd is None:
            return
        try:
            os.pwrite(self.peak_fd, self.peak_reset, 0)
        except OSError:  # cannot be reset after all: no peak rather than a wrong one
            os.close(self.peak_fd)
            self.peak_fd = None

    def _peak(self):
        if self.peak_fd is None:
            return None
        return int(os.pread(self.peak_fd, 64, 0).split()[0])


# -- helpers -------------------------------------------------------------------------------------

def _run_bend(program: str, end: str, argv: list) -> int:
    """The Bend job process: write main.bend (the program, the seal's helper, the end mark), then
    run bend (its --hvm-bin shim seals the run) or, for hvm runtimes, `bend gen-hvm` and the sealed
    hvm run right here."""
    with open("main.bend", "w") as f:
        f.write(program + bendseal.SEAL_SOURCE + bendseal.end_source(end))
    if argv[0] != "gen-hvm":
        os.execve(argv[0], argv, dict(os.environ))
    import subprocess

    bendseal._non_dumpable()
    ctrl = bendseal.read_control()
    r = subprocess.run(argv[1], stdout=subprocess.PIPE)  # compiles only: no program code runs yet
    if r.returncode != 0:
        return 100 + min(r.returncode, 100) if r.returncode > 0 else 99
    net = r.stdout.decode("utf-8", "replace")
    if not bendseal.has_end(net, ctrl["end"]):
        os.write(2, bendseal.END_MISSING.encode())
        return 1
    return bendseal.run_sealed(ctrl["hvm"], argv[2], net, ctrl["nonce"])


def _write_shim(path: str):
    """bendseal.py as an executable script (bend's --hvm-bin), root-owned and read-only for jobs."""
    with open(bendseal.__file__) as f:
        src = f.read()
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(f"#!{sys.executable} -IS\n{src}")
    os.chmod(tmp, 0o755)
    os.rename(tmp, path)


def _arrange_fds(fds: dict):
    """Make the open descriptors exactly `fds` ({target: source}); close every other one."""
    parked = {target: os.dup2(src, 1000 + target) for target, src in fds.items()}  # no clobbering
    for target, src in parked.items():
        os.dup2(src, target)
    os.closerange(max(fds) + 1, 1 << 16)
    for target in range(max(fds)):
        if target not in fds:
            try:
                os.close(target)
            except OSError:
                pass


def _descendants() -> set:
    """pids of every process below this one (zombies included), from /proc."""
    me = os.getpid()
    parent = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    stat = f.read()
                parent[int(name)] = int(stat[stat.rindex(b")") + 2:].split()[1])
            except (OSError, ValueError, IndexError):
                continue  # gone meanwhile
    out = set()
    for pid in parent:
        p, hops = pid, 0
        while p in parent and p != me and hops < 4096:
            p, hops = parent[p], hops + 1
        if p == me and pid != me:
            out.add(pid)
    return out


def _wait_readable(fd: int, deadline: float) -> bool:
    while True:
        left = deadline - time.perf_counter()
        if left <= 0:
            return False
        try:
            r, _, _ = select.select([fd], [], [], left)
        except InterruptedError:
            continue
        return bool(r)


def _wait_exit(pid: int, deadline: float) -> bool:
    pidfd = os.pidfd_open(pid)
    try:
        return _wait_readable(pidfd, deadline)
    finally:
        os.close(pidfd)


def _read_report(fd: int):
    """One JSON frame from a pipe whose writers are all gone or done; None if absent/garbled."""
    try:
        obj = proto.read_json(fd, 1 << 20)
    except (OSError, EOFError, proto.ProtocolError):
        return None
    return obj if isinstance(obj, dict) else None


def _read_capped(fd: int):
    """(first _OUTPUT_CAP bytes, total size if larger else None)."""
    size = os.fstat(fd).st_size
    data = os.pread(fd, min(size, _OUTPUT_CAP), 0)
    return data, (size if size > _OUTPUT_CAP else None)


def _tail(captured, label="stderr") -> str:
    text = captured[0].decode("utf-8", "replace").strip()
    return f"\n--- {label} ---\n{text[-600:]}" if text else ""


def _clip(s: str, n: int = 200) -> str:
    return s if len(s) <= n else s[:n] + "..."


def _norm(s: str) -> str:
    return "\n".join(line.rstrip() for line in s.strip().splitlines())


def _rmtree(path: str):
    """Delete the scratch dir without following links (the job may have planted some)."""
    for root, dirs, files in os.walk(path, topdown=False):
        for name in files:
            os.unlink(os.path.join(root, name))
        for name in dirs:
            p = os.path.join(root, name)
            if os.path.islink(p):
                os.unlink(p)
            else:
                os.rmdir(p)
    os.rmdir(path)


def main(argv=None):
    cfg = json.loads((argv or sys.argv)[1])
    Worker(cfg).serve()


if __name__ == "__main__":
    main()
