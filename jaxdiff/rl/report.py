"""What the RL loop logs per batch: scalar metrics by tensorboard tag, the samples file's records, and
the completions shown as text (docs/rl.md lists the tags). Host-side."""
from __future__ import annotations

import numpy as np

from jaxdiff.rl.advantages import Advantages
from jaxdiff.rl.rewards import RewardBatch

# how a metric of the update is combined over the batch's optimizer steps (mu iterations x minibatches;
# default: the mean)
_OVER_ITERATIONS = {"ratio_min": min, "ratio_max": max, "old_minus_recorded": max, "skipped": sum}


def batch_metrics(inflight, rb: RewardBatch, results: list[dict], adv: Advantages, iterations: list[dict],
                  timing: dict, *, workers: int) -> dict:
    """{tag: float} of one batch. timing: rollout_s, host_s, verify_wait_s, update_s, batch_s."""
    r = rb.metrics()
    m = {k: float(v) for k, v in r.items() if k.startswith(("reward/", "status/"))}
    m["rollout/pass_rate"] = r["pass_rate"]
    m["rollout/steps_used"] = r["steps"]
    if "steps_passed" in r:
        m["rollout/steps_used_passed"] = r["steps_passed"]
    b = inflight.batch
    valid, logp, fp = np.asarray(b.valid), np.asarray(b.logp), np.asarray(b.forward_passes)
    tokens = valid.sum(axis=1)
    m["rollout/answer_tokens"] = float(tokens.mean())
    m["rollout/forward_passes"] = float(fp.mean())
    m["rollout/tokens_per_forward"] = float(tokens.sum() / max(fp.sum(), 1))
    # -log pi of the sampled tokens: a one-sample estimate of the per-token entropy at temperature tau
    m["rollout/entropy"] = float(-logp[valid].mean()) if valid.any() else 0.0
    m["rollout/staleness"] = float(inflight.index - inflight.version)
    a = adv.metrics()
    m.update({"advantage/dropped_groups": a["dropped_groups"], "advantage/dropped_fraction": a["dropped_fraction"],
              "advantage/kept_samples": a["kept_samples"], "advantage/abs_mean": a["advantage_abs_mean"]})
    m["policy/iterations"] = float(len(iterations))                # optimizer steps taken on this batch
    if iterations:
        for k in iterations[0]:
            values = [it[k] for it in iterations]
            m[f"policy/{k}"] = float(_OVER_ITERATIONS.get(k, np.mean)(values))
        m["policy/clip_fraction"] = float(np.mean([it["clip_low"] + it["clip_high"] for it in iterations]))
        for k in ("ratio_mean", "ratio_min", "ratio_max"):     # 1 when the batch is not stale
            m[f"policy/first_{k}"] = iterations[0][k]
    m.update({f"time/{k}": float(v) for k, v in timing.items()})
    wall = max(timing["batch_s"], 1e-9)
    m["time/device_idle_fraction"] = max(0.0, 1.0 - (timing["rollout_s"] + timing["update_s"]) / wall)
    busy = sum(float(res.get("wall_ms") or 0.0) for res in results) / 1000.0
    m["time/pool_utilisation"] = busy / (workers * wall)
    return m


def sample_records(inflight, rb: RewardBatch, results: list[dict]) -> list[dict]:
    """One record per sample for `<workdir>/rl_samples.jsonl`: where it comes from, its completion,
    its reward components and the verifier's verdict."""
    out = []
    for i, rec in enumerate(rb.records()):
        out.append({"batch": inflight.index, "row": i, "task_id": inflight.tasks[i].id,
                    "sampler_version": inflight.version, "completion": inflight.texts[i], **rec,
                    "detail": (results[i].get("detail") or "")[:300]})
    return out


def samples_text(inflight, rb: RewardBatch, results: list[dict], n: int) -> str:
    """Markdown of n completions spread over the batch's groups, with their verdicts."""
    rows = len(inflight.texts)
    parts = []
    for i in list(range(0, rows, max(1, rows // n)))[:n]:
        head = (f"**{inflight.tasks[i].id}** (batch {inflight.index}, row {i}, sampled by the adapter of batch "
                f"{inflight.version}): **{rb.status[i]}**, reward {rb.total[i]:.3f} (correctness "
                f"{rb.correctness[i]:.2f}, speed {rb.speed[i]:.2f}, efficiency {rb.efficiency[i]:.2f}), "
                f"{int(rb.steps[i])} steps")
        body = f"```\n{inflight.texts[i]}\n```"
        detail = (results[i].get("detail") or "").strip()
        parts.append("\n\n".join([head, body] + ([f"> {detail[:300]}"] if detail and not rb.passed[i] else [])))
    return "\n\n---\n\n".join(parts)
