"""cgroups: detection from /proc, the v2 file handling on a directory tree laid out like the
kernel's (with the kernel's rules for mkdir, rmdir and the files whose writes it interprets), a
v2 group on this machine's real kernel, and real enforcement where v2 memory and pids controllers
exist (elsewhere that test skips, saying why)."""

import dataclasses
import errno
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from jaxdiff.verify import VerifierPool, cgroups, sandbox
from jaxdiff.verify.sandbox import probe

MB = 1 << 20


# -- detection ------------------------------------------------------------------------------------

# this project's machines: v1 memory/pids/..., and cgroup2 at /sys/fs/cgroup/unified with hugetlb only
HYBRID = """31 23 0:28 / {m} rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / {m}/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / {m}/cpu\\040acct rw,relatime - cgroup cgroup rw,cpu,cpuacct
39 31 0:36 / {m}/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / {m}/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / {m}/unified rw,relatime - cgroup2 cgroup2 rw
"""
HYBRID_SELF = "9:name=systemd:/\n8:pids:/\n4:memory:/process_api/b5f\n2:cpu,cpuacct:/\n0::/\n"
# a systemd host (unified) and a container with its own cgroup namespace
UNIFIED = "30 23 0:26 / {m} rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"
UNIFIED_SELF = "0::/user.slice/user-1000.slice/session-2.scope\n"
# a bind mount showing only part of the hierarchy (mount root /kubepods/pod1)
PARTIAL = "50 40 0:26 /kubepods/pod1 {m} ro,nosuid - cgroup2 cgroup2 rw\n"
PARTIAL_SELF = "0::/kubepods/pod1/ctr\n"
V1_ONLY = "35 31 0:32 / {m}/memory rw - cgroup cgroup rw,memory\n39 31 0:36 / {m}/pids rw - cgroup cgroup rw,pids\n"
V1_SELF = "8:pids:/a\n4:memory:/a\n"


def _layout(tmp_path, mountinfo, self_cgroup, dirs=(), v2_root=None, controllers=""):
    """detect() on a made-up /proc: mountinfo pointing into tmp_path/cg, these group dirs, and the v2
    mount's cgroup.controllers (at tmp_path/cg/v2_root)."""
    m = str(tmp_path / "cg")
    for d in dirs:
        os.makedirs(os.path.join(m, d), exist_ok=True)
    if v2_root is not None:
        with open(os.path.join(m, v2_root, "cgroup.controllers"), "w") as f:
            f.write(controllers)
    (tmp_path / "mountinfo").write_text(mountinfo.format(m=m))
    (tmp_path / "cgroup").write_text(self_cgroup)
    return cgroups.detect(str(tmp_path / "mountinfo"), str(tmp_path / "cgroup")), m


def test_detect_hybrid(tmp_path):
    lay, m = _layout(tmp_path, HYBRID, HYBRID_SELF, ["unified", "memory/process_api/b5f", "pids", "cpu acct"],
                     v2_root="unified", controllers="hugetlb")
    assert lay.mode == "hybrid"
    assert set(lay.v1_controllers) == {"memory", "cpu", "cpuacct", "pids"}  # name=systemd is no controller
    assert lay.v1_dirs["memory"] == f"{m}/memory/process_api/b5f" and lay.v1_dirs["pids"] == f"{m}/pids"
    assert lay.v1_dirs["cpu"] == f"{m}/cpu acct"  # \040 in mountinfo
    assert (lay.v2_mount, lay.v2_dir, lay.v2_controllers) == (f"{m}/unified", f"{m}/unified", ("hugetlb",))
    assert "hybrid" in lay.describe() and "hugetlb" in lay.describe()


def test_detect_unified_and_partial_mounts(tmp_path):
    lay, m = _layout(tmp_path, UNIFIED, UNIFIED_SELF, ["", "user.slice/user-1000.slice/session-2.scope"],
                     v2_root="", controllers="cpu io memory pids")
    assert lay.mode == "v2" and lay.v1_controllers == () and lay.v1_dirs == {}
    assert lay.v2_dir == f"{m}/user.slice/user-1000.slice/session-2.scope"
    assert lay.v2_controllers == ("cpu", "io", "memory", "pids")
    lay, m = _layout(tmp_path, PARTIAL, PARTIAL_SELF, ["", "ctr"])
    assert lay.mode == "v2" and lay.v2_dir == f"{m}/ctr"
    lay, m = _layout(tmp_path, V1_ONLY, V1_SELF, ["memory/a", "pids/a"])
    assert lay.mode == "v1" and lay.v2_mount is None and lay.v1_dirs == {"memory": f"{m}/memory/a", "pids": f"{m}/pids/a"}
    lay, _ = _layout(tmp_path, "22 1 0:5 / /proc rw - proc proc rw\n", "")
    assert lay.mode == "none"
    plan = cgroups.plan(layout=lay)
    assert plan.version is None and "neither cgroup nor cgroup2" in plan.problems["memory"]


def test_this_machine_is_detected_from_proc():
    lay = cgroups.detect()
    with open("/proc/self/mountinfo") as f:
        fstypes = {line.split(" - ")[1].split()[0] for line in f if " - " in line}
    assert (lay.v2_mount is not None) == ("cgroup2" in fstypes)
    assert bool(lay.v1_controllers) == any("cgroup" == t for t in fstypes)
    plan = cgroups.plan()
    if any(c in lay.v1_controllers for c in cgroups.CONTROLLERS):
        assert plan.version == "v1"  # where memory or pids is bound to v1, v1 it is


# -- cgroup v2 file handling on a tree laid out like the kernel's ----------------------------------

class FakeKernel:
    """A plain directory tree standing in for a cgroup2 mount: `mkdir` fills a new group with the
    interface files of the controllers its parent enables; `rmdir` refuses a group with processes;
    writes to cgroup.procs move a pid, to cgroup.subtree_control enable what cgroup.controllers
    offers (EBUSY while the group holds processes, unless it is the root), to cgroup.kill kill
    what is listed. A thread drops pids of processes that have exited, as the kernel does."""

    def __init__(self, root, controllers="cpu io memory pids", *, swap=True, kill=True, peak=True, nested=False):
        self.root, self.swap, self.kill, self.peak = str(root), swap, kill, peak
        os.makedirs(self.root, exist_ok=True)
        self._put(self.root, "cgroup.controllers", controllers)
        self._put(self.root, "cgroup.subtree_control", "")
        self._put(self.root, "cgroup.procs", "")
        if nested:  # a group below the real root (a delegated scope, a container's namespace root)
            self._put(self.root, "cgroup.type", "domain")
        self.writes = []
        self._stop = threading.Event()
        self._reaper = threading.Thread(target=self._reap, daemon=True)
        self._reaper.start()

    @staticmethod
    def _put(d, name, text):
        with open(os.path.join(d, name), "w") as f:
            f.write(text)

    @staticmethod
    def _get(d, name):
        with open(os.path.join(d, name)) as f:
            return f.read()

    def pids(self, d):
        return [int(x) for x in self._get(d, "cgroup.procs").split()]

    def groups(self):
        for d, _, files in os.walk(self.root):
            if "cgroup.procs" in files:
                yield d

    def mkdir(self, path, mode=0o777):
        os.mkdir(path, mode)
        enabled = self._get(os.path.dirname(path), "cgroup.subtree_control").split()
        files = {"cgroup.controllers": " ".join(enabled), "cgroup.subtree_control": "", "cgroup.procs": "",
                 "cgroup.type": "domain", "cgroup.events": "populated 0\nfrozen 0\n"}
        if self.kill:
            files["cgroup.kill"] = ""
        if "memory" in enabled:
            files.update({"memory.max": "max\n", "memory.current": "0\n",
                          "memory.events": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n"})
            if self.swap:
                files["memory.swap.max"] = "max\n"
            if self.peak:
                files["memory.peak"] = "0\n"
        if "pids" in enabled:
            files.update({"pids.max": "max\n", "pids.current": "0\n", "pids.events": "max 0\n"})
        for name, text in files.items():
            self._put(path, name, text)

    def rmdir(self, path):
        if self.pids(path) or any(os.path.isdir(os.path.join(path, x)) for x in os.listdir(path)):
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), path)
        for name in os.listdir(path):
            os.unlink(os.path.join(path, name))
        os.rmdir(path)

    def write(self, path, value):
        self.writes.append((os.path.relpath(path, self.root), str(value)))
        d, name = os.path.split(path)
        if name == "cgroup.procs":
            pid = int(value)
            for g in self.groups():
                self._put(g, "cgroup.procs", "".join(f"{p}\n" for p in self.pids(g) if p != pid))
            self._put(d, "cgroup.procs", "".join(f"{p}\n" for p in self.pids(d) + [pid]))
        elif name == "cgroup.subtree_control":
            offered = self._get(d, "cgroup.controllers").split()
            enabled = self._get(d, name).split()
            for token in str(value).split():
                if token[1:] not in offered:
                    raise OSError(errno.ENOENT, os.strerror(errno.ENOENT), path)
                if os.path.exists(os.path.join(d, "cgroup.type")) and self.pids(d):
                    raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), path)
                enabled = [c for c in enabled if c != token[1:]] + ([token[1:]] if token[0] == "+" else [])
            self._put(d, name, " ".join(enabled))
        elif name == "cgroup.kill":
            for pid in self.pids(d):
                os.kill(pid, signal.SIGKILL)
        elif not os.path.exists(path):
            raise OSError(errno.EACCES, os.strerror(errno.EACCES), path)  # the kernel creates no files
        else:
            self._put(d, name, str(value))

    def _reap(self):
        while not self._stop.wait(0.005):
            for g in list(self.groups()):
                try:
                    alive = [p for p in self.pids(g) if _alive(p)]
                    if alive != self.pids(g):
                        self._put(g, "cgroup.procs", "".join(f"{p}\n" for p in alive))
                except OSError:
                    pass

    def close(self):
        self._stop.set()
        self._reaper.join()


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture
def kernel(tmp_path, monkeypatch):
    made = []

    def make(**kw):
        k = FakeKernel(tmp_path / f"cg{len(made)}", **kw)
        made.append(k)
        monkeypatch.setattr(cgroups, "_mkdir", k.mkdir)
        monkeypatch.setattr(cgroups, "_rmdir", k.rmdir)
        monkeypatch.setattr(cgroups, "write", k.write)
        return k

    yield make
    for k in made:
        k.close()


def test_prepare_enables_memory_and_pids(kernel):
    k = kernel()  # the hierarchy's root (no cgroup.type): exempt from the no-internal-processes rule
    k._put(k.root, "cgroup.procs", f"{os.getpid()}\n")
    tree = cgroups.V2Tree(k.root)
    assert tree.problems() == {} and tree.is_root
    tree.prepare()
    assert k._get(k.root, "cgroup.subtree_control") == "memory pids"
    assert k.writes == [("cgroup.subtree_control", "+memory +pids")] and k.pids(k.root) == [os.getpid()]
    tree.prepare()  # already enabled: nothing written
    assert len(k.writes) == 1


def test_prepare_moves_a_delegated_groups_processes_into_a_leaf(kernel):
    k = kernel(nested=True)
    me, parent = os.getpid(), os.getppid()  # live processes: the fake kernel drops dead ones
    k._put(k.root, "cgroup.procs", f"{me}\n{parent}\n")
    cgroups.V2Tree(k.root).prepare()
    leaf = os.path.join(k.root, cgroups.LEAF)
    assert k.pids(leaf) == [me, parent] and k.pids(k.root) == []
    assert k.writes == [(f"{cgroups.LEAF}/cgroup.procs", str(me)), (f"{cgroups.LEAF}/cgroup.procs", str(parent)),
                        ("cgroup.subtree_control", "+memory +pids")]


def _refusing(write, name, err):
    def refuse(path, value):
        if path.endswith(name):
            raise OSError(err, os.strerror(err), path)
        write(path, value)
    return refuse


def test_missing_controllers_are_named_with_their_file(kernel, tmp_path, monkeypatch):
    k = kernel(controllers="cpu io memory")
    problems = cgroups.V2Tree(k.root).problems()
    assert list(problems) == ["pids"]
    assert f"controller 'pids' is not available in {k.root}/cgroup.controllers (it offers: cpu io memory)" in problems["pids"]
    assert "cgroup.subtree_control" in problems["pids"]  # what the parent must do
    plan = cgroups.plan(k.root)
    assert plan.version == "v2" and plan.dirs == {"memory": k.root} and list(plan.problems) == ["pids"]
    with pytest.raises(cgroups.CgroupError) as e:
        cgroups.V2Tree(k.root).prepare()
    assert str(e.value) == (f"cannot enable pids in {k.root}/cgroup.subtree_control: controller 'pids' is not "
                            f"available in {k.root}/cgroup.controllers")
    k._put(k.root, "cgroup.controllers", "cpu io memory pids")  # offered, but the kernel refuses the write
    k._put(k.root, "cgroup.type", "domain")
    k._put(k.root, "cgroup.procs", "")
    monkeypatch.setattr(cgroups, "write", _refusing(k.write, "cgroup.subtree_control", errno.EBUSY))
    with pytest.raises(cgroups.CgroupError, match="Device or resource busy .the group still holds processes"):
        cgroups.V2Tree(k.root).prepare()
    plain = tmp_path / "plain"
    plain.mkdir()
    problems = cgroups.plan(str(plain)).problems
    assert problems["memory"] == f"{plain}/cgroup.controllers not found: {plain} is not a cgroup v2 directory"


def test_a_process_that_cannot_be_moved_is_named(kernel, monkeypatch):
    k = kernel(nested=True)
    k._put(k.root, "cgroup.procs", f"{os.getpid()}\n")
    monkeypatch.setattr(cgroups, "write", _refusing(k.write, f"{cgroups.LEAF}/cgroup.procs", errno.EACCES))
    with pytest.raises(cgroups.CgroupError, match=f"cannot move process {os.getpid()} from {k.root}/cgroup.procs into "
                                                  f"{k.root}/{cgroups.LEAF}: Permission denied"):
        cgroups.V2Tree(k.root).prepare()


def test_worker_group_limits_and_config(kernel):
    k = kernel()
    tree = cgroups.V2Tree(k.root)
    tree.prepare()
    g = tree.group("w0", memory_mb=512, nproc=32)
    assert k._get(g.dir, "memory.max") == str((512 + cgroups.WORKER_HEADROOM_MB) * MB)
    assert k._get(g.dir, "memory.swap.max") == "0"  # swap must not stretch the limit
    assert k._get(g.dir, "pids.max") == str(32 + cgroups.WORKER_HEADROOM_PIDS)
    cfg = g.worker_config()
    assert cfg == {"cgroup_join": [], "has_memory_cgroup": True, "oom_file": f"{g.dir}/memory.events",
                   "oom_keys": ["oom", "oom_kill"], "usage_file": f"{g.dir}/memory.current",
                   "peak_file": f"{g.dir}/memory.peak", "peak_reset": "reset"}
    assert g.launcher() == ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', f"{g.dir}/cgroup.procs"]
    assert cgroups.read_counters(cfg["oom_file"])["oom_kill"] == 0
    g.remove()
    assert not os.path.exists(g.dir)


def test_optional_files_are_optional(kernel):
    k = kernel(swap=False, peak=False)  # no swap accounting; memory.peak before Linux 5.19
    tree = cgroups.V2Tree(k.root)
    tree.prepare()
    g = tree.group("w0", memory_mb=64, nproc=None)
    assert not os.path.exists(os.path.join(g.dir, "memory.swap.max")) and "peak_file" not in g.worker_config()
    assert k._get(g.dir, "pids.max") == "max\n"  # not asked for: untouched


def test_a_controller_not_enabled_is_named(kernel):
    k = kernel()
    tree = cgroups.V2Tree(k.root)
    tree.prepare(["memory"])
    with pytest.raises(cgroups.CgroupError) as e:
        tree.group("w0", memory_mb=64, nproc=8)
    assert str(e.value) == (f"{k.root}/w0/pids.max does not exist: the 'pids' controller is not enabled in "
                            f"{k.root}/cgroup.subtree_control")
    assert not os.path.exists(os.path.join(k.root, "w0"))  # nothing left behind


@pytest.mark.parametrize("has_kill", [True, False])
def test_remove_kills_everything_then_rmdirs(kernel, has_kill):
    k = kernel(kill=has_kill)  # without cgroup.kill (before Linux 5.14): every pid in cgroup.procs
    tree = cgroups.V2Tree(k.root)
    tree.prepare()
    g = tree.group("w0", memory_mb=64, nproc=8)
    procs = [subprocess.Popen(["sleep", "60"]) for _ in range(2)]
    for p in procs:
        k.write(g.procs_file, p.pid)
    k.writes.clear()
    reaper = threading.Thread(target=lambda: [p.wait() for p in procs])
    reaper.start()
    g.remove()
    reaper.join(5)
    assert [p.returncode for p in procs] == [-signal.SIGKILL] * 2 and not os.path.exists(g.dir)
    assert (("w0/cgroup.kill", "1") in k.writes) == has_kill


def test_v1_group_files(tmp_path, monkeypatch):
    monkeypatch.setattr(cgroups, "write", lambda path, value: open(path, "w").write(str(value)))
    dirs = {c: str(tmp_path / c) for c in ("memory", "pids")}
    for d in dirs.values():
        os.mkdir(d)
    g = cgroups.V1Group(dirs, "w0", 512, 32)
    assert (tmp_path / "memory/w0/memory.limit_in_bytes").read_text() == str((512 + 256) * MB)
    assert (tmp_path / "pids/w0/pids.max").read_text() == "40"
    cfg = g.worker_config()
    assert cfg["cgroup_join"] == [f"{dirs['memory']}/w0/cgroup.procs", f"{dirs['pids']}/w0/cgroup.procs"]
    assert cfg["oom_file"].endswith("memory.oom_control") and cfg["peak_reset"] == "0" and g.launcher() == []


# -- the real kernel ------------------------------------------------------------------------------

def _writable_v2():
    lay = cgroups.detect()
    d = lay.v2_dir
    if os.geteuid() != 0 or d is None or not os.access(os.path.join(d, "cgroup.procs"), os.W_OK):
        return None
    return d


@pytest.mark.skipif(_writable_v2() is None, reason="no writable cgroup v2 group here")
def test_a_v2_group_on_this_kernel():
    """What needs no controller, for real: make a group, start a process in it the way the pool
    starts a worker (launcher), kill it through cgroup.kill, remove the group."""
    g = cgroups.V2Tree(_writable_v2()).group(f"jaxdiff-test-{os.getpid()}", None, None)
    try:
        p = subprocess.Popen(g.launcher() + ["/bin/sleep", "60"])
        deadline = time.time() + 5
        while p.pid not in cgroups._pids(g.procs_file) and time.time() < deadline:
            time.sleep(0.01)
        assert cgroups._pids(g.procs_file) == [p.pid]
        with open(f"/proc/{p.pid}/cgroup") as f:
            assert f"0::/{os.path.basename(g.dir)}\n" in f.read()
        g.remove()
        assert p.wait(5) == -signal.SIGKILL and not os.path.exists(g.dir)
    finally:
        g.remove()


@pytest.mark.skipif(_writable_v2() is None, reason="no writable cgroup v2 group here")
def test_pool_workers_start_inside_their_v2_groups(monkeypatch):
    """The pool's v2 path on this kernel, limits aside (no v2 controllers here): each worker's
    sandbox starts in its own group (bwrap, its init, the worker, the judge), jobs run there, and
    the groups are gone after close."""
    real_probe = sandbox.probe

    def v2_probe(bwrap="bwrap", cgroup_root=None):
        iso = real_probe(bwrap)
        d = _writable_v2()
        return dataclasses.replace(iso, cgroups=cgroups.Plan("v2", {"pids": d}, {}, iso.cgroups.layout))

    monkeypatch.setattr(sandbox, "probe", v2_probe)
    monkeypatch.setattr(cgroups.V2Tree, "prepare", lambda self, controllers=(): None)
    monkeypatch.setattr(cgroups.V2Group, "_set", lambda self, name, value, ctrl: None)  # no pids.max here
    with VerifierPool(workers=2, timeout_s=2.0) as p:
        assert p.level == "cgroup-v2"
        groups = [g.dir for g in p._cgroups]
        for g, w in zip(p._cgroups, p._workers):
            assert len(cgroups._pids(g.procs_file)) == 4 and w.pid in cgroups._pids(g.procs_file)
        res = p.run([{"id": i, "program": "def f():\n    return open('/proc/self/cgroup').read()",
                      "tests": "assert '\\n0::/\\n' in f(), f()"} for i in range(2)])
        assert [r["status"] for r in res] == ["passed"] * 2 and res[0]["stats"]["isolation"] == "cgroup-v2", [r["detail"] for r in res]
    assert not any(os.path.exists(g) for g in groups)


def _v2_enforcement_unavailable():
    plan = cgroups.plan()
    if plan.version != "v2" or plan.problems:
        why = "; ".join(dict.fromkeys(plan.problems.values())) or (
            "memory and pids are bound to cgroup v1 hierarchies, so cgroup v2 cannot enforce them")
        return (f"cgroup v2 memory and pids controllers are not available here ({plan.layout.describe()}): {why}")
    iso = probe()
    if iso.missing:
        return f"the sandbox is incomplete here: {', '.join(iso.missing)}"
    return None


@pytest.mark.skipif(_v2_enforcement_unavailable() is not None, reason=str(_v2_enforcement_unavailable()))
def test_v2_limits_are_enforced():
    """On a cgroup v2 host: a job over its memory limit is killed and classified `memory`, and a
    fork bomb stops at pids.max (here with RLIMIT_NPROC out of the way: the group's own test)."""
    with VerifierPool(workers=1, timeout_s=5.0, memory_mb=256) as p:
        assert p.level == "cgroup-v2"
        prog = ("import os, time\nkids = []\nfor i in range(4):\n    pid = os.fork()\n    if pid == 0:\n"
                "        x = b'x' * (200 << 20)\n        time.sleep(30)\n        os._exit(0)\n    kids.append(pid)\n"
                "for k in kids:\n    os.waitpid(k, 0)\ndef f(x): return x + 1")
        r = p.run([{"id": 0, "program": prog, "tests": "assert f(1) == 2"}])[0]
        assert r["status"] == "memory" and "cgroup" in r["detail"] and r["stats"]["isolation"] == "cgroup-v2", r
        assert p.run([{"id": 1, "program": "def f(x): return x + 1", "tests": "assert f(1) == 2"}])[0]["passed"]
    tree = cgroups.V2Tree(cgroups.plan().dirs["pids"])
    g = tree.group(f"jaxdiff-test-{os.getpid()}", memory_mb=64, nproc=2)  # pids.max = 2 + headroom
    try:
        bomb = ("import os, sys, time\nn = 0\nwhile True:\n    try:\n        if os.fork() == 0:\n"
                "            os.closerange(0, 3)\n            time.sleep(60)\n        n += 1\n    except OSError as e:\n"
                "        print(n, e.errno, flush=True)\n        break\n")
        out = subprocess.run(g.launcher() + [sys.executable, "-c", bomb], capture_output=True, text=True, timeout=30)
        forks, err = (int(x) for x in out.stdout.split())
        assert err == errno.EAGAIN and forks == 2 + cgroups.WORKER_HEADROOM_PIDS - 1, out
        assert cgroups.read_counters(os.path.join(g.dir, "pids.events"))["max"] >= 1
        cgroups.kill_all(g.dir)
        hog = subprocess.run(g.launcher() + [sys.executable, "-c", "x = b'x' * (512 << 20)"], timeout=30)
        assert hog.returncode == -signal.SIGKILL  # 512 MB in a group of 64 + headroom
        assert cgroups.read_counters(os.path.join(g.dir, "memory.events"))["oom_kill"] >= 1
    finally:
        g.remove()
