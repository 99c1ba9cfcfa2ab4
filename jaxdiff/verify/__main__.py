"""python -m jaxdiff.verify --input jobs.jsonl --output results.jsonl [--workers N] [--timeout S]
    [--memory-mb M] [--allow-reduced-isolation] [--cgroup-root DIR] [--allow-unsandboxed] [--no-progress]

One result line per non-blank input line, in input order, written (and flushed) as soon as it is
known, so an interrupted run keeps everything it finished. A line that is not a valid job becomes a
`rejected` result whose detail names the line number; the run goes on.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time

from jaxdiff.verify import jobs as J
from jaxdiff.verify.pool import VerifierPool
from jaxdiff.verify.sandbox import SandboxUnavailable


def _read_jobs(path, linenos):
    """Yield one job (or a JobError standing for a bad line) per non-blank line."""
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            linenos.append(lineno)
            try:
                yield json.loads(line)
            except ValueError as e:
                yield J.JobError(f"invalid JSON: {e}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m jaxdiff.verify", description=__doc__.split("\n\n")[1])
    p.add_argument("--input", required=True, help="jobs, one JSON object per line")
    p.add_argument("--output", required=True, help="results, one JSON object per line (overwritten)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--timeout", type=float, default=10.0, help="wall-clock seconds per job")
    p.add_argument("--memory-mb", type=int, default=1024)
    p.add_argument("--allow-reduced-isolation", action="store_true",
                   help="run where no cgroup can be made: bubblewrap, private uids and rlimits only, no cgroup "
                        "memory or process-count limit (every result's stats['isolation'] says 'reduced')")
    p.add_argument("--cgroup-root", default=None,
                   help="a delegated cgroup v2 directory for the workers' groups (default: this process's own)")
    p.add_argument("--allow-unsandboxed", action="store_true",
                   help="run even when an isolation primitive is missing (trusted code only)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)

    try:
        pool = VerifierPool(workers=args.workers, timeout_s=args.timeout, memory_mb=args.memory_mb,
                            allow_reduced_isolation=args.allow_reduced_isolation, cgroup_root=args.cgroup_root,
                            allow_unsandboxed=args.allow_unsandboxed)
    except SandboxUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    with open(args.input, encoding="utf-8") as f:
        total = sum(1 for line in f if line.strip())
    counts = collections.Counter()
    linenos = collections.deque()
    t0 = time.perf_counter()
    bar = None
    if not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="job", file=sys.stderr)
    try:
        with pool, open(args.output, "w", encoding="utf-8") as out:
            for res in pool.imap(_read_jobs(args.input, linenos)):
                lineno = linenos.popleft()
                if res["status"] == "rejected":
                    print(f"{args.input}:{lineno}: rejected: {res['detail']}", file=sys.stderr)
                    res["detail"] = f"line {lineno}: {res['detail']}"
                out.write(json.dumps(res, ensure_ascii=False) + "\n")
                out.flush()
                counts[res["status"]] += 1
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    elapsed = time.perf_counter() - t0
    n = sum(counts.values())
    per_status = ", ".join(f"{s} {counts[s]}" for s in J.STATUSES if counts[s])
    print(f"{n} jobs in {elapsed:.2f} s ({n / elapsed if elapsed > 0 else 0:.1f} jobs/s): {per_status or 'nothing to do'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
