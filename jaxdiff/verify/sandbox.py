"""Isolation primitives: what this machine offers, the isolation level, the bubblewrap command line.

Layers, outermost first (docs/verify.md has the full model):
  1. bubblewrap puts each warm worker in new network, pid, ipc and uts namespaces and a mount
     namespace where `/` is read-only, /tmp is a small private tmpfs, home directories and /run
     are hidden, and the environment is empty.
  2. Each worker and the jobs it forks share a cgroup (memory and process count; v1 or v2, see
     cgroups.py); each job has rlimits, its own session, a private scratch dir and a private
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

from jaxdiff.verify import cgroups

MASKED_DIRS = ("/root", "/home", "/run", "/mnt", "/media", "/srv")
WORKER_CAPS = ("CAP_KILL", "CAP_SETUID", "CAP_SETGID", "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER",
               "CAP_SYS_RESOURCE")
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
PRIMITIVES = ("bwrap", "uid separation", "cgroup memory", "cgroup pids")


class SandboxUnavailable(RuntimeError):
    """Raised at pool start-up when an isolation primitive is missing and the caller did not opt out."""


@dataclasses.dataclass(frozen=True)
class Isolation:
    """What `probe` found: for each primitive, None when it works or the reason it does not; and
    the cgroup plan (which version, which directories)."""

    bwrap: str | None
    problems: dict
    cgroups: cgroups.Plan | None = None

    @property
    def missing(self) -> list[str]:
        return [name for name in PRIMITIVES if self.problems.get(name)]

    @property
    def level(self) -> str:
        """cgroup-v1 / cgroup-v2: everything works; reduced: bwrap and private uids, no (complete)
        cgroup; unsandboxed: bwrap or private uids missing too."""
        missing = self.missing
        if "bwrap" in missing or "uid separation" in missing:
            return "unsandboxed"
        if missing or self.cgroups is None or self.cgroups.version is None:
            return "reduced"
        return "cgroup-" + self.cgroups.version

    def report(self) -> str:
        lines = []
        for name in PRIMITIVES:
            why = self.problems.get(name)
            where = ""
            if not why and name.startswith("cgroup ") and self.cgroups is not None:
                where = f" ({self.cgroups.version}: {self.cgroups.dirs.get(name[len('cgroup '):], '?')})"
            lines.append(f"  {name:15s} {'ok' + where if not why else 'MISSING: ' + why}")
        if self.cgroups is not None:
            lines.append(f"  {'cgroups':15s} {self.cgroups.layout.describe()}")
        lines.append(f"  {'level':15s} {self.level}")
        return "\n".join(lines)


def probe(bwrap: str | None = "bwrap", cgroup_root: str | None = None) -> Isolation:
    """Try each primitive for real (a throwaway sandbox, a throwaway cgroup). `cgroup_root`: a
    delegated cgroup v2 directory to use instead of this process's own group."""
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
    plan = cgroups.plan(cgroup_root)
    for ctrl, why in plan.problems.items():
        problems[f"cgroup {ctrl}"] = why
    if problems.get("bwrap"):
        path = None
    return Isolation(bwrap=path, problems=problems, cgroups=plan)


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
