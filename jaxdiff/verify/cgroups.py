"""cgroups for the verifier pool: which hierarchy this host has, and one memory + pids group per worker.

Detection reads /proc/self/mountinfo (where each hierarchy is mounted, which controllers each v1
mount carries) and /proc/self/cgroup (this process's group in each): no path is guessed.

* cgroup v1: the worker's group is a child of this process's own group in the `memory` and in the
  `pids` hierarchy. The worker joins it itself, inside its sandbox; jobs inherit it at fork.
* cgroup v2: a delegated subtree D, this process's own group or a configured root. A controller
  reaches a child only when enabled in the parent's `cgroup.subtree_control`, and a group (other
  than the root) with controllers enabled there may hold no processes itself ("no internal
  processes"), so `V2Tree.prepare` first moves the processes of D (this one included) into the leaf
  D/jaxdiff-leaf, then writes "+memory +pids". Each worker gets D/<name> with `memory.max`,
  `memory.swap.max` (0: swap must not stretch the limit) and `pids.max`; its sandbox starts inside
  it (under bwrap's cgroup namespace the worker could not move there itself). OOM kills show in
  `memory.events`, the peak in `memory.peak`; `cgroup.kill` empties a group (else every pid in
  `cgroup.procs` is killed), then it is removed.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import re
import signal
import time

CONTROLLERS = ("memory", "pids")  # what the pool limits
V1_CONTROLLERS = ("cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "net_cls", "net_prio", "blkio",
                  "perf_event", "hugetlb", "pids", "rdma", "misc")  # what a v1 mount's options may name
LEAF = "jaxdiff-leaf"
# The worker and (while a test runs) the judge share their jobs' group; this is their allowance.
WORKER_HEADROOM_MB = 256
WORKER_HEADROOM_PIDS = 8
# kernel entry points, named so that tests can stand in for the kernel on a plain directory tree
_mkdir = os.mkdir
_rmdir = os.rmdir


class CgroupError(RuntimeError):
    """A cgroup cannot be set up; the message names the file or directory and why."""


# -- where the hierarchies are --------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Mount:
    fstype: str  # "cgroup" (v1) or "cgroup2"
    root: str  # the part of the hierarchy this mount shows (usually "/")
    mountpoint: str
    options: tuple  # super options: for v1, its controllers (and name=...)


def parse_mountinfo(text: str) -> list[Mount]:
    """The cgroup mounts in a /proc/<pid>/mountinfo text (proc(5): `... root mountpoint opts - fstype src superopts`)."""
    out = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or not tail or tail[0] not in ("cgroup", "cgroup2"):
            continue
        opts = tuple(tail[2].split(",")) if len(tail) > 2 else ()
        out.append(Mount(tail[0], _unescape(fields[3]), _unescape(fields[4]), opts))
    return out


def parse_proc_cgroup(text: str) -> tuple[str | None, dict]:
    """(this process's v2 path or None, {v1 controller: path}) from a /proc/<pid>/cgroup text."""
    v2, v1 = None, {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hier, ctrls, path = parts
        if hier == "0" and not ctrls:
            v2 = path
        for c in ctrls.split(","):
            if c:
                v1[c] = path
    return v2, v1


@dataclasses.dataclass(frozen=True)
class Layout:
    """What /proc says: mode "v1", "v2", "hybrid" (both mounted) or "none"."""

    mode: str
    v1_controllers: tuple  # controllers bound to a mounted v1 hierarchy
    v1_dirs: dict  # controller -> this process's group directory in its v1 hierarchy
    v2_mount: str | None
    v2_dir: str | None  # this process's group directory in the v2 hierarchy
    v2_controllers: tuple  # what the v2 mount's root offers (its cgroup.controllers)

    def describe(self) -> str:
        parts = []
        if self.v1_controllers:
            mine = [c for c in CONTROLLERS if c in self.v1_controllers]
            parts.append(f"v1 with {' '.join(mine) or 'neither memory nor pids'}")
        if self.v2_mount:
            parts.append(f"v2 at {self.v2_mount} offering {' '.join(self.v2_controllers) or 'no controllers'}")
        return f"{self.mode} ({'; '.join(parts)})" if parts else "none mounted"


def detect(mountinfo: str = "/proc/self/mountinfo", proc_cgroup: str = "/proc/self/cgroup") -> Layout:
    """The cgroup layout this process sees (the paths are parameters for tests)."""
    mounts = parse_mountinfo(_read(mountinfo, ""))
    v2_path, v1_paths = parse_proc_cgroup(_read(proc_cgroup, ""))
    v1_ctrls, v1_dirs = [], {}
    for m in mounts:
        if m.fstype != "cgroup":
            continue
        for c in m.options:
            if c in V1_CONTROLLERS:
                v1_ctrls.append(c)
                d = _resolve(m, v1_paths.get(c))
                if d and os.path.isdir(d):
                    v1_dirs.setdefault(c, d)
    v2_mount = v2_dir = None
    for m in mounts:
        if m.fstype == "cgroup2":
            d = _resolve(m, v2_path)
            if d and os.path.isdir(d):
                v2_mount, v2_dir = m.mountpoint, d
                break
            v2_mount = v2_mount or m.mountpoint
    v2_ctrls = tuple(_read(os.path.join(v2_mount, "cgroup.controllers"), "").split()) if v2_mount else ()
    mode = {(True, True): "hybrid", (True, False): "v1", (False, True): "v2"}.get(
        (bool(v1_ctrls), v2_mount is not None), "none")
    return Layout(mode, tuple(dict.fromkeys(v1_ctrls)), v1_dirs, v2_mount, v2_dir, v2_ctrls)


def _resolve(mount: Mount, path: str | None) -> str | None:
    """Directory of hierarchy path `path` under this mount, or None if the mount does not show it."""
    if path is None:
        return None
    root = mount.root.rstrip("/")
    if root and path != root and not path.startswith(root + "/"):
        return None
    return os.path.join(mount.mountpoint, path[len(root):].lstrip("/")).rstrip("/") or "/"


def _unescape(s: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), s)


# -- which version the pool uses, and whether it works here ---------------------------------------

@dataclasses.dataclass(frozen=True)
class Plan:
    """The pool's cgroup plan: version "v1" / "v2" / None, the base directory per controller, and
    for each controller that cannot be used, why."""

    version: str | None
    dirs: dict
    problems: dict
    layout: Layout


def plan(root: str | None = None, layout: Layout | None = None) -> Plan:
    """Choose v1 where memory or pids is bound to v1, else v2 (at `root` if given: always v2), and
    try it: a throwaway child group in each base directory."""
    layout = layout or detect()
    if root is None and any(c in layout.v1_controllers for c in CONTROLLERS):
        return _plan_v1(layout)
    base = root or layout.v2_dir
    if base is None:
        if layout.mode == "none":
            why = "no cgroup hierarchy is mounted (/proc/self/mountinfo has neither cgroup nor cgroup2)"
        elif layout.v2_mount is None:
            why = "no v1 hierarchy carries it and no cgroup2 is mounted (/proc/self/mountinfo)"
        else:
            why = f"this process's cgroup v2 group (/proc/self/cgroup) is not visible under {layout.v2_mount}"
        return Plan(None, {}, {c: why for c in CONTROLLERS}, layout)
    problems = V2Tree(base).problems(layout)
    return Plan("v2", {c: base for c in CONTROLLERS if c not in problems}, problems, layout)


def _plan_v1(layout: Layout) -> Plan:
    dirs, problems = {}, {}
    for c in CONTROLLERS:
        d = layout.v1_dirs.get(c)
        if c not in layout.v1_controllers:
            problems[c] = (f"no cgroup v1 '{c}' hierarchy is mounted, and mixing v1 and v2 controllers is not "
                           "supported" + (f" ('{c}' is on cgroup v2 here)" if c in layout.v2_controllers else ""))
        elif d is None:
            problems[c] = f"this process's '{c}' group (/proc/self/cgroup) is not visible in its v1 mount"
        else:
            why = _try_child(d)
            if why:
                problems[c] = why
            else:
                dirs[c] = d
    return Plan("v1", dirs, problems, layout)


def _try_child(base: str) -> str | None:
    test = os.path.join(base, f"jaxdiff-probe-{os.getpid()}")
    try:
        _mkdir(test)
        _rmdir(test)
    except OSError as e:
        return f"cannot create a cgroup under {base}: {e.strerror}"
    return None


# -- cgroup v1 ------------------------------------------------------------------------------------

class V1Group:
    """One worker's groups in the v1 `memory` and `pids` hierarchies (children of this process's)."""

    def __init__(self, dirs: dict, name: str, memory_mb: int | None, nproc: int | None):
        self.dirs = {}
        if memory_mb is not None and "memory" in dirs:
            d = self._make(dirs["memory"], name, "memory")
            limit = (memory_mb + WORKER_HEADROOM_MB) << 20
            write(os.path.join(d, "memory.limit_in_bytes"), limit)
            memsw = os.path.join(d, "memory.memsw.limit_in_bytes")
            if os.path.exists(memsw):  # with swap accounting, swap must not stretch the limit
                write(memsw, limit)
        if nproc is not None and "pids" in dirs:
            d = self._make(dirs["pids"], name, "pids")
            write(os.path.join(d, "pids.max"), nproc + WORKER_HEADROOM_PIDS)

    def _make(self, base, name, ctrl):
        d = os.path.join(base, name)
        if os.path.isdir(d):  # left by a pool that died: same pid, same slot
            kill_all(d)
            _rmdir(d)
        _mkdir(d)
        self.dirs[ctrl] = d
        return d

    def worker_config(self) -> dict:
        """What the worker reads and writes (see worker.Worker): it joins the groups itself."""
        cfg = {"cgroup_join": [os.path.join(d, "cgroup.procs") for d in self.dirs.values()]}
        if "memory" in self.dirs:
            m = self.dirs["memory"]
            cfg.update(has_memory_cgroup=True, oom_file=os.path.join(m, "memory.oom_control"), oom_keys=["oom_kill"],
                       usage_file=os.path.join(m, "memory.usage_in_bytes"),
                       peak_file=os.path.join(m, "memory.max_usage_in_bytes"), peak_reset="0")
        return cfg

    def launcher(self) -> list:
        return []

    def remove(self):
        for d in self.dirs.values():
            try:
                kill_all(d)
                _rmdir(d)
            except (OSError, CgroupError):
                pass


# -- cgroup v2 ------------------------------------------------------------------------------------

class V2Tree:
    """A delegated cgroup v2 subtree D in which the pool makes one group per worker."""

    def __init__(self, root: str):
        self.root = root.rstrip("/") or "/"

    def _file(self, name):
        return os.path.join(self.root, name)

    def problems(self, layout: Layout | None = None) -> dict:
        """{controller: why} for what D cannot give its children (empty when all is well)."""
        controllers = self._file("cgroup.controllers")
        if not os.path.isfile(controllers):
            why = f"{controllers} not found: {self.root} is not a cgroup v2 directory"
            return {c: why for c in CONTROLLERS}
        have = _read(controllers, "").split()
        out = {}
        for c in CONTROLLERS:
            if c not in have:
                where = ("it is bound to a cgroup v1 hierarchy on this host" if layout and c in layout.v1_controllers
                         else "the parent group must enable it in its cgroup.subtree_control (delegation)")
                out[c] = f"controller '{c}' is not available in {controllers} (it offers: {' '.join(have) or 'nothing'}); {where}"
        if not out:
            why = _try_child(self.root)
            if why:
                out = {c: why for c in CONTROLLERS}
        return out

    @property
    def is_root(self) -> bool:
        # only the hierarchy's real root lacks cgroup.type (a cgroup namespace's root has it)
        return not os.path.exists(self._file("cgroup.type"))

    def prepare(self, controllers=CONTROLLERS):
        """Enable `controllers` for D's children, first moving D's own processes into D/jaxdiff-leaf."""
        control = self._file("cgroup.subtree_control")
        missing = [c for c in controllers if c not in _read(control, "").split()]
        if not missing:
            return
        offered = self._file("cgroup.controllers")
        for c in missing:
            if c not in _read(offered, "").split():
                raise CgroupError(f"cannot enable {c} in {control}: controller '{c}' is not available in {offered}")
        if not self.is_root:
            self._evacuate()
        try:
            write(control, " ".join("+" + c for c in missing))
        except OSError as e:
            hint = (" (the group still holds processes: the no-internal-processes rule)" if e.errno == errno.EBUSY
                    else "")
            raise CgroupError(f"cannot enable {' '.join(missing)} in {control}: {e.strerror}{hint}") from None

    def _evacuate(self):
        procs = self._file("cgroup.procs")
        leaf = os.path.join(self.root, LEAF)
        for _ in range(10):  # processes may fork meanwhile: move until none is left
            pids = _pids(procs)
            if not pids:
                return
            if not os.path.isdir(leaf):
                _mkdir(leaf)
            for pid in pids:
                try:
                    write(os.path.join(leaf, "cgroup.procs"), pid)  # one pid per write(2)
                except ProcessLookupError:
                    pass
                except OSError as e:
                    raise CgroupError(f"cannot move process {pid} from {procs} into {leaf}: {e.strerror}") from None
        raise CgroupError(f"{procs} keeps gaining processes; cannot empty it")

    def group(self, name: str, memory_mb: int | None, nproc: int | None) -> "V2Group":
        return V2Group(os.path.join(self.root, name), memory_mb, nproc)


class V2Group:
    """One worker's cgroup v2 group: its limits, what the worker reads, how it starts inside, removal."""

    def __init__(self, path: str, memory_mb: int | None, nproc: int | None):
        self.dir = path
        if os.path.isdir(path):  # left by a pool that died: same pid, same slot
            self.remove()
        _mkdir(path)
        self.dirs = {"v2": path}
        self.memory = memory_mb is not None
        try:
            if memory_mb is not None:
                limit = (memory_mb + WORKER_HEADROOM_MB) << 20
                self._set("memory.max", limit, "memory")
                if os.path.exists(os.path.join(path, "memory.swap.max")):  # absent without swap accounting
                    self._set("memory.swap.max", 0, "memory")
            if nproc is not None:
                self._set("pids.max", nproc + WORKER_HEADROOM_PIDS, "pids")
        except BaseException:
            self.remove()
            raise

    def _set(self, name, value, ctrl):
        path = os.path.join(self.dir, name)
        if not os.path.exists(path):
            parent = os.path.join(os.path.dirname(self.dir), "cgroup.subtree_control")
            raise CgroupError(f"{path} does not exist: the '{ctrl}' controller is not enabled in {parent}")
        try:
            write(path, value)
        except OSError as e:
            raise CgroupError(f"cannot write {value} to {path}: {e.strerror}") from None

    @property
    def procs_file(self) -> str:
        return os.path.join(self.dir, "cgroup.procs")

    def worker_config(self) -> dict:
        """What the worker reads (see worker.Worker); it starts inside the group, see `launcher`."""
        if not self.memory:
            return {"cgroup_join": []}
        peak = os.path.join(self.dir, "memory.peak")
        return {"cgroup_join": [], "has_memory_cgroup": True, "oom_file": os.path.join(self.dir, "memory.events"),
                "oom_keys": ["oom", "oom_kill"], "usage_file": os.path.join(self.dir, "memory.current"),
                **({"peak_file": peak, "peak_reset": "reset"} if os.path.exists(peak) else {})}

    def launcher(self) -> list:
        """argv prefix that starts a command inside this group: the shell joins it, then execs."""
        return ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', self.procs_file]

    def remove(self):
        try:
            kill_all(self.dir)
            _rmdir(self.dir)
        except (OSError, CgroupError):
            pass


# -- shared helpers -------------------------------------------------------------------------------

def kill_all(d: str, timeout_s: float = 2.0):
    """SIGKILL everything in group `d` and wait until it is empty: `cgroup.kill` where the kernel has
    it (v2, Linux >= 5.14), else every pid in `cgroup.procs`, again until none is left."""
    kill_file = os.path.join(d, "cgroup.kill")
    procs = os.path.join(d, "cgroup.procs")
    deadline = time.monotonic() + timeout_s
    while True:
        pids = _pids(procs)
        if not pids:
            return
        if os.path.exists(kill_file):
            try:
                write(kill_file, 1)
            except OSError:
                _kill(pids)
        else:
            _kill(pids)
        if time.monotonic() > deadline:
            raise CgroupError(f"{procs} still lists {pids[:8]} after SIGKILL")
        time.sleep(0.01)


def _kill(pids):
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _pids(procs_file: str) -> list[int]:
    try:
        with open(procs_file) as f:
            return [int(x) for x in f.read().split()]
    except (OSError, ValueError):
        return []


def read_counters(path: str) -> dict:
    """A flat-keyed cgroup file (`key value` per line) as {key: int}."""
    out = {}
    for line in _read(path, "").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


def write(path: str, value):
    with open(path, "w") as f:
        f.write(str(value))


def _read(path: str, default):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return default
