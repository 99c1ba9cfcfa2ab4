"""Throughput of the RL loop: rollout + verify + update per batch, with overlap off and on (docs/rl.md).

    python tools/bench_rl.py --config configs/rl_tiny.py --batches 8
    python tools/bench_rl.py --config configs/rl_tiny.py --set rl.prompts_per_batch=8 --set rl.group_size=8

Builds the config's model once, compiles the rollout and the update on a warm-up run, then runs the
loop for --batches batches with rl.overlap off and then on (fresh workdirs under --out, the same
seed: the same prompts and, for the first batch, the same samples). One row per mode, from the
loop's own per-batch timings (launch/rl.py logs the same ones under time/*), means over batches
2..N (batch 1 of an overlapped run also samples batch 2):

    s/batch       wall time of one batch of the loop
    rollout       seconds sampling on the device (with overlap: batch n + 1's rollout)
    verify wait   seconds blocked on the pool's verdicts
    update        seconds in the mu jitted updates (0 in a batch whose groups all dropped)
    updated       batches that took an update
    device idle   1 - (rollout + update) / batch
    pool util     worker-busy seconds / (workers x batch)
    samples/s     verified samples per second of wall time over the measured batches
"""
from __future__ import annotations

import argparse
import ast
import os
import statistics
import sys
import tempfile
import time

COLUMNS = ("mode", "batches", "s/batch", "rollout", "verify wait", "update", "updated", "device idle", "pool util",
           "samples/s")


def override(c, assignment: str) -> None:
    """`a.b=value` on config `c`, the value parsed as the field's own type."""
    key, _, text = assignment.partition("=")
    *path, field = key.split(".")
    node = c
    for p in path:
        node = node[p]
    old = node[field]
    if isinstance(old, bool):
        value = text.lower() in ("1", "true", "yes")
    elif isinstance(old, (int, float)):
        value = type(old)(ast.literal_eval(text))
    else:
        value = text
    node[field] = value


def summarize(mode: str, history: list[dict], rows: int) -> dict:
    steady = history[1:]
    mean = lambda k: statistics.mean(h[f"time/{k}"] for h in steady)   # noqa: E731
    wall = sum(h["time/batch_s"] for h in steady)
    return {"mode": mode, "batches": len(steady), "s/batch": mean("batch_s"), "rollout": mean("rollout_s"),
            "verify wait": mean("verify_wait_s"), "update": mean("update_s"),
            "updated": sum(h["policy/iterations"] > 0 for h in steady),
            "device idle": mean("device_idle_fraction"), "pool util": mean("pool_utilisation"),
            "samples/s": rows * len(steady) / wall}


def table(rows: list[dict]) -> str:
    def cell(v):
        return f"{v:.3f}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(r[c]) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/rl_tiny.py", help="an RL config file (path[:variant])")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, repeatable")
    ap.add_argument("--batches", type=int, default=8, help="batches per mode (the first is not counted)")
    ap.add_argument("--out", default="", help="workdirs of the runs (default: a temporary folder)")
    args = ap.parse_args()
    if args.batches < 2:
        ap.error("--batches must be >= 2 (the first batch is not counted)")

    from jaxdiff import builder
    from jaxdiff.config import load_config_file
    from jaxdiff.parallel import make_mesh
    from jaxdiff.rl import config as rl_config
    from jaxdiff.rl.loop import train_rl

    c = load_config_file(args.config)
    for a in args.set:
        override(c, a)
    rl_config.validate(c)
    out = args.out or tempfile.mkdtemp(prefix="bench_rl_")
    tok = builder.tokenizer_for(c, None)
    model = builder.build_model_from_config(c, tok, mesh=make_mesh(dict(c.mesh)))
    rows = c.rl.prompts_per_batch * c.rl.group_size

    def run(name, overlap, batches):
        cfg = c.copy_and_resolve_references()
        cfg.workdir, cfg.rl.overlap, cfg.rl.batches = os.path.join(out, name), overlap, batches
        cfg.rl.checkpoint_every = batches
        t = time.perf_counter()
        res = train_rl(cfg, progress=False, model=model, tokenizer=tok)
        if res["stopped"]:
            sys.exit(f"bench_rl: stopped by {res['stopped']} during the {name} run")
        return res["history"], time.perf_counter() - t

    _, warm = run("warmup", False, 2)
    print(f"warm-up (compiles): {warm:.1f} s; {rows} samples per batch ({c.rl.prompts_per_batch} prompts x "
          f"{c.rl.group_size}), mu={c.rl.mu}, estimator {c.rl.estimator}, {c.rl.workers} verifier workers")
    results = []
    for name, overlap in (("sequential", False), ("overlap", True)):
        history, _ = run(name, overlap, args.batches)
        results.append(summarize(name, history, rows))
        print(f"{name}: mean reward {statistics.mean(h['reward/total'] for h in history):.3f}")
    print(table(results))
    seq, ovl = results
    print(f"overlap: {seq['s/batch'] / ovl['s/batch']:.2f}x the sequential batch rate "
          f"(device idle {seq['device idle']:.2f} -> {ovl['device idle']:.2f}); runs in {out}")


if __name__ == "__main__":
    main()
