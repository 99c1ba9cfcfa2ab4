"""Job and result records: validation, limits, and the result dict the pool hands back.

A job is a plain dict (one JSONL line for the CLI)::

    {"id": "he/0#3", "language": "python" | "bend",
     "program": "...",                       # required, the code under test
     "tests": "..." | ["...", ...],          # python: test code (a list = independent tests)
     "entry_point": "has_close_elements",    # python: HumanEval layout, runs check(entry_point)
     "stdin": "...", "expected_stdout": "...",
     "expected_result": "...",               # bend: the value after "Result:"
     "runtime": "run-c"}                     # bend: run-rs | run-c | run-cu | hvm-run | hvm-run-c | hvm-run-cu

A result::

    {"id", "status": passed|failed|timeout|memory|error|rejected,
     "passed": bool, "wall_ms": float, "detail": str (truncated), "stats": {...}}
"""

from __future__ import annotations

import dataclasses
import math

STATUSES = ("passed", "failed", "timeout", "memory", "error", "rejected")
LANGUAGES = ("python", "bend")
BEND_RUNTIMES = ("run-rs", "run-c", "run-cu", "hvm-run", "hvm-run-c", "hvm-run-cu")

_FIELDS = {
    "id": (str, int, type(None)),
    "language": (str,),
    "program": (str,),
    "tests": (str, list),
    "entry_point": (str,),
    "stdin": (str,),
    "expected_stdout": (str,),
    "expected_result": (str,),
    "runtime": (str,),
}
# Fields a caller may attach for its own bookkeeping (rewards, grouping); carried, never executed.
_PASSTHROUGH = ("meta",)


class JobError(ValueError):
    """A job that cannot be run as given; it becomes a `rejected` result, never an exception."""


@dataclasses.dataclass(frozen=True)
class Limits:
    """Per-job resource limits, applied to every process of a job.

    timeout_s: wall time for the whole job (the pool kills everything at the deadline); the CPU-time
      rlimit is derived from it (ceil(timeout_s) s soft, one more second hard).
    memory_mb: address space per process (RLIMIT_AS) and, with cgroups, the whole job's memory.
    fsize_mb: largest file a job may write, its captured stdout/stderr included (RLIMIT_FSIZE).
    nofile: open files per process (RLIMIT_NOFILE).
    nproc: processes of the job (RLIMIT_NPROC on its private uid, and the cgroup pids.max).
    max_program_bytes: larger programs (or tests) are rejected before anything runs.
    detail_chars: `detail` is cut to this many characters.
    """

    timeout_s: float = 10.0
    memory_mb: int = 1024
    fsize_mb: int = 16
    nofile: int = 64
    nproc: int = 32
    max_program_bytes: int = 1 << 20
    detail_chars: int = 2000

    def __post_init__(self):
        if not (0 < self.timeout_s <= 3600):
            raise ValueError(f"timeout_s must be in (0, 3600], got {self.timeout_s}")
        for name in ("memory_mb", "fsize_mb", "nofile", "nproc", "max_program_bytes", "detail_chars"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.nofile < 16:
            raise ValueError("nofile must be >= 16 (the interpreter itself needs a few)")

    @property
    def cpu_s(self) -> int:
        return max(1, math.ceil(self.timeout_s))


def validate(job, limits: Limits) -> dict:
    """Return a normalised copy of `job`, or raise JobError naming the offending field."""
    if not isinstance(job, dict):
        raise JobError(f"a job must be a JSON object, got {type(job).__name__}")
    unknown = sorted(set(job) - set(_FIELDS) - set(_PASSTHROUGH))
    if unknown:
        raise JobError(f"unknown field(s) {unknown}; allowed: {sorted(_FIELDS)} and {list(_PASSTHROUGH)}")
    for key, types in _FIELDS.items():
        if key in job and not isinstance(job[key], types):
            raise JobError(f"field '{key}' must be {'/'.join(t.__name__ for t in types)}, "
                           f"got {type(job[key]).__name__}")
    if isinstance(job.get("id"), bool):
        raise JobError("field 'id' must be str/int/NoneType, got bool")
    if "program" not in job:
        raise JobError("missing field 'program'")
    language = job.get("language", "python")
    if language not in LANGUAGES:
        raise JobError(f"field 'language' must be one of {list(LANGUAGES)}, got {language!r}")
    out = dict(job, language=language)
    size = sum(len(v.encode("utf-8", "surrogatepass")) for v in _texts(job))
    if size > limits.max_program_bytes:
        raise JobError(f"job is {size} bytes, more than max_program_bytes={limits.max_program_bytes}")
    tests = job.get("tests")
    if isinstance(tests, list):
        if not tests or not all(isinstance(t, str) for t in tests):
            raise JobError("field 'tests' as a list must hold one or more strings")
    if language == "python":
        for key in ("expected_result", "runtime"):
            if key in job:
                raise JobError(f"field '{key}' only applies to bend jobs")
        if tests is not None and "expected_stdout" in job:
            raise JobError("give either 'tests' or 'expected_stdout', not both")
        if "entry_point" in job:
            if tests is None:
                raise JobError("field 'entry_point' needs 'tests' (it calls check(entry_point))")
            if not job["entry_point"].isidentifier():
                raise JobError(f"field 'entry_point' is not an identifier: {job['entry_point']!r}")
    else:
        for key in ("tests", "entry_point"):
            if key in job:
                raise JobError(f"field '{key}' only applies to python jobs")
        runtime = job.get("runtime", "run-c")
        if runtime not in BEND_RUNTIMES:
            raise JobError(f"field 'runtime' must be one of {list(BEND_RUNTIMES)}, got {runtime!r}")
        out["runtime"] = runtime
    return out


def _texts(job):
    for key in ("program", "stdin", "expected_stdout", "expected_result"):
        if isinstance(job.get(key), str):
            yield job[key]
    tests = job.get("tests")
    if isinstance(tests, str):
        yield tests
    elif isinstance(tests, list):
        yield from (t for t in tests if isinstance(t, str))


def result(job_id, status: str, detail: str = "", wall_ms: float = 0.0, stats: dict | None = None,
           detail_chars: int = 2000) -> dict:
    """The one place results are built, so every result has every field."""
    if status not in STATUSES:
        raise ValueError(f"unknown status {status!r}")
    if len(detail) > detail_chars:
        detail = detail[:detail_chars] + f"... [{len(detail) - detail_chars} more chars]"
    return {"id": job_id, "status": status, "passed": status == "passed",
            "wall_ms": round(float(wall_ms), 3), "detail": detail, "stats": dict(stats or {})}


def job_id(job):
    """The id of a possibly malformed job, for its `rejected` result."""
    if isinstance(job, dict) and isinstance(job.get("id"), (str, int)) and not isinstance(job.get("id"), bool):
        return job["id"]
    return None
