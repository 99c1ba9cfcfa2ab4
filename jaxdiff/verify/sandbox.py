"""Isolation primitives: what this machine offers, the bubblewrap command line, cgroup v1 limits.

Layers, outermost first (docs/verify.md has the full model):
  1. bubblewrap puts each warm worker in new network, pid, ipc and uts namespaces and a mount
     namespace where `/` is read-only, /tmp is a small private tmpfs, home directories and /run
     are hidden, and the environment is empty.
  2. Each job is a fresh fork of that worker, moved into its own cgroup (memory and process
     count for the whole job), with rlimits, its own session, a private scratch dir and a private
     unprivileged uid (so RLIMIT_NPROC binds and it can touch nothing of the worker's).
  3. At the end of a job the worker, alone with its jobs in its pid namespace, SIGKILLs every
     process but itself with one kill(-1) and reaps them: nothing outlives a job.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys

MASKED_DIRS = ("/root", "/home", "/run", "/mnt", "/media", "/srv")
WORKER_CAPS = ("CAP_KILL", "CAP_SETUID", "CAP_SETGID", "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER",
               "CAP_SYS_RESOURCE")
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
CGROUP_ROOT = "/sys/fs/cgroup"
PRIMITIVES = ("bwrap", "uid separation", "cgroup memory", "cgroup pids")


class SandboxUnavailable(RuntimeError):
    """Raised at pool start-up when an isolation primitive is missing and the caller did not opt out."""


@dataclasses.dataclass(frozen=True)
class Isolation:
    """What `probe` found: for each primitive, None when it works or the reason it does not."""

    bwrap: str | None
    problems: dict

    @property
    def missing(self) -> list[str]:
        return [name for name in PRIMITIVES if self.problems.get(name)]

    def report(self) -> str:
        lines = []
        for name in PRIMITIVES:
            why = self.problems.get(name)
            lines.append(f"  {name:15s} {'ok' if not why else 'MISSING: ' + why}")
        return "\n".join(lines)


def probe(bwrap: str | None = "bwrap") -> Isolation:
    """Try each primitive for real (a throwaway sandbox, a throwaway cgroup)."""
    problems = {}
    path = shutil.which(bwrap) if bwrap else None
    if not path:
        problems["bwrap"] = (f"'{bwrap}' not found on PATH (Debian/Ubuntu: apt-get install bubblewrap)"
                             if bwrap else "disabled by the caller")
    else:
        argv = bwrap_argv(path, keep_paths=needed_paths(), bind_rw=[]) + [sys.executable, "-I", "-c", ""]
        try:
            r = subprocess.run(argv, env=clean_env(), capture_output=True, timeout=30)
            if r.returncode != 0:
                problems["bwrap"] = f"bwrap failed (exit {r.returncode}): {r.stderr.decode(errors='replace').strip()[:300]}"
        except (OSError, subprocess.TimeoutExpired) as e:
            problems["bwrap"] = f"bwrap failed: {e}"
    if os.geteuid() != 0:
        problems["uid separation"] = ("not running as root: jobs would share the pool's uid, so "
                                      "RLIMIT_NPROC counts the user's processes and a job could signal its worker")
    for ctrl in ("memory", "pids"):
        why = _probe_cgroup(ctrl)
        if why:
            problems[f"cgroup {ctrl}"] = why
    if problems.get("bwrap"):
        path = None
    return Isolation(bwrap=path, problems=problems)


def clean_env() -> dict:
    """The only environment any sandboxed process starts from (even bwrap itself: /proc/1/environ
    inside the sandbox would otherwise show the pool's environment)."""
    return {"PATH": SAFE_PATH, "LANG": "C.UTF-8"}


def needed_paths() -> list[str]:
    """Paths the interpreter and this package need, re-exposed (read-only) if under a masked dir."""
    import jaxdiff

    candidates = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, os.path.dirname(sys.executable))}
    candidates.add(os.path.dirname(os.path.realpath(os.path.dirname(jaxdiff.__file__))))
    candidates.update(os.path.realpath(p) for p in sys.path if p and os.path.isdir(p))
    return sorted(candidates)


def bwrap_argv(bwrap: str, keep_paths: list[str], bind_rw: list[str], tmp_mb: int = 256) -> list[str]:
    """The bubblewrap command line (everything before the command to run inside)."""
    argv = [bwrap, "--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
            "--die-with-parent", "--new-session", "--ro-bind", "/", "/"]
    masked = [d for d in MASKED_DIRS if os.path.isdir(d) and not os.path.islink(d)]
    for d in masked:
        argv += ["--tmpfs", d]
    argv += ["--size", str(tmp_mb << 20), "--tmpfs", "/tmp"]
    masked.append("/tmp")  # a checkout or venv under /tmp must come back too
    # a kept path under a masked dir comes back read-only (a kept path that *is* a masked dir too)
    made = set()
    for p in _top_level(keep_paths):
        home = next((d for d in masked if p == d or p.startswith(d + "/")), None)
        if home is None:
            continue
        parts = p[len(home):].strip("/").split("/")[:-1]
        for k in range(1, len(parts) + 1):  # bwrap would make them 0700: unreadable for job uids
            a = home + "/" + "/".join(parts[:k])
            if a not in made:
                made.add(a)
                argv += ["--perms", "0755", "--dir", a]
        argv += ["--ro-bind", p, p]
    argv += ["--proc", "/proc", "--dev", "/dev"]
    for p in bind_rw:
        argv += ["--bind", p, p]
    if os.geteuid() == 0:
        argv += ["--cap-drop", "ALL"]
        for cap in WORKER_CAPS:
            argv += ["--cap-add", cap]
    argv += ["--chdir", "/tmp", "--clearenv", "--setenv", "PATH", SAFE_PATH, "--setenv", "LANG", "C.UTF-8", "--"]
    return argv


def _top_level(paths):
    out = []
    for p in sorted(set(paths)):
        if not any(p.startswith(q + "/") for q in out):
            out.append(p)
    return out


# ---------------------------------------------------------------------------------------------
# cgroup v1 (memory, pids): one child group per worker, under the pool's own group.
# ---------------------------------------------------------------------------------------------

def _own_cgroup(ctrl: str) -> str | None:
    """Directory of this process's cgroup in the v1 hierarchy of `ctrl`, or None."""
    try:
        with open("/proc/self/cgroup") as f:
            for line in f:
                _, ctrls, path = line.rstrip("\n").split(":", 2)
                if ctrl in ctrls.split(","):
                    d = os.path.join(CGROUP_ROOT, ctrl, path.lstrip("/"))
                    return d if os.path.isdir(d) else None
    except OSError:
        return None
    return None


def _probe_cgroup(ctrl: str) -> str | None:
    base = _own_cgroup(ctrl)
    if base is None:
        return f"no cgroup v1 '{ctrl}' hierarchy mounted under {CGROUP_ROOT} (cgroup v2-only hosts are not supported)"
    test = os.path.join(base, f"jaxdiff-probe-{os.getpid()}")
    try:
        os.mkdir(test)
        os.rmdir(test)
    except OSError as e:
        return f"cannot create a cgroup under {base}: {e.strerror}"
    return None


# The worker and (while a test runs) the judge share their job's groups; this is their allowance.
WORKER_HEADROOM_MB = 256
WORKER_HEADROOM_PIDS = 8


class JobCgroups:
    """The memory and pids cgroups of one worker and every job it forks.

    The worker joins them at start-up and each job inherits them at fork (moving a process into a
    v1 cgroup costs milliseconds; inheriting costs nothing). Limits are set once: the job's
    allowance plus WORKER_HEADROOM_*; per job the worker reads the peak and the OOM-kill counter.
    """

    def __init__(self, name: str, memory_mb: int | None, nproc: int | None):
        self.dirs = {}
        if memory_mb is not None:
            d = self._make("memory", name)
            limit = (memory_mb + WORKER_HEADROOM_MB) << 20
            _write(os.path.join(d, "memory.limit_in_bytes"), limit)
            memsw = os.path.join(d, "memory.memsw.limit_in_bytes")
            if os.path.exists(memsw):  # with swap accounting, swap must not extend the limit
                _write(memsw, limit)
        if nproc is not None:
            d = self._make("pids", name)
            _write(os.path.join(d, "pids.max"), nproc + WORKER_HEADROOM_PIDS)

    def _make(self, ctrl, name):
        d = os.path.join(_own_cgroup(ctrl), name)
        if os.path.isdir(d):
            _empty(d)
            os.rmdir(d)
        os.mkdir(d)
        self.dirs[ctrl] = d
        return d

    @property
    def procs_files(self) -> list[str]:
        return [os.path.join(d, "cgroup.procs") for d in self.dirs.values()]

    def remove(self):
        for d in self.dirs.values():
            try:
                _empty(d)
                os.rmdir(d)
            except OSError:
                pass


def _empty(d):
    """SIGKILL whatever is still in a cgroup (only after its worker is gone)."""
    import signal
    import time

    for _ in range(100):
        try:
            with open(os.path.join(d, "cgroup.procs")) as f:
                pids = [int(x) for x in f.read().split()]
        except OSError:
            return
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.01)


def _write(path, value):
    with open(path, "w") as f:
        f.write(str(value))
