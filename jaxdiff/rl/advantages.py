"""Group-relative advantages from verifier rewards (NumPy, on the host, as Tunix and EasyDeL do).

A batch holds P prompts with G samples each, laid out prompt by prompt: samples p*G .. p*G+G-1
belong to prompt p. Per group, with rewards r_1..r_G:

    baseline "mean"            b_i = mean_j r_j                       (GRPO; d1 keeps only this)
             "leave_one_out"   b_i = mean_{j != i} r_j                (RLOO; DiffuCoder coupled-GRPO)
                               (r_i - b_i = G/(G-1) * (r_i - mean_j r_j))
    scale    "none"            A_i = r_i - b_i                        (d1, DiffuCoder, Dr. GRPO)
             "std"             A_i = (r_i - b_i) / (std_j r_j + eps)  (GRPO, TraceRL; std with ddof=1
                                                                       and eps = 1e-4, as Tunix)

A group whose rewards are all equal teaches nothing (every advantage is 0) and only dilutes the
token normaliser, so it is dropped: its samples get A = 0 and keep = False, and it is counted. The
update multiplies its token mask by `keep` (objective.py never lets a masked token into the loss or
its normaliser).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxdiff.config.schema import BASELINES, SCALES  # the names live in the config schema


@dataclasses.dataclass(frozen=True)
class Advantages:
    """values: [P*G] float32, 0 where dropped; keep: [P*G] bool; the counts are over groups."""

    values: np.ndarray
    keep: np.ndarray
    groups: int
    dropped_groups: int

    @property
    def kept_samples(self) -> int:
        return int(self.keep.sum())

    def metrics(self) -> dict:
        kept = self.values[self.keep]
        return {"groups": self.groups, "dropped_groups": self.dropped_groups,
                "dropped_fraction": self.dropped_groups / self.groups, "kept_samples": self.kept_samples,
                "advantage_abs_mean": float(np.abs(kept).mean()) if kept.size else 0.0}


def group_advantages(rewards, group_size: int, *, baseline: str = "mean", scale: str = "none",
                     eps: float = 1e-4) -> Advantages:
    """Advantages of `rewards` ([P*G] or [P, G], grouped by prompt as above) in groups of `group_size`."""
    if baseline not in BASELINES:
        raise ValueError(f"baseline must be one of {BASELINES}, got {baseline!r}")
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    if group_size < 2:
        raise ValueError(f"group_size must be >= 2 (a group of one has no baseline), got {group_size}")
    r = np.asarray(rewards, dtype=np.float64)
    if r.size == 0 or r.size % group_size:
        raise ValueError(f"{r.size} rewards do not split into groups of {group_size}")
    if not np.all(np.isfinite(r)):
        raise ValueError(f"rewards must be finite; got {r[~np.isfinite(r)][:4].tolist()} ...")
    r = r.reshape(-1, group_size)                                            # [P, G]
    total = r.sum(axis=1, keepdims=True)
    if baseline == "mean":
        base = total / group_size
    else:
        base = (total - r) / (group_size - 1)
    adv = r - base
    varied = np.any(r != r[:, :1], axis=1)                                   # [P]
    if scale == "std":  # (a dropped group's std is 0: divide it by 1 instead; its values become 0 below)
        adv = adv / (np.where(varied[:, None], r.std(axis=1, ddof=1, keepdims=True), 1.0) + eps)
    keep = np.repeat(varied, group_size)
    values = np.where(keep, adv.reshape(-1), 0.0).astype(np.float32)
    return Advantages(values=values, keep=keep, groups=int(r.shape[0]), dropped_groups=int((~varied).sum()))
