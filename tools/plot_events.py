"""Plot scalars from a run's tensorboard event files into a PNG.

    python tools/plot_events.py --logdir runs/tiny_coder/tb --out docs/tiny_coder_loss.png
    python tools/plot_events.py --logdir runs/x/tb --tags train/loss,eval/loss --out loss.png
"""
from __future__ import annotations

import argparse
import sys

DEFAULT_TAGS = ("train/loss", "eval/loss", "train/diffusion/masked_acc", "eval/diffusion/masked_acc")


def read_scalars(logdir: str) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(logdir, size_guidance={"scalars": 0})
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--logdir", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--tags", default=",".join(DEFAULT_TAGS))
    p.add_argument("--title", default="")
    a = p.parse_args(argv)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scalars = read_scalars(a.logdir)
    tags = [t for t in a.tags.split(",") if t]
    missing = [t for t in tags if t not in scalars]
    if missing:
        print(f"plot_events: error: {a.logdir}: no scalars {missing} (have {sorted(scalars)})", file=sys.stderr)
        return 2
    losses = [t for t in tags if "acc" not in t]
    accs = [t for t in tags if "acc" in t]
    fig, axes = plt.subplots(1, 2 if accs and losses else 1, figsize=(11, 4), squeeze=False)
    for ax, group, label in ((axes[0][0], losses or accs, "loss" if losses else "accuracy"),
                             *(((axes[0][1], accs, "masked-token accuracy"),) if accs and losses else ())):
        for t in group:
            steps, values = zip(*scalars[t])
            ax.plot(steps, values, label=t, marker="o" if len(steps) < 20 else None, linewidth=1)
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    if a.title:
        fig.suptitle(a.title)
    fig.tight_layout()
    fig.savefig(a.out, dpi=110)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
