"""Accuracy against speed: the harness over a grid of sampler settings -> CSV, AUP and a PNG.

    python tools/sweep_eval.py --checkpoint runs/sft_synthetic --suite synthetic-heldout-constants \
        --limit 64 --gen_length 32 --steps 32,16,8 --block_lengths 32,16 --thresholds 0.9,0.7,0.5 \
        --caches none,dual --out docs/sweep_sft_synthetic
    python tools/sweep_eval.py --checkpoint runs/sft_length --suite synthetic-infill --infill_lengths true,predicted \
        --gen_length 16 --steps 16,8 --block_lengths 16 --thresholds 0.9,0.5 --out docs/sweep_infill

Every grid point is one `jaxdiff.eval.harness.run` (greedy, the same tasks, the model loaded once;
its files go to --runs_dir, default runs/sweep_runs/<out name>/, so a rerun resumes). Points: low_confidence with each `--steps` and
each threshold policy (which ignores steps: a block runs until it is full), times each block length
and cache. Writes <out>.csv (one row per point: settings, pass@1, tokens/s, tokens per forward,
forward passes), <out>.json (the rows and AUP) and, with matplotlib installed, <out>.png (pass@1
against tokens/s and against tokens per forward).

Infilling suites (humaneval-infill-*, synthetic-infill) run every point once per `--infill_lengths`
entry: `true` (the span's true length in tokens is given) and `predicted` (the length head predicts
it, at most --gen_length, and the span is cut at the first EOS; needs a model with a trained length
head). Each row says which; tokens are then the span's.

AUP (d3LLM, as docs/evaluation.md quotes it): points sorted by tokens per forward rho, accuracy y
in percent; points more than 5 below the accuracy of the lowest-rho point are dropped; with
W(y) = min(exp(-3 (1 - y / y_max)), 1),
    AUP = rho_1 y_1 W(y_1) + sum_i (rho_i - rho_{i-1}) (y_i W(y_i) + y_{i-1} W(y_{i-1})) / 2.
y_max is the best accuracy of the sweep (d3LLM takes the best over all compared methods: pass
--y_max to compare sweeps on one scale).
"""
from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
import os
import sys


def weight(y: float, y_max: float, alpha: float = 3.0) -> float:
    return min(math.exp(-alpha * (1 - y / y_max)), 1.0) if y_max > 0 else 0.0


def aup(rho: list[float], y: list[float], y_max: float | None = None, alpha: float = 3.0,
        y_min_offset: float = 5.0) -> float:
    """Accuracy under parallelism; y in percent (0-100), rho tokens per forward (> 0)."""
    if not rho or len(rho) != len(y):
        raise ValueError("aup: rho and y must be non-empty and of one length")
    pts = sorted(zip(rho, y))
    y_max = max(y) if y_max is None else y_max
    floor = pts[0][1] - y_min_offset
    pts = [(r, a) for r, a in pts if a >= floor]
    total = pts[0][0] * pts[0][1] * weight(pts[0][1], y_max, alpha)
    for (r0, a0), (r1, a1) in zip(pts, pts[1:]):
        total += (r1 - r0) * (a1 * weight(a1, y_max, alpha) + a0 * weight(a0, y_max, alpha)) / 2
    return total


def grid(a, infill: bool = False) -> list[dict]:
    policies = [("low_confidence", s) for s in a.steps] + [(f"threshold:{t:g}", -1) for t in a.thresholds]
    lengths = a.infill_lengths if infill else ["-"]
    out = []
    for (policy, steps), bl, cache, length in itertools.product(policies, a.block_lengths, a.caches, lengths):
        if a.gen_length % bl or (steps > 0 and steps % (a.gen_length // bl)):
            continue   # not a valid split of the answer
        out.append(dict(policy=policy, steps=steps, block_length=bl, cache=cache, infill_length=length))
    return out


def _ints(s):
    return [int(x) for x in s.split(",") if x.strip()]


def _floats(s):
    return [float(x) for x in s.split(",") if x.strip()]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--suite", default="synthetic-heldout-constants")
    p.add_argument("--limit", type=int, default=64)
    p.add_argument("--stride", type=int, default=1, help="every stride-th task, then the first --limit")
    p.add_argument("--gen_length", type=int, default=32)
    p.add_argument("--steps", type=_ints, default=[32, 16, 8])
    p.add_argument("--block_lengths", type=_ints, default=[32])
    p.add_argument("--thresholds", type=_floats, default=[0.9, 0.7, 0.5])
    p.add_argument("--caches", type=lambda s: [x for x in s.split(",") if x], default=["none"])
    p.add_argument("--infill_lengths", type=lambda s: [x for x in s.split(",") if x], default=["true", "predicted"],
                   help="infilling suites: the span length given (true) and/or the length head's (predicted)")
    p.add_argument("--attention", default="bidirectional")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--pad_bucket", type=int, default=64)
    p.add_argument("--y_max", type=float, default=None, help="AUP's best accuracy (percent); default: this sweep's")
    p.add_argument("--out", required=True, help="path prefix of the .csv/.json/.png")
    p.add_argument("--runs_dir", default="", help="the harness files of each point (default runs/sweep_runs/<out name>)")
    a = p.parse_args(argv)

    from jaxdiff.config import load_config_file
    from jaxdiff.eval import harness

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    base = load_config_file(os.path.join(root, "configs", "eval.py"))
    base.checkpoint, base.suite, base.limit, base.gen_length = a.checkpoint, a.suite, a.limit, a.gen_length
    base.stride = a.stride
    base.attention, base.batch_size, base.pad_bucket, base.tensorboard = a.attention, a.batch_size, a.pad_bucket, False
    base.out_dir = a.runs_dir or os.path.join("runs", "sweep_runs", os.path.basename(a.out))
    bad = [x for x in a.infill_lengths if x not in harness.INFILL_LENGTHS]
    if bad or not a.infill_lengths:
        print(f"error: --infill_lengths {bad or 'is empty'}: choose from {', '.join(harness.INFILL_LENGTHS)}",
              file=sys.stderr)
        return 2
    try:
        model, tok = harness.load_model(base)
        infill = any(t.infill for t in harness.load_tasks(base))
    except harness.EvalConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rows = []
    for g in grid(a, infill):
        c = base.copy_and_resolve_references()
        c.policy, c.steps, c.block_length, c.cache = g["policy"], g["steps"], g["block_length"], g["cache"]
        c.name = f"{g['policy'].replace(':', '')}_s{g['steps']}_b{g['block_length']}_{g['cache']}"
        if infill:
            c.infill_length = g["infill_length"]
            c.name += f"_{g['infill_length']}"
        try:
            m = harness.run(c, model=model, tokenizer=tok, echo=lambda *_: None)
        except ValueError as e:   # a cache the attention does not allow, ...
            print(f"skip {c.name}: {e}", file=sys.stderr)
            continue
        row = dict(g, pass1=100 * m["pass@1"], tokens_per_s=m["tokens_per_s"],
                   tokens_per_forward=m["tokens_per_forward"], forward_passes=m["mean_forward_passes"],
                   tokens=m["mean_tokens"], tasks=m["tasks"])
        rows.append(row)
        print(", ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    if not rows:
        print("error: no grid point ran", file=sys.stderr)
        return 2
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out + ".csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    # one AUP per infill length (the true-length and predicted-length curves are different samplers)
    y_max = a.y_max if a.y_max is not None else max(r["pass1"] for r in rows)
    scores = {}
    for length in dict.fromkeys(r["infill_length"] for r in rows):
        ok = [r for r in rows if r["infill_length"] == length and r["tokens_per_forward"]]
        scores[length] = aup([r["tokens_per_forward"] for r in ok], [r["pass1"] for r in ok], y_max) if ok else None
    score = scores.get("-", scores.get("true"))
    with open(a.out + ".json", "w") as f:
        json.dump({"suite": a.suite, "checkpoint": a.checkpoint, "limit": a.limit, "stride": a.stride, "aup": score,
                   "aup_by_infill_length": scores, "y_max": y_max, "rows": rows}, f, indent=2)
    for length, sc in scores.items():
        tag = "" if length == "-" else f" ({length} length)"
        print(f"AUP{tag} {sc:.2f}  ({a.out}.csv)" if sc is not None else f"AUP{tag}: no points")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no PNG (pip install matplotlib)")
        return 0
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, label in ((axes[0], "tokens_per_s", "tokens/s"), (axes[1], "tokens_per_forward", "tokens per forward")):
        for cache, length in sorted({(r["cache"], r["infill_length"]) for r in rows}):
            for kind, marker in (("low_confidence", "o"), ("threshold", "^")):
                pts = [r for r in rows if r["cache"] == cache and r["infill_length"] == length
                       and r["policy"].startswith(kind)]
                if pts:
                    legend = f"{kind}, cache={cache}" + (f", {length} length" if length != "-" else "")
                    ax.scatter([r[key] for r in pts], [r["pass1"] for r in pts], marker=marker, label=legend)
                    for r in pts:
                        tag = r["policy"].split(":")[1] if ":" in r["policy"] else f"s{r['steps']}"
                        ax.annotate(f"{tag}/b{r['block_length']}", (r[key], r["pass1"]), fontsize=7)
        ax.set_xlabel(label)
        ax.set_ylabel("pass@1 (%)")
        ax.grid(alpha=0.3)
    axes[1].set_title(", ".join(("AUP" if k == "-" else f"AUP {k}") + f" {v:.1f}" for k, v in scores.items()
                                if v is not None))
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{a.suite} (every {a.stride}, first {a.limit}), {a.checkpoint}")
    fig.tight_layout()
    fig.savefig(a.out + ".png", dpi=110)
    print(f"wrote {a.out}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
